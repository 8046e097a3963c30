"""The `evaluate` stage: score a model on multiple-choice items, subject by subject, in MLflow.

Pure parts (other stages call them directly):
- `evaluate_items(model, tokenizer, items, ...) -> EvalResult`: predictions table + metrics;
- `compare_predictions(base_df, new_df, ...) -> dict`: paired comparison on the same items.
Side effects, each on the active MLflow run:
- `log_eval_result(result, ...)`: metrics, tags, predictions table (log_table and parquet),
  per-subject HTML chart, summary;
- `log_comparison(comparison, base_df, new_df, ...)`: `compare/*` metrics, tags, chart, item diff.
And `run(cfg)`, the entry point's whole job: load items and model, score, log, compare with a
baseline run when asked, print a one-screen summary.
"""

from __future__ import annotations

import json
import tempfile
import time
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from distill.data.schema import MCQItem
from distill.errors import ConfigError, InputError

PREDICTIONS_ARTIFACT_DIR = "evaluation"
PREDICTIONS_FILE = "predictions.parquet"
COMPARISON_ARTIFACT_DIR = "comparison"
SCORING_MODES = ("logits", "generate")


@dataclass
class EvaluateConfig:
    """Score a model on a multiple-choice set, subject by subject, and log it all to MLflow."""

    model: str = field(default="tiny-qwen3", metadata={"help": "Model to score: a Hugging Face id, a local path, or tiny-qwen3 (built locally, no download)."})
    adapter: str | None = field(default=None, metadata={"help": "Optional LoRA adapter on top of the model: a directory or an MLflow model URI (runs:/..., models:/...)."})
    dataset: str | None = field(default=None, metadata={"help": "Items to score (a file). Empty: the bundled eval sample (distill/resources/eval_sample.jsonl)."})
    format: str = field(default="auto", metadata={"help": "Dataset format: auto, competition, kice, kmmlu or jsonl."})
    subject_map: str | None = field(default=None, metadata={"help": "Optional file mapping item ids or categories to subjects."})
    allow_duplicate_choices: bool = field(default=False, metadata={"help": "Keep items with two identical choices (the real competition files have one each) instead of stopping with an error."})
    batch_size: int = field(default=8, metadata={"help": "Items per forward pass (all choices of an item go in the same pass)."})
    scoring: str = field(default="logits", metadata={"help": "logits: log-likelihood of each choice label after '정답: '; generate: the model writes its reasoning, the answer is read from it (unreadable = wrong, counted in eval/parse_failure_rate)."})
    thinking: str = field(default="off", metadata={"help": "Qwen3 thinking in the prompt: on or off."})
    baseline_run: str | None = field(default=None, metadata={"help": "Run id of an earlier evaluate run on the same items: log a paired comparison (compare/*)."})
    bootstrap_samples: int = field(default=2000, metadata={"help": "Bootstrap resamples for the CI of the accuracy difference."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default distill-eval)."})
    output_dir: str = field(default="outputs/evaluate", metadata={"help": "Local folder for the predictions, chart and summary (also logged as artifacts)."})
    max_items: int | None = field(default=None, metadata={"help": "Score only the first N items (a quick look); empty for all."})
    device: str = field(default="auto", metadata={"help": "cuda, cpu, mps, or auto (the best available)."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where supported, fp16 on GPUs without bf16, fp32 on CPU), bfloat16, float16 or float32."})
    max_new_tokens: int = field(default=512, metadata={"help": "scoring=generate: longest answer (reasoning included)."})
    cache_path: str | None = field(default=None, metadata={"help": "scoring=generate: response cache file; empty: a temporary one (never stale for a retrained adapter)."})
    backend: str = field(default="local", metadata={"help": "scoring=generate: local (transformers here) or openai (an OpenAI-compatible server such as vLLM at OPENAI_BASE_URL; model = the served name)."})
    concurrency: int = field(default=16, metadata={"help": "scoring=generate with backend=openai: requests in flight."})

    def __post_init__(self) -> None:
        from distill.data.prompts import parse_thinking

        for name in ("adapter", "dataset", "subject_map", "baseline_run", "experiment", "cache_path"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)
        if isinstance(self.max_items, str):
            self.max_items = int(self.max_items) if self.max_items.strip() else None
        if self.dataset is None:
            from distill.resources import resource_path

            self.dataset = str(resource_path("eval_sample.jsonl"))
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"scoring must be 'logits' or 'generate', got {self.scoring!r}")
        self.thinking = "on" if parse_thinking(self.thinking) else "off"
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.bootstrap_samples < 1:
            raise ConfigError(f"bootstrap_samples must be at least 1, got {self.bootstrap_samples}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"max_items must be at least 1 (or empty for all), got {self.max_items}")


@dataclass
class EvalResult:
    """What one model did on one set of items."""

    predictions: Any
    """pandas DataFrame: id, subject, gold, pred, correct, n_choices, score_1..score_K."""
    metrics: dict[str, float]
    """`eval/...` metrics (names as in DESIGN.md)."""
    tags: dict[str, str]
    """Which figure is micro and which macro; scoring mode; renamed subjects."""

    @property
    def subjects(self) -> list[str]:
        return sorted(set(self.predictions["subject"]))

    def subject_rows(self) -> list[dict[str, Any]]:
        from distill.metrics import subject_table

        return subject_table(self.metrics, self.subjects)


@dataclass
class EvaluateOutputs:
    run_id: str
    result: EvalResult
    comparison: dict[str, float] | None
    output_dir: Path
    wall_s: float


# --------------------------------------------------------------------------------------------
# Pure functions


def predictions_frame(items: Sequence[MCQItem], scores: Sequence[Sequence[float]], preds: Sequence[int]):
    """One row per item; score_k is NaN for labels beyond the item's own choice count."""
    import pandas as pd

    width = max((item.n_choices for item in items), default=0)
    rows = []
    for item, item_scores, pred in zip(items, scores, preds):
        row: dict[str, Any] = {
            "id": item.id,
            "subject": item.subject,
            "gold": int(item.answer),  # type: ignore[arg-type]
            "pred": int(pred),
            "correct": bool(int(pred) == int(item.answer)),  # type: ignore[arg-type]
            "n_choices": item.n_choices,
        }
        for k in range(1, width + 1):
            row[f"score_{k}"] = float(item_scores[k - 1]) if k <= len(item_scores) else float("nan")
        rows.append(row)
    columns = ["id", "subject", "gold", "pred", "correct", "n_choices"] + [f"score_{k}" for k in range(1, width + 1)]
    return pd.DataFrame(rows, columns=columns)


def result_from_predictions(predictions, *, scoring: str = "logits", parse_failures: int = 0) -> EvalResult:
    """Metrics and tags of a predictions table (also used to rebuild a baseline's figures)."""
    from distill.metrics import compute_metrics, metric_tags

    gold = [int(g) for g in predictions["gold"]]
    pred = [None if p is None or p != p else int(p) for p in predictions["pred"]]
    subjects = [str(s) for s in predictions["subject"]]
    metrics = compute_metrics(gold, pred, subjects, parse_failures=parse_failures)
    tags = metric_tags(scoring=scoring, subjects=subjects)
    return EvalResult(predictions=predictions, metrics=metrics, tags=tags)


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

    if not items:
        raise ConfigError("no items to evaluate")
    for item in items:
        if item.answer is None:
            raise InputError(item.source or "<items>", f"item {item.id!r} has no gold answer; evaluation needs one", field="answer")
    scores = score_choices(model, tokenizer, items, thinking=parse_thinking(thinking), batch_size=batch_size, progress=progress)
    preds = predict(scores)
    return result_from_predictions(predictions_frame(items, scores, preds), scoring="logits")


def check_same_items(base_ids: Sequence[str], new_ids: Sequence[str], *, base_name: str = "baseline", new_name: str = "this evaluation") -> None:
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
    merged = new_df[["id", "subject", "gold", "correct"]].astype({"id": str}).merge(
        base_df[["id", "gold", "correct"]].astype({"id": str}), on="id", suffixes=("_new", "_base")
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


def _renamed(mapping: dict[str, Any], prefix: str, separator: str) -> dict[str, Any]:
    if prefix == "eval":
        return dict(mapping)
    return {prefix + key[len("eval"):] if key.startswith("eval" + separator) else key: value for key, value in mapping.items()}


def summary_text(result: EvalResult, comparison: dict[str, float] | None = None, *, title: str = "", base_result: EvalResult | None = None) -> str:
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
        lines.append([subject, str(int(m[f"eval/n/{key}"])), f"{m[f'eval/accuracy/{key}']:.3f}", f"{m[f'eval/macro_f1/{key}']:.3f}"] + compare_cells(f"/{key}"))
    lines.append(["overall (micro, over items)", str(int(m["eval/n"])), f"{m['eval/accuracy']:.3f}", f"{m['eval/macro_f1']:.3f}"] + compare_cells(""))
    lines.append(["mean of subjects (macro)", str(len(keys)), f"{m['eval/accuracy_subject_macro']:.3f}", f"{m['eval/macro_f1_subject_macro']:.3f}"] + ([""] * 5 if comparison is not None else []))
    widths = [max(_display_width(row[i]) for row in [header] + lines) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [_pad(cell, widths[i], left=i == 0) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = ([title] if title else []) + [fmt(header), rule] + [fmt(r) for r in lines[:-2]] + [rule] + [fmt(r) for r in lines[-2:]]
    out.append(f"parse failure rate {m['eval/parse_failure_rate']:.3f}")
    return "\n".join(out)


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, *, left: bool) -> str:
    space = " " * (width - _display_width(text))
    return text + space if left else space + text


def _write_eval_files(result: EvalResult, folder: Path, *, prefix: str) -> dict[str, Path]:
    from distill.charts import figure_html, subject_bar_chart
    from distill.io import atomic_path, write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"predictions": folder / PREDICTIONS_FILE, "chart": folder / "subject_metrics.html", "summary": folder / "summary.txt", "metrics": folder / "metrics.json"}
    with atomic_path(paths["predictions"]) as tmp:
        result.predictions.to_parquet(tmp, index=False)
    m = result.metrics
    overall = {"n": m["eval/n"], "accuracy": m["eval/accuracy"], "macro_f1": m["eval/macro_f1"]}
    write_text_atomic(paths["chart"], figure_html(subject_bar_chart(result.subject_rows(), overall, title=f"{prefix}: accuracy and macro-F1 per subject")))
    write_text_atomic(paths["summary"], summary_text(result) + "\n")
    write_text_atomic(paths["metrics"], json.dumps(_renamed(result.metrics, prefix, "/"), ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    return paths


def log_eval_result(result: EvalResult, *, prefix: str = "eval", artifact_dir: str = PREDICTIONS_ARTIFACT_DIR, local_dir: str | Path | None = None) -> dict[str, Path]:
    """Log one evaluation to the active MLflow run; return the local files written.

    Metrics go in as `<prefix>/...` (default `eval/...`), tags as `<prefix>.<name>.average`;
    under `artifact_dir`: predictions.json (mlflow.log_table), predictions.parquet,
    subject_metrics.html, summary.txt, metrics.json. Files are written to `local_dir` (atomic) or
    to a temporary folder.
    """
    import mlflow

    mlflow.log_metrics(_renamed(result.metrics, prefix, "/"))
    mlflow.set_tags(_renamed(result.tags, prefix, "."))
    mlflow.log_table(result.predictions, artifact_file=f"{artifact_dir}/predictions.json")
    def write_and_log(folder: Path) -> dict[str, Path]:
        paths = _write_eval_files(result, folder, prefix=prefix)
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_dir)
        return paths

    if local_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            write_and_log(Path(tmp))
        return {}
    return write_and_log(Path(local_dir))


def load_run_predictions(run_id: str, artifact_path: str = f"{PREDICTIONS_ARTIFACT_DIR}/{PREDICTIONS_FILE}"):
    """The predictions table an earlier evaluate run logged (a clear error when there is none)."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise ConfigError(f"baseline_run {run_id!r} is not a run in the tracking store {mlflow.get_tracking_uri()}") from None
    with tempfile.TemporaryDirectory(prefix="distill-baseline-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        except (MlflowException, OSError):
            raise ConfigError(f"baseline_run {run_id!r} has no {artifact_path} artifact; is it an evaluate run?") from None
        return pd.read_parquet(local)


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
) -> dict[str, Path]:
    """Log `compare/*` metrics, tags, the side-by-side chart and the per-item diff to the active run."""
    import mlflow

    from distill.charts import comparison_bar_chart, figure_html
    from distill.io import atomic_path, write_text_atomic

    mlflow.log_metrics(comparison)
    tags = {
        "compare.delta_accuracy.definition": "accuracy(new) - accuracy(base), micro over the shared items",
        "compare.delta_ci.method": f"paired bootstrap over items, percentile 95% CI (n_boot={n_boot}, seed={seed})",
        "compare.mcnemar_p.method": "exact two-sided McNemar (binomial on fixed vs broken items)",
        "compare.base_label": base_label,
        "compare.new_label": new_label,
    }
    if baseline_run:
        tags["compare.baseline_run"] = baseline_run
    mlflow.set_tags(tags)

    base_result = result_from_predictions(_aligned(base_df, new_df))
    new_result = result_from_predictions(new_df)
    diff = new_df[["id", "subject", "gold", "pred", "correct"]].astype({"id": str}).merge(
        base_df[["id", "pred", "correct"]].astype({"id": str}), on="id", suffixes=("", "_base")
    )
    diff["change"] = [
        "fixed" if n and not b else "broken" if b and not n else "same"
        for b, n in zip(diff["correct_base"], diff["correct"])
    ]
    mlflow.log_table(diff, artifact_file=f"{artifact_dir}/item_changes.json")

    def overall(result: EvalResult) -> dict[str, float]:
        return {"n": result.metrics["eval/n"], "accuracy": result.metrics["eval/accuracy"], "macro_f1": result.metrics["eval/macro_f1"]}

    fig = comparison_bar_chart(
        base_result.subject_rows(), new_result.subject_rows(), base_label=base_label, new_label=new_label,
        base_overall=overall(base_result), new_overall=overall(new_result),
        title=f"{base_label} vs {new_label}: Δ accuracy {comparison['compare/delta_accuracy']:+.3f}, McNemar p={comparison['compare/mcnemar_p']:.3g}",
    )
    def write_and_log(folder: Path) -> dict[str, Path]:
        paths = {"chart": folder / "comparison.html", "item_changes": folder / "item_changes.parquet", "comparison": folder / "comparison.json"}
        write_text_atomic(paths["chart"], figure_html(fig))
        with atomic_path(paths["item_changes"]) as tmp:
            diff.to_parquet(tmp, index=False)
        write_text_atomic(paths["comparison"], json.dumps(comparison, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_dir)
        return paths

    if local_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            write_and_log(Path(tmp))
        return {}
    return write_and_log(Path(local_dir))


def _aligned(base_df, new_df):
    """The base predictions with the new frame's subjects (the comparison's subject axis)."""
    base = base_df.drop(columns=["subject"]).astype({"id": str})
    subjects = new_df[["id", "subject"]].astype({"id": str})
    return subjects.merge(base, on="id")


# --------------------------------------------------------------------------------------------
# The stage


def log_config_params(params: dict[str, Any]) -> None:
    """Kept for callers that import it from here; the implementation is `tracking.log_params`."""
    from distill.tracking import log_params

    log_params(params)


def dataset_digest(items: Sequence[MCQItem]) -> str:
    """`items_digest` cut to 16 hex digits: MLflow caps a dataset digest at 36 characters."""
    from distill.data.loaders import items_digest

    return items_digest(items)[:16]


def _log_dataset(items: Sequence[MCQItem], cfg: EvaluateConfig, folder: Path) -> None:
    import mlflow
    import pandas as pd

    from distill.io import write_jsonl

    frame = pd.DataFrame(
        [
            {
                "id": item.id, "subject": item.subject, "paragraph": item.paragraph, "question": item.question,
                "question_plus": item.question_plus, "choices": json.dumps(list(item.choices), ensure_ascii=False),
                "answer": item.answer, "source": item.source,
            }
            for item in items
        ]
    )
    name = Path(str(cfg.dataset)).stem + (f"[:{cfg.max_items}]" if cfg.max_items else "")
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and says so on every call; and the
        # integer-schema hint concerns model signatures, not a logged dataset.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = mlflow.data.from_pandas(
            frame, source=str(Path(str(cfg.dataset)).resolve()), targets="answer", name=name, digest=dataset_digest(items)
        )
        mlflow.log_input(dataset, context="eval")
    path = write_jsonl(folder / "items.jsonl", (item.to_dict() for item in items))
    mlflow.log_artifact(str(path), PREDICTIONS_ARTIFACT_DIR)


def run(cfg: EvaluateConfig) -> EvaluateOutputs:
    """Load items and model, score, log everything to MLflow, compare with a baseline, print a summary."""
    import mlflow

    from distill import tracking
    from distill.data.loaders import load_items
    from distill.models import load_student

    started = time.perf_counter()
    tracking.configure(cfg.experiment, "evaluate")
    items = load_items(cfg.dataset, cfg.format, cfg.subject_map, require_answer=True, allow_duplicate_choices=cfg.allow_duplicate_choices)
    if cfg.max_items is not None:
        items = items[: cfg.max_items]
    if not items:
        raise InputError(cfg.dataset, "no items to evaluate")

    base_df = None
    if cfg.baseline_run:  # fail before loading a model if the baseline cannot be compared
        base_df = load_run_predictions(cfg.baseline_run)
        check_same_items(list(map(str, base_df["id"])), [item.id for item in items], base_name=f"baseline run {cfg.baseline_run}")

    output_dir = Path(cfg.output_dir)
    model_label = cfg.model + (f" + {cfg.adapter}" if cfg.adapter else "")
    with tracking.start_run(run_name=f"evaluate {Path(cfg.model).name}") as active:
        run_id = active.info.run_id
        log_config_params(tracking.safe_params(cfg))
        mlflow.set_tags({"distill.stage": "evaluate", "distill.model": cfg.model, "distill.adapter": cfg.adapter or ""})
        run_dir = output_dir / run_id
        _log_dataset(items, cfg, run_dir)

        scoring_started = time.perf_counter()
        device = None if cfg.device == "auto" else cfg.device
        if cfg.scoring == "generate":
            from distill.generation_eval import generate_predictions

            predictions = generate_predictions(
                cfg.model, items, adapter=cfg.adapter, thinking=cfg.thinking == "on",
                batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                cache_path=cfg.cache_path, device=device, dtype=cfg.dtype,
                backend=cfg.backend, concurrency=cfg.concurrency,
            )
            result = result_from_predictions(predictions, scoring="generate", parse_failures=int((~predictions["parsed"]).sum()))
        else:
            model, tokenizer = load_student(cfg.model, adapter=cfg.adapter, device=device, dtype=cfg.dtype)
            result = evaluate_items(model, tokenizer, items, thinking=cfg.thinking, batch_size=cfg.batch_size, progress=True)
        scoring_s = time.perf_counter() - scoring_started
        mlflow.log_metrics({"eval/scoring_s": scoring_s, "eval/items_per_s": len(items) / scoring_s if scoring_s > 0 else float("nan")})
        log_eval_result(result, local_dir=run_dir / PREDICTIONS_ARTIFACT_DIR)

        comparison = None
        base_result = None
        if base_df is not None:
            comparison = compare_predictions(base_df, result.predictions, n_boot=cfg.bootstrap_samples, seed=cfg.seed)
            base_result = result_from_predictions(_aligned(base_df, result.predictions))
            log_comparison(
                comparison, base_df, result.predictions, baseline_run=cfg.baseline_run,
                base_label=f"baseline {cfg.baseline_run[:8]}", new_label="this run",  # type: ignore[index]
                n_boot=cfg.bootstrap_samples, seed=cfg.seed, local_dir=run_dir / COMPARISON_ARTIFACT_DIR,
            )
        wall_s = time.perf_counter() - started
        mlflow.log_metric("eval/wall_s", wall_s)

    title = f"evaluate  {model_label}  on {Path(str(cfg.dataset)).name} ({len(items)} items, scoring={cfg.scoring}, thinking={cfg.thinking})"
    print()
    print(summary_text(result, comparison, title=title, base_result=base_result))
    if comparison is not None:
        print(f"compared with run {cfg.baseline_run}: Δ accuracy {comparison['compare/delta_accuracy']:+.3f}, McNemar p={comparison['compare/mcnemar_p']:.3g}")
    print(f"run {run_id}  ·  files in {run_dir}  ·  {wall_s:.1f} s ({scoring_s:.1f} s scoring)")
    return EvaluateOutputs(run_id=run_id, result=result, comparison=comparison, output_dir=run_dir, wall_s=wall_s)
