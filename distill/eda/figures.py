"""Plotly figures of the embedding map and the overlap.

The stage puts them on pages with `distill.charts.html_page` (plotly.js embedded once, so a
page opens offline in the MLflow UI).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

HOVER_CHARS = 200


def hover_text(text: str, limit: int = HOVER_CHARS) -> str:
    """The first `limit` characters, one line, HTML-escaped, wrapped for the hover box."""
    flat = " ".join(str(text).split())
    short = flat[:limit] + ("…" if len(flat) > limit else "")
    escaped = html.escape(short)
    return "<br>".join(escaped[i : i + 60] for i in range(0, len(escaped), 60))


def map_scatter(points, *, title: str = "Embedding map"):
    """Scatter of the 2-D map: colour by set, marker symbol by subject, hover shows the text.

    `points`: DataFrame with columns set, role, id, subject, text, x, y.
    """
    import plotly.graph_objects as go

    symbols = [
        "circle",
        "square",
        "diamond",
        "cross",
        "x",
        "triangle-up",
        "triangle-down",
        "star",
        "pentagon",
        "hexagon",
        "star-triangle-up",
        "hourglass",
        "bowtie",
        "circle-open",
        "square-open",
        "diamond-open",
    ]
    subjects = sorted(points["subject"].astype(str).unique())
    symbol_of = {subject: symbols[i % len(symbols)] for i, subject in enumerate(subjects)}
    fig = go.Figure()
    # Training sets first so evaluation points are drawn on top of them.
    ordered_sets = list(
        dict.fromkeys(
            list(points.loc[points["role"] == "train", "set"]) + list(points.loc[points["role"] == "eval", "set"])
        )
    )
    for set_name in ordered_sets:
        part = points[points["set"] == set_name]
        role = part["role"].iloc[0]
        fig.add_scatter(
            x=part["x"],
            y=part["y"],
            mode="markers",
            name=f"{set_name} ({role}, n={len(part)})",
            marker=dict(
                symbol=[symbol_of[str(s)] for s in part["subject"]],
                size=7 if role == "eval" else 6,
                opacity=0.9 if role == "eval" else 0.55,
                line=dict(width=0.5, color="white"),
            ),
            customdata=list(
                zip(part["id"].astype(str), part["subject"].astype(str), [hover_text(t) for t in part["text"]])
            ),
            hovertemplate=f"<b>{html.escape(set_name)}</b> %{{customdata[0]}}<br>subject: %{{customdata[1]}}"
            "<br>%{customdata[2]}<extra></extra>",
        )
    legend_note = ", ".join(f"{symbol_of[s]} = {s}" for s in subjects[:12])
    if len(subjects) > 12:
        legend_note += f", … ({len(subjects)} subjects)"
    fig.update_layout(
        title=dict(text=f"{title}<br><sup>symbols by subject: {html.escape(legend_note)}</sup>"),
        template="plotly_white",
        height=750,
        legend_title_text="set",
        xaxis=dict(showticklabels=False, title=""),
        yaxis=dict(showticklabels=False, title=""),
    )
    return fig


def distance_histogram(overlap, *, title: str = "Distance from each evaluation item to its nearest training item"):
    """Overlaid histograms of nearest-training cosine distance, one per evaluation set.

    `overlap`: DataFrame with columns eval_set, nearest_train_distance.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for set_name, part in overlap.groupby("eval_set", sort=False):
        fig.add_histogram(
            x=part["nearest_train_distance"],
            name=f"{set_name} (n={len(part)})",
            opacity=0.6,
            xbins=dict(start=0.0, end=2.0, size=0.025),
        )
    fig.update_layout(
        title=title,
        barmode="overlay",
        template="plotly_white",
        xaxis_title="cosine distance to nearest training item (0 = same direction)",
        yaxis_title="evaluation items",
        legend_title_text="evaluation set",
    )
    return fig


def share_bars(summary_rows: Sequence[dict], *, title: str = "Training neighbours of evaluation items"):
    """Per evaluation set: mean training-neighbour share, dominated share, and the exchangeable baseline.

    `summary_rows`: dicts with eval_set, n, mean_train_neighbour_share, dominated_share, expected_train_share.
    """
    import plotly.graph_objects as go

    labels = [f"{r['eval_set']} (n={r['n']})" for r in summary_rows]
    fig = go.Figure()
    for key, name in (
        ("mean_train_neighbour_share", "mean share of training neighbours"),
        ("dominated_share", "share of items dominated (> 0.5)"),
        ("expected_train_share", "share expected if sets were exchangeable"),
    ):
        values = [r[key] for r in summary_rows]
        fig.add_bar(x=labels, y=values, name=name, text=[f"{v:.2f}" for v in values], textposition="outside")
    fig.update_layout(
        title=title, barmode="group", template="plotly_white", yaxis_range=[0, 1.1], legend_title_text=""
    )
    return fig
