"""The `evaluate` stage: score a model on multiple-choice items, subject by subject, in MLflow.

`run(cfg)` in steps: load the items (and, with `baseline_run`, that run's predictions, checked to
cover the same items before any model loads); open the run and log the config and the items;
score by logits or by generation; log the evaluation; compare with the baseline when asked;
print a one-screen summary. The scoring, comparison and logging themselves are the evaluation
library, `distill.evaluation`, which train and register use too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.errors import ConfigError, InputError
from distill.evaluation import (
    COMPARISON_ARTIFACT_DIR,
    PREDICTIONS_ARTIFACT_DIR,
    EvalResult,
    aligned_base,
    check_same_items,
    compare_predictions,
    evaluate_items,
    load_run_predictions,
    log_comparison,
    log_eval_result,
    log_items_dataset,
    result_from_predictions,
    summary_text,
)

SCORING_MODES = ("logits", "generate")


@dataclass
class EvaluateConfig:
    """Score a model on a multiple-choice set, subject by subject, and log it all to MLflow."""

    model: str = field(
        default="tiny-qwen3",
        metadata={
            "help": "Model to score: a Hugging Face id, a local path, or tiny-qwen3 (built locally, no download)."
        },
    )
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "Optional LoRA adapter on top of the model: a directory or an MLflow model URI (runs:/..., models:/...)."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Items to score (a file). Empty: the bundled eval sample (distill/resources/eval_sample.jsonl)."
        },
    )
    format: str = field(default="auto", metadata={"help": "Dataset format: auto, competition, kice, kmmlu or jsonl."})
    subject_map: str | None = field(
        default=None, metadata={"help": "Optional file mapping item ids or categories to subjects."}
    )
    allow_duplicate_choices: bool = field(
        default=False,
        metadata={
            "help": "Keep items with two identical choices (the real competition files have one each) instead of stopping with an error."
        },
    )
    batch_size: int = field(
        default=8, metadata={"help": "Items per forward pass (all choices of an item go in the same pass)."}
    )
    scoring: str = field(
        default="logits",
        metadata={
            "help": "logits: log-likelihood of each choice label after '정답: '; generate: the model writes its reasoning, the answer is read from it (unreadable = wrong, counted in eval/parse_failure_rate)."
        },
    )
    thinking: str = field(default="off", metadata={"help": "Qwen3 thinking in the prompt: on or off."})
    baseline_run: str | None = field(
        default=None,
        metadata={"help": "Run id of an earlier evaluate run on the same items: log a paired comparison (compare/*)."},
    )
    bootstrap_samples: int = field(
        default=2000, metadata={"help": "Bootstrap resamples for the CI of the accuracy difference."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default distill-eval)."})
    output_dir: str = field(
        default="outputs/evaluate",
        metadata={"help": "Local folder for the predictions, chart and summary (also logged as artifacts)."},
    )
    max_items: int | None = field(
        default=None, metadata={"help": "Score only the first N items (a quick look); empty for all."}
    )
    device: str = field(default="auto", metadata={"help": "cuda, cpu, mps, or auto (the best available)."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 where supported, fp16 on GPUs without bf16, fp32 on CPU), bfloat16, float16 or float32."
        },
    )
    max_new_tokens: int = field(
        default=512, metadata={"help": "scoring=generate: longest answer (reasoning included)."}
    )
    cache_path: str | None = field(
        default=None,
        metadata={
            "help": "scoring=generate: response cache file; empty: a temporary one (never stale for a retrained adapter)."
        },
    )
    backend: str = field(
        default="local",
        metadata={
            "help": "scoring=generate: local (transformers here) or openai (an OpenAI-compatible server such as vLLM at OPENAI_BASE_URL; model = the served name)."
        },
    )
    concurrency: int = field(
        default=16, metadata={"help": "scoring=generate with backend=openai: requests in flight."}
    )

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
class EvaluateOutputs:
    run_id: str
    result: EvalResult
    comparison: dict[str, float] | None
    output_dir: Path
    wall_s: float


@dataclass
class Baseline:
    """An earlier evaluate run's predictions and, once scored, the comparison with them."""

    run_id: str
    predictions: Any
    comparison: dict[str, float] = field(default_factory=dict)
    result: EvalResult | None = None
    """The baseline's metrics on this run's subjects (for the summary)."""


def run(cfg: EvaluateConfig) -> EvaluateOutputs:
    """Load items and model, score, log everything to MLflow, compare with a baseline, print a summary."""
    started = time.perf_counter()
    tracking.configure(cfg.experiment, "evaluate")
    items = load_eval_items(cfg)
    baseline = load_baseline(cfg, items)  # fails before loading a model if it cannot be compared
    with tracking.start_run(run_name=f"evaluate {Path(cfg.model).name}") as active:
        run_id = active.info.run_id
        run_dir = Path(cfg.output_dir) / run_id
        log_run_inputs(cfg, items, run_dir)
        scoring_started = time.perf_counter()
        result = score(cfg, items)
        scoring_s = time.perf_counter() - scoring_started
        tracking.log_metrics(
            {
                "eval/scoring_s": scoring_s,
                "eval/items_per_s": len(items) / scoring_s if scoring_s > 0 else float("nan"),
            }
        )
        log_eval_result(result, local_dir=run_dir / PREDICTIONS_ARTIFACT_DIR)
        if baseline is not None:
            compare_with_baseline(cfg, baseline, result, run_dir)
        wall_s = time.perf_counter() - started
        tracking.log_metrics({"eval/wall_s": wall_s})
    print_summary(cfg, items, result, baseline, run_id=run_id, run_dir=run_dir, wall_s=wall_s, scoring_s=scoring_s)
    return EvaluateOutputs(
        run_id=run_id,
        result=result,
        comparison=baseline.comparison if baseline is not None else None,
        output_dir=run_dir,
        wall_s=wall_s,
    )


