"""Trace spans of LLM calls, in the Traces tab of the run that made them.

Each batch a backend answers (one `generate` / `generate_many` call) is one trace, linked to
the active run: a root span named after the role (teacher, student, judge, verifier) with the
batch's totals (requests, cache hits, paid fetches, retries, failures, unusable answers, tokens,
cost, wall time), and one child span for each of up to `trace_requests` of its requests, spread
evenly over the batch, with the model, the request key, the messages and the answer, tokens,
latency, attempts (so retries), and whether it was a cache hit or paid. A batch of any size is
one trace of at most `1 + trace_requests` spans, so a large run stays readable and cheap.

Nothing secret goes in: no key, no header, no base URL; every text is scrubbed by the
backend's Redactor (its own key) and `tracking.redact` (the key environment variables).

The spans are written when the batch ends, from the calling thread, with the times measured
while it ran: the backend's event-loop thread never touches MLflow, and a failure to trace is
logged, never raised. Outside an MLflow run nothing is traced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distill.llm.base import Request, Response, Usage, logger

TEXT_LIMIT = 4000
"""Characters of an answer (and of each message) kept in a span: enough to read, bounded in size."""
USAGE_DELTA = (
    "requests",
    "fetched",
    "cache_hits",
    "retries",
    "failures",
    "unusable",
    "blocked",
    "truncated",
    "repairs",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
"""Usage counters whose change over a batch the batch span carries."""


@dataclass
class Batch:
    """Filled by the caller inside `traced_batch`: the responses, once the batch returned."""

    responses: list[Response] = field(default_factory=list)


@contextlib.contextmanager
def traced_batch(backend: Any, requests: Sequence[Request], role: str | None):
    """Trace one batch of `backend` (its role, unless `role` names another: the judge asks the
    teacher's backend) once it ends, in success or failure."""
    from distill import tracking

    batch = Batch()
    destination = tracking.trace_destination() if requests else None
    if destination is None:
        yield batch
        return
    before = dataclasses.replace(backend.usage)
    started_ns = time.time_ns()
    error: str | None = None
    try:
        yield batch
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            record_batch(
                backend,
                role or getattr(backend, "role", "") or backend.name,
                list(requests),
                batch.responses,
                destination=destination,
                started_ns=started_ns,
                usage=usage_delta(before, backend.usage),
                error=error,
            )
        except Exception:  # tracing must never cost a run its result
            logger.warning("could not trace a %s batch to MLflow", backend.name, exc_info=True)


def usage_delta(before: Usage, after: Usage) -> dict[str, float]:
    return {name: getattr(after, name) - getattr(before, name) for name in USAGE_DELTA}


def sampled(n: int, limit: int) -> list[int]:
    """Up to `limit` indexes of n, spread evenly (first and last included)."""
    if limit <= 0 or n <= 0:
        return []
    if n <= limit:
        return list(range(n))
    if limit == 1:
        return [0]
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def record_batch(
    backend: Any,
    role: str,
    requests: list[Request],
    responses: list[Response],
    *,
    destination: tuple[str, str],
    started_ns: int,
    usage: dict[str, float],
    error: str | None,
) -> None:
    """Write the batch's trace: its root span, then a child span per sampled request."""
    from distill import tracking

    scrub = _scrubber(backend)
    ended_ns = time.time_ns()
    answered = [r for r in responses if r.ok]
    tokens_in = sum(r.input_tokens for r in answered) if responses else usage["input_tokens"]
    tokens_out = sum(r.output_tokens for r in answered) if responses else usage["output_tokens"]
    root = tracking.start_span(
        role,
        destination=destination,
        span_type="CHAIN",
        inputs={"requests": len(requests), "role": role, "backend": backend.name, "model": backend.model},
        attributes={"distill.role": role, "distill.backend": backend.name, "distill.model": backend.model},
        start_ns=started_ns,
    )
    traced = sampled(len(responses), int(getattr(backend, "trace_requests", 0)))
    for index in traced:
        _record_request(backend, role, requests[index], responses[index], root, destination, started_ns, scrub)
    tracking.end_span(
        root,
        outputs={
            "answered": sum(1 for r in responses if r.usable),
            "unanswered": sum(1 for r in responses if not r.usable),
        },
        attributes={
            **{f"distill.usage.{name}": value for name, value in usage.items()},
            "distill.requests_in_batch": len(requests),
            "distill.traced_requests": len(traced),
            **tracking.token_usage_attribute(tokens_in, tokens_out),
        },
        error=scrub(error) if error else None,
        end_ns=ended_ns,
    )


def _record_request(backend, role, request: Request, response: Response, root, destination, batch_start, scrub):
    from distill import tracking

    start_ns, end_ns = response.timing or (batch_start, batch_start)
    span = tracking.start_span(
        request.label or f"{role} request",
        destination=destination,
        parent=root,
        span_type="LLM",
        inputs={
            "messages": [{"role": m["role"], "content": scrub(m["content"])[:TEXT_LIMIT]} for m in request.messages],
            "params": request.params.to_key_dict(),
            "sample_index": request.sample_index,
            "schema": None if request.schema is None else request.schema.__name__,
        },
        start_ns=start_ns,
    )
    attributes = {
        "distill.role": role,
        "distill.backend": response.backend or backend.name,
        "distill.model": response.model or backend.model,
        "distill.request_key": response.key,
        "distill.cache": "hit" if response.cached else ("paid" if response.ok else "failed"),
        "distill.attempts": response.attempts,
        "distill.retries": max(0, response.attempts - 1),
        "distill.latency_s": response.latency_s,
        "distill.finish_reason": response.finish_reason,
        "distill.blocked": response.blocked,
        "distill.truncated": response.truncated,
        "distill.unusable": scrub(response.unusable) if response.unusable else None,
        "distill.repairs": response.repairs,
    }
    if response.ok:
        attributes.update(tracking.token_usage_attribute(response.input_tokens, response.output_tokens))
    tracking.end_span(
        span,
        outputs={"text": scrub(response.text)[:TEXT_LIMIT], "parsed": _scrubbed_json(response.parsed, scrub)}
        if response.ok
        else None,
        attributes=attributes,
        error=scrub(response.error) if response.error else None,
        end_ns=end_ns,
    )


def _scrubber(backend: Any):
    """Text to text with the backend's key (when it has one) and the key variables removed."""
    from distill import tracking

    own = getattr(backend, "_redact", None)

    def scrub(text: Any) -> str:
        text = str(text)
        return tracking.redact(own(text) if own is not None else text)

    return scrub


def _scrubbed_json(value: Any, scrub) -> Any:
    """A parsed JSON answer, scrubbed like any text (an answer could quote whatever it was sent)."""
    import json

    return None if value is None else json.loads(scrub(json.dumps(value, ensure_ascii=False)))
