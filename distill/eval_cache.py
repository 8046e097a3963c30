"""The base model's evaluation on a set of items, cached on disk across runs.

Training scores its base model on the eval set after every run, and register scores it again on
the test split: the same base on the same items gives the same predictions, so both go through
`cached_base_eval`, which scores once and reads the predictions back afterwards (a train run
followed by a register run of its adapter is one miss and one hit).

The key hashes everything that decides the base model's logit-scoring predictions: the model
(name, resolved path, its config.json), the items (`items_digest`), thinking, 4-bit, the compute
dtype, the answer prompt and `EVAL_CACHE_VERSION`. Entries are predictions parquet files
(`distill.contracts`, "Prediction rows") under `$DISTILL_HOME/eval_cache/`, written atomically.
The base model on a train run's dev split is cached the same way (`cached_base_dev`: its dev
metrics, as JSON, keyed by the dev rows and the length limits too), so a sweep measures the base
once, not in every trial.

In MLflow the base's figures live in one run per (base, split) and store, the *base run*
(`base_run`, tagged `distill.base.key`, stage `base`): its `eval/*` or `dev/*` metrics, its
subjects table and predictions. Train, register and evaluate runs link to it (tag
`distill.base_run.<context>` and their description) instead of repeating the base's metrics,
and it sits in the same experiment, so the UI's run table shows it as the row to beat.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.contracts import MCQItem
from distill.evaluation import EvalResult

EVAL_CACHE_VERSION = "1"
"""Bump when base-model scoring changes in a way the cache key does not show."""
BASE_KEY_TAG = "distill.base.key"
"""The cache key of the base run's figures (one base run per key and store)."""
DEV_METRICS = ("reward_accuracy", "margin", "accuracy", "macro_f1")
"""The dev figures logged as metrics (`dev/*`); the rest of `dev_metrics` stays in the files."""


@dataclass(frozen=True)
class CachedEval:
    result: EvalResult
    hit: bool
    """True when the predictions were read from the cache (nothing was scored)."""
    path: Path
    """The cache entry (read, or written now)."""