def load_eval_items(cfg: EvaluateConfig) -> list[Any]:
    """The items to score (the first `max_items` when set), each with a gold answer."""
    from distill.data.loaders import load_items

    items = load_items(
        cfg.dataset,
        cfg.format,
        cfg.subject_map,
        require_answer=True,
        allow_duplicate_choices=cfg.allow_duplicate_choices,
    )
    if cfg.max_items is not None:
        items = items[: cfg.max_items]
    if not items:
        raise InputError(cfg.dataset, "no items to evaluate")
    return items


def load_baseline(cfg: EvaluateConfig, items: list[Any]) -> Baseline | None:
    """`baseline_run`'s predictions, checked to cover exactly these items; None without one."""
    if not cfg.baseline_run:
        return None
    predictions = load_run_predictions(cfg.baseline_run)
    check_same_items(
        list(map(str, predictions["id"])), [item.id for item in items], base_name=f"baseline run {cfg.baseline_run}"
    )
    return Baseline(run_id=cfg.baseline_run, predictions=predictions)


def log_run_inputs(cfg: EvaluateConfig, items: list[Any], run_dir: Path) -> None:
    """Params, config.yaml, tags; the items as a dataset input and as items.jsonl."""
    from distill.io import write_jsonl

    tracking.log_params(tracking.safe_params(cfg))
    tracking.log_config(cfg)
    tracking.set_tags({"distill.stage": "evaluate", "distill.model": cfg.model, "distill.adapter": cfg.adapter or ""})
    name = Path(str(cfg.dataset)).stem + (f"[:{cfg.max_items}]" if cfg.max_items else "")
    log_items_dataset(items, source=str(cfg.dataset), name=name, context="eval")
    path = write_jsonl(run_dir / "items.jsonl", (item.to_dict() for item in items))
    tracking.log_artifact(path, PREDICTIONS_ARTIFACT_DIR)


def score(cfg: EvaluateConfig, items: list[Any]) -> EvalResult:
    """Score the model (with its adapter) by choice logits, or by generating and reading answers."""
    device = None if cfg.device == "auto" else cfg.device
    if cfg.scoring == "generate":
        from distill.generation_eval import generate_predictions

        predictions = generate_predictions(
            cfg.model,
            items,
            adapter=cfg.adapter,
            thinking=cfg.thinking == "on",
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            cache_path=cfg.cache_path,
            device=device,
            dtype=cfg.dtype,
            backend=cfg.backend,
            concurrency=cfg.concurrency,
        )
        return result_from_predictions(
            predictions, scoring="generate", parse_failures=int((~predictions["parsed"]).sum())
        )
    from distill.models import load_student

    model, tokenizer = load_student(cfg.model, adapter=cfg.adapter, device=device, dtype=cfg.dtype)
    return evaluate_items(model, tokenizer, items, thinking=cfg.thinking, batch_size=cfg.batch_size, progress=True)


def compare_with_baseline(cfg: EvaluateConfig, baseline: Baseline, result: EvalResult, run_dir: Path) -> None:
    """The paired comparison with the baseline run, logged (`compare/*`, chart, item changes)."""
    baseline.comparison = compare_predictions(
        baseline.predictions, result.predictions, n_boot=cfg.bootstrap_samples, seed=cfg.seed
    )
    baseline.result = result_from_predictions(aligned_base(baseline.predictions, result.predictions))
    log_comparison(
        baseline.comparison,
        baseline.predictions,
        result.predictions,
        baseline_run=baseline.run_id,
        base_label=f"baseline {baseline.run_id[:8]}",
        new_label="this run",
        n_boot=cfg.bootstrap_samples,
        seed=cfg.seed,
        local_dir=run_dir / COMPARISON_ARTIFACT_DIR,
    )


def print_summary(
    cfg: EvaluateConfig,
    items: list[Any],
    result: EvalResult,
    baseline: Baseline | None,
    *,
    run_id: str,
    run_dir: Path,
    wall_s: float,
    scoring_s: float,
) -> None:
    """The one-screen summary: per-subject table (with the comparison), the run and its files."""
    model_label = cfg.model + (f" + {cfg.adapter}" if cfg.adapter else "")
    title = (
        f"evaluate  {model_label}  on {Path(str(cfg.dataset)).name} ({len(items)} items, "
        f"scoring={cfg.scoring}, thinking={cfg.thinking})"
    )
    comparison = baseline.comparison if baseline is not None else None
    print()
    print(summary_text(result, comparison, title=title, base_result=baseline.result if baseline else None))
    if baseline is not None:
        print(
            f"compared with run {baseline.run_id}: Δ accuracy {baseline.comparison['compare/delta_accuracy']:+.3f}, "
            f"McNemar p={baseline.comparison['compare/mcnemar_p']:.3g}"
        )
    print(f"run {run_id}  ·  files in {run_dir}  ·  {wall_s:.1f} s ({scoring_s:.1f} s scoring)")
