"""The evaluation library: score models on multiple-choice items, compare two, log both.

Pure parts (the `evaluate`, `train` and `register` stages and the reports call them):
- `evaluate_items(model, tokenizer, items, ...) -> EvalResult`: predictions table + metrics;
- `result_from_predictions(df)`: the metrics of a predictions table (rows as in
  `distill.contracts`, "Prediction rows");
- `compare_predictions(base_df, new_df, ...) -> dict`: paired comparison on the same items
  (`check_same_items` says what differs when they are not);
- `summary_text(result, comparison)`: the one-screen per-subject table.
Side effects, each on the active MLflow run through `distill.tracking`:
- `log_eval_result(result, ...)`: the headline metrics (`headline_metrics`: overall figures
  only), tags, predictions table (log_table and parquet), per-subject chart (on the run's chart
  page, `distill.charts.log_figure`), summary;
- `log_comparison(comparison, base_df, new_df, ...)`: headline `compare/*` metrics, tags, chart,
  item diff;
- `log_subject_table(result, ...)`: per-subject results as ONE MLflow table (`subjects.json`:
  subject × n, accuracy, macro-F1 and, with a comparison, the base's figures, Δ, CI, p), instead
  of a metric per subject and figure (a 45-subject set would otherwise log hundreds);
- `log_items_dataset(items, ...)`: the scored items as a dataset input (context `eval`);
- `load_run_predictions(run_id)`: the predictions an earlier run logged, read back through the
  contract (`normalise_predictions`).
The base model's evaluation, cached across runs, is `distill.eval_cache`.
"""

from __future__ import annotations

import json
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.contracts import MCQItem, choice_label, normalise_predictions, predictions_frame
from distill.errors import ConfigError, InputError

PREDICTIONS_ARTIFACT_DIR = "evaluation"
PREDICTIONS_FILE = "predictions.parquet"
COMPARISON_ARTIFACT_DIR = "comparison"
SUBJECTS_TABLE = "subjects.json"
"""The run's per-subject table (an MLflow table artifact at the root of its artifacts)."""
COMPARE_HEADLINE = ("delta_accuracy", "mcnemar_p", "delta_ci_low", "delta_ci_high", "n_fixed", "n_broken")
"""The `compare/*` figures logged as metrics (`compare/n` is `eval/n`; per subject: the table)."""


@dataclass
class EvalResult:
    """What one model did on one set of items."""

    predictions: Any
    """pandas DataFrame: id, subject, gold, pred, correct, n_choices, score_1..score_K."""
    metrics: dict[str, float]
    """`eval/...` metrics (names as in docs/design.md, "MLflow conventions")."""
    tags: dict[str, str]
    """Which figure is micro and which macro; scoring mode; renamed subjects."""

    @property
    def subjects(self) -> list[str]:
        return sorted(set(self.predictions["subject"]))

    @property
    def headline(self) -> dict[str, float]:
        """The overall `eval/*` figures, the ones logged as metrics (`headline_metrics`)."""
        return headline_metrics(self.metrics, scoring=self.tags.get("eval.scoring", "logits"))

    def subject_rows(self) -> list[dict[str, Any]]:
        from distill.metrics import subject_table

        return subject_table(self.metrics, self.subjects)


# --------------------------------------------------------------------------------------------
# Pure functions


def result_from_predictions(predictions, *, scoring: str = "logits", parse_failures: int = 0) -> EvalResult:
    """Metrics and tags of a predictions table (also used to rebuild a baseline's figures)."""
    from distill.metrics import compute_metrics, metric_tags

    gold = [int(g) for g in predictions["gold"]]
    pred = [choice_label(p) for p in predictions["pred"]]  # None, NaN and pd.NA: no answer
    subjects = [str(s) for s in predictions["subject"]]
    metrics = compute_metrics(gold, pred, subjects, parse_failures=parse_failures)
    tags = metric_tags(scoring=scoring, subjects=subjects)
    return EvalResult(predictions=predictions, metrics=metrics, tags=tags)


def headline_metrics(metrics: dict[str, float], *, scoring: str = "logits") -> dict[str, float]:
    """The figures of a metrics dict that are logged as MLflow metrics: overall ones only (a
    per-subject name has a third segment: those go to the subjects table), `compare/*` as in
    COMPARE_HEADLINE, and the parse-failure rate only where answers are parsed (generate)."""
    out = {}
    for key, value in metrics.items():
        prefix, _, name = key.partition("/")
        if "/" in name:
            continue
        if prefix == "compare" and name not in COMPARE_HEADLINE:
            continue
        if name == "parse_failure_rate" and scoring != "generate":
            continue
        out[key] = value
    return out