def eval_cache_key(
    *, student: str, student_path: str, items_digest: str, thinking: str, load_in_4bit: bool, dtype: str, **more: Any
) -> str:
    """Hash of everything that decides the base model's eval predictions (`more`: what else
    decides another figure of the base, e.g. the dev split's length limits)."""
    from distill.data import prompts

    config_text = ""
    config_file = Path(student_path) / "config.json"
    if config_file.is_file():
        config_text = config_file.read_text(encoding="utf-8")
    payload = {
        "version": EVAL_CACHE_VERSION,
        "student": student,
        "student_path": student_path,
        "model_config_sha": hashlib.sha256(config_text.encode("utf-8")).hexdigest(),
        "items": items_digest,
        "scoring": "logits",
        "thinking": thinking,
        "load_in_4bit": bool(load_in_4bit),
        "dtype": dtype,
        "prompts": hashlib.sha256(
            (prompts.SYSTEM_PROMPT + prompts.ANSWER_INSTRUCTION_DIRECT + prompts.ANSWER_PREFIX).encode("utf-8")
        ).hexdigest(),
        **more,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def cache_folder() -> Path:
    from distill.paths import distill_home

    return distill_home() / "eval_cache"


def cached_base_eval(
    items: Sequence[MCQItem],
    *,
    load: Callable[[], tuple[Any, Any]],
    student: str,
    student_path: str,
    thinking: bool | str,
    load_in_4bit: bool,
    dtype: str,
    batch_size: int,
    progress: bool = True,
) -> CachedEval:
    """The base model's logit-scoring evaluation on `items`, from the cache or scored now.

    `student` is the model's name as configured, `student_path` where it resolved to
    (`resolve_model_path`), `dtype` the resolved compute dtype's name (`models.dtype_name`).
    `load()` is called only on a miss and returns (model, tokenizer); a model with a LoRA adapter
    (a PeftModel) is scored with the adapter disabled, which is how train and register see the
    base without loading it twice.
    """
    from distill.data.loaders import items_digest
    from distill.data.prompts import parse_thinking
    from distill.evaluation import evaluate_items, read_predictions, result_from_predictions
    from distill.io import atomic_path

    thinking_word = "on" if parse_thinking(thinking) else "off"
    key = eval_cache_key(
        student=student,
        student_path=student_path,
        items_digest=items_digest(items),
        thinking=thinking_word,
        load_in_4bit=load_in_4bit,
        dtype=dtype,
    )
    path = cache_folder() / f"{key}.parquet"
    if path.is_file():
        return CachedEval(result_from_predictions(read_predictions(path)), hit=True, path=path)
    model, tokenizer = load()
    # peft's PeftModel has the `disable_adapter()` context; a plain transformers model does not.
    without_adapter = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with without_adapter:
        result = evaluate_items(
            model, tokenizer, items, thinking=thinking_word, batch_size=batch_size, progress=progress
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        result.predictions.to_parquet(tmp, index=False)
    return CachedEval(result, hit=False, path=path)


@dataclass(frozen=True)
class CachedDev:
    metrics: dict[str, float]
    """The base on the dev split, as `distill.training.dev_metrics` names them (no prefix)."""
    hit: bool
    key: str


def cached_base_dev(
    measure: Callable[[], dict[str, float]],
    *,
    student: str,
    student_path: str,
    rows_digest: str,
    thinking: str,
    load_in_4bit: bool,
    dtype: str,
    max_length: int,
    max_prompt_length: int,
) -> CachedDev:
    """The base model's dev metrics, from the cache or measured now by `measure()` (called only
    on a miss; train passes the adapter model's measure with the adapter disabled).

    `rows_digest` is the dev split's (`tracking.rows_digest` of its TRL rows and problems)."""
    from distill.io import write_text_atomic

    key = eval_cache_key(
        student=student,
        student_path=student_path,
        items_digest=rows_digest,
        thinking=thinking,
        load_in_4bit=load_in_4bit,
        dtype=dtype,
        split="dev",
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )
    path = cache_folder() / f"{key}.dev.json"
    if path.is_file():
        return CachedDev(json.loads(path.read_text(encoding="utf-8")), hit=True, key=key)
    metrics = {k: float(v) for k, v in measure().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(metrics, sort_keys=True) + "\n")
    return CachedDev(metrics, hit=False, key=key)


def base_run(
    key: str,
    *,
    student: str,
    split: str,
    context: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    dataset: Any = None,
    result: EvalResult | None = None,
) -> str | None:
    """The base run of this key in the active run's experiment (logged now when there is none);
    its id, or None outside a run. See the module docstring.

    `context` is eval or dev (its metrics' prefix and its dataset input's context); `result`,
    for an eval split, adds the subjects table and the predictions (what `analyze` compares
    a trained run's predictions with)."""
    import tempfile

    from distill import tracking

    name = f"base {Path(student).name} · {split}"
    summary = [f"{name}: the untouched base model, scored once for every run that uses this {context} split"]
    summary += [f"{k:<28} {v:.4f}" for k, v in sorted(metrics.items())]
    tables, artifacts = {}, {}
    with tempfile.TemporaryDirectory(prefix="distill-base-") as tmp:
        if result is not None:
            from distill.evaluation import PREDICTIONS_ARTIFACT_DIR, PREDICTIONS_FILE, SUBJECTS_TABLE, subject_frame

            tables[SUBJECTS_TABLE] = subject_frame(result)
            local = Path(tmp) / PREDICTIONS_FILE
            result.predictions.to_parquet(local, index=False)
            artifacts[PREDICTIONS_ARTIFACT_DIR] = local
        return tracking.find_or_log_run(
            BASE_KEY_TAG,
            key,
            name=name,
            tags={"distill.stage": "base", "distill.student": student, "distill.base.split": context},
            params={"model": student, "split": split, **params},
            metrics={f"{context}/{k}": v for k, v in metrics.items()},
            summary="\n".join(summary),
            dataset=dataset,
            context=context,
            tables=tables,
            artifacts=artifacts,
        )
