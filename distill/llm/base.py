"""The one protocol every LLM backend speaks: send these requests, get these responses.

A `Request` is chat messages plus generation parameters, an optional response schema and a
`sample_index` (the k-th sample of the same prompt). A `Response` carries the full text
(thinking included, as `<think>...</think>` before the answer, whenever the backend returns
it), the parsed JSON when a schema was given, token counts, latency, and what kept it from
being usable (`blocked`, `truncated`, `unusable`) or, for a request that finally failed, an
error. What can go wrong is classified once, in `distill/llm/errors.py`.

`CachedBackend` implements `generate_many` once for every network backend: it answers what it
can from the response cache, fetches the rest with bounded concurrency and retries, and writes
each paid response (usable or not) to the cache the moment it arrives, so a rerun never pays
again for a response that arrived. A run killed while requests are in flight loses those
answers, at most `concurrency` per backend, and the rerun pays for them again. It stops at the
first permanent error and when its circuit breaker trips (`BackendStopped`), repairs an answer
that fails its schema by a new request (`repair_request`), and traces each batch to MLflow
(`distill.llm.tracing`). A subclass implements `_open` (create its client) and
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
from distill.llm.errors import (  # noqa: F401  (RETRYABLE_STATUS re-exported: the backends' one import)
    RETRYABLE_STATUS,
    BackendStopped,
    PermanentError,
    TransientError,
    blocked_reason,
    finish_kind,
    schema_problem,
)

logger = logging.getLogger("distill.llm")

ROLES = ("system", "user", "assistant")

KEY_VERSION = 1
"""Bump when the key recipe changes, so old cache entries can never be read as new ones."""

DEFAULT_TRACE_REQUESTS = 16
"""Requests per batch that get a trace span of their own, by default (every batch gets one)."""


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
    blocked: str | None = None
    """Why the provider withheld the answer (SAFETY, RECITATION, content_filter, ...); None
    when it did not. Derived from `finish_reason` when not given."""
    truncated: bool = False
    """The answer stopped at the output token limit (MAX_TOKENS, length)."""
    unusable: str | None = None
    """Why this paid answer cannot be used (blocked, or it fails the response schema); None when
    it can. Such a response is cached and counted like any other, never re-sent identically."""
    repairs: int = 0
    """Repair requests behind this response (0: it answers the request as asked)."""
    timing: tuple[int, int] | None = dataclasses.field(default=None, repr=False, compare=False)
    """(start, end) wall-clock nanoseconds of this run's fetch, first attempt to answer (for the
    trace spans); None for a cache hit. Never cached."""

    def __post_init__(self) -> None:
        self.blocked = self.blocked or blocked_reason(self.finish_reason)
        self.truncated = bool(self.truncated or finish_kind(self.finish_reason) == "truncated")
        if self.blocked and self.unusable is None:
            self.unusable = f"blocked by the provider ({self.blocked})"

    @property
    def ok(self) -> bool:
        """An answer arrived (and was paid for); it may still be `unusable`."""
        return self.error is None

    @property
    def usable(self) -> bool:
        """An answer arrived and can be used."""
        return self.error is None and self.unusable is None

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
        # Only when set, so a usable answer's entry reads as it always did.
        for name in ("blocked", "unusable"):
            if getattr(self, name) is not None:
                payload[name] = getattr(self, name)
        if self.truncated:
            payload["truncated"] = True
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
            blocked=data.get("blocked"),
            truncated=bool(data.get("truncated")),
            unusable=data.get("unusable"),
        )


def build_response(
    request: Request,
    *,
    answer: str,
    thoughts: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
    finish_reason: str | None = None,
) -> Response:
    """A paid answer as a Response: a blocked one is marked so (and not parsed), a schema answer
    is validated, and one that fails its schema is marked unusable instead of raising: it was
    paid for, so it is stored and counted, and never asked again as it was."""
    response = Response(
        text=join_thinking(thoughts, answer),
        input_tokens=int(input_tokens),
        output_tokens=int(output_tokens),
        finish_reason=finish_reason,
    )
    if response.blocked or request.schema is None:
        return response
    response.parsed, problem = schema_problem(request.schema, answer)
    if problem is not None:
        cut = "was cut off at the output token limit and " if response.truncated else ""
        response.unusable = f"the answer {cut}{problem}"
    return response


REPAIR_PROMPT = (
    "Your answer above cannot be used: it {problem}. Answer the same request again, as one JSON "
    "object that matches the requested schema and nothing else{shorter}."
)
"""The repair message (what was wrong is filled in). Repairs ask once more with the bad answer
shown back, so the repair is a different request, with its own cache key, paid once."""


def repair_request(request: Request, response: Response, attempt: int = 1) -> Request:
    """A new request that shows `response` (an answer that failed the schema) back with what was
    wrong and asks again; its key differs from the original's, so the original is never re-sent."""
    answer = response.text.split("</think>", 1)[-1].strip() or "(empty)"
    shorter = ", shorter so that it fits the output limit" if response.truncated else ""
    problem = (response.unusable or "the answer does not match the schema").removeprefix("the answer ")
    return Request(
        messages=(
            *request.messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": REPAIR_PROMPT.format(problem=problem, shorter=shorter)},
        ),
        params=request.params,
        schema=request.schema,
        sample_index=request.sample_index,
        label=f"{request.label.split(' repair ')[0]} repair {attempt}".strip(),
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
    """Answers that came back from the network (or local model) and were cached: every paid
    answer, the unusable ones and repairs included."""
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    """Requests that still failed after max_retries, or were not sent because the backend
    stopped (no answer, nothing cached)."""
    input_tokens: int = 0
    """Tokens of fetched responses only: what this run paid for."""
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached_input_tokens: int = 0
    """Tokens of responses read from the cache (not paid again)."""
    cached_output_tokens: int = 0
    asked: int = 0
    """Requests the caller asked for (repairs not counted)."""
    unanswered: int = 0
    """Of those, how many ended with no usable answer: failed, blocked, or unusable after repairs."""
    unusable: int = 0
    """Paid answers (fetched or cached) that could not be used: blocked, or failing the schema."""
    blocked: int = 0
    """Answers (fetched or cached) the provider withheld (SAFETY, RECITATION, content_filter, ...)."""
    truncated: int = 0
    """Answers (fetched or cached) that stopped at the output token limit."""
    repairs: int = 0
    """Repair requests made for answers that failed their schema (fetched or cached)."""
    batch: int = 0
    """1 when the backend sends its requests as provider batch jobs (mode batch or export)."""
    batch_jobs: int = 0
    """Provider batch jobs this run created (resubmissions and retry jobs included)."""
    batch_resubmitted: int = 0
    """Requests of an expired or failed job sent again in a new job (once at most per request)."""
    online_cost_usd: float = 0.0
    """What the fetched tokens cost at online prices (equals cost_usd in online mode): the
    saving of batch mode is online_cost_usd - cost_usd."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in dataclasses.asdict(self).items()}

    @property
    def failure_rate(self) -> float:
        """unanswered / asked (0.0 when nothing was asked)."""
        return self.unanswered / self.asked if self.asked else 0.0

    def summary(self) -> str:
        line = (
            f"{self.requests} requests sent, {self.fetched} fetched, {self.cache_hits} cache hits, "
            f"{self.retries} retries, {self.failures} failures, tokens in/out "
            f"{self.input_tokens}/{self.output_tokens}, est. cost ${self.cost_usd:.4f}"
        )
        if self.batch:
            line += (
                f"; batch mode: {self.batch_jobs} jobs, {self.batch_resubmitted} resubmitted, est. cost at online prices "
                f"${self.online_cost_usd:.4f} (saved ${self.online_cost_usd - self.cost_usd:.4f})"
            )
        extra = [
            f"{value} {name}"
            for name, value in (
                ("unusable", self.unusable),
                ("blocked", self.blocked),
                ("truncated", self.truncated),
                ("repairs", self.repairs),
            )
            if value
        ]
        return line + (f" ({', '.join(extra)})" if extra else "")

    def count_answers(self, responses: Iterable[Response]) -> None:
        """Count what came back: unusable, blocked and truncated answers."""
        for response in responses:
            if response.ok:
                self.unusable += response.unusable is not None
                self.blocked += response.blocked is not None
                self.truncated += bool(response.truncated)

    def count_delivered(self, responses: Sequence[Response]) -> None:
        """Count the answers handed to the caller: asked, and which ended with no usable answer."""
        self.asked += len(responses)
        self.unanswered += sum(1 for response in responses if not response.usable)


# ---------------------------------------------------------------------------------------------
# Errors: the taxonomy lives in distill/llm/errors.py; the retry loop decides by type.


class ReplayMissError(DistillError):
    """The replay backend was asked something its cache does not hold."""

    reason = "replay_miss"


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
    role: str
    """What it does in its stage (teacher, student, ...): names its trace spans."""

    async def generate_many(
        self, requests: Sequence[Request], *, progress: bool = True, role: str | None = None
    ) -> list[Response]: ...

    def generate(
        self, requests: Sequence[Request], *, progress: bool = True, role: str | None = None
    ) -> list[Response]: ...

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
    max_repairs: int = 1
    """New requests made for an answer that fails its schema (each shows the bad answer back and
    says what was wrong); 0: none."""
    circuit_breaker: int = 8
    """Stop when the first this-many requests all ended the same way without a usable answer
    (after their retries); 0: never."""


class CircuitBreaker:
    """Trips when the first `threshold` requests of a backend all ended the same way without a
    usable answer. A usable answer, or two different failures, settle it for the backend's life:
    it guards against a run that is wrong from the start (a dead endpoint, a model that cannot
    produce the schema), not against a bad patch later on (that is max_failure_rate's job)."""

    def __init__(self, threshold: int):
        self.threshold = max(0, int(threshold))
        self.outcomes: list[str] = []
        self.settled = self.threshold == 0

    def record(self, failure: str | None) -> bool:
        """Note one request's outcome (None: a usable answer, else a short signature of how it
        failed); True when this outcome trips the breaker."""
        if self.settled:
            return False
        if failure is None:
            self.settled = True
            return False
        self.outcomes.append(failure)
        if len(set(self.outcomes)) > 1:
            self.settled = True
            return False
        if len(self.outcomes) >= self.threshold:
            self.settled = True
            return True
        return False


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
    write-on-arrival, stop on a permanent error or a tripped circuit breaker, repairs of answers
    that fail their schema. Subclasses implement `_call_once` and `_open` (which creates the
    client and registers its closer with `self._resources.closers`)."""

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
        self.role = ""
        """What the backend does in its stage (teacher, student, ...): names its trace spans."""
        self.trace_requests = DEFAULT_TRACE_REQUESTS
        """Requests per batch that get their own trace span (the batch always gets one)."""
        self._redact = Redactor(api_key)
        self._rng = random.Random(seed)
        self._io: _LoopThread | None = None
        self._resources = _Resources()
        self._opened = False
        self._finalizer = None
        self._lock = threading.Lock()
        self._breaker = CircuitBreaker(self.retry.circuit_breaker)
        self._stopped: BackendStopped | None = None
        self.mode = "online"
        """online: one HTTP call per request; batch: provider batch jobs (distill/llm/batch.py);
        export: write the batch JSONL for an offline run (vllm run-batch) and stop."""
        from distill.llm.batch import BatchSettings

        self.batch_settings = BatchSettings()

    # -- the parts a subclass provides ---------------------------------------------------------

    async def _open(self) -> None:
        """Create the client (runs on the backend's own loop, once)."""

    async def _call_once(self, request: Request, key: str) -> Response:
        """One network attempt. Raise TransientError / PermanentError, or return a Response
        (`build_response`: text, parsed or unusable, tokens, finish_reason; latency and
        bookkeeping are filled in here)."""
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

    def generate(
        self, requests: Sequence[Request], *, progress: bool = True, role: str | None = None
    ) -> list[Response]:
        """Blocking form of generate_many (usable inside a running event loop too)."""
        from distill.llm.tracing import traced_batch

        io = self._loop_thread()
        if threading.current_thread() is io.thread:
            raise RuntimeError("generate() called on the backend's own loop: await generate_many()")
        requests = list(requests)
        with traced_batch(self, requests, role) as batch:
            future = io.submit(self._generate_many(requests, progress))
            try:
                batch.responses = future.result()
            except KeyboardInterrupt:
                future.cancel()
                raise
        return batch.responses

    async def generate_many(
        self, requests: Sequence[Request], *, progress: bool = True, role: str | None = None
    ) -> list[Response]:
        """Responses in request order; each fetched one is in the cache the moment it arrives.
        Raises BackendStopped at a permanent error or when the circuit breaker trips."""
        from distill.llm.tracing import traced_batch

        io = self._loop_thread()
        requests = list(requests)
        with traced_batch(self, requests, role) as batch:
            coro = self._generate_many(requests, progress)
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is io.loop:
                batch.responses = await coro
            else:
                batch.responses = await asyncio.wrap_future(io.submit(coro))
        return batch.responses

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

    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise BackendStopped(str(self._stopped), self._stopped.reason)

    async def _generate_many(self, requests: list[Request], progress: bool, depth: int = 0) -> list[Response]:
        self._raise_if_stopped()
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
                if response.ok:  # paid: stored and counted before anything else can fail
                    self._store(requests[indices[0]], key, response)
                for position, index in enumerate(indices):
                    results[index] = response if position == 0 else dataclasses.replace(response)
                if bar is not None:
                    bar.update(len(indices))
                    bar.set_postfix(retries=self.usage.retries, failed=self.usage.failures, refresh=False)

            try:
                if self.mode == "online":
                    await asyncio.gather(*(fetch(k, idx) for k, idx in to_fetch.items()))
                else:
                    from distill.llm.batch import fetch_in_batches

                    await fetch_in_batches(self, requests, to_fetch, results, bar)
            finally:
                if bar is not None:
                    bar.close()
            logger.info("%s/%s: %s", self.name, self.model, self.usage.summary())
            # In-flight requests were let finish (and their answers stored) before stopping.
            self._raise_if_stopped()
        assert all(r is not None for r in results)
        self.usage.count_answers(results)  # type: ignore[arg-type]
        if depth < self.retry.max_repairs:
            results = await self._repair(requests, results, depth)  # type: ignore[arg-type]
        if depth == 0:
            self.usage.count_delivered(results)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    async def _repair(self, requests: list[Request], results: list[Response], depth: int) -> list[Response]:
        """Ask again, as a new request, for each answer that failed its schema; a repair that
        comes back (usable or not) replaces the answer, one that fails leaves it as it was.
        Cached repairs are reused, so a rerun pays for none of them again."""
        todo = [
            index
            for index, (request, response) in enumerate(zip(requests, results))
            if request.schema is not None and response.ok and response.unusable and not response.blocked
        ]
        if not todo:
            return results
        repairs = [repair_request(requests[index], results[index], depth + 1) for index in todo]
        self.usage.repairs += len(repairs)
        repaired = await self._generate_many(repairs, False, depth + 1)
        for index, response in zip(todo, repaired):
            if response.ok:
                results[index] = dataclasses.replace(response, repairs=response.repairs + 1)
        return results

    def _store(self, request: Request, key: str, response: Response) -> None:
        self.cache.put(key, response, request=request_record(self.name, self.model, request))
        self.usage.fetched += 1
        self.usage.input_tokens += response.input_tokens
        self.usage.output_tokens += response.output_tokens
        online = self.prices.cost(self.model, response.input_tokens, response.output_tokens)
        self.usage.online_cost_usd += online
        self.usage.cost_usd += (
            online
            if self.mode == "online"
            else self.prices.cost(self.model, response.input_tokens, response.output_tokens, batch=True)
        )

    def _stop(self, reason: str, message: str) -> None:
        """Send nothing more: requests in flight finish (and are stored), the batch then raises."""
        if self._stopped is None:
            logger.error("%s", message)
            self._stopped = BackendStopped(message, reason)

    def _note_outcome(self, request: Request, failure: str | None, detail: str = "") -> None:
        """Feed the circuit breaker one request's outcome; stop the backend when it trips."""
        if self._breaker.record(failure):
            n = self._breaker.threshold
            self._stop(
                "circuit_breaker",
                f"{self.name}/{self.model}: the first {n} requests all ended the same way ({failure}) without a "
                f"usable answer, so the backend stopped (circuit_breaker={n}); last: {request.describe()}: "
                f"{detail}. Fix the cause and rerun: the answers already paid for are cached.",
            )

    async def _fetch_with_retries(self, request: Request, key: str) -> Response:
        policy = self.retry
        last_error = "no attempt made"
        failure = "no attempt"
        attempts = 0
        started_ns = time.time_ns()
        for attempt in range(policy.max_retries + 1):
            if self._stopped is not None:
                last_error, failure = f"not sent: {self.name}/{self.model} stopped ({self._stopped.reason})", ""
                break
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
                self._stop(
                    "config_error" if exc.config else "permanent_error",
                    f"{self.name}/{self.model}: {request.describe()} (key {key[:16]}) met a permanent error, so the "
                    f"backend stopped at it: {last_error.rstrip('. ')}. Fix the cause and rerun: the answers already "
                    "paid for are cached.",
                )
                failure = ""
                break
            except TransientError as exc:
                last_error, failure = self._redact(exc), exc.kind
                retry_after = exc.retry_after_s
            except TimeoutError:
                last_error, failure = f"timed out after {policy.timeout_s:g}s", "timeout"
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
                response.timing = (started_ns, time.time_ns())
                unusable = None if response.unusable is None else ("blocked" if response.blocked else "unusable")
                self._note_outcome(request, unusable, response.unusable or "")
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
        if failure:  # a failure of its own, not a request the backend's stop kept from being sent
            self._note_outcome(request, failure, last_error)
        message = f"{self.name}/{self.model}: gave up on {request.describe()} (key {key[:16]}) after {attempts} attempt(s): {last_error}"
        if failure:
            logger.warning("%s", message)
        return Response(
            text="",
            backend=self.name,
            model=self.model,
            key=key,
            error=message,
            attempts=attempts,
            timing=(started_ns, time.time_ns()),
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


def join_thinking(thoughts: str, answer: str) -> str:
    """One text for a response: the reasoning (when any) in a think block, then the answer."""
    thoughts = thoughts.strip()
    if not thoughts:
        return answer
    return f"<think>\n{thoughts}\n</think>\n\n{answer.lstrip()}"


def iter_chunks(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