def subject_frame(result: EvalResult, comparison: dict[str, float] | None = None, base: EvalResult | None = None):
    """Per-subject results as one frame: subject, n, accuracy, macro_f1 and, with a comparison,
    base_accuracy, base_macro_f1, delta_accuracy, delta_ci_low, delta_ci_high, mcnemar_p,
    n_fixed, n_broken (new minus base, as in `compare_predictions`)."""
    import pandas as pd

    from distill.metrics import subject_keys

    keys = subject_keys(result.subjects)
    base_keys = subject_keys(base.subjects) if base is not None else {}
    rows = []
    for row in result.subject_rows():
        key = keys[row["subject"]]
        if base is not None and row["subject"] in base_keys:
            base_key = base_keys[row["subject"]]
            row["base_accuracy"] = base.metrics.get(f"eval/accuracy/{base_key}", float("nan"))
            row["base_macro_f1"] = base.metrics.get(f"eval/macro_f1/{base_key}", float("nan"))
        if comparison:
            for name in COMPARE_HEADLINE:
                row[name] = comparison.get(f"compare/{name}/{key}", float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def require_gold(items: Sequence[MCQItem]) -> None:
    """Evaluation needs items, each with its gold answer: the first one without is an InputError."""
    if not items:
        raise ConfigError("no items to evaluate")
    for item in items:
        if item.answer is None:
            raise InputError(
                item.source or "<items>", f"item {item.id!r} has no gold answer; evaluation needs one", field="answer"
            )


def evaluate_items(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCQItem],
    *,
    thinking: bool | str = False,
    batch_size: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Score every item by choice log-likelihood, predict the argmax, compute the metrics."""
    from distill.data.prompts import parse_thinking
    from distill.scoring import predict, score_choices

    require_gold(items)
    scores = score_choices(
        model, tokenizer, items, thinking=parse_thinking(thinking), batch_size=batch_size, progress=progress
    )
    preds = predict(scores)
    return result_from_predictions(predictions_frame(items, scores, preds), scoring="logits")


def check_same_items(
    base_ids: Sequence[str], new_ids: Sequence[str], *, base_name: str = "baseline", new_name: str = "this evaluation"
) -> None:
    """A paired comparison needs exactly the same items on both sides; say what differs."""
    for name, ids in ((base_name, base_ids), (new_name, new_ids)):
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{name} has duplicate item ids; a paired comparison needs unique ids")
    only_base = sorted(set(base_ids) - set(new_ids))
    only_new = sorted(set(new_ids) - set(base_ids))
    if only_base or only_new:
        parts = []
        if only_base:
            parts.append(f"{len(only_base)} only in {base_name} (e.g. {', '.join(only_base[:3])})")
        if only_new:
            parts.append(f"{len(only_new)} only in {new_name} (e.g. {', '.join(only_new[:3])})")
        raise ConfigError(
            f"the two evaluations do not cover the same items ({len(base_ids)} vs {len(new_ids)} ids): "
            + "; ".join(parts)
            + ". Evaluate both on the same dataset, format and max_items."
        )


def compare_predictions(base_df, new_df, *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Paired comparison of two predictions tables on the same items (new minus base).

    Overall and per subject (subjects as in `new_df`): compare/delta_accuracy, compare/mcnemar_p,
    compare/delta_ci_low, compare/delta_ci_high, compare/n_fixed, compare/n_broken, compare/n.
    """
    from distill.metrics import subject_keys
    from distill.stats import paired_comparison

    check_same_items(list(map(str, base_df["id"])), list(map(str, new_df["id"])))
    merged = (
        new_df[["id", "subject", "gold", "correct"]]
        .astype({"id": str})
        .merge(base_df[["id", "gold", "correct"]].astype({"id": str}), on="id", suffixes=("_new", "_base"))
    )
    differing = merged[merged["gold_new"].astype(int) != merged["gold_base"].astype(int)]
    if len(differing):
        raise ConfigError(
            f"{len(differing)} items have a different gold answer in the two evaluations "
            f"(e.g. {differing['id'].iloc[0]}); they were not run on the same data"
        )
    base = merged["correct_base"].astype(bool).tolist()
    new = merged["correct_new"].astype(bool).tolist()
    comparison: dict[str, float] = {}
    for key, value in paired_comparison(base, new, n_boot=n_boot, seed=seed).items():
        comparison[f"compare/{key}"] = value
    subjects = merged["subject"].astype(str).tolist()
    for subject, key in subject_keys(subjects).items():
        mask = [s == subject for s in subjects]
        sub_base = [b for b, m in zip(base, mask) if m]
        sub_new = [n for n, m in zip(new, mask) if m]
        for name, value in paired_comparison(sub_base, sub_new, n_boot=n_boot, seed=seed).items():
            comparison[f"compare/{name}/{key}"] = value
    return comparison


# --------------------------------------------------------------------------------------------
# Side effects: MLflow and files


@dataclass(frozen=True)
class NamedSet:
    """One evaluation set of a list (`parse_sets`): a name for its metrics, a file, a format."""

    name: str
    path: str
    format: str


def parse_sets(
    text: str, *, default_format: str = "auto", field: str = "datasets", reserved: Sequence[str] = ()
) -> list[NamedSet]:
    """`path[@format],path[@format],...` as every list of evaluation sets is written: evaluate's
    `datasets`, register's and pipeline's `guard_sets`, eda's `eval_sets`.

    Each entry is a file (or `bundled`, the bundled eval sample) and, after `@`, its format
    (one of `distill.data.loaders.FORMATS` or auto; `default_format` without one). A set's name
    is its file's stem (letters, digits, `_`, `-` and `.`; others become `_`), with `-2`, `-3`
    ... appended when two files share a stem (or a stem is in `reserved`, names the caller uses
    for other sets), so every metric name says which set it is from.
    """
    import re

    from distill.data.loaders import FORMATS, is_known_format
    from distill.resources import resource_path

    entries = [entry.strip() for entry in str(text).split(",")]
    if not any(entries) or not all(entries):
        raise ConfigError(f"{field}: expected path[@format],path[@format],... got {text!r}")
    sets: list[NamedSet] = []
    for entry in entries:
        path, _, fmt = entry.rpartition("@") if "@" in entry else (entry, "", default_format)
        fmt = fmt.strip() or default_format
        fmt = fmt if fmt.lower().endswith((".yaml", ".yml")) else fmt.lower()
        if not is_known_format(fmt):
            raise ConfigError(
                f"{field}: format {fmt!r} of {entry!r} is not one of auto, {', '.join(FORMATS)}, "
                "another shipped format or a format spec file (.yaml)"
            )
        path = path.strip()
        if path.lower() == "bundled":
            path = str(resource_path("eval_sample.jsonl"))
        stem = re.sub(r"[^\w.-]", "_", Path(path).stem) or "set"
        name, n = stem, 1
        while name in reserved or any(s.name == name for s in sets):
            n += 1
            name = f"{stem}-{n}"
        sets.append(NamedSet(name=name, path=path, format=fmt))
    return sets


def dataset_digest(items: Sequence[MCQItem]) -> str:
    """The items' dataset digest: `tracking.rows_digest` of `MCQItem.to_dict()` rows, the same
    in every run that logs these items (train, evaluate, register, and mine for its seeds)."""
    from distill import tracking

    return tracking.rows_digest(item.to_dict() for item in items)


def items_frame(items: Sequence[MCQItem]):
    """The items as a pandas frame (choices as JSON text), as logged for a dataset input."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "id": item.id,
                "subject": item.subject,
                "paragraph": item.paragraph,
                "question": item.question,
                "question_plus": item.question_plus,
                "choices": json.dumps(list(item.choices), ensure_ascii=False),
                "answer": item.answer,
                "source": item.source,
            }
            for item in items
        ]
    )


def log_items_dataset(items: Sequence[MCQItem], *, source: str | Path, name: str, context: str = "eval"):
    """MCQ items as a dataset input of the active run (digest: `dataset_digest`); the MLflow
    dataset, to link metrics to it. `context`: eval for a test split, seeds for mine's items."""
    from distill import tracking

    return tracking.log_dataset(
        items_frame(items),
        name=name,
        source=str(source),
        context=context,
        digest=dataset_digest(items),
        targets="answer",
    )


def _renamed(mapping: dict[str, Any], prefix: str, separator: str) -> dict[str, Any]:
    if prefix == "eval":
        return dict(mapping)
    return {
        prefix + key[len("eval") :] if key.startswith("eval" + separator) else key: value
        for key, value in mapping.items()
    }


def summary_text(
    result: EvalResult,
    comparison: dict[str, float] | None = None,
    *,
    title: str = "",
    base_result: EvalResult | None = None,
) -> str:
    """A one-screen table: per subject n, accuracy, macro-F1 (and the comparison when given)."""
    from distill.metrics import subject_keys

    m = result.metrics
    keys = subject_keys(result.subjects)
    header = ["subject", "n", "accuracy", "macro-F1"]
    if comparison is not None:
        header += ["base acc", "Δ acc", "95% CI", "McNemar p", "fixed/broken"]
    lines: list[list[str]] = []

    def compare_cells(suffix: str) -> list[str]:
        if comparison is None:
            return []
        base_acc = ""
        if base_result is not None:
            base_acc = f"{base_result.metrics.get('eval/accuracy' + suffix, float('nan')):.3f}"
        return [
            base_acc,
            f"{comparison['compare/delta_accuracy' + suffix]:+.3f}",
            f"[{comparison['compare/delta_ci_low' + suffix]:+.3f}, {comparison['compare/delta_ci_high' + suffix]:+.3f}]",
            f"{comparison['compare/mcnemar_p' + suffix]:.3g}",
            f"{int(comparison['compare/n_fixed' + suffix])}/{int(comparison['compare/n_broken' + suffix])}",
        ]

    for subject in result.subjects:
        key = keys[subject]
        lines.append(
            [
                subject,
                str(int(m[f"eval/n/{key}"])),
                f"{m[f'eval/accuracy/{key}']:.3f}",
                f"{m[f'eval/macro_f1/{key}']:.3f}",
            ]
            + compare_cells(f"/{key}")
        )
    lines.append(
        [
            "overall (micro, over items)",
            str(int(m["eval/n"])),
            f"{m['eval/accuracy']:.3f}",
            f"{m['eval/macro_f1']:.3f}",
        ]
        + compare_cells("")
    )
    lines.append(
        [
            "mean of subjects (macro)",
            str(len(keys)),
            f"{m['eval/accuracy_subject_macro']:.3f}",
            f"{m['eval/macro_f1_subject_macro']:.3f}",
        ]
        + ([""] * 5 if comparison is not None else [])
    )
    widths = [max(_display_width(row[i]) for row in [header] + lines) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [_pad(cell, widths[i], left=i == 0) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = (
        ([title] if title else [])
        + [fmt(header), rule]
        + [fmt(r) for r in lines[:-2]]
        + [rule]
        + [fmt(r) for r in lines[-2:]]
    )
    out.append(f"parse failure rate {m['eval/parse_failure_rate']:.3f}")
    return "\n".join(out)


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, *, left: bool) -> str:
    space = " " * (width - _display_width(text))
    return text + space if left else space + text


def _write_eval_files(result: EvalResult, folder: Path, *, prefix: str) -> dict[str, Path]:
    from distill.io import atomic_path, write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "predictions": folder / PREDICTIONS_FILE,
        "summary": folder / "summary.txt",
        "metrics": folder / "metrics.json",
    }
    with atomic_path(paths["predictions"]) as tmp:
        result.predictions.to_parquet(tmp, index=False)
    write_text_atomic(paths["summary"], summary_text(result) + "\n")
    write_text_atomic(
        paths["metrics"],
        json.dumps(_renamed(result.metrics, prefix, "/"), ensure_ascii=False, indent=2, sort_keys=True) + "\n",
    )
    return paths


def _write_in(local_dir: str | Path | None, write_and_log) -> dict[str, Path]:
    """Run `write_and_log(folder)` in `local_dir` (its files kept, returned) or in a temporary
    folder that goes away (nothing returned)."""
    if local_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            write_and_log(Path(tmp))
        return {}
    return write_and_log(Path(local_dir))


def log_eval_result(
    result: EvalResult,
    *,
    prefix: str = "eval",
    artifact_dir: str = PREDICTIONS_ARTIFACT_DIR,
    local_dir: str | Path | None = None,
    model_id: str | None = None,
    dataset: Any = None,
) -> dict[str, Path]:
    """Log one evaluation to the active MLflow run; return the local files written.

    The headline metrics (`EvalResult.headline`) go in as `<prefix>/...` (default `eval/...`),
    linked to the logged model `model_id` and the items' `dataset` when given; per-subject
    figures are the run's subjects table (`log_subject_table`), metrics.json and the chart.
    Tags as `<prefix>.<name>.average`;
    under `artifact_dir`: predictions.json (an MLflow table), predictions.parquet,
    summary.txt, metrics.json. Files are written to `local_dir` (atomic) or to a temporary folder.
    The per-subject chart goes on the run's chart page (`distill.charts.log_figure`, section
    `<artifact_dir>/subject_metrics`), which carries plotly.js once for all the run's charts.
    """
    from distill import tracking
    from distill.charts import log_figure, subject_bar_chart

    tracking.log_metrics(_renamed(result.headline, prefix, "/"), model_id=model_id, dataset=dataset)
    tracking.set_tags(_renamed(result.tags, prefix, "."))
    tracking.log_table(result.predictions, artifact_file=f"{artifact_dir}/predictions.json")

    def write_and_log(folder: Path) -> dict[str, Path]:
        paths = _write_eval_files(result, folder, prefix=prefix)
        for path in paths.values():
            tracking.log_artifact(path, artifact_dir)
        return paths

    m = result.metrics
    overall = {"n": m["eval/n"], "accuracy": m["eval/accuracy"], "macro_f1": m["eval/macro_f1"]}
    chart_title = f"{prefix}: accuracy and macro-F1 per subject"
    log_figure(
        subject_bar_chart(result.subject_rows(), overall, title=chart_title),
        f"{artifact_dir}/subject_metrics",
        title=f"{chart_title} ({artifact_dir}/)",
    )
    return _write_in(local_dir, write_and_log)


def log_subject_table(
    result: EvalResult,
    comparison: dict[str, float] | None = None,
    *,
    base: EvalResult | None = None,
    artifact_file: str = SUBJECTS_TABLE,
) -> None:
    """The per-subject results (`subject_frame`) as the run's one MLflow table."""
    from distill import tracking

    tracking.log_table(subject_frame(result, comparison, base), artifact_file=artifact_file)


def read_predictions(path: str | Path, *, source: str | None = None):
    """A predictions parquet file, read through the contract (`normalise_predictions`)."""
    import pandas as pd

    return normalise_predictions(pd.read_parquet(path), source=source or str(path))


def load_run_predictions(
    run_id: str,
    artifact_path: str = f"{PREDICTIONS_ARTIFACT_DIR}/{PREDICTIONS_FILE}",
    *,
    role: str = "baseline_run",
):
    """The predictions table an earlier evaluate run logged, normalised (a clear error when there
    is none). `role` names the run in the errors (the config field that gave it)."""
    from distill import tracking

    if tracking.find_run(run_id) is None:
        raise ConfigError(f"{role} {run_id!r} is not a run in the tracking store {tracking.tracking_uri()}")
    with tempfile.TemporaryDirectory(prefix="distill-baseline-") as tmp:
        local = tracking.find_artifact(run_id, artifact_path, dst_path=tmp)
        if local is None:
            raise ConfigError(f"{role} {run_id!r} has no {artifact_path} artifact; is it an evaluate run?")
        return read_predictions(local, source=f"runs:/{run_id}/{artifact_path}")


def log_comparison(
    comparison: dict[str, float],
    base_df,
    new_df,
    *,
    baseline_run: str | None = None,
    base_label: str = "base",
    new_label: str = "new",
    n_boot: int | None = None,
    seed: int | None = None,
    artifact_dir: str = COMPARISON_ARTIFACT_DIR,
    local_dir: str | Path | None = None,
    model_id: str | None = None,
    dataset: Any = None,
) -> dict[str, Path]:
    """Log the headline `compare/*` metrics (linked to `model_id` and `dataset` when given), tags,
    the side-by-side chart (on the run's chart page, section `<artifact_dir>/comparison`) and the
    per-item diff to the active run; every figure, per subject too, in comparison.json."""
    from distill import tracking
    from distill.charts import comparison_bar_chart, log_figure
    from distill.io import atomic_path, write_text_atomic

    tracking.log_metrics(headline_metrics(comparison), model_id=model_id, dataset=dataset)
    tags = {
        "compare.delta_accuracy.definition": "accuracy(new) - accuracy(base), micro over the shared items",
        "compare.delta_ci.method": f"paired bootstrap over items, percentile 95% CI (n_boot={n_boot}, seed={seed})",
        "compare.mcnemar_p.method": "exact two-sided McNemar (binomial on fixed vs broken items)",
        "compare.base_label": base_label,
        "compare.new_label": new_label,
    }
    if baseline_run:
        tags["compare.baseline_run"] = baseline_run
    tracking.set_tags(tags)
    base_result = result_from_predictions(aligned_base(base_df, new_df))
    new_result = result_from_predictions(new_df)

    diff = item_changes(base_df, new_df)
    tracking.log_table(diff, artifact_file=f"{artifact_dir}/item_changes.json")

    def overall(result: EvalResult) -> dict[str, float]:
        return {
            "n": result.metrics["eval/n"],
            "accuracy": result.metrics["eval/accuracy"],
            "macro_f1": result.metrics["eval/macro_f1"],
        }

    fig = comparison_bar_chart(
        base_result.subject_rows(),
        new_result.subject_rows(),
        base_label=base_label,
        new_label=new_label,
        base_overall=overall(base_result),
        new_overall=overall(new_result),
        title=f"{base_label} vs {new_label}: Δ accuracy {comparison['compare/delta_accuracy']:+.3f}, McNemar p={comparison['compare/mcnemar_p']:.3g}",
    )

    log_figure(fig, f"{artifact_dir}/comparison", title=f"{base_label} vs {new_label} per subject ({artifact_dir}/)")

    def write_and_log(folder: Path) -> dict[str, Path]:
        paths = {
            "item_changes": folder / "item_changes.parquet",
            "comparison": folder / "comparison.json",
        }
        with atomic_path(paths["item_changes"]) as tmp:
            diff.to_parquet(tmp, index=False)
        write_text_atomic(
            paths["comparison"], json.dumps(comparison, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        )
        for path in paths.values():
            tracking.log_artifact(path, artifact_dir)
        return paths

    return _write_in(local_dir, write_and_log)


def log_adapter_vs_base(
    adapter: EvalResult,
    base: EvalResult,
    comparison: dict[str, float],
    *,
    new_label: str,
    base_cached: bool,
    base_cache_file: str | Path,
    n_boot: int,
    seed: int,
    out_dir: str | Path,
    model_id: str | None = None,
    dataset: Any = None,
) -> None:
    """An adapter scored against its base on one test split, as train and register both log it:
    `eval/*` (files under `out_dir` too), the `compare/*` comparison, the subjects table (adapter,
    base, Δ, CI, p per subject), and the base cache tags that show whether the base was scored
    now or read back. The base's own figures are not repeated here: they are the base run's
    (`distill.eval_cache.base_run`), which the caller links to. Metrics are linked to the logged
    model `model_id` and the test split's `dataset` when given."""
    from distill import tracking

    out_dir = Path(out_dir)
    log_eval_result(
        adapter,
        prefix="eval",
        artifact_dir="evaluation",
        local_dir=out_dir / "evaluation",
        model_id=model_id,
        dataset=dataset,
    )
    tracking.set_tags({"base.cache": "hit" if base_cached else "miss", "base.cache_file": str(base_cache_file)})
    log_comparison(
        comparison,
        base.predictions,
        adapter.predictions,
        base_label="base",
        new_label=new_label,
        n_boot=n_boot,
        seed=seed,
        local_dir=out_dir / "comparison",
        model_id=model_id,
        dataset=dataset,
    )
    log_subject_table(
        adapter, comparison, base=result_from_predictions(aligned_base(base.predictions, adapter.predictions))
    )


def item_changes(base_df, new_df):
    """Per item: id, subject, gold, pred, correct (new), pred_base, correct_base and `change`
    (fixed, broken or same)."""
    diff = (
        new_df[["id", "subject", "gold", "pred", "correct"]]
        .astype({"id": str})
        .merge(base_df[["id", "pred", "correct"]].astype({"id": str}), on="id", suffixes=("", "_base"))
    )
    diff["change"] = [
        "fixed" if n and not b else "broken" if b and not n else "same"
        for b, n in zip(diff["correct_base"], diff["correct"])
    ]
    return diff


def aligned_base(base_df, new_df):
    """The base predictions with the new frame's subjects (the comparison's subject axis)."""
    base = base_df.drop(columns=["subject"]).astype({"id": str})
    subjects = new_df[["id", "subject"]].astype({"id": str})
    return subjects.merge(base, on="id")
