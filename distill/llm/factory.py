"""One function that turns a role's `<role>_backend` and model parameters into a backend."""

from __future__ import annotations

import os
from typing import Any

from distill.errors import ConfigError

BACKENDS = ("gemini", "openai", "local", "replay", "world")
"""`world`: the known-truth world's deterministic teacher (distill/world/teacher.py), computed here."""


def make_backend(
    kind: str,
    model: str,
    *,
    cache=None,
    concurrency: int = 16,
    max_retries: int = 6,
    timeout_s: float = 300.0,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 60.0,
    max_repairs: int = 1,
    circuit_breaker: int = 8,
    prices=None,
    api_key: str | None = None,
    base_url: str | None = None,
    seed: int = 0,
    # gemini and openai
    mode: str = "online",
    batch=None,
    # gemini only
    transport: str = "rest",
    # local only
    adapter: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    batch_size: int = 8,
    loaded: tuple | None = None,
    # replay only
    recorded_by: tuple[str, ...] | None = None,
):
    """A backend of `kind` for `model`, with the response cache in front.

    `cache`: a ResponseCache, a path, or None (`$DISTILL_HOME/llm_cache.sqlite`).
    `prices`: a PriceTable, a YAML/JSON price file, or None (the built-in table).
    `api_key`/`base_url`: default to the environment (GEMINI_API_KEY / GOOGLE_API_KEY and
    GOOGLE_GEMINI_BASE_URL for gemini; OPENAI_API_KEY and OPENAI_BASE_URL for openai).
    `seed`: seeds the retry jitter (network backends); sampling seeds are per request.
    `loaded` (local): an already loaded `(model, tokenizer)` to generate with, instead of
    loading `model` (the name still goes into the cache key).
    `transport` (gemini): "rest" (default, fast) or "sdk" (google-genai's typed generate_content).
    `max_repairs`, `circuit_breaker` (network backends): see `distill.llm.base.RetryPolicy`.
    `mode` (gemini, openai): online, batch (provider batch jobs at batch prices) or export
    (openai: write the batch JSONL for `vllm run-batch`); `batch`: a `distill.llm.batch.BatchSettings`.
    `world`: the synthetic world's teacher (answers computed from the request, at no cost, behind
    the same cache and retry policy); `model` is free text naming it in the cache key.
    """
    from distill.llm.base import RetryPolicy
    from distill.llm.cache import open_cache
    from distill.llm.pricing import load_prices

    kind = (kind or "").strip().lower()
    if kind not in BACKENDS:
        raise ConfigError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if not model or not str(model).strip():
        raise ConfigError(f"the {kind} backend needs a model name")
    if kind == "replay":
        from distill.llm.replay import RECORDING_BACKENDS, ReplayBackend

        if isinstance(cache, (str, os.PathLike)) and not os.path.isfile(cache):
            raise ConfigError(f"replay cache {os.fspath(cache)} does not exist")
        return ReplayBackend(
            model,
            cache=open_cache(cache, readonly=_readonly_if_unwritable(cache)),
            recorded_by=recorded_by or RECORDING_BACKENDS,
        )
    if kind in ("local", "world") and str(mode or "online").strip().lower() != "online":
        raise ConfigError(f"the {kind} backend has no batch mode (mode={mode!r}); use online")
    response_cache = open_cache(cache)
    if kind == "local":
        from distill.llm.local import LocalBackend

        return LocalBackend(
            model,
            cache=response_cache,
            adapter=adapter,
            device=device,
            dtype=dtype,
            load_in_4bit=load_in_4bit,
            batch_size=batch_size,
            loaded=loaded,
        )
    retry = RetryPolicy(
        max_retries=max_retries,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        timeout_s=timeout_s,
        max_repairs=max_repairs,
        circuit_breaker=circuit_breaker,
    )
    common: dict[str, Any] = dict(
        cache=response_cache,
        concurrency=concurrency,
        retry=retry,
        prices=load_prices(prices),
        api_key=api_key,
        base_url=base_url,
        seed=seed,
    )
    if kind == "world":
        from distill.world.teacher import WorldTeacherBackend

        return WorldTeacherBackend(model, cache=response_cache, concurrency=concurrency, retry=retry, seed=seed)
    from distill.llm.batch import BatchSettings, check_mode

    mode = check_mode("backend", kind, mode)
    if kind == "gemini":
        from distill.llm.gemini import GeminiBackend

        backend = GeminiBackend(model, transport=transport, **common)
    else:
        from distill.llm.openai_compat import OpenAIBackend

        backend = OpenAIBackend(model, **common)
    backend.mode = mode
    backend.batch_settings = batch or BatchSettings()
    return backend


def _readonly_if_unwritable(cache) -> bool:
    """A replay cache shipped inside a read-only install must still open."""
    if cache is None or not isinstance(cache, (str, os.PathLike)):
        return False
    path = os.fspath(cache)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    return os.path.exists(path) and not os.access(directory, os.W_OK)
