"""Before/after reports of a trained adapter against its base model, subject by subject.

Given the base and the trained model's predictions on the same items:
- `subject_rows(base_df, new_df)`: per subject and overall, n, correct counts, Δ, accuracy and
  macro-F1 before and after;
- `markdown_report(...)`: the table as the reference study printed it (subject, n, base correct,
  trained correct, Δ, accuracy before → after, F1 before → after) plus the overall paired test
  (exact McNemar on the discordant items, paired-bootstrap 95% CI of the accuracy difference);
- `comparison_figure(...)`: plotly, base vs trained per subject, accuracy and macro-F1 panels;
- `write_report(...)`: report.md, subjects.csv and (unless `chart=False`) subjects.html in a folder;
- `log_report(...)`: report.md and subjects.csv under the artifact folder `report/` of the active
  MLflow run, the figure on the run's chart page (`distill.charts.log_figure`, section
  `report/subjects`: one copy of plotly.js per run).

Subjects come from the trained side's table (`new_df`), so both columns count the same items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_ARTIFACT_DIR = "report"
OVERALL = "overall"
BASE_LABEL = "base"
NEW_LABEL = "trained"
TITLE = "Base vs trained, per subject"


def subject_rows(base_df, new_df) -> list[dict[str, Any]]:
    """One row per subject (sorted) and a last `overall` row: subject, n, base_correct,
    new_correct, delta (new - base correct), base/new accuracy and macro-F1 (micro over items)."""
    from distill.contracts import choice_label
    from distill.evaluation import check_same_items
    from distill.metrics import accuracy, macro_f1

    check_same_items(
        list(map(str, base_df["id"])),
        list(map(str, new_df["id"])),
        base_name="base predictions",
        new_name="trained predictions",
    )
    merged = (
        new_df[["id", "subject", "gold", "pred", "correct"]]
        .astype({"id": str})
        .merge(base_df[["id", "pred", "correct"]].astype({"id": str}), on="id", suffixes=("", "_base"))
    )

    def row(name: str, part) -> dict[str, Any]:
        gold = [int(g) for g in part["gold"]]
        pred_new = [choice_label(p) for p in part["pred"]]  # None, NaN and pd.NA: no answer
        pred_base = [choice_label(p) for p in part["pred_base"]]
        base_correct = int(part["correct_base"].astype(bool).sum())
        new_correct = int(part["correct"].astype(bool).sum())
        return {
            "subject": name,
            "n": len(part),
            "base_correct": base_correct,
            "new_correct": new_correct,
            "delta": new_correct - base_correct,
            "base_accuracy": accuracy(gold, pred_base),
            "new_accuracy": accuracy(gold, pred_new),
            "base_macro_f1": macro_f1(gold, pred_base),
            "new_macro_f1": macro_f1(gold, pred_new),
        }

    rows = [row(str(subject), part) for subject, part in sorted(merged.groupby("subject"), key=lambda kv: str(kv[0]))]
    rows.append(row(OVERALL, merged))
    return rows


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def _f1(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def paired_test_line(
    comparison: Mapping[str, float], overall: Mapping[str, Any], *, alpha: float | None = None
) -> str:
    """The overall paired test in one sentence."""
    n = int(overall["n"])
    text = (
        f"Overall: {overall['base_correct']} → {overall['new_correct']} of {n} correct "
        f"({_pct(overall['base_accuracy'])} → {_pct(overall['new_accuracy'])}), "
        f"Δ accuracy {100 * comparison['compare/delta_accuracy']:+.1f} points, "
        f"95% CI [{100 * comparison['compare/delta_ci_low']:+.1f}, {100 * comparison['compare/delta_ci_high']:+.1f}] (paired bootstrap); "
        f"exact McNemar p = {comparison['compare/mcnemar_p']:.3g} "
        f"({int(comparison['compare/n_fixed'])} fixed, {int(comparison['compare/n_broken'])} broken)"
    )
    if alpha is not None:
        significant = comparison["compare/mcnemar_p"] < alpha
        text += f"; {'significant' if significant else 'not significant'} at α = {alpha:g}"
    return text + "."


def markdown_report(
    rows: Sequence[Mapping[str, Any]],
    comparison: Mapping[str, float],
    *,
    base_label: str = "base",
    new_label: str = "trained",
    title: str | None = None,
    alpha: float | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The reference study's table (one line per subject, then overall) and the paired test."""
    header = (
        f"| subject | n | {base_label} correct | {new_label} correct | Δ | "
        f"accuracy {base_label} → {new_label} | macro-F1 {base_label} → {new_label} |"
    )
    lines = [f"# {title}", ""] if title else []
    lines += [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        name = f"**{row['subject']}**" if row["subject"] == OVERALL else str(row["subject"]).replace("|", "\\|")
        lines.append(
            f"| {name} | {row['n']} | {row['base_correct']} | {row['new_correct']} | {row['delta']:+d} | "
            f"{_pct(row['base_accuracy'])} → {_pct(row['new_accuracy'])} | {_f1(row['base_macro_f1'])} → {_f1(row['new_macro_f1'])} |"
        )
    overall = next(r for r in rows if r["subject"] == OVERALL)
    lines += ["", paired_test_line(comparison, overall, alpha=alpha), ""]
    lines.append(
        "Accuracy and macro-F1 are micro over the items of each row (macro-F1 averages the F1 of the "
        "answer labels); Δ counts items. The test pairs each item's two answers: only items one model "
        "got right and the other wrong carry information."
    )
    lines += [f"{note}" for note in notes]
    return "\n".join(lines) + "\n"


def comparison_figure(
    rows: Sequence[Mapping[str, Any]], *, base_label: str = "base", new_label: str = "trained", title: str = ""
):
    """Plotly: base vs trained per subject (and overall), accuracy and macro-F1 panels."""
    from distill.charts import comparison_bar_chart

    subjects = [r for r in rows if r["subject"] != OVERALL]
    overall = next(r for r in rows if r["subject"] == OVERALL)

    def side(row: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        return {
            "subject": row["subject"],
            "n": row["n"],
            "accuracy": row[f"{prefix}_accuracy"],
            "macro_f1": row[f"{prefix}_macro_f1"],
        }

    return comparison_bar_chart(
        [side(r, "base") for r in subjects],
        [side(r, "new") for r in subjects],
        base_label=base_label,
        new_label=new_label,
        base_overall={k: v for k, v in side(overall, "base").items() if k != "subject"},
        new_overall={k: v for k, v in side(overall, "new").items() if k != "subject"},
        title=title or f"{base_label} vs {new_label} per subject",
    )


def write_report(
    folder: str | Path,
    base_df,
    new_df,
    comparison: Mapping[str, float],
    *,
    base_label: str = BASE_LABEL,
    new_label: str = NEW_LABEL,
    title: str = TITLE,
    alpha: float | None = None,
    notes: Sequence[str] = (),
    chart: bool = True,
) -> dict[str, Path]:
    """report.md, subjects.csv and, with `chart`, subjects.html (plotly.js embedded) in `folder`
    (atomic); return their paths."""
    import pandas as pd

    from distill.charts import figure_html
    from distill.io import atomic_path, write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = subject_rows(base_df, new_df)
    paths = {"markdown": folder / "report.md", "table": folder / "subjects.csv"}
    write_text_atomic(
        paths["markdown"],
        markdown_report(
            rows, comparison, base_label=base_label, new_label=new_label, title=title, alpha=alpha, notes=notes
        ),
    )
    if chart:
        paths["chart"] = folder / "subjects.html"
        write_text_atomic(paths["chart"], figure_html(report_figure(rows, comparison, base_label, new_label, title)))
    with atomic_path(paths["table"]) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return paths


def report_figure(rows, comparison: Mapping[str, float], base_label: str, new_label: str, title: str):
    """`comparison_figure` titled with the overall Δ accuracy and McNemar p."""
    figure_title = f"{title}: Δ accuracy {100 * comparison['compare/delta_accuracy']:+.1f} points, McNemar p={comparison['compare/mcnemar_p']:.3g}"
    return comparison_figure(rows, base_label=base_label, new_label=new_label, title=figure_title)


def log_report(
    folder: str | Path,
    base_df,
    new_df,
    comparison: Mapping[str, float],
    *,
    artifact_dir: str = REPORT_ARTIFACT_DIR,
    base_label: str = BASE_LABEL,
    new_label: str = NEW_LABEL,
    title: str = TITLE,
    **kwargs: Any,
) -> dict[str, Path]:
    """`write_report` without its chart, the files logged under `artifact_dir` of the active MLflow
    run; the figure goes on the run's chart page (section `<artifact_dir>/subjects`)."""
    from distill import tracking
    from distill.charts import log_figure

    labels = {"base_label": base_label, "new_label": new_label, "title": title}
    paths = write_report(folder, base_df, new_df, comparison, chart=False, **labels, **kwargs)
    for path in paths.values():
        tracking.log_artifact(path, artifact_dir)
    figure = report_figure(subject_rows(base_df, new_df), comparison, base_label, new_label, title)
    log_figure(figure, f"{artifact_dir}/subjects", title=f"{title} ({artifact_dir}/)")
    return paths
