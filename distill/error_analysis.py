"""Where a model goes wrong: confusion per subject, items fixed and broken, answer-position bias.

Input: predictions tables as the evaluate stage logs them (`evaluation/predictions.parquet`):
columns `id, subject, gold, pred` (plus `n_choices`, `correct`, `score_k`, and in generate mode
`text`/`reasoning`). `pred` is the chosen number, or null when no answer could be read (a parse
failure): such a prediction is shown in a "none" column and counts as wrong. A `pred` outside
1..n_choices is treated the same way. `correct` is recomputed as pred == gold so that every
figure here agrees with the confusion matrices.

Pure functions (data in, data out):
- `confusion_matrix(df)`, `confusion_matrices(df)`: gold x pred counts, overall and per subject;
- `item_changes(base_df, new_df)`: items the new model fixed (base wrong, new right) and broke
  (base right, new wrong), with both reasonings when the tables carry text;
- `position_bias(df)`, `position_bias_test(df)`: share of predictions per choice number against
  the gold distribution, and a chi-square statistic of their difference.
- `analyse(base_df, new_df=None)`: all of the above for one model or a pair; `error_metrics`
  and `summary_text` read it.
Side effects at the edge:
- `log_error_analysis(base_df, new_df=None)`: tables on the active MLflow run, through
  distill.tracking, and plotly charts on the run's chart page (`distill.charts.log_figure`). The `analyze` stage (distill.stages.analyze)
  finds the predictions of logged runs and calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.contracts import normalise_predictions
from distill.errors import ConfigError, InputError

NONE_LABEL = "none"
"""Column of the confusion matrix (and row of the position table) for unparsed predictions."""
OVERALL = "(overall)"
ARTIFACT_DIR = "errors"
REASONING_COLUMNS = ("reasoning", "text")
"""Columns that hold a model's reasoning, in order of preference."""


# --------------------------------------------------------------------------------------------
# Pure functions


def _width(df) -> int:
    """Number of choice positions to show: the widest item."""
    return int(max(df["n_choices"].max(), df["gold"].max())) if len(df) else 0


def confusion_matrix(df, *, width: int | None = None):
    """Counts with gold numbers as rows ("1".."K") and predictions as columns ("1".."K", "none").

    `df` must already be normalised (`normalise_predictions`).
    """
    import pandas as pd

    width = width or _width(df)
    labels = [str(i) for i in range(1, width + 1)]
    matrix = pd.DataFrame(0, index=pd.Index(labels, name="gold"), columns=pd.Index([*labels, NONE_LABEL], name="pred"))
    for gold, pred in zip(df["gold"], df["pred"]):
        matrix.loc[str(int(gold)), NONE_LABEL if pred is pd.NA else str(int(pred))] += 1
    return matrix


def confusion_matrices(df) -> dict[str, Any]:
    """`{OVERALL: matrix, subject: matrix, ...}`, all the same width (the widest item)."""
    width = _width(df)
    matrices = {OVERALL: confusion_matrix(df, width=width)}
    for subject in sorted(df["subject"].unique()):
        matrices[subject] = confusion_matrix(df[df["subject"] == subject], width=width)
    return matrices


def confusion_long(matrices: dict[str, Any], model: str):
    """Matrices as one long table (model, subject, gold, pred, count), the shape of an MLflow table."""
    import pandas as pd

    rows = [
        {"model": model, "subject": subject, "gold": gold, "pred": pred, "count": int(matrix.loc[gold, pred])}
        for subject, matrix in matrices.items()
        for gold in matrix.index
        for pred in matrix.columns
    ]
    return pd.DataFrame(rows, columns=["model", "subject", "gold", "pred", "count"])


def reasoning_column(df) -> str | None:
    for name in REASONING_COLUMNS:
        if name in df.columns:
            return name
    return None


