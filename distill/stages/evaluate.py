"""The `evaluate` stage: score a model on multiple-choice items, subject by subject, in MLflow.

`run(cfg)` in steps: load the items (and, with `baseline_run`, that run's predictions, checked to
cover the same items before any model loads); open the run and log the config and the items;
score by logits or by generation; log the evaluation; compare with the baseline when asked;
print a one-screen summary. The scoring, comparison and logging themselves are the evaluation
library, `distill.evaluation`, which train and register use too.

In the MLflow UI a run is named after what it scored (`evaluate tiny-qwen3 + <adapter> · <set>`),
carries the overall `eval/*` figures as metrics (linked to the items' dataset and, for an adapter
logged by a train run, to that logged model), the per-subject results as its `subjects` table,
and its summary as its description, with links to the adapter's train run and the baseline run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
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
    log_subject_table,
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
            "help": "Model to score: a Hugging Face id, a local path, tiny-qwen3 or world-student (built locally, no download)."
        },
    )
    adapter: str | None = unset_field(
        "none",
        "Optional LoRA adapter on top of the model: a directory or an MLflow model URI (runs:/..., models:/...). none: the model alone.",
    )
    dataset: str | None = unset_field(
        "bundled", "Items to score (a file). bundled: the bundled eval sample (distill/resources/eval_sample.jsonl)."
    )
    format: str = field(
        default="auto",
        metadata={
            "help": "Dataset format: auto, a shipped format (competition, kice, kmmlu, jsonl, csat_qa, haerae) or a format spec file (.yaml)."
        },
    )
    datasets: str | None = unset_field(
        "none",
        "Several sets in one run, instead of dataset: path[@format],path[@format],... (bundled: the eval sample; without @format: `format`). Each set's metrics are <name>/eval/..., its subjects table <name>/subjects.json, its files under <name>/ (name: the file's stem).",
    )
    subject_map: str | None = unset_field("none", "Optional file mapping item ids or categories to subjects.")
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
    baseline_run: str | None = unset_field(
        "none", "Run id of an earlier evaluate run on the same items: log a paired comparison (compare/*)."
    )
    bootstrap_samples: int = field(
        default=2000, metadata={"help": "Bootstrap resamples for the CI of the accuracy difference."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    experiment: str | None = unset_field("auto", "MLflow experiment. auto: distill-eval.")
    output_dir: str = field(
        default="outputs/evaluate",
        metadata={"help": "Local folder for the predictions, chart and summary (also logged as artifacts)."},
    )
    max_items: int | None = unset_field("all", "Score only the first N items (a quick look); all: every item.")
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
    cache_path: str | None = unset_field(
        "none",
        "scoring=generate: response cache file; none: a temporary one (never stale for a retrained adapter).",
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
        from distill.cli import NONE_WORDS
        from distill.data.prompts import parse_thinking

        for name in ("adapter", "dataset", "datasets", "subject_map", "baseline_run", "experiment", "cache_path"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in NONE_WORDS | {"bundled", "auto"}:
                setattr(self, name, None)
        if isinstance(self.max_items, str):
            text = self.max_items.strip().lower()
            self.max_items = None if text in NONE_WORDS | {"all"} else int(text)
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"scoring must be 'logits' or 'generate', got {self.scoring!r}")
        self.thinking = "on" if parse_thinking(self.thinking) else "off"
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.bootstrap_samples < 1:
            raise ConfigError(f"bootstrap_samples must be at least 1, got {self.bootstrap_samples}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"max_items must be at least 1 (or all), got {self.max_items}")
        if self.datasets:
            if self.dataset:
                raise ConfigError("give dataset or datasets, not both")
            if self.baseline_run:
                raise ConfigError("baseline_run compares one set of items; it cannot be combined with datasets")
            _ = self.sets  # a malformed list fails here, before anything runs

    @property
    def sets(self) -> list[Any]:
        """The sets of `datasets` (`distill.evaluation.NamedSet`); empty with a single dataset."""
        from distill.evaluation import parse_sets

        return parse_sets(self.datasets, default_format=self.format) if self.datasets else []

    @property
    def dataset_source(self) -> str:
        """The items to read: `dataset`, or the bundled eval sample when unset."""
        from distill.resources import resource_path

        return self.dataset or str(resource_path("eval_sample.jsonl"))

    @property
    def run_name(self) -> str:
        """`evaluate <model> + <adapter> · <set> · <scoring>`: what tells evaluate runs apart."""
        model = Path(self.model).name
        if self.adapter:
            adapter = self.adapter.rstrip("/").rsplit("/", 1)[-1]
            model += f" + {adapter}"
        items = "+".join(s.name for s in self.sets) or Path(self.dataset_source).stem
        items += f"[:{self.max_items}]" if self.max_items else ""
        return f"evaluate {model} · {items} · {self.scoring}"


@dataclass
class EvaluateOutputs:
    run_id: str
    result: EvalResult
    comparison: dict[str, float] | None
    output_dir: Path
    wall_s: float
    results: dict[str, EvalResult] = field(default_factory=dict)
    """With `datasets`: each set's result by name (`result` is the first's)."""


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
    if cfg.sets:
        return run_sets(cfg, started)
    items = load_eval_items(cfg)
    baseline = load_baseline(cfg, items)  # fails before loading a model if it cannot be compared
    with tracking.start_run(run_name=cfg.run_name) as active, tracking.tagging_failure():
        run_id = active.info.run_id
        run_dir = Path(cfg.output_dir) / run_id
        dataset = log_run_inputs(cfg, items, run_dir)
        scoring_started = time.perf_counter()
        result = score(cfg, items)
        scoring_s = time.perf_counter() - scoring_started
        tracking.log_metrics(
            {
                "eval/scoring_s": scoring_s,
                "eval/items_per_s": len(items) / scoring_s if scoring_s > 0 else float("nan"),
            }
        )
        model_id = tracking.logged_model_id(cfg.adapter)
        log_eval_result(result, local_dir=run_dir / PREDICTIONS_ARTIFACT_DIR, model_id=model_id, dataset=dataset)
        if baseline is not None:
            compare_with_baseline(cfg, baseline, result, run_dir, model_id=model_id, dataset=dataset)
        log_subject_table(
            result, baseline.comparison if baseline else None, base=baseline.result if baseline else None
        )
        wall_s = time.perf_counter() - started
        tracking.log_metrics({"eval/wall_s": wall_s})
        summary = summary_screen(
            cfg, items, result, baseline, run_id=run_id, run_dir=run_dir, wall_s=wall_s, scoring_s=scoring_s
        )
        tracking.describe_run(summary, description_links(cfg, baseline))
    print()
    print(summary)
    return EvaluateOutputs(
        run_id=run_id,
        result=result,
        comparison=baseline.comparison if baseline is not None else None,
        output_dir=run_dir,
        wall_s=wall_s,
    )


def run_sets(cfg: EvaluateConfig, started: float) -> EvaluateOutputs:
    """`datasets`: every set read first (a bad file stops the run before a model loads), then
    one run that loads the model once and scores and logs each set under its name."""
    from distill.evaluation import SUBJECTS_TABLE
    from distill.io import write_jsonl

    loaded = [(named, load_eval_items(cfg, named.path, named.format)) for named in cfg.sets]
    model: list[tuple[Any, Any]] = []  # loaded on first use, kept for the next set
    results: dict[str, EvalResult] = {}
    with tracking.start_run(run_name=cfg.run_name) as active, tracking.tagging_failure():
        run_id = active.info.run_id
        run_dir = Path(cfg.output_dir) / run_id
        tracking.log_config_params(cfg)
        tracking.log_config(cfg)
        tracking.set_tags(
            {
                "distill.stage": "evaluate",
                "distill.model": cfg.model,
                "distill.adapter": cfg.adapter or "none",
                "distill.eval.sets": ",".join(named.name for named in cfg.sets),
            }
        )
        model_id = tracking.logged_model_id(cfg.adapter)
        screens = []
        for named, items in loaded:
            artifact_dir = f"{named.name}/{PREDICTIONS_ARTIFACT_DIR}"
            name = named.name + (f"[:{cfg.max_items}]" if cfg.max_items else "")
            dataset = log_items_dataset(items, source=named.path, name=name, context="eval")
            path = write_jsonl(run_dir / named.name / "items.jsonl", (item.to_dict() for item in items))
            tracking.log_artifact(path, artifact_dir)
            scoring_started = time.perf_counter()
            result = score(cfg, items, loaded=model)
            scoring_s = time.perf_counter() - scoring_started
            tracking.log_metrics(
                {
                    f"{named.name}/eval/scoring_s": scoring_s,
                    f"{named.name}/eval/items_per_s": len(items) / scoring_s if scoring_s > 0 else float("nan"),
                }
            )
            log_eval_result(
                result,
                prefix=f"{named.name}/eval",
                artifact_dir=artifact_dir,
                local_dir=run_dir / named.name / PREDICTIONS_ARTIFACT_DIR,
                model_id=model_id,
                dataset=dataset,
            )
            log_subject_table(result, artifact_file=f"{named.name}/{SUBJECTS_TABLE}")
            results[named.name] = result
            title = f"{named.name}: {Path(named.path).name} ({len(items)} items, {scoring_s:.1f} s scoring)"
            screens.append(summary_text(result, title=title))
        wall_s = time.perf_counter() - started
        tracking.log_metrics({"eval/wall_s": wall_s})
        model_label = cfg.model + (f" + {cfg.adapter}" if cfg.adapter else "")
        head = f"evaluate  {model_label}  on {len(loaded)} sets (scoring={cfg.scoring}, thinking={cfg.thinking})"
        summary = "\n\n".join([head, *screens, f"run {run_id}  ·  files in {run_dir}  ·  {wall_s:.1f} s"])
        tracking.describe_run(summary, description_links(cfg, None))
    print()
    print(summary)
    first = next(iter(results.values()))
    return EvaluateOutputs(
        run_id=run_id, result=first, comparison=None, output_dir=run_dir, wall_s=wall_s, results=results
    )


def load_eval_items(cfg: EvaluateConfig, source: str | None = None, format: str | None = None) -> list[Any]:
    """The items to score (the first `max_items` when set), each with a gold answer: `source` in
    `format`, by default the configured dataset."""
    from distill.data.loaders import load_items

    source = source or cfg.dataset_source
    items = load_items(
        source,
        format or cfg.format,
        cfg.subject_map,
        require_answer=True,
        allow_duplicate_choices=cfg.allow_duplicate_choices,
        # one map for several files: each file need only match some of it
        subject_map_must_match=not cfg.sets,
    )
    if cfg.max_items is not None:
        items = items[: cfg.max_items]
    if not items:
        raise InputError(source, "no items to evaluate")
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


def log_run_inputs(cfg: EvaluateConfig, items: list[Any], run_dir: Path):
    """Params, config.yaml, tags; the items as a dataset input (returned, to link metrics to) and
    as items.jsonl."""
    from distill.io import write_jsonl

    tracking.log_config_params(cfg)
    tracking.log_config(cfg)
    tracking.set_tags(
        {"distill.stage": "evaluate", "distill.model": cfg.model, "distill.adapter": cfg.adapter or "none"}
    )
    name = Path(cfg.dataset_source).stem + (f"[:{cfg.max_items}]" if cfg.max_items else "")
    dataset = log_items_dataset(items, source=cfg.dataset_source, name=name, context="eval")
    path = write_jsonl(run_dir / "items.jsonl", (item.to_dict() for item in items))
    tracking.log_artifact(path, PREDICTIONS_ARTIFACT_DIR)
    return dataset


def score(cfg: EvaluateConfig, items: list[Any], *, loaded: list | None = None) -> EvalResult:
    """Score the model (with its adapter) by choice logits, or by generating and reading answers.

    `loaded`: a list holding the (model, tokenizer) of an earlier call, or empty (the model
    loaded here is put in it), so several sets load the model once."""
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

    if not loaded:
        loaded = [] if loaded is None else loaded
        loaded.append(load_student(cfg.model, adapter=cfg.adapter, device=device, dtype=cfg.dtype))
    model, tokenizer = loaded[0]
    return evaluate_items(model, tokenizer, items, thinking=cfg.thinking, batch_size=cfg.batch_size, progress=True)


def compare_with_baseline(
    cfg: EvaluateConfig, baseline: Baseline, result: EvalResult, run_dir: Path, *, model_id=None, dataset=None
) -> None:
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
        model_id=model_id,
        dataset=dataset,
    )


def summary_screen(
    cfg: EvaluateConfig,
    items: list[Any],
    result: EvalResult,
    baseline: Baseline | None,
    *,
    run_id: str,
    run_dir: Path,
    wall_s: float,
    scoring_s: float,
) -> str:
    """The one-screen summary: per-subject table (with the comparison), the run and its files."""
    model_label = cfg.model + (f" + {cfg.adapter}" if cfg.adapter else "")
    title = (
        f"evaluate  {model_label}  on {Path(cfg.dataset_source).name} ({len(items)} items, "
        f"scoring={cfg.scoring}, thinking={cfg.thinking})"
    )
    comparison = baseline.comparison if baseline is not None else None
    lines = [summary_text(result, comparison, title=title, base_result=baseline.result if baseline else None)]
    if baseline is not None:
        lines.append(
            f"compared with run {baseline.run_id}: Δ accuracy {baseline.comparison['compare/delta_accuracy']:+.3f}, "
            f"McNemar p={baseline.comparison['compare/mcnemar_p']:.3g}"
        )
    lines.append(f"run {run_id}  ·  files in {run_dir}  ·  {wall_s:.1f} s ({scoring_s:.1f} s scoring)")
    return "\n".join(lines)


def description_links(cfg: EvaluateConfig, baseline: Baseline | None) -> dict[str, str]:
    """The runs an evaluate run used: the adapter's train run, the baseline run."""
    links = {}
    adapter_run = tracking.run_of_uri(cfg.adapter or "")
    if adapter_run:
        links["adapter from"] = tracking.run_link(adapter_run)
    if baseline is not None:
        links["baseline"] = tracking.run_link(baseline.run_id)
    return links
