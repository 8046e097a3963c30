"""The base model's evaluation on a set of items, cached on disk across runs.

Training scores its base model on the eval set after every run, and register scores it again on
the test split: the same base on the same items gives the same predictions, so both go through
`cached_base_eval`, which scores once and reads the predictions back afterwards (a train run
followed by a register run of its adapter is one miss and one hit).

The key hashes everything that decides the base model's logit-scoring predictions: the model
(name, resolved path, its config.json), the items (`items_digest`), thinking, 4-bit, the compute
dtype, the answer prompt and `EVAL_CACHE_VERSION`. Entries are predictions parquet files
(`distill.contracts`, "Prediction rows") under `$DISTILL_HOME/eval_cache/`, written atomically.
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


@dataclass(frozen=True)
class CachedEval:
    result: EvalResult
    hit: bool
    """True when the predictions were read from the cache (nothing was scored)."""
    path: Path
    """The cache entry (read, or written now)."""


def eval_cache_key(
    *, student: str, student_path: str, items_digest: str, thinking: str, load_in_4bit: bool, dtype: str
) -> str:
    """Hash of everything that decides the base model's eval predictions."""
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
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:24]


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
    from distill.paths import distill_home

    thinking_word = "on" if parse_thinking(thinking) else "off"
    key = eval_cache_key(
        student=student,
        student_path=student_path,
        items_digest=items_digest(items),
        thinking=thinking_word,
        load_in_4bit=load_in_4bit,
        dtype=dtype,
    )
    path = distill_home() / "eval_cache" / f"{key}.parquet"
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
