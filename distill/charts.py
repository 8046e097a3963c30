"""Plotly figures of per-subject results, and the self-contained HTML every distill chart is written as.

The HTML embeds plotly.js (about 4 MB) instead of loading it from a CDN, so a chart opens in
the MLflow UI and from disk on a machine with no internet, like everything else in distill.
`figure_html` writes one figure; `html_page` several on one page with plotly.js embedded once
(the eda map and overlap pages, the error analysis page).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

OVERALL = "(overall)"


def subject_bar_chart(
    rows: Sequence[Mapping[str, Any]],
    overall: Mapping[str, float] | None = None,
    *,
    title: str = "Accuracy and macro-F1 per subject",
):
    """Grouped bars: accuracy and macro-F1 for each subject (rows: subject, n, accuracy, macro_f1)."""
    import plotly.graph_objects as go

    rows = list(rows)
    if overall is not None:
        rows.append({"subject": OVERALL, **overall})
    labels = [f"{r['subject']} (n={int(r['n'])})" for r in rows]
    fig = go.Figure()
    for metric, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        values = [r[metric] for r in rows]
        fig.add_bar(x=labels, y=values, name=name, text=[f"{v:.3f}" for v in values], textposition="outside")
    _layout(fig, title)
    return fig


def comparison_bar_chart(
    base_rows: Sequence[Mapping[str, Any]],
    new_rows: Sequence[Mapping[str, Any]],
    *,
    base_label: str = "base",
    new_label: str = "new",
    base_overall: Mapping[str, float] | None = None,
    new_overall: Mapping[str, float] | None = None,
    title: str = "Base vs new per subject",
):
    """Two panels (accuracy, macro-F1); in each, base and new side by side for every subject."""
    from plotly.subplots import make_subplots

    base = {r["subject"]: r for r in base_rows}
    new = {r["subject"]: r for r in new_rows}
    if base_overall is not None and new_overall is not None:
        base[OVERALL] = {"subject": OVERALL, **base_overall}
        new[OVERALL] = {"subject": OVERALL, **new_overall}
    subjects = [s for s in new if s in base]
    labels = [f"{s} (n={int(new[s]['n'])})" for s in subjects]
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, subplot_titles=("accuracy", "macro-F1"), vertical_spacing=0.12
    )
    colours = {base_label: "#9aa5b1", new_label: "#1f77b4"}
    for row, metric in ((1, "accuracy"), (2, "macro_f1")):
        for label, table in ((base_label, base), (new_label, new)):
            values = [table[s][metric] for s in subjects]
            fig.add_bar(
                x=labels,
                y=values,
                name=label,
                legendgroup=label,
                showlegend=row == 1,
                marker_color=colours[label],
                text=[f"{v:.3f}" for v in values],
                textposition="outside",
                row=row,
                col=1,
            )
    _layout(fig, title)
    fig.update_yaxes(range=[0, 1.1], row=2, col=1)
    return fig


def _layout(fig, title: str) -> None:
    fig.update_layout(
        title=title, barmode="group", yaxis_range=[0, 1.1], template="plotly_white", legend_title_text=""
    )


def figure_html(fig) -> str:
    """Self-contained HTML (plotly.js embedded; works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def html_page(figures: Sequence, *, title: str) -> str:
    """One self-contained HTML page with every figure, plotly.js embedded once (works offline)."""
    parts = []
    for index, fig in enumerate(figures):
        parts.append(fig.to_html(include_plotlyjs=(index == 0), full_html=False))
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )
