"""Generate-mode evaluation: the model writes its reasoning and answer, then the answer is read.

`generate_predictions` asks the `local` backend (transformers, batched, left padding) for one
greedy answer per item with the same prompt every stage uses (`render_messages`), and reads
the choice with `extract_answer`. An answer that cannot be read is a parse failure: `pred` is
None, `parsed` is False, and it counts as wrong (never guessed). The frame has the columns of
the logit-mode predictions table that the metrics need (`id, subject, gold, pred, correct,
n_choices`) plus `text` (full output, think block included), `reasoning` (the output without
think blocks) and `parsed`.

Responses go through the response cache. With no `cache_path` the cache is a temporary file
dropped at the end: an adapter directory that is retrained in place would otherwise be answered
from a stale cache (its path, not its weights, is in the cache key).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill.contracts import PREDICTION_COLUMNS, MCQItem
from distill.errors import ConfigError, DistillError
from distill.evaluation import require_gold

GENERATE_COLUMNS = [*PREDICTION_COLUMNS, "text", "reasoning", "parsed"]
"""The prediction rows of `distill.contracts` and what generation adds (no `score_k`: nothing is scored)."""


def generation_requests(items: Sequence[MCQItem], *, thinking: bool, max_new_tokens: int, seed: int) -> list:
    """One greedy request per item."""
    from distill.data.prompts import render_messages
    from distill.llm import GenerationParams, Request

    params = GenerationParams(
        temperature=0.0, max_output_tokens=int(max_new_tokens), thinking=bool(thinking), seed=int(seed)
    )
    return [Request(messages=tuple(render_messages(item)), params=params, label=f"eval {item.id}") for item in items]


def predictions_from_texts(items: Sequence[MCQItem], texts: Sequence[str]):
    """The predictions frame for generated texts (pure: no model involved)."""
    import pandas as pd

    from distill.extraction import extract_answer, strip_think

    if len(items) != len(texts):
        raise ValueError(f"{len(items)} items but {len(texts)} texts")
    rows = []
    for item, text in zip(items, texts):
        pred = extract_answer(text, item.n_choices)
        rows.append(
            {
                "id": item.id,
                "subject": item.subject,
                "gold": int(item.answer),  # type: ignore[arg-type]
                "pred": pred,
                "correct": bool(pred is not None and pred == item.answer),
                "n_choices": item.n_choices,
                "text": text,
                "reasoning": strip_think(text),
                "parsed": pred is not None,
            }
        )
    frame = pd.DataFrame(rows, columns=GENERATE_COLUMNS)
    frame["pred"] = frame["pred"].astype(object).where(frame["pred"].notna(), None)
    return frame


def parse_failure_rate(frame) -> float:
    """Share of items whose answer could not be read (NaN for an empty frame)."""
    if len(frame) == 0:
        return float("nan")
    return float((~frame["parsed"].astype(bool)).sum()) / len(frame)


def generate_predictions(
    model: str,
    items: Sequence[MCQItem],
    *,
    thinking: bool = False,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    seed: int = 0,
    cache_path: str | Path | None = None,
    adapter: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    loaded: tuple[Any, Any] | None = None,
    progress: bool = True,
    backend: str = "local",
    concurrency: int = 16,
):
    """Generate one answer per item and read its choice.

    `backend`: `local` (transformers on this machine) or `openai` (an OpenAI-compatible server
    such as vLLM at OPENAI_BASE_URL; `model` is then the served model or LoRA name).

    `model`: a model id or local path (or tiny-qwen3); `loaded`: an already loaded
    (model, tokenizer) to use instead of loading `model` again (it still names the cache key).
    Failed generations raise (a local model either runs or does not).
    """
    from distill.llm import ResponseCache
    from distill.llm.local import LocalBackend

    require_gold(items)
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    requests = generation_requests(items, thinking=thinking, max_new_tokens=max_new_tokens, seed=seed)

    def answer(path: Path) -> list[str]:
        cache = ResponseCache(path)
        if backend == "local":
            generator = LocalBackend(
                model, cache=cache, adapter=adapter, device=device, dtype=dtype, batch_size=batch_size, loaded=loaded
            )
        elif backend == "openai":
            if adapter:
                raise ConfigError(
                    "backend=openai: serve the adapter with the server (vLLM --lora-modules) and pass its name as the model"
                )
            from distill.llm import make_backend

            generator = make_backend("openai", model, cache=cache, concurrency=concurrency, seed=seed)
        else:
            raise ConfigError(f"generation backend must be 'local' or 'openai', got {backend!r}")
        try:
            responses = generator.generate(requests, progress=progress)
        finally:
            generator.close()
            cache.close()
        failed = [r for r in responses if not r.ok]
        if failed:
            raise DistillError(
                f"{backend} generation failed for {len(failed)} of {len(responses)} items: {failed[0].error}"
            )
        return [r.text for r in responses]

    if cache_path is not None:
        texts = answer(Path(cache_path))
    else:
        with tempfile.TemporaryDirectory(prefix="distill-generate-") as tmp:
            texts = answer(Path(tmp) / "cache.sqlite")
    return predictions_from_texts(items, texts)
