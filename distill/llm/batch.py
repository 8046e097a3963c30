"""Provider batch mode: the requests the cache lacks, sent as batch jobs at half the online price.

`CachedBackend` calls `fetch_in_batches` instead of its online fetch when its `mode` is `batch`
(or `export`). What it does, in order:

1. Results already held for a request (a finished job's line kept for a later call, or a line
   imported from `vllm run-batch` output by `python -m distill llm import-batch`) are turned
   into responses and cached.
2. Re-attach: the open jobs that the cache database remembers for this backend and model and
   that hold some of the requests are polled again; their requests are never sent again.
3. The rest are split by the provider's limits (requests and bytes per job) and submitted; each
   job's name and request keys are written to the cache database the moment the provider
   created it, before anything else can fail (`ResponseCache.add_batch_job`).
   Never paid twice: a job's display name is a hash of its backend, model, kind, attempt and
   request keys, and that name and the keys are written to the cache database before the create
   call (`add_batch_intent`). Before a create is tried again (its reply was lost or timed out,
   though the provider may have made the job), and on the next run for an intent a kill left
   behind, the provider's list of jobs is searched for that display name and a job found there
   (and not already stored) is adopted instead of creating another one.
4. Poll with backoff (`poll_s`, x1.5 up to `poll_max_s`) and a progress bar (requests done /
   total, job states) until every job ended or `timeout_s` passed (`BatchTimeout`: the jobs
   stay stored, a rerun re-attaches).
5. A finished job's lines become responses stored by request key in the same cache as online
   answers (the same parser as the online path, so a later online run sees no difference).
   Per-request errors follow the taxonomy of distill/llm/errors.py: a transient one is sent
   again in a new job (at most `max_retries` times), a permanent one is recorded as a failed
   request. An expired, failed or cancelled job is reported and its unfinished requests are
   resubmitted once (`Usage.batch_resubmitted`); a resubmission that ends the same way fails
   its requests.

A backend speaks batch through six methods: `batch_line(key, request)` (the provider's JSON
for one request), `_batch_create(lines, display_name)`, `_batch_list(display_name)` (the
(name, state) of the provider's jobs under that display name), `_batch_status(name)`,
`_batch_results(name)` (the raw result object per request key) and `_batch_outcome(raw,
request)` (a Response, or the TransientError / PermanentError it carries). In `export` mode
(openai backend only) nothing is sent: the lines are written as an OpenAI batch JSONL file for
`vllm run-batch`, remembered as a job named `export:<file>`, and the stage stops
(`BatchPending`) until `import-batch` brought the results in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import StageFailed
from distill.llm.base import (
    PermanentError,
    Request,
    Response,
    TransientError,
    backoff_delay,
    logger,
)
from distill.llm.cache import BatchJobRecord

MODES = ("online", "batch", "export")
BATCH_BACKENDS = ("gemini", "openai")
EXPORT_BACKENDS = ("openai",)
"""vllm run-batch reads and writes the OpenAI batch format only."""

PENDING, RUNNING, SUCCEEDED = "PENDING", "RUNNING", "SUCCEEDED"
FAILED, EXPIRED, CANCELLED = "FAILED", "EXPIRED", "CANCELLED"
PARTIALLY_SUCCEEDED = "PARTIALLY_SUCCEEDED"
"""Gemini's JobState: ended, some results missing. Collected as any ended job: the answers are
stored, per-request errors follow the taxonomy, missing requests are resubmitted once."""
ENDED = frozenset({SUCCEEDED, FAILED, EXPIRED, CANCELLED, PARTIALLY_SUCCEEDED})
KNOWN_STATES = ENDED | {PENDING, RUNNING}
"""Any other state a provider reports (Gemini's JOB_STATE_PAUSED, or one added later) is taken
as not ended: polled until it ends or batch_timeout_s passes, and logged once per job and state."""

EXPORT_PREFIX = "export:"


@dataclass(frozen=True)
class BatchSettings:
    """How a backend in batch mode submits and waits."""

    timeout_s: float = 86_400.0
    """Give up waiting after this long (the providers' completion target is 24 hours); the jobs
    stay stored and a rerun re-attaches to them."""
    poll_s: float = 30.0
    """First wait between polls; each next wait is 1.5 times longer, up to poll_max_s."""
    poll_max_s: float = 600.0
    """The longest wait between polls (a job can take hours: no need to ask every few seconds)."""
    max_requests: int | None = None
    """Requests per job (None: the provider's limit)."""
    max_bytes: int | None = None
    """Bytes of request JSON per job (None: the provider's limit)."""
    export_dir: str = "outputs/batch"
    """Export mode: where the batch JSONL files for `vllm run-batch` are written."""


@dataclass(frozen=True)
class JobStatus:
    state: str
    """One of KNOWN_STATES, or a provider's state distill does not know (treated as running)."""
    done: int = 0
    """Requests the provider finished (answered or failed) so far."""
    total: int = 0
    message: str = ""


class BatchTimeout(StageFailed):
    """Batch jobs still ran when batch_timeout_s passed; they stay stored and a rerun re-attaches."""

    def __init__(self, message: str):
        super().__init__(message, "batch_timeout")


class BatchPending(StageFailed):
    """Export mode: the batch file is written and waits for its results (import-batch)."""

    def __init__(self, message: str):
        super().__init__(message, "batch_pending")


def check_mode(role: str, kind: str, mode: Any) -> str:
    """The normalised mode of a role; a ConfigError names `<role>_mode` when the backend cannot
    do it (batch: gemini and openai; export: openai)."""
    from distill.errors import ConfigError

    mode = str(mode or "online").strip().lower()
    if mode not in MODES:
        raise ConfigError(f"{role}_mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "batch" and kind not in BATCH_BACKENDS:
        raise ConfigError(f"{role}_mode=batch needs a {' or '.join(BATCH_BACKENDS)} backend, not {kind}")
    if mode == "export" and kind not in EXPORT_BACKENDS:
        raise ConfigError(
            f"{role}_mode=export writes the OpenAI batch format: it needs the openai backend, not {kind}"
        )
    return mode


def display_name(backend, keys: Sequence[str], kind: str, attempt: int) -> str:
    """The display name of a job: the same for the same backend, model, kind, attempt and request
    keys, so a job whose create reply was lost is found again in the provider's list."""
    digest = hashlib.sha256(
        json.dumps([backend.name, backend.model, kind, attempt, list(keys)]).encode("utf-8")
    ).hexdigest()
    return f"distill-{backend.role or backend.name}-{digest[:24]}"


def split_jobs(items: Sequence[tuple[str, Any]], sizes: Sequence[int], max_requests: int, max_bytes: int):
    """Consecutive chunks of `items` with at most max_requests items and max_bytes bytes each
    (a single item over max_bytes still gets a job of its own: the provider will say no)."""
    chunk: list = []
    size = 0
    for item, item_size in zip(items, sizes):
        if chunk and (len(chunk) >= max_requests or size + item_size > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


class _Run:
    """One fetch_in_batches call: the requests to answer and the jobs that hold them."""

    def __init__(self, backend, requests: Sequence[Request], to_fetch: dict[str, list[int]], results, bar):
        self.backend = backend
        self.cache = backend.cache
        self.settings: BatchSettings = backend.batch_settings
        self.requests = {key: requests[indices[0]] for key, indices in to_fetch.items()}
        self.to_fetch = to_fetch
        self.results = results
        self.bar = bar
        self.left = set(to_fetch)
        """Keys still without an outcome."""
        self.settled_keys: set[str] = set()
        """Keys answered by this call so far, plus those an open job holds that are cached."""
        self.jobs: dict[str, Any] = {}
        """Open jobs being polled: name -> BatchJobRecord."""
        self.status: dict[str, JobStatus] = {}
        self.unknown_states: set[tuple[str, str]] = set()
        """(job, state) pairs already logged as unknown."""
        self.started = time.monotonic()

    # -- outcomes ------------------------------------------------------------------------------

    def settle(self, key: str, response: Response) -> None:
        if key not in self.left:
            return
        self.left.discard(key)
        self.settled_keys.add(key)
        indices = self.to_fetch[key]
        for position, index in enumerate(indices):
            self.results[index] = response if position == 0 else dataclasses.replace(response)
        if self.bar is not None:
            self.bar.update(len(indices))

    def store(self, key: str, response: Response, attempts: int, latency_s: float) -> Response:
        """A paid answer: stored and counted before anything else can fail (once per key)."""
        backend = self.backend
        cached = self.cache.get(key)
        if cached is not None:  # stored by an earlier (killed) pass over the same job
            return dataclasses.replace(cached, cached=False, attempts=attempts)
        response.latency_s = latency_s
        response.backend, response.model, response.key = backend.name, backend.model, key
        response.cached, response.attempts = False, attempts
        backend._store(self.requests[key], key, response)
        unusable = None if response.unusable is None else ("blocked" if response.blocked else "unusable")
        backend._note_outcome(self.requests[key], unusable, response.unusable or "")
        return response

    def fail(self, key: str, message: str, attempts: int, kind: str) -> None:
        """No answer for `key`; `kind` is how it failed, "" when the backend's stop kept it from
        being sent (as online: neither warned about nor fed to the circuit breaker)."""
        backend = self.backend
        backend.usage.failures += 1
        text = backend._redact(
            f"{backend.name}/{backend.model}: gave up on {self.requests[key].describe()} (key {key[:16]}) "
            f"in batch mode: {message}"
        )
        if kind:
            logger.warning("%s", text)
            backend._note_outcome(self.requests[key], kind, message)
        self.settle(
            key, Response(text="", backend=backend.name, model=backend.model, key=key, error=text, attempts=attempts)
        )

    def take_held_results(self) -> None:
        """Answers already held as result lines (kept from a job, or imported) become responses."""
        held = self.cache.batch_results(self.left)
        for key, line in held.items():
            outcome = self.backend._batch_outcome(json.loads(line), self.requests[key])
            if isinstance(outcome, Response):
                self.settle(key, self.store(key, outcome, 1, 0.0))
        self.cache.drop_batch_results([key for key in held if key not in self.left])

    # -- jobs ----------------------------------------------------------------------------------

    async def find(self, display: str) -> tuple[str, str] | None:
        """(name, state) of a job the provider holds under `display` that the cache does not store
        yet (a stored one is an earlier job of the same requests), or None. A provider that cannot
        list its jobs (PermanentError) is warned about and taken to hold none."""
        backend = self.backend
        try:
            found = await backend._batch_list(display)
        except PermanentError as exc:
            logger.warning(
                "%s/%s: cannot list batch jobs to find %s (%s): a job made by a lost create reply may be paid twice",
                backend.name,
                backend.model,
                display,
                backend._redact(exc),
            )
            return None
        return next(((name, state) for name, state in found if not self.cache.has_batch_job(name)), None)

    async def adopt_intents(self) -> None:
        """Jobs a killed run asked for but never stored: adopted when the provider made them,
        forgotten (their requests go out again) when it did not."""
        backend = self.backend
        if backend.mode == "export":
            return
        policy = backend.retry
        for intent in self.cache.batch_intents(backend.name, backend.model):
            for attempt in range(policy.max_retries + 1):
                try:
                    found = await self.find(intent.display)
                    break
                except (TransientError, TimeoutError) as exc:
                    if attempt == policy.max_retries:
                        raise StageFailed(
                            f"{backend.name}/{backend.model}: could not look up batch job {intent.display} (asked for "
                            f"by an earlier run): {backend._redact(exc)}. Rerun: nothing is created before it is found.",
                            "batch_submit",
                        ) from None
                    retry_after = getattr(exc, "retry_after_s", None)
                    await asyncio.sleep(
                        backoff_delay(attempt, policy.backoff_base_s, policy.backoff_max_s, retry_after, backend._rng)
                    )
            if found is not None:
                name, state = found
                self.cache.add_batch_job(
                    name,
                    backend=backend.name,
                    model=backend.model,
                    keys=intent.keys,
                    kind=intent.kind,
                    attempt=intent.attempt,
                    state=state,
                )
                logger.warning(
                    "%s/%s: adopted batch job %s (%s, %d requests) that an earlier run created but never stored: "
                    "not sent again",
                    backend.name,
                    backend.model,
                    name,
                    state,
                    len(intent.keys),
                )
            self.cache.drop_batch_intent(intent.display)

    def reattach(self) -> None:
        backend = self.backend
        jobs = self.cache.batch_jobs(backend.name, backend.model, open_only=True)
        self.settled_keys |= set(self.cache.get_many(k for job in jobs for k in job.keys if k not in self.left))
        for job in jobs:
            if not self.left.intersection(job.keys) and self.settled_keys.issuperset(job.keys):
                # Every request it held was answered here (imported lines): nothing left to wait for.
                self.cache.update_batch_job(job.name, state=SUCCEEDED, closed=True)
            elif self.left.intersection(job.keys):
                self.jobs[job.name] = job
                held = len(self.left.intersection(job.keys))
                logger.warning(
                    "%s/%s: re-attached to batch job %s (%s, %d of its %d requests needed): not sent again",
                    backend.name,
                    backend.model,
                    job.name,
                    job.state,
                    held,
                    len(job.keys),
                )

    def held_keys(self) -> set[str]:
        return {key for job in self.jobs.values() for key in job.keys}

    async def submit(self, keys: Sequence[str], *, kind: str, attempt: int) -> None:
        backend = self.backend
        if not keys:
            return
        if backend._stopped is not None:
            # As online: a stopped backend (circuit breaker, permanent error) pays for nothing more.
            made = attempt - 1 if kind in ("first", "retry") else attempt
            for key in keys:
                reason = f"not sent: {backend.name}/{backend.model} stopped ({backend._stopped.reason})"
                self.fail(key, reason, made, "")
            return
        limit_requests, limit_bytes = backend.batch_limits()
        max_requests = self.settings.max_requests or limit_requests
        max_bytes = self.settings.max_bytes or limit_bytes
        lines = [(key, backend.batch_line(key, self.requests[key])) for key in keys]
        sizes = [len(json.dumps(line, ensure_ascii=False).encode("utf-8")) + 1 for _, line in lines]
        for chunk in split_jobs(lines, sizes, max_requests, max_bytes):
            chunk_keys = [key for key, _ in chunk]
            if backend.mode == "export":  # nothing is paid: a fresh file name per export
                display = f"distill-{backend.role or backend.name}-{uuid.uuid4().hex[:12]}"
            else:
                display = display_name(backend, chunk_keys, kind, attempt)
                # Before the call: a kill or a lost reply from here on is found again by this name.
                self.cache.add_batch_intent(
                    display, backend=backend.name, model=backend.model, keys=chunk_keys, kind=kind, attempt=attempt
                )
            name, state = await self._create(chunk, display)
            # Stored the moment the provider created it: a kill from here on re-attaches.
            self.cache.add_batch_job(
                name,
                backend=backend.name,
                model=backend.model,
                keys=chunk_keys,
                kind=kind,
                attempt=attempt,
                state=state,
            )
            # A kill before this drop leaves an intent whose job is stored: the next run's look-up
            # skips stored jobs, finds nothing and forgets it.
            self.cache.drop_batch_intent(display)
            backend.usage.batch_jobs += 1
            backend.usage.requests += len(chunk)
            if kind == "resubmit":
                backend.usage.batch_resubmitted += len(chunk)
            if attempt > 1:
                backend.usage.retries += len(chunk)
            self.jobs[name] = BatchJobRecord(
                name=name,
                backend=backend.name,
                model=backend.model,
                keys=tuple(key for key, _ in chunk),
                kind=kind,
                attempt=attempt,
                state=state,
                closed=False,
                created_at=time.time(),
            )
            logger.info(
                "%s/%s: batch job %s created (%s, %d requests)", backend.name, backend.model, name, kind, len(chunk)
            )

    async def _create(self, chunk, display: str) -> tuple[str, str]:
        backend = self.backend
        if backend.mode == "export":
            return write_export(backend, chunk, self.settings.export_dir, display), PENDING
        policy = backend.retry
        for attempt in range(policy.max_retries + 1):
            try:
                if attempt > 0:
                    # The last try may have made the job though its reply never came: adopt it.
                    found = await self.find(display)
                    if found is not None:
                        logger.warning(
                            "%s/%s: batch job %s was created though the reply was lost: adopted, not created again",
                            backend.name,
                            backend.model,
                            found[0],
                        )
                        return found
                return await backend._batch_create(chunk, display)
            except PermanentError as exc:
                message = backend._redact(exc)
                backend._stop(
                    "config_error" if exc.config else "permanent_error",
                    f"{backend.name}/{backend.model}: the provider refused a batch job of {len(chunk)} requests: "
                    f"{message.rstrip('. ')}. Fix the cause and rerun: jobs already created are stored and re-attached.",
                )
                backend._raise_if_stopped()
            except (TransientError, TimeoutError) as exc:  # a timeout too: the job may exist all the same
                if attempt == policy.max_retries:
                    raise StageFailed(
                        f"{backend.name}/{backend.model}: could not create a batch job after {attempt + 1} attempts: "
                        f"{backend._redact(exc) or type(exc).__name__}. Rerun: jobs already created are stored and "
                        "re-attached, and one whose reply was lost is found by its display name.",
                        "batch_submit",
                    ) from None
                retry_after = getattr(exc, "retry_after_s", None)
                await asyncio.sleep(
                    backoff_delay(attempt, policy.backoff_base_s, policy.backoff_max_s, retry_after, backend._rng)
                )
        raise AssertionError("unreachable")

    async def poll(self, name: str) -> JobStatus | None:
        """The job's status, or None when this poll failed transiently (polled again later)."""
        backend = self.backend
        if name.startswith(EXPORT_PREFIX):
            job = self.jobs[name]
            # A key can be both cached and still held as a line (a kill between store and drop, or the
            # same output file imported twice): count it once, or the job looks done too early.
            imported = len(set(self.cache.batch_results(job.keys)) | set(self.cache.get_many(job.keys)))
            state = SUCCEEDED if imported >= len(job.keys) else PENDING
            return JobStatus(state, imported, len(job.keys))
        try:
            return await backend._batch_status(name)
        except (TransientError, TimeoutError) as exc:
            logger.warning(
                "%s/%s: polling batch job %s failed (%s); will poll again",
                backend.name,
                backend.model,
                name,
                backend._redact(exc),
            )
            return None
        except PermanentError as exc:
            backend._stop(
                "permanent_error",
                f"{backend.name}/{backend.model}: batch job {name} cannot be read: {backend._redact(exc)}. It stays "
                "stored; fix the cause and rerun.",
            )
            backend._raise_if_stopped()
            raise

    async def collect(self, name: str, status: JobStatus) -> None:
        """Store a finished job's answers, retry its transient failures, resubmit its unfinished
        requests once (an expired or failed job), then close it."""
        backend = self.backend
        job = self.jobs.pop(name)
        if name.startswith(EXPORT_PREFIX):
            lines = {key: json.loads(line) for key, line in self.cache.batch_results(job.keys).items()}
        else:
            try:
                lines = await backend._batch_results(name)
            except TransientError as exc:  # the results could not be read this time: next poll
                logger.warning(
                    "%s/%s: reading batch job %s failed (%s)", backend.name, backend.model, name, backend._redact(exc)
                )
                self.jobs[name] = job
                return
            except PermanentError as exc:  # a clean stop (StageFailed), as in poll; the job stays open
                backend._stop(
                    "permanent_error",
                    f"{backend.name}/{backend.model}: the results of batch job {name} cannot be read: "
                    f"{backend._redact(exc)}. It stays stored; fix the cause and rerun.",
                )
                backend._raise_if_stopped()
                raise
        if status.state != SUCCEEDED:
            logger.warning(
                "%s/%s: batch job %s ended %s%s with %d of %d results",
                backend.name,
                backend.model,
                name,
                status.state,
                f" ({backend._redact(status.message)})" if status.message else "",
                len(lines),
                len(job.keys),
            )
        latency = max(0.0, time.time() - job.created_at)
        retry, unfinished, keep = [], [], []
        # A request another open job carries (this job's retry, made before a kill) is that job's.
        elsewhere = {key for other in self.jobs.values() for key in other.keys}
        for key in job.keys:
            if key in elsewhere:
                continue
            raw = lines.get(key)
            if key not in self.requests:  # another call's request: keep the line for it
                if raw is not None and key not in self.cache:
                    keep.append((key, json.dumps(raw, ensure_ascii=False, sort_keys=True)))
                continue
            if key not in self.left:
                continue
            if raw is None:
                unfinished.append(key)
                continue
            outcome = backend._batch_outcome(raw, self.requests[key])
            if isinstance(outcome, Response):
                self.settle(key, self.store(key, outcome, job.attempt, latency))
            elif isinstance(outcome, TransientError) and job.attempt <= backend.retry.max_retries:
                retry.append(key)
            else:
                kind = getattr(outcome, "kind", "error")
                self.fail(key, backend._redact(outcome), job.attempt, kind)
        if keep:
            self.cache.put_batch_results(name, keep)
        if unfinished:
            if job.kind == "resubmit":
                for key in unfinished:
                    self.fail(
                        key,
                        f"batch job {name} ended {status.state} twice without this request",
                        job.attempt,
                        status.state,
                    )
                unfinished = []
            else:
                logger.warning(
                    "%s/%s: batch job %s ended %s; resubmitting its %d unfinished requests once",
                    backend.name,
                    backend.model,
                    name,
                    status.state,
                    len(unfinished),
                )
        # New jobs first, then the close: a kill between them re-attaches to both, never loses one.
        await self.submit(unfinished, kind="resubmit", attempt=job.attempt)
        await self.submit(retry, kind="retry", attempt=job.attempt + 1)
        self.cache.update_batch_job(name, state=status.state, closed=True)
        self.cache.drop_batch_results(job.keys if name.startswith(EXPORT_PREFIX) else ())

    def show(self) -> None:
        if self.bar is None:
            return
        states: dict[str, int] = {}
        done = total = 0
        for name in self.jobs:
            status = self.status.get(name)
            state = status.state if status else "?"
            states[state] = states.get(state, 0) + 1
            if status:
                done, total = done + status.done, total + status.total
        text = " ".join(f"{state.lower()}={n}" for state, n in sorted(states.items()))
        self.bar.set_postfix_str(f"jobs {text or 'none'} · in jobs {done}/{total} done", refresh=True)


async def fetch_in_batches(backend, requests: Sequence[Request], to_fetch: dict[str, list[int]], results, bar) -> None:
    """Fill `results` (the indexes of `to_fetch`) through provider batch jobs; see the module doc."""
    run = _Run(backend, requests, to_fetch, results, bar)
    backend.usage.batch = 1
    run.take_held_results()
    await run.adopt_intents()
    run.reattach()
    held = run.held_keys()  # once: per key it would cost O(requests x held) after a kill at scale
    await run.submit([key for key in to_fetch if key in run.left and key not in held], kind="first", attempt=1)
    delay = max(0.0, run.settings.poll_s)
    while run.jobs:
        for name in list(run.jobs):
            status = await run.poll(name)
            if status is None:
                continue
            run.status[name] = status
            if status.state not in KNOWN_STATES and (name, status.state) not in run.unknown_states:
                run.unknown_states.add((name, status.state))
                logger.warning(
                    "%s/%s: batch job %s reports state %s, which distill does not know: taken as not ended "
                    "(polled until it ends or batch_timeout_s=%g passes)",
                    backend.name,
                    backend.model,
                    name,
                    status.state,
                    run.settings.timeout_s,
                )
            if status.state != run.jobs[name].state:
                run.cache.update_batch_job(name, state=status.state)
                run.jobs[name] = dataclasses.replace(run.jobs[name], state=status.state)
            if status.state in ENDED:
                await run.collect(name, status)
        run.show()
        if not run.jobs:
            break
        exported = [name for name in run.jobs if name.startswith(EXPORT_PREFIX)]
        if exported:
            raise BatchPending(export_instructions(backend, exported))
        if time.monotonic() - run.started > run.settings.timeout_s:
            raise BatchTimeout(
                f"{backend.name}/{backend.model}: {len(run.jobs)} batch job(s) still running after batch_timeout_s="
                f"{run.settings.timeout_s:g} ({', '.join(run.jobs)}). They stay stored in {run.cache.path}: rerun "
                "later and the stage re-attaches to them (nothing is sent twice)."
            )
        # Never sleep past the deadline: a long poll interval must not stretch batch_timeout_s.
        await asyncio.sleep(min(delay, max(0.0, run.started + run.settings.timeout_s - time.monotonic())))
        delay = min(max(delay * 1.5, 0.01), run.settings.poll_max_s)
    assert not run.left, f"batch mode left {len(run.left)} requests without an outcome"


# ---------------------------------------------------------------------------------------------
# Export / import: the OpenAI batch JSONL for `vllm run-batch`


def write_export(backend, chunk, export_dir: str, display: str) -> str:
    """Write the OpenAI batch JSONL of `chunk` (atomically); the job name is `export:<path>`."""
    from distill.io import atomic_path

    directory = Path(export_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = (directory / f"{display}.jsonl").resolve()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for _, line in chunk:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    return f"{EXPORT_PREFIX}{path}"


def export_instructions(backend, names: Sequence[str]) -> str:
    files = [name.removeprefix(EXPORT_PREFIX) for name in names]
    first = files[0]
    return (
        f"{backend.name}/{backend.model}: wrote {len(files)} batch file(s) of the requests the cache lacks: "
        f"{', '.join(files)}. Run them offline, e.g. `vllm run-batch -i {first} -o results.jsonl --model "
        f"{backend.model}`, import the output with `python -m distill llm import-batch results.jsonl --cache "
        f"{backend.cache.path}`, and rerun this stage: it picks the answers up from the cache."
    )


def import_batch(cache, path: str | Path) -> tuple[int, int]:
    """Import an OpenAI batch output file (from `vllm run-batch` or the OpenAI Batch API) into
    `cache`: each line's `custom_id` must be a request key of an open export job. The lines are
    kept until the stage that exported them turns them into responses. Nothing is stored when a
    line is bad (an InputError names the file, the line and the field). Returns (lines imported,
    requests of open export jobs still without a result)."""
    from distill.errors import InputError

    path = Path(path)
    jobs = [job for job in cache.batch_jobs(open_only=True) if job.name.startswith(EXPORT_PREFIX)]
    owner = {key: job.name for job in jobs for key in job.keys}
    lines: dict[str, list[tuple[str, str]]] = {}
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise InputError(path, f"cannot read batch output ({exc.strerror})") from None
    with handle:
        for row, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not valid JSON ({exc.msg})", row=row) from None
            if not isinstance(data, dict):
                raise InputError(path, "a batch output line is a JSON object", row=row)
            key = data.get("custom_id")
            if not isinstance(key, str) or not key:
                raise InputError(path, "missing custom_id", row=row, field="custom_id")
            if key not in owner:
                raise InputError(
                    path,
                    f"{key[:16]}... is no request of an open export job in {cache.path}",
                    row=row,
                    field="custom_id",
                )
            response = data.get("response")
            if data.get("error") is None and not isinstance(response, dict):
                raise InputError(path, "needs a response object (or an error)", row=row, field="response")
            lines.setdefault(owner[key], []).append((key, json.dumps(data, ensure_ascii=False, sort_keys=True)))
    imported = sum(cache.put_batch_results(job, rows) for job, rows in lines.items())
    held = cache.batch_results(owner)
    missing = sum(1 for key in owner if key not in held and key not in cache)
    return imported, missing


def openai_outcome(raw: dict[str, Any], request: Request, to_response) -> Response | Exception:
    """One OpenAI batch output line as a Response (the online parser `to_response`), or the
    error it carries classified by the taxonomy."""
    from distill.llm.errors import status_error

    error = raw.get("error")
    response = raw.get("response") or {}
    status = int(response.get("status_code") or 0)
    if error is not None or status != 200:
        body = response.get("body") or {}
        detail = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        if error is not None and not status:
            # A request the batch could not run (no HTTP status): code and message only.
            message = f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
            return TransientError(message, kind=f"batch {error.get('code', 'error')}")
        return status_error(status, str(detail or error or body)[:300])
    try:
        return to_response(response.get("body"), request)
    except TransientError as exc:
        return exc
