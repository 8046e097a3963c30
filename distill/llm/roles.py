"""Role backends for the LLM stages: one check of a role's backend and model, one way to build the
backend, one way to report what it used.

A role is what a model does in a stage: the teacher and the student in mine (the judge asks
the teacher's backend), the teacher and the verifier in augment. Each stage config names a
role's backend kind in `<role>_backend` and its model in `<role>`; `check_role` validates
both (an error names the field at fault), and `role_backend` builds the backend with the
stage's retry, concurrency and cost settings in front of the run's one response cache. A
replay backend looks a request up first as the bundled recordings keyed it
(distill/llm/recording.py), then as a live gemini, openai or local run would have.

`usage_metrics` turns each role's `Usage` counters into `llm/<role>/*` metrics plus `llm/*`
summed over the roles (with `failure_rate`, the share of asked requests that got no usable
answer); `usage_summary` is the one line a stage prints per role. Two rules both LLM stages
follow live here too: `enforce_failure_rate` fails a stage when a role's share of requests
without a usable answer is above its `max_failure_rate`, and `resume_from_cache` marks KILLED the runs
a killed process left RUNNING on the same response cache, whose work this run resumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distill.errors import ConfigError, StageFailed
from distill.llm.factory import BACKENDS
from distill.llm.recording import EXAMPLE_MODELS, RECORDED_BACKEND

ROLES = ("teacher", "student", "judge", "verifier")


def check_mode(role: str, kind: str, mode: Any) -> str:
    """The normalised `<role>_mode` (online, batch, export) for the role's backend kind; a
    ConfigError names the field when that backend cannot do it."""
    from distill.llm.batch import check_mode as check

    return check(role, kind, mode)


def check_role(role: str, kind: Any, model: Any) -> tuple[str, str]:
    """The normalised (backend kind, model name) of a role; a ConfigError names the field at fault
    (`<role>_backend` or `<role>`)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    kind = str(kind or "").strip().lower()
    if kind not in BACKENDS:
        raise ConfigError(f"{role}_backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    model = str(model or "").strip()
    if not model:
        raise ConfigError(f"{role} needs a model name")
    if kind != "replay" and model in EXAMPLE_MODELS:
        raise ConfigError(
            f"{role} {model!r} exists only in the bundled recording (replay backend); "
            f"name a real model with -P {role}=... to use the {kind} backend"
        )
    return kind, model


@dataclass(frozen=True)
class BackendSettings:
    """How a stage's backends send requests: the fields mine and augment share by name."""

    concurrency: int = 16
    max_retries: int = 6
    timeout_s: float = 300.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    prices: str | None = None
    """Price table file for the cost estimate (None: the built-in table)."""
    seed: int = 0
    """Seeds the retry jitter (sampling seeds are per request)."""
    device: str | None = None
    """Local backend: cuda, cpu, mps; None picks one."""
    batch_size: int = 8
    """Local backend: prompts per generate call."""
    max_repairs: int = 1
    """New requests for an answer that fails its schema (network backends)."""
    circuit_breaker: int = 8
    """Stop a backend whose first N requests all end the same way without a usable answer."""
    trace_requests: int = 16
    """Requests per batch with a trace span of their own."""
    batch_timeout_s: float = 86_400.0
    """Batch mode: stop waiting for the provider's jobs after this long (a rerun re-attaches)."""
    batch_poll_s: float = 30.0
    """Batch mode: first wait between polls of a job (then x1.5, up to 10 minutes)."""
    batch_dir: str = "outputs/batch"
    """Export mode: where the batch JSONL files for `vllm run-batch` are written."""

    @classmethod
    def of(cls, cfg: Any) -> BackendSettings:
        """The settings a stage config holds (`device` "auto" means None; `student_batch_size`
        is the local batch size where a config has one)."""
        device = getattr(cfg, "device", None)
        return cls(
            concurrency=cfg.concurrency,
            max_retries=cfg.max_retries,
            timeout_s=cfg.timeout_s,
            backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s,
            prices=cfg.prices,
            seed=cfg.seed,
            device=None if device in (None, "auto") else device,
            batch_size=getattr(cfg, "student_batch_size", cls.batch_size),
            max_repairs=cfg.max_repairs,
            circuit_breaker=cfg.circuit_breaker,
            trace_requests=cfg.trace_requests,
            batch_timeout_s=getattr(cfg, "batch_timeout_s", cls.batch_timeout_s),
            batch_poll_s=getattr(cfg, "batch_poll_s", cls.batch_poll_s),
            batch_dir=getattr(cfg, "batch_dir", cls.batch_dir),
        )

    def batch(self):
        """The batch-mode settings of a backend (distill.llm.batch.BatchSettings)."""
        from distill.llm.batch import BatchSettings

        return BatchSettings(
            timeout_s=self.batch_timeout_s,
            poll_s=self.batch_poll_s,
            poll_max_s=max(self.batch_poll_s, BatchSettings.poll_max_s),
            export_dir=self.batch_dir,
        )


def role_backend(kind: str, model: str, *, cache, settings: BackendSettings, role: str = "", mode: str = "online"):
    """The backend of one role, in front of the run's response cache (a ResponseCache); `role`
    names its trace spans; `mode` (gemini, openai): online, batch or export (checked by
    `check_mode` against `<role>_mode`)."""
    from distill.llm.factory import make_backend
    from distill.llm.replay import RECORDING_BACKENDS

    backend = make_backend(
        kind,
        model,
        cache=cache,
        concurrency=settings.concurrency,
        max_retries=settings.max_retries,
        timeout_s=settings.timeout_s,
        backoff_base_s=settings.backoff_base_s,
        backoff_max_s=settings.backoff_max_s,
        max_repairs=settings.max_repairs,
        circuit_breaker=settings.circuit_breaker,
        prices=settings.prices,
        seed=settings.seed,
        device=settings.device,
        batch_size=settings.batch_size,
        recorded_by=(RECORDED_BACKEND, *RECORDING_BACKENDS),
        **({"mode": mode, "batch": settings.batch()} if kind in ("gemini", "openai") else {}),
    )
    backend.role = role
    backend.trace_requests = settings.trace_requests
    return backend


def usage_metrics(usages: Mapping[str, Any]) -> dict[str, float]:
    """`llm/<role>/*` per role and `llm/*` summed over the roles (requests, tokens, cost, ...)."""
    metrics: dict[str, float] = {}
    for role, usage in usages.items():
        metrics.update({name: float(value) for name, value in usage.as_dict(f"llm/{role}/").items()})
        metrics[f"llm/{role}/failure_rate"] = usage.failure_rate
    if usages:
        for name in dataclasses.asdict(next(iter(usages.values()))):
            metrics[f"llm/{name}"] = float(sum(getattr(usage, name) for usage in usages.values()))
        metrics["llm/failure_rate"] = metrics["llm/unanswered"] / metrics["llm/asked"] if metrics["llm/asked"] else 0.0
    return metrics


LLM_HEADLINE = (
    "requests",
    "cache_hits",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "online_cost_usd",
    "batch_jobs",
    "unanswered",
    "unusable",
    "blocked",
    "truncated",
    "failure_rate",
)
"""The `llm/*` totals a run shows as metrics; every figure per role is in `usage_table`."""


def usage_headline(usages: Mapping[str, Any]) -> dict[str, float]:
    """`llm/<name>` summed over the roles, for the names in LLM_HEADLINE: what users compare
    between runs (a run's metric list stays short; the per-role detail is a table)."""
    totals = usage_metrics(usages)
    return {f"llm/{name}": totals[f"llm/{name}"] for name in LLM_HEADLINE if f"llm/{name}" in totals}


def usage_table(usages: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per role with every usage figure and its failure rate (logged with log_table)."""
    return [{"role": role, **usage.as_dict(), "failure_rate": usage.failure_rate} for role, usage in usages.items()]


def usage_summary(usage) -> str:
    """One line of what a role's backend did: requests, cache hits, retries, tokens, cost."""
    line = usage.summary()
    if usage.cache_hits:
        line += f"; cached tokens in/out {usage.cached_input_tokens}/{usage.cached_output_tokens}"
    return line


def enforce_failure_rate(usages: Mapping[str, Any], max_failure_rate: float) -> None:
    """A StageFailed (reason `failure_rate`) when, for any role, more than `max_failure_rate` of
    the requests it asked got no usable answer (failed after retries, blocked, unusable after
    repairs). Per role, because each role's answers are needed: a teacher that failed on every
    item is not diluted by a student that answered. Called once the outputs are written: they
    stay for a look, and the cache for the rerun."""
    above = {role: usage for role, usage in usages.items() if usage.failure_rate > max_failure_rate}
    if not above:
        return
    roles = ", ".join(f"{role} {u.unanswered} of {u.asked} ({u.failure_rate:.0%})" for role, u in above.items())
    raise StageFailed(
        f"requests with no usable answer: {roles}, above max_failure_rate={max_failure_rate:g}. The outputs "
        "were written for a look and every paid answer is cached: fix the cause and rerun to fetch only what "
        "is missing.",
        "failure_rate",
    )


def resume_from_cache(cache_path: Any) -> list[str]:
    """Tag the active run with the response cache it works from, and mark KILLED the runs on the
    same cache that a killed process left RUNNING (this run resumes their work: what they paid
    for is in the cache). Returns one line per run closed, for the console."""
    import hashlib
    from pathlib import Path

    from distill import tracking

    resume_key = hashlib.sha256(str(Path(cache_path).resolve()).encode("utf-8")).hexdigest()[:16]
    return [
        f"note: run {run.info.run_id} ({run.info.run_name}) was left RUNNING by a process that no longer "
        f"exists; marked it KILLED. This run resumes its work from {cache_path}."
        for run in tracking.close_stale_runs(resume_key)
    ]