@dataclass
class ItemChanges:
    """Items answered by both models, split by what changed."""

    fixed: Any
    """DataFrame: base wrong, new right (id, subject, gold, base_pred, new_pred[, base_reasoning, new_reasoning])."""
    broken: Any
    """DataFrame: base right, new wrong (same columns)."""
    by_subject: Any
    """DataFrame: subject, n, fixed, broken, net (fixed - broken), with an overall row."""
    n_paired: int
    n_only_base: int
    """Items in the base table only (left out of every figure here)."""
    n_only_new: int


def item_changes(base_df, new_df) -> ItemChanges:
    """Fixed and broken items between two normalised predictions tables, joined on id.

    Subjects come from the new table. Both gold answers must agree on every shared item.
    Reasoning columns (`reasoning`, else `text`) are carried along when either table has one.
    """
    import pandas as pd

    merged = new_df[["id", "subject", "gold", "pred", "correct"]].merge(
        base_df[["id", "gold", "pred", "correct"]], on="id", suffixes=("_new", "_base"), how="inner"
    )
    disagree = merged[merged["gold_new"] != merged["gold_base"]]
    if len(disagree):
        row = disagree.iloc[0]
        raise InputError(
            "<predictions>",
            f"item {row['id']!r} has gold {row['gold_base']} in the base table and {row['gold_new']} in the new one",
            field="gold",
        )
    merged = merged.rename(columns={"gold_new": "gold", "pred_base": "base_pred", "pred_new": "new_pred"})
    columns = ["id", "subject", "gold", "base_pred", "new_pred"]
    for side, frame in (("base", base_df), ("new", new_df)):
        name = reasoning_column(frame)
        if name is not None:
            merged = merged.merge(frame[["id", name]].rename(columns={name: f"{side}_reasoning"}), on="id", how="left")
            columns.append(f"{side}_reasoning")
    fixed_mask = ~merged["correct_base"] & merged["correct_new"]
    broken_mask = merged["correct_base"] & ~merged["correct_new"]
    fixed = merged.loc[fixed_mask, columns].reset_index(drop=True)
    broken = merged.loc[broken_mask, columns].reset_index(drop=True)

    rows = []
    for subject in [*sorted(merged["subject"].unique()), OVERALL]:
        mask = merged["subject"] == subject if subject != OVERALL else pd.Series(True, index=merged.index)
        n_fixed, n_broken = int((fixed_mask & mask).sum()), int((broken_mask & mask).sum())
        rows.append(
            {"subject": subject, "n": int(mask.sum()), "fixed": n_fixed, "broken": n_broken, "net": n_fixed - n_broken}
        )
    base_ids, new_ids = set(base_df["id"]), set(new_df["id"])
    return ItemChanges(
        fixed=fixed,
        broken=broken,
        by_subject=pd.DataFrame(rows, columns=["subject", "n", "fixed", "broken", "net"]),
        n_paired=len(merged),
        n_only_base=len(base_ids - new_ids),
        n_only_new=len(new_ids - base_ids),
    )


def position_bias(df, *, width: int | None = None):
    """Per choice number ("1".."K", then "none"): gold count and share, prediction count and share.

    Shares are over all items, so each column sums to 1 (gold has no "none"). `excess` =
    pred_share - gold_share: a model that favours a position shows a positive excess there.
    """
    import pandas as pd

    width = width or _width(df)
    n = len(df)
    rows = []
    for position in [*range(1, width + 1), None]:
        n_gold = int((df["gold"] == position).sum()) if position is not None else 0
        n_pred = (
            int(df["pred"].isna().sum()) if position is None else int((df["pred"] == position).fillna(False).sum())
        )
        gold_share = n_gold / n if n else float("nan")
        pred_share = n_pred / n if n else float("nan")
        rows.append(
            {
                "position": str(position) if position is not None else NONE_LABEL,
                "n_gold": n_gold,
                "gold_share": gold_share,
                "n_pred": n_pred,
                "pred_share": pred_share,
                "excess": pred_share - gold_share,
            }
        )
    return pd.DataFrame(rows, columns=["position", "n_gold", "gold_share", "n_pred", "pred_share", "excess"])


