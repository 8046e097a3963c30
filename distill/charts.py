"""Plotly figures of per-subject results, and the self-contained HTML every distill chart is written as.

The HTML embeds plotly.js (about 4.6 MB) instead of loading it from a CDN, so a chart opens in
the MLflow UI and from disk on a machine with no internet, like everything else in distill.

One copy of plotly.js per run: `log_figure` puts each figure of a run on the run's one chart
page, `charts.html` at the root of its artifacts, with plotly.js embedded once; a figure added
later (by another stage, another process: `analyze --log_to_run`) joins the page that is there.
A shared `plotly.min.js` beside per-figure pages would not do: MLflow 3's UI shows an HTML
artifact from a blob: URL in a sandboxed iframe, where a relative `<script src>` resolves to
nothing, and it serves `.js` artifacts as text/plain with `nosniff`, which browsers refuse to run.

`figure_html` writes one figure; `html_page` several on one page with plotly.js embedded once
(pages written outside a run's chart page, such as the eda map and overlap pages).
"""

from __future__ import annotations

import html
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

OVERALL = "(overall)"

RUN_PAGE = "charts.html"
"""The run's chart page: every figure `log_figure` logged on the run, plotly.js embedded once."""

FIGURE_HEIGHT = "560px"

_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_SECTION = re.compile(r"<!-- distill-figure (?P<key>\S+) -->\n(?P<body>.*?)\n<!-- /distill-figure -->", re.DOTALL)
"""A figure's section on the run page. Figure data never holds `<` unescaped (plotly writes it
as \\u003c), titles are HTML-escaped, so the markers cannot occur inside a section."""


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


# --------------------------------------------------------------------------- the run's chart page


def figure_section(fig, key: str, title: str) -> str:
    """One figure's section of a chart page (no plotly.js: the page carries it once)."""
    if not _KEY.match(key):
        raise ValueError(f"figure key {key!r}: letters, digits and _ . / - only")
    div = fig.to_html(include_plotlyjs=False, full_html=False, default_height=FIGURE_HEIGHT)
    body = f'<section id="{html.escape(key)}"><h2>{html.escape(title)}</h2>\n{div}\n</section>'
    return f"<!-- distill-figure {key} -->\n{body}\n<!-- /distill-figure -->"


def page_sections(page: str) -> dict[str, str]:
    """{key: section} of a chart page written by `run_page`, in page order."""
    return {m.group("key"): m.group(0) for m in _SECTION.finditer(page)}


def run_page(sections: Mapping[str, str], *, title: str) -> str:
    """The chart page: a list of its figures, then each figure; plotly.js embedded once."""
    from plotly.offline import get_plotlyjs

    titles = {key: _section_title(section) for key, section in sections.items()}
    index = "".join(f'<li><a href="#{html.escape(k)}">{t}</a></li>' for k, t in titles.items())
    body = "\n".join(sections.values())
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;margin:1em 2em}section{margin-bottom:2em}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
        f"<h1>{html.escape(title)}</h1>\n<ul>{index}</ul>\n{body}\n</body></html>\n"
    )


def _section_title(section: str) -> str:
    found = re.search(r"<h2>(.*?)</h2>", section)
    return found.group(1) if found else ""


_page_cache: dict[str, dict[str, str]] = {}
"""The sections of the last run this process added a figure to (one run: memory stays small)."""


def log_figure(fig, key: str, *, title: str) -> None:
    """Put `fig` on the active run's chart page (`RUN_PAGE`) as section `key`, titled `title`.

    A key already on the page is replaced in place, so logging again never duplicates a figure.
    The page is rewritten and logged again each time; the first figure this process adds to a
    run reads back the page the run may already have (another stage's figures)."""
    from distill import tracking

    run_id = tracking.active_run_id()
    if run_id is None:
        raise RuntimeError("log_figure needs an active MLflow run (it would otherwise start a new one)")
    section = figure_section(fig, key, title)
    sections = _page_cache.get(run_id)
    if sections is None:
        sections = _stored_sections(run_id)
    sections[key] = section
    _page_cache.clear()
    _page_cache[run_id] = sections
    with tempfile.TemporaryDirectory(prefix="distill-charts-") as tmp:
        path = Path(tmp) / RUN_PAGE
        path.write_text(run_page(sections, title=f"distill charts: run {run_id}"), encoding="utf-8")
        tracking.log_artifact(path)


def _stored_sections(run_id: str) -> dict[str, str]:
    """The sections of the run's chart page in the store; none when it has no page yet."""
    from distill import tracking

    if RUN_PAGE not in {a.path for a in tracking.client().list_artifacts(run_id)}:
        return {}
    with tempfile.TemporaryDirectory(prefix="distill-charts-") as tmp:
        local = tracking.find_artifact(run_id, RUN_PAGE, dst_path=tmp)
        return page_sections(Path(local).read_text(encoding="utf-8")) if local else {}
