"""The one protocol every LLM backend speaks: send these requests, get these responses.

A `Request` is chat messages plus generation parameters, an optional response schema and a
`sample_index` (the k-th sample of the same prompt). A `Response` carries the full text
(thinking included, as `<think>...</think>` before the answer, whenever the backend returns
it), the parsed JSON when a schema was given, token counts, latency and, for a request that
finally failed, an error.

`CachedBackend` implements `generate_many` once for every network backend: it answers what it
can from the response cache, fetches the rest with bounded concurrency and retries, and writes
each response to the cache the moment it arrives (a killed run loses nothing; a rerun pays
for nothing twice). A subclass implements `_open` (create its client) and
`_call_once(request, key)` (one attempt). The client lives on the backend's own event-loop
thread for the backend's whole life, so batches reuse its connections.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import email.utils
import functools
import json
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from distill.errors import DistillError

logger = logging.getLogger("distill.llm")

ROLES = ("system", "user", "assistant")

KEY_VERSION = 1
"""Bump when the key recipe changes, so old cache entries can never be read as new ones."""


# ---------------------------------------------------------------------------------------------
# Requests and responses


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters. `None` means "the backend's default" and is left out of the cache key,
    so adding a new optional parameter later never invalidates existing cache entries."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    """Only openai (vLLM) and local use it; gemini has no such parameter and ignores it."""
    thinking: bool | None = None
    """True: the model reasons first and the reasoning is returned; False: no reasoning."""
    thinking_budget: int | None = None
    """Maximum reasoning tokens when thinking is on (gemini; ignored elsewhere)."""
    seed: int | None = None
    """Base seed. The seed sent for sample k is `seed + k`, so samples differ and are reproducible."""

    def __post_init__(self) -> None:
        # 0 and 0.0 must give the same cache key: fix each field's type once, here.
        for name in ("temperature", "top_p", "presence_penalty", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))
        for name in ("top_k", "max_output_tokens", "thinking_budget", "seed"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))
        if self.thinking is not None:
            object.__setattr__(self, "thinking", bool(self.thinking))

    def to_key_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def seed_for(self, sample_index: int) -> int | None:
        return None if self.seed is None else int(self.seed) + int(sample_index)


@dataclass(frozen=True)
class Request:
    """One generation request.

    `label` is free text for messages and progress (e.g. "teacher item-17"); it is NOT part of
    the cache key, so relabelling never causes a refetch.
    """

    messages: tuple[dict[str, str], ...]
    params: GenerationParams = GenerationParams()
    schema: type | None = None
    """A pydantic model class: the backend asks for JSON of that shape and fills `Response.parsed`."""
    sample_index: int = 0
    label: str = ""

    def __post_init__(self) -> None:
        messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in self.messages)
        if not messages:
            raise ValueError("a request needs at least one message")
        for message in messages:
            if message["role"] not in ROLES:
                raise ValueError(f"message role must be one of {ROLES}, got {message['role']!r}")
        if messages[-1]["role"] == "system":
            raise ValueError("the last message must be user or assistant, not system")
        object.__setattr__(self, "messages", messages)
        if self.sample_index < 0:
            raise ValueError("sample_index must be >= 0")

    @classmethod
    def chat(
        cls,
        user: str,
        *,
        system: str | None = None,
        schema: type | None = None,
        sample_index: int = 0,
        label: str = "",
        **params: Any,
    ) -> Request:
        """Shortcut: a system (optional) + user prompt, params as keyword arguments."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return cls(
            messages=tuple(messages),
            params=GenerationParams(**params),
            schema=schema,
            sample_index=sample_index,
            label=label,
        )

    def schema_json(self) -> dict[str, Any] | None:
        return schema_to_json(self.schema)

    def system_text(self) -> str | None:
        parts = [m["content"] for m in self.messages if m["role"] == "system"]
        return "\n\n".join(parts) if parts else None

    def dialogue(self) -> list[dict[str, str]]:
        """The non-system messages, in order."""
        return [m for m in self.messages if m["role"] != "system"]

    def describe(self, words: int = 12) -> str:
        """Short human description for errors: label, sample index, first words of the prompt."""
        last_user = next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")
        head = " ".join(last_user.split()[:words])
        if len(last_user.split()) > words:
            head += " ..."
        label = f"{self.label} " if self.label else ""
        return f"{label}sample {self.sample_index}, prompt '{head}'"