def position_bias_test(df) -> dict[str, float]:
    """Chi-square of homogeneity between the predicted and the gold position counts.

    A 2 x K table (predictions over parsed positions; gold answers), positions that neither
    side uses dropped. Gold and predictions describe the same items, so the samples are not
    independent and the p-value is indicative, not exact: read it as "how far from the gold
    distribution", together with the `excess` column of `position_bias`.
    """
    import numpy as np
    from scipy.stats import chi2_contingency

    width = _width(df)
    pred_counts = [int((df["pred"] == k).fillna(False).sum()) for k in range(1, width + 1)]
    gold_counts = [int((df["gold"] == k).sum()) for k in range(1, width + 1)]
    table = np.array([pred_counts, gold_counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table[0].sum() == 0:
        return {"chi2": float("nan"), "p": float("nan"), "dof": 0.0}
    result = chi2_contingency(table, correction=False)
    return {"chi2": float(result.statistic), "p": float(result.pvalue), "dof": float(result.dof)}


@dataclass
class ModelErrors:
    label: str
    predictions: Any
    matrices: dict[str, Any]
    position: Any
    position_test: dict[str, float]

    @property
    def accuracy(self) -> float:
        return float(self.predictions["correct"].mean()) if len(self.predictions) else float("nan")

    @property
    def parse_failures(self) -> int:
        return int(self.predictions["pred"].isna().sum())


@dataclass
class ErrorAnalysis:
    models: list[ModelErrors]
    changes: ItemChanges | None = None


def analyse_model(df, label: str, *, source: str = "<predictions>") -> ModelErrors:
    clean = normalise_predictions(df, source=source)
    return ModelErrors(label, clean, confusion_matrices(clean), position_bias(clean), position_bias_test(clean))


def analyse(base_df, new_df=None, *, base_label: str = "base", new_label: str = "new") -> ErrorAnalysis:
    """Everything `log_error_analysis` logs, computed without touching MLflow."""
    base = analyse_model(base_df, base_label, source=f"<{base_label} predictions>")
    if new_df is None:
        return ErrorAnalysis([base])
    new = analyse_model(new_df, new_label, source=f"<{new_label} predictions>")
    return ErrorAnalysis([base, new], item_changes(base.predictions, new.predictions))


def error_metrics(analysis: ErrorAnalysis) -> dict[str, float]:
    """`errors/<model>/...` per model; `errors/n_fixed`, `errors/n_broken`, `errors/n_paired` for a pair."""
    from distill.metrics import metric_safe

    metrics: dict[str, float] = {}
    for model in analysis.models:
        key = metric_safe(model.label)
        parsed = model.position[model.position["position"] != NONE_LABEL]
        metrics[f"errors/{key}/parse_failures"] = float(model.parse_failures)
        metrics[f"errors/{key}/position_chi2"] = model.position_test["chi2"]
        metrics[f"errors/{key}/position_chi2_p"] = model.position_test["p"]
        metrics[f"errors/{key}/max_position_excess"] = float(parsed["excess"].max()) if len(parsed) else float("nan")
    if analysis.changes is not None:
        metrics["errors/n_fixed"] = float(len(analysis.changes.fixed))
        metrics["errors/n_broken"] = float(len(analysis.changes.broken))
        metrics["errors/n_paired"] = float(analysis.changes.n_paired)
    return metrics


# --------------------------------------------------------------------------------------------
# Charts


def confusion_figure(models: list[ModelErrors]):
    """Heatmaps of every (model, subject) confusion matrix; a dropdown picks which one shows."""
    import plotly.graph_objects as go

    fig = go.Figure()
    entries = [(model.label, subject, matrix) for model in models for subject, matrix in model.matrices.items()]
    for index, (label, subject, matrix) in enumerate(entries):
        fig.add_heatmap(
            z=matrix.to_numpy(),
            x=[f"pred {c}" for c in matrix.columns],
            y=[f"gold {r}" for r in matrix.index],
            text=matrix.to_numpy(),
            texttemplate="%{text}",
            colorscale="Blues",
            visible=index == 0,
            name=f"{label} · {subject}",
            hovertemplate="%{y} → %{x}: %{z}<extra></extra>",
        )
    buttons = []
    for index, (label, subject, matrix) in enumerate(entries):
        visible = [i == index for i in range(len(entries))]
        buttons.append(
            dict(
                label=f"{label} · {subject} (n={int(matrix.to_numpy().sum())})",
                method="update",
                args=[{"visible": visible}, {"title.text": f"Confusion: {label} · {subject}"}],
            )
        )
    first = entries[0]
    fig.update_layout(
        title=f"Confusion: {first[0]} · {first[1]}",
        template="plotly_white",
        height=550,
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top")],
        yaxis=dict(autorange="reversed"),
    )
    return fig


def position_figure(models: list[ModelErrors]):
    """Bars per choice number: the gold share, then each model's prediction share."""
    import plotly.graph_objects as go

    fig = go.Figure()
    gold = models[0].position
    gold_rows = gold[gold["position"] != NONE_LABEL]
    fig.add_bar(
        x=gold_rows["position"],
        y=gold_rows["gold_share"],
        name="gold",
        marker_color="#9aa5b1",
        text=[f"{v:.2f}" for v in gold_rows["gold_share"]],
        textposition="outside",
    )
    for model in models:
        rows = model.position
        p = model.position_test["p"]
        fig.add_bar(
            x=rows["position"],
            y=rows["pred_share"],
            name=f"{model.label} predictions (χ² p={p:.3g})",
            text=[f"{v:.2f}" for v in rows["pred_share"]],
            textposition="outside",
        )
    fig.update_layout(
        title="Answer-position bias: share of predictions per choice number vs gold",
        barmode="group",
        template="plotly_white",
        xaxis_title="choice number",
        yaxis_title="share of items",
        yaxis_range=[0, 1.05],
        legend_title_text="",
    )
    return fig


def changes_figure(changes: ItemChanges, *, base_label: str, new_label: str):
    import plotly.graph_objects as go

    rows = changes.by_subject
    labels = [f"{s} (n={n})" for s, n in zip(rows["subject"], rows["n"])]
    fig = go.Figure()
    for column, meaning, colour in (
        ("fixed", f"{base_label} wrong, {new_label} right", "#2ca02c"),
        ("broken", f"{base_label} right, {new_label} wrong", "#d62728"),
    ):
        fig.add_bar(
            x=labels,
            y=rows[column],
            name=f"{column} ({meaning})",
            marker_color=colour,
            text=rows[column],
            textposition="outside",
        )
    fig.update_layout(
        title=f"Items fixed and broken by {new_label} relative to {base_label}",
        barmode="group",
        template="plotly_white",
        yaxis_title="items",
        legend_title_text="",
    )
    return fig


# --------------------------------------------------------------------------------------------
# MLflow edge


def log_error_analysis(
    base_df,
    new_df=None,
    *,
    base_label: str = "base",
    new_label: str = "new",
    artifact_dir: str = ARTIFACT_DIR,
    local_dir: str | Path | None = None,
) -> ErrorAnalysis:
    """Compute the error analysis and log it to the ACTIVE MLflow run.

    Logs, under `artifact_dir`: confusion.json (long: model, subject, gold, pred, count),
    position_bias.json, and with `new_df` fixed.json, broken.json, changes_by_subject.json
    (all MLflow tables), fixed.parquet and broken.parquet (full reasoning texts). The charts
    (confusion heatmaps with a subject dropdown, position bars, fixed/broken bars) go on the run's
    chart page, sections `<artifact_dir>/confusion`, `/position_bias`, `/changes`: one copy of
    plotly.js for the run, whatever else it charts. Metrics as in `error_metrics`.
    """
    import tempfile

    import pandas as pd

    from distill import tracking
    from distill.charts import log_figure
    from distill.io import atomic_path

    if tracking.active_run_id() is None:
        raise ConfigError("log_error_analysis needs an active MLflow run (it would otherwise start a new one)")
    analysis = analyse(base_df, new_df, base_label=base_label, new_label=new_label)
    tracking.log_metrics({k: v for k, v in error_metrics(analysis).items() if not math.isnan(v)})
    tracking.set_tags(
        {
            "errors.position_chi2.method": "chi-square of homogeneity, predicted vs gold position counts (paired samples: indicative)",
            "errors.models": ", ".join(m.label for m in analysis.models),
        }
    )
    confusion = pd.concat([confusion_long(m.matrices, m.label) for m in analysis.models], ignore_index=True)
    position = pd.concat([m.position.assign(model=m.label) for m in analysis.models], ignore_index=True)
    tracking.log_table(confusion, artifact_file=f"{artifact_dir}/confusion.json")
    tracking.log_table(position, artifact_file=f"{artifact_dir}/position_bias.json")

    title = " vs ".join(m.label for m in analysis.models)
    figures = [
        (confusion_figure(analysis.models), "confusion", f"errors: confusion per subject, {title}"),
        (position_figure(analysis.models), "position_bias", f"errors: answer-position bias, {title}"),
    ]
    folder = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp(prefix="distill-errors-"))
    files = []
    if analysis.changes is not None:
        changes = analysis.changes
        tracking.log_table(changes.fixed, artifact_file=f"{artifact_dir}/fixed.json")
        tracking.log_table(changes.broken, artifact_file=f"{artifact_dir}/broken.json")
        tracking.log_table(changes.by_subject, artifact_file=f"{artifact_dir}/changes_by_subject.json")
        figures.append(
            (
                changes_figure(changes, base_label=base_label, new_label=new_label),
                "changes",
                f"errors: items fixed and broken, {title}",
            )
        )
        for name, frame in (("fixed.parquet", changes.fixed), ("broken.parquet", changes.broken)):
            with atomic_path(folder / name) as tmp:
                frame.to_parquet(tmp, index=False)
            files.append(folder / name)
    for path in files:
        tracking.log_artifact(path, artifact_dir)
    for figure, name, section_title in figures:
        log_figure(figure, f"{artifact_dir}/{name}", title=f"{section_title} ({artifact_dir}/)")
    return analysis


def summary_text(analysis: ErrorAnalysis, *, top: int = 5) -> str:
    """One screen: accuracy, parse failures, position shares, fixed/broken, biggest confusions."""
    lines = ["error analysis", ""]
    for model in analysis.models:
        lines.append(
            f"  {model.label}: {len(model.predictions)} items, accuracy {model.accuracy:.3f}, "
            f"{model.parse_failures} unparsed; position χ² p={model.position_test['p']:.3g}"
        )
        shares = "  ".join(f"{r.position}:{r.pred_share:.2f}/{r.gold_share:.2f}" for r in model.position.itertuples())
        lines.append(f"    pred/gold share per choice  {shares}")
        matrix = model.matrices[OVERALL]
        off = [
            (int(matrix.loc[g, p]), g, p)
            for g in matrix.index
            for p in matrix.columns
            if g != p and matrix.loc[g, p] > 0
        ]
        off.sort(reverse=True)
        if off:
            lines.append("    most frequent errors  " + "  ".join(f"gold {g}→{p}: {n}" for n, g, p in off[:top]))
    if analysis.changes is not None:
        c = analysis.changes
        lines.append("")
        lines.append(
            f"  paired items {c.n_paired}: fixed {len(c.fixed)}, broken {len(c.broken)}, net {len(c.fixed) - len(c.broken):+d}"
            + (
                f"  (unpaired: {c.n_only_base} base only, {c.n_only_new} new only)"
                if c.n_only_base or c.n_only_new
                else ""
            )
        )
        for row in c.by_subject.itertuples():
            lines.append(
                f"    {str(row.subject)[:24]:24s} n={row.n:4d}  fixed {row.fixed:3d}  broken {row.broken:3d}  net {row.net:+d}"
            )
    return "\n".join(lines)