def schema_to_json(schema: type | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    if hasattr(schema, "model_json_schema"):
        return copy.deepcopy(_schema_json(schema))
    raise TypeError(f"schema must be a pydantic model class, got {schema!r}")


@functools.lru_cache(maxsize=256)
def _schema_json(schema: type) -> dict[str, Any]:
    return schema.model_json_schema()


@functools.lru_cache(maxsize=4096)
def _params_key(params: GenerationParams) -> dict[str, Any]:
    return params.to_key_dict()


@dataclass
class Response:
    """What came back for one request (from the network, the model, or the cache)."""

    text: str
    """Full text; a returned reasoning trace comes first inside `<think>...</think>`."""
    parsed: Any = None
    """The JSON object (dict) when the request had a schema and the answer validated."""
    input_tokens: int = 0
    output_tokens: int = 0
    """Output tokens, reasoning tokens included (that is how they are billed)."""
    latency_s: float = 0.0
    """Wall time of the successful attempt (as recorded when fetched, also for cache hits)."""
    backend: str = ""
    model: str = ""
    cached: bool = False
    """True when this run read it from the cache instead of fetching it."""
    finish_reason: str | None = None
    error: str | None = None
    """Set when the request finally failed (after retries); such responses are never cached."""
    key: str = ""
    attempts: int = 0
    """Network attempts this run made for it (0 for a cache hit)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_cache_json(self) -> str:
        payload = {
            "text": self.text,
            "parsed": self.parsed,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_s": self.latency_s,
            "backend": self.backend,
            "model": self.model,
            "finish_reason": self.finish_reason,
        }
        return json.dumps(payload, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_cache_json(cls, text: str, key: str) -> Response:
        data = json.loads(text)
        return cls(
            text=data.get("text", ""),
            parsed=data.get("parsed"),
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            latency_s=float(data.get("latency_s") or 0.0),
            backend=data.get("backend", ""),
            model=data.get("model", ""),
            finish_reason=data.get("finish_reason"),
            cached=True,
            key=key,
            attempts=0,
        )


# ---------------------------------------------------------------------------------------------
# The cache key


def canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def request_key(backend: str, model: str, request: Request) -> str:
    """sha256 of the canonical JSON of everything that determines the answer."""
    import hashlib

    payload = {
        "v": KEY_VERSION,
        "backend": backend,
        "model": model,
        "messages": request.messages,
        "params": _params_key(request.params),
        "schema": None if request.schema is None else _schema_json(request.schema),
        "sample_index": request.sample_index,
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def request_record(backend: str, model: str, request: Request) -> str:
    """What the cache stores beside a response so a human can see what was asked."""
    return canonical_json(
        {
            "backend": backend,
            "model": model,
            "messages": request.messages,
            "params": _params_key(request.params),
            "schema": None if request.schema is None else request.schema.__name__,
            "sample_index": request.sample_index,
            "label": request.label,
        }
    )


# ---------------------------------------------------------------------------------------------
# Counters


@dataclass
class Usage:
    """Counters for one backend object over its lifetime (one stage run, normally)."""

    requests: int = 0
    """Network attempts sent (first tries and retries)."""
    fetched: int = 0
    """Requests that came back successfully from the network (or local model) and were cached."""
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    """Requests that still failed after max_retries (not cached)."""
    input_tokens: int = 0
    """Tokens of fetched responses only: what this run paid for."""
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached_input_tokens: int = 0
    """Tokens of responses read from the cache (not paid again)."""
    cached_output_tokens: int = 0

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in dataclasses.asdict(self).items()}

    def summary(self) -> str:
        return (
            f"{self.requests} requests sent, {self.fetched} fetched, {self.cache_hits} cache hits, "
            f"{self.retries} retries, {self.failures} failures, tokens in/out "
            f"{self.input_tokens}/{self.output_tokens}, est. cost ${self.cost_usd:.4f}"
        )


# ---------------------------------------------------------------------------------------------
# Errors a backend call may raise; the retry loop decides by type.


class TransientError(Exception):
    """Worth retrying: 429, 5xx, timeouts, connection errors, malformed or truncated bodies."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(Exception):
    """Retrying cannot help (400 bad request, 401/403 auth, 404 unknown model)."""


class ReplayMissError(DistillError):
    """The replay backend was asked something its cache does not hold."""


RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_CAP_S = 600.0
"""A Retry-After longer than this is read as this (a misconfigured proxy must not park a run)."""


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (a number) or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after_s: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter; never shorter than the server's Retry-After."""
    ceiling = min(max_s, base_s * (2**attempt))
    delay = rng.uniform(0.0, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay


class Redactor:
    """Removes secrets (an explicit API key and the key environment variables) from text."""

    def __init__(self, *secrets: str | None):
        from distill.tracking import SECRET_ENV_VARS

        values = [s for s in secrets if s]
        values += [os.environ.get(name) for name in SECRET_ENV_VARS]
        self._secrets = sorted({s for s in values if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: Any) -> str:
        text = str(text)
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text


# ---------------------------------------------------------------------------------------------
# The protocol and the shared implementation


@runtime_checkable
class Backend(Protocol):
    """What every backend offers. Order of responses = order of requests."""

    name: str
    model: str
    usage: Usage

    async def generate_many(self, requests: Sequence[Request], *, progress: bool = True) -> list[Response]: ...

    def generate(self, requests: Sequence[Request], *, progress: bool = True) -> list[Response]: ...

    def key(self, request: Request) -> str: ...

    def close(self) -> None: ...


def run_sync(coro_factory):
    """Run a coroutine to completion from sync code, also when an event loop already runs
    in this thread (notebooks): then it runs on a fresh loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro_factory())
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="distill-llm-sync")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


@dataclass
class RetryPolicy:
    max_retries: int = 6
    """Retries after the first attempt; a request gets at most max_retries + 1 attempts."""
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 300.0
    """Per-attempt timeout (seconds)."""


class _LoopThread:
    """An event loop running in a daemon thread: the home of one backend's HTTP client.

    Why not `asyncio.run` per batch: the client (TLS contexts, connection pool) would be built
    and torn down for every batch, and a client created on one loop cannot be used on another.
    Living on its own loop, one client serves every batch of the backend's life, and sync and
    async callers (on any loop) share it.
    """

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


class _Resources:
    """Async closers of what a backend opened (kept apart from the backend, so a finalizer can
    close them without keeping the backend alive)."""

    def __init__(self) -> None:
        self.closers: list[Any] = []

    async def aclose(self) -> None:
        closers, self.closers = self.closers, []
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:  # closing must never mask a result
                pass


def _shutdown(io: _LoopThread, resources: _Resources) -> None:
    if threading.current_thread() is io.thread:  # cannot wait for our own loop
        io.loop.create_task(resources.aclose()).add_done_callback(lambda _: io.loop.stop())
        return
    if io.loop.is_running():
        try:
            io.submit(resources.aclose()).result(10)
        except Exception:
            pass
    io.stop()


class CachedBackend:
    """generate_many for network backends: cache first, bounded concurrency, retries,
    write-on-arrival. Subclasses implement `_call_once` and `_open` (which creates the client
    and registers its closer with `self._resources.closers`)."""

    name = "base"

    def __init__(
        self,
        model: str,
        *,
        cache,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        prices=None,
        api_key: str | None = None,
        seed: int = 0,
    ):
        from distill.llm.pricing import PriceTable

        self.model = model
        self.cache = cache
        self.concurrency = max(1, int(concurrency))
        self.retry = retry or RetryPolicy()
        self.prices = prices if prices is not None else PriceTable.default()
        self.usage = Usage()
        self._redact = Redactor(api_key)
        self._rng = random.Random(seed)
        self._io: _LoopThread | None = None
        self._resources = _Resources()
        self._opened = False
        self._finalizer = None
        self._lock = threading.Lock()

    # -- the parts a subclass provides ---------------------------------------------------------

    async def _open(self) -> None:
        """Create the client (runs on the backend's own loop, once)."""

    async def _call_once(self, request: Request, key: str) -> Response:
        """One network attempt. Raise TransientError / PermanentError, or return a Response
        (text, parsed, tokens, finish_reason; latency and bookkeeping are filled in here)."""
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------

    def key(self, request: Request) -> str:
        return request_key(self.name, self.model, request)

    def _loop_thread(self) -> _LoopThread:
        with self._lock:
            if self._io is None:
                self._io = _LoopThread(f"distill-{self.name}")
                self._resources = _Resources()
                self._opened = False
                self._finalizer = weakref.finalize(self, _shutdown, self._io, self._resources)
            return self._io

    def connect(self) -> None:
        """Create the client now (otherwise the first batch does it). Raises a ConfigError
        early when, for example, an API key is missing."""
        self._loop_thread().submit(self._ensure_open()).result()

    async def _ensure_open(self) -> None:
        if not self._opened:
            await self._open()
            self._opened = True

    def generate(self, requests: Sequence[Request], *, progress: bool = True) -> list[Response]:
        """Blocking form of generate_many (usable inside a running event loop too)."""
        io = self._loop_thread()
        if threading.current_thread() is io.thread:
            raise RuntimeError("generate() called on the backend's own loop: await generate_many()")
        future = io.submit(self._generate_many(list(requests), progress))
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    async def generate_many(self, requests: Sequence[Request], *, progress: bool = True) -> list[Response]:
        """Responses in request order; each fetched one is in the cache the moment it arrives."""
        io = self._loop_thread()
        coro = self._generate_many(list(requests), progress)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is io.loop:
            return await coro
        return await asyncio.wrap_future(io.submit(coro))

    def close(self) -> None:
        """Close the client and stop the backend's loop (a later call starts them again)."""
        with self._lock:
            finalizer, self._finalizer, self._io = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def _generate_many(self, requests: list[Request], progress: bool) -> list[Response]:
        keys = [self.key(r) for r in requests]
        results, to_fetch = partition_cached(self.cache, keys, self.usage)

        if to_fetch:
            await self._ensure_open()
            bar = _progress_bar(
                progress,
                len(requests),
                f"{self.name}:{self.model}",
                initial=len(requests) - sum(map(len, to_fetch.values())),
            )
            semaphore = asyncio.Semaphore(self.concurrency)

            async def fetch(key: str, indices: list[int]) -> None:
                async with semaphore:
                    response = await self._fetch_with_retries(requests[indices[0]], key)
                if response.ok:
                    self._store(requests[indices[0]], key, response)
                for position, index in enumerate(indices):
                    results[index] = response if position == 0 else dataclasses.replace(response)
                if bar is not None:
                    bar.update(len(indices))
                    bar.set_postfix(retries=self.usage.retries, failed=self.usage.failures, refresh=False)

            try:
                await asyncio.gather(*(fetch(k, idx) for k, idx in to_fetch.items()))
            finally:
                if bar is not None:
                    bar.close()
            logger.info("%s/%s: %s", self.name, self.model, self.usage.summary())
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _store(self, request: Request, key: str, response: Response) -> None:
        self.cache.put(key, response, request=request_record(self.name, self.model, request))
        self.usage.fetched += 1
        self.usage.input_tokens += response.input_tokens
        self.usage.output_tokens += response.output_tokens
        self.usage.cost_usd += self.prices.cost(self.model, response.input_tokens, response.output_tokens)

    async def _fetch_with_retries(self, request: Request, key: str) -> Response:
        policy = self.retry
        last_error = "no attempt made"
        attempts = 0
        for attempt in range(policy.max_retries + 1):
            attempts += 1
            self.usage.requests += 1
            if attempt:
                self.usage.retries += 1
            started = time.perf_counter()
            try:
                async with asyncio.timeout(policy.timeout_s):
                    response = await self._call_once(request, key)
            except PermanentError as exc:
                last_error = self._redact(exc)
                break
            except TransientError as exc:
                last_error = self._redact(exc)
                retry_after = exc.retry_after_s
            except TimeoutError:
                last_error = f"timed out after {policy.timeout_s:g}s"
                retry_after = None
            except Exception as exc:
                # A bug or an unforeseen error: stop the batch, but never with a secret in it.
                raise RuntimeError(
                    f"{self.name}/{self.model}: {self._redact(f'{type(exc).__name__}: {exc}')}"
                ).with_traceback(exc.__traceback__) from None
            else:
                response.latency_s = time.perf_counter() - started
                response.backend = self.name
                response.model = self.model
                response.key = key
                response.cached = False
                response.attempts = attempts
                return response
            if attempt < policy.max_retries:
                delay = backoff_delay(attempt, policy.backoff_base_s, policy.backoff_max_s, retry_after, self._rng)
                logger.debug(
                    "%s/%s: retry %d for %s in %.2fs after: %s",
                    self.name,
                    self.model,
                    attempt + 1,
                    key[:12],
                    delay,
                    last_error,
                )
                await asyncio.sleep(delay)
        self.usage.failures += 1
        message = f"{self.name}/{self.model}: gave up on {request.describe()} (key {key[:16]}) after {attempts} attempt(s): {last_error}"
        logger.warning("%s", message)
        return Response(
            text="",
            backend=self.name,
            model=self.model,
            key=key,
            error=message,
            attempts=attempts,
        )


def partition_cached(cache, keys: Sequence[str], usage: Usage) -> tuple[list[Response | None], dict[str, list[int]]]:
    """Answers already in the cache, in request order (None where missing), and the requests
    still to fetch as key -> indexes: identical requests in one batch are fetched once."""
    hits = cache.get_many(keys)
    results: list[Response | None] = [None] * len(keys)
    to_fetch: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        if key in hits:
            results[index] = dataclasses.replace(hits[key], cached=True, key=key)
            usage.cache_hits += 1
            usage.cached_input_tokens += hits[key].input_tokens
            usage.cached_output_tokens += hits[key].output_tokens
        else:
            to_fetch.setdefault(key, []).append(index)
    return results, to_fetch


def _progress_bar(enabled: bool, total: int, desc: str, initial: int = 0):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="req", leave=False, mininterval=0.5)


def parse_schema_output(schema: type | None, text: str) -> Any:
    """Validate a structured answer; raise TransientError when it is not valid JSON of the shape
    (a truncated or malformed answer is worth another try)."""
    if schema is None:
        return None
    try:
        return schema.model_validate_json(text).model_dump(mode="json")
    except Exception as exc:  # pydantic.ValidationError, ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TransientError(f"answer does not match the response schema: {first}") from None


def join_thinking(thoughts: str, answer: str) -> str:
    """One text for a response: the reasoning (when any) in a think block, then the answer."""
    thoughts = thoughts.strip()
    if not thoughts:
        return answer
    return f"<think>\n{thoughts}\n</think>\n\n{answer.lstrip()}"


def iter_chunks(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
