"""Real HTTP servers on 127.0.0.1 that stand in for LLM APIs in tests and benchmarks.

`FakeLLMServer` is the shared machinery (an aiohttp app on its own event loop in a daemon
thread, random free port): it records every call, injects faults deterministically, and can
hold requests after N successes (to kill a client at a moment when nothing is in flight).
`fake_gemini.FakeGeminiServer` and `fake_openai.FakeOpenAIServer` add the wire formats.

Faults (names used in plans and scripts):
  "400"        400 bad request (not worth retrying)
  "429"        429 with `Retry-After: <retry_after>` (seconds)
  "500", "503" server errors (JSON error body)
  "echo_key"   500 whose body repeats the API key the client sent (a leaky proxy): the client
               must not let it reach logs, errors or the cache
  "slow"       a correct answer, but only after `slow_s` seconds (longer than the client's
               timeout): never counted as a success
  "malformed"  200 with a body that is not JSON
  "truncated"  200 with a valid answer body cut in half
  "disconnect" the connection is closed with no response

Batch jobs (both fakes; `FakeBatchJob`): a job is PENDING for `batch_pending_s`, RUNNING until
`batch_duration_s` after its creation (its progress grows with time), then SUCCEEDED. Its
requests are answered once, when it ends, each recorded as a Call (path `batch:<job id>`) and
decided by the same FaultPlan (a fault is a per-request error inside the finished job). A job
whose ordinal (0-based, creation order) is in `expire_jobs` ends EXPIRED with only its first
`expire_fraction` of requests answered; in `fail_jobs`, FAILED with none (an ended job that is
not SUCCEEDED carries `job_error_message` as its error). `submissions` counts, per request key,
how many jobs carried it (a request sent twice shows 2). `lose_create_replies = N`: the next N
create calls make the job but their reply is lost (`lost_create_mode`: "disconnect" closes the
connection, "slow" answers after `slow_s`, past the client's timeout). Both fakes list their jobs
(newest first, at most `list_page_max` a page), as the providers' list endpoints do.

A call's key is the `x-distill-request-key` header the distill backends send (the cache key),
or a hash of the body. A success is recorded only after the whole body was written to an
open connection.

`answer_fn(body)` replaces the answer: a text, or a `Reply` that also says how the answer
finished (a finish reason such as SAFETY or MAX_TOKENS, or a blocked prompt).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KEY_HEADER = "x-distill-request-key"
FAULTS = ("400", "429", "500", "503", "echo_key", "slow", "malformed", "truncated", "disconnect")


def stable_hash(*parts: Any) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def expected_choice(prompt: str, seed: int | None, n_choices: int = 4) -> int:
    """The choice (1-based) the fakes answer for a prompt and seed: tests compute it too."""
    return stable_hash(prompt, seed) % n_choices + 1


@dataclass(frozen=True)
class Reply:
    """What an `answer_fn` may return instead of a text: the answer and how it finished."""

    text: str = ""
    finish_reason: str | None = None
    """The provider's finish reason (Gemini: STOP, MAX_TOKENS, SAFETY, ...; OpenAI: stop, length,
    content_filter). None: the normal one."""
    block_reason: str | None = None
    """Gemini only: the prompt itself was blocked (no candidate, promptFeedback.blockReason)."""


def as_reply(answer: str | Reply) -> Reply:
    return answer if isinstance(answer, Reply) else Reply(text=answer)


@dataclass
class Call:
    index: int
    path: str
    key: str
    attempt: int
    """1-based attempt number of this key at this server."""
    body: Any
    headers: dict[str, str]
    fault: str | None = None
    outcome: str = "pending"
    """ok | fault | slow | aborted | held | pending"""
    started: float = 0.0
    finished: float = 0.0


@dataclass
class FaultPlan:
    """Which call gets which fault, decided deterministically.

    `script`: call index (0-based, arrival order) -> fault, applied first.
    `per_key_attempt`: (key, attempt) -> fault.
    `rates`: fault -> probability, drawn from a hash of (seed, key, attempt), so the same key
    always meets the same faults in the same order; at most `max_faults_per_key` faults per key
    from rates, so every key eventually succeeds.
    """

    script: dict[int, str] = field(default_factory=dict)
    per_key_attempt: dict[tuple[str, int], str] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    max_faults_per_key: int = 2
    seed: int = 0

    def decide(self, call_index: int, key: str, attempt: int) -> str | None:
        if call_index in self.script:
            return self.script[call_index]
        if (key, attempt) in self.per_key_attempt:
            return self.per_key_attempt[(key, attempt)]
        if not self.rates or attempt > self.max_faults_per_key:
            return None
        draw = (stable_hash(self.seed, key, attempt) % 1_000_000) / 1_000_000
        cumulative = 0.0
        for fault, rate in sorted(self.rates.items()):
            cumulative += rate
            if draw < cumulative:
                return fault
        return None


class FakeLLMServer:
    """Base class: subclasses define `add_routes(app)` and use `self.serve(...)`."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        faults: FaultPlan | None = None,
        retry_after: str = "0",
        slow_s: float = 2.0,
        answer_fn: Callable[[Any], str] | None = None,
        record_bodies: bool = True,
    ):
        self.latency_s = latency_s
        self.faults = faults or FaultPlan()
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.answer_fn = answer_fn
        self.record_bodies = record_bodies
        self.calls: list[Call] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._hold_after: int | None = None
        self._admitted = 0
        self._release: asyncio.Event | None = None
        self.batch_pending_s = 0.0
        self.batch_duration_s = 0.3
        self.expire_jobs: set[int] = set()
        self.fail_jobs: set[int] = set()
        self.expire_fraction = 0.5
        self.job_error_message = ""
        self.lose_create_replies = 0
        self.lost_create_mode = "disconnect"
        self.list_page_max = 20
        self.list_calls = 0
        self.jobs: dict[str, FakeBatchJob] = {}
        self.submissions: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def add_routes(self, app) -> None:
        raise NotImplementedError

    def start(self, port: int = 0) -> FakeLLMServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start(port))
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    async def _start(self, port: int) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_stats", self._stats_handler)
        self.add_routes(app)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        self.release()
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- holding, for kill tests ---------------------------------------------------------------

    def hold_after(self, admissions: int | None) -> None:
        """Once `admissions` calls (from now) were let through, hold every new call until
        `release()`. With no faults, that is exactly `admissions` answers."""
        self._admitted = 0
        self._hold_after = admissions

    def settled(self) -> bool:
        """True when every call has finished or is being held (nothing else in flight)."""
        with self._lock:
            return all(c.outcome != "pending" for c in self.calls)

    def release(self) -> None:
        self._hold_after = None
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    # -- what happened -------------------------------------------------------------------------

    def in_flight(self) -> list[Call]:
        """Calls admitted and not answered yet (not held: being answered)."""
        with self._lock:
            return [c for c in self.calls if c.outcome == "pending"]

    def answered_per_key(self) -> dict[str, int]:
        """Per key, the calls that got as far as producing an answer (no fault injected, not held):
        what a provider bills, whether or not the client was still there to read it."""
        counts: dict[str, int] = {}
        with self._lock:
            for call in self.calls:
                if call.fault is None and call.outcome in ("ok", "aborted", "pending"):
                    counts[call.key] = counts.get(call.key, 0) + 1
        return counts

    def successes(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.outcome == "ok"]

    def successful_keys(self) -> list[str]:
        return [c.key for c in self.successes()]

    def duplicate_successes(self) -> list[str]:
        """Keys answered successfully more than once (each repeat listed)."""
        with self._lock:
            return self._duplicates()

    def _duplicates(self) -> list[str]:
        seen: set[str] = set()
        duplicates = []
        for call in self.calls:
            if call.outcome == "ok":
                if call.key in seen:
                    duplicates.append(call.key)
                seen.add(call.key)
        return duplicates

    def faults_injected(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.fault is not None]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            outcomes: dict[str, int] = {}
            for call in self.calls:
                outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
            return {
                "calls": len(self.calls),
                "outcomes": outcomes,
                "faults": sum(1 for c in self.calls if c.fault is not None),
                "successful_keys": len({c.key for c in self.calls if c.outcome == "ok"}),
                "duplicate_successes": len(self._duplicates()),
            }

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self._attempts.clear()

    async def _stats_handler(self, request):
        from aiohttp import web

        return web.json_response(self.stats())

    # -- batch jobs ----------------------------------------------------------------------------

    def create_job(self, model: str, display_name: str, requests: list[tuple[str, Any]]) -> FakeBatchJob:
        with self._lock:
            ordinal = len(self.jobs)
            job = FakeBatchJob(
                id=f"job{ordinal:04d}{stable_hash(display_name, time.time()) % 10**8:08d}",
                ordinal=ordinal,
                model=model,
                display_name=display_name,
                requests=list(requests),
                created=time.time(),
            )
            self.jobs[job.id] = job
            for key, _ in requests:
                self.submissions[key] = self.submissions.get(key, 0) + 1
        return job

    def advance(self, job: FakeBatchJob, build_body: Callable[[Any, str], dict]) -> tuple[str, int]:
        """The job's state now; when it just ended, answer its requests (once: that is what is billed)."""
        state, done = job.progress(self)
        if state != "ENDED":
            return state, done
        with self._lock:
            if job.results is None:
                if job.ordinal in self.fail_jobs:
                    answered, job.state = [], "FAILED"
                elif job.ordinal in self.expire_jobs:
                    cut = int(len(job.requests) * self.expire_fraction)
                    answered, job.state = job.requests[:cut], "EXPIRED"
                else:
                    answered, job.state = job.requests, "SUCCEEDED"
                job.results = []
                for key, body in answered:
                    attempt = self._attempts.get(key, 0) + 1
                    self._attempts[key] = attempt
                    call = Call(
                        index=len(self.calls),
                        path=f"batch:{job.id}",
                        key=key,
                        attempt=attempt,
                        body=body if self.record_bodies else None,
                        headers={},
                        started=job.created,
                    )
                    self.calls.append(call)
                    call.fault = self.faults.decide(call.index, key, attempt)
                    answer = build_body(body, f"/batch/models/{job.model}") if call.fault is None else None
                    call.outcome = "ok" if call.fault is None else "fault"
                    call.finished = time.time()
                    job.results.append((key, call.fault, answer))
        return job.state, len(job.results)

    def take_lost_create(self) -> bool:
        """Whether this create's reply is to be lost (counts down `lose_create_replies`)."""
        with self._lock:
            if self.lose_create_replies > 0:
                self.lose_create_replies -= 1
                return True
            return False

    async def lost_reply(self, request, reply):
        """A create reply that never arrives: the job exists on the server all the same."""
        from aiohttp import web

        if self.lost_create_mode == "slow":
            await asyncio.sleep(self.slow_s)
            return reply
        request.transport.close()
        return web.Response(status=200)

    def listed_jobs(self, start: int, size: int) -> tuple[list[FakeBatchJob], int | None]:
        """A page of jobs, newest first, from position `start`, and where the next page starts."""
        with self._lock:
            self.list_calls += 1
            jobs = sorted(self.jobs.values(), key=lambda job: job.ordinal, reverse=True)
        size = max(1, min(size or self.list_page_max, self.list_page_max))
        end = start + size
        return jobs[start:end], (end if end < len(jobs) else None)

    def submitted_twice(self) -> list[str]:
        """Request keys that more than one batch job carried."""
        with self._lock:
            return [key for key, n in self.submissions.items() if n > 1]

    # -- serving -------------------------------------------------------------------------------

    async def serve(self, request, build_body: Callable[[Any, str], dict], error_body: Callable[[int, str], dict]):
        """Shared request flow: record, hold, fault, latency, answer."""
        from aiohttp import web

        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response(error_body(400, "request body is not JSON"), status=400)
        key = request.headers.get(KEY_HEADER) or hashlib.sha256(raw).hexdigest()
        with self._lock:
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            call = Call(
                index=len(self.calls),
                path=request.path,
                key=key,
                attempt=attempt,
                body=body if self.record_bodies else None,
                headers=dict(request.headers),
                started=time.time(),
            )
            self.calls.append(call)
        try:
            return await self._answer(request, call, body, build_body, error_body)
        except asyncio.CancelledError:
            call.outcome = "aborted"
            call.finished = time.time()
            raise

    async def _answer(self, request, call: Call, body, build_body, error_body):
        from aiohttp import web

        # The gate counts admissions, not successes, so that once `hold_after` calls are
        # admitted nothing else can start: at most that many answers go out before a kill.
        if self._hold_after is not None and self._admitted >= self._hold_after:
            call.outcome = "held"
            while self._hold_after is not None:
                self._release.clear()
                await self._release.wait()
            call.outcome = "pending"
        self._admitted += 1

        fault = self.faults.decide(call.index, call.key, call.attempt)
        call.fault = fault
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault is None or fault == "slow":
            if fault == "slow":
                await asyncio.sleep(self.slow_s)
            payload = json.dumps(build_body(body, call.path), ensure_ascii=False).encode("utf-8")
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload)
            await response.write_eof()
            transport = request.transport
            if transport is None or transport.is_closing():
                call.outcome = "aborted"
            else:
                call.outcome = "ok" if fault is None else "slow"
            call.finished = time.time()
            return response
        call.outcome = "fault"
        call.finished = time.time()
        if fault == "429":
            return web.json_response(
                error_body(429, "Resource has been exhausted (e.g. check quota)."),
                status=429,
                headers={"Retry-After": self.retry_after},
            )
        if fault == "400":
            return web.json_response(error_body(400, "Request contains an invalid argument."), status=400)
        if fault in ("500", "503"):
            status = int(fault)
            return web.json_response(error_body(status, "The service is currently unavailable."), status=status)
        if fault == "echo_key":
            leaked = request.headers.get("x-goog-api-key") or request.headers.get("Authorization", "")
            return web.json_response(error_body(500, f"internal error while handling key {leaked}"), status=500)
        if fault == "malformed":
            return web.Response(
                status=200, body=b'{"candidates": [ oops this is not json', content_type="application/json"
            )
        if fault == "truncated":
            payload = json.dumps(build_body(body, call.path), ensure_ascii=False).encode("utf-8")
            return web.Response(status=200, body=payload[: len(payload) // 2], content_type="application/json")
        if fault == "disconnect":
            request.transport.close()
            return web.Response(status=200)
        raise ValueError(f"unknown fault {fault!r}")


@dataclass
class FakeBatchJob:
    """One batch job of a fake server: what it carries and, once it ended, its results."""

    id: str
    ordinal: int
    model: str
    display_name: str
    requests: list[tuple[str, Any]]
    """(key, request body) in submission order."""
    created: float
    state: str = "PENDING"
    results: list[tuple[str, str | None, Any]] | None = None
    """(key, fault or None, answer body), for the requests answered; None until the job ended."""

    def progress(self, server: FakeLLMServer) -> tuple[str, int]:
        """(state: PENDING, RUNNING, SUCCEEDED, EXPIRED or FAILED; requests done)."""
        elapsed = time.time() - self.created
        if self.results is not None:
            return self.state, len(self.results)
        if elapsed < server.batch_pending_s:
            return "PENDING", 0
        if elapsed < server.batch_duration_s:
            span = max(1e-9, server.batch_duration_s - server.batch_pending_s)
            return "RUNNING", int(len(self.requests) * (elapsed - server.batch_pending_s) / span)
        return "ENDED", len(self.requests)


def sqlite_rows(path) -> int:
    """Rows in a response cache file, read the way another process would (no distill code)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.OperationalError:
        return 0
    try:
        return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


FAULT_STATUS = {"400": 400, "429": 429, "500": 500, "503": 503}
"""A per-request fault inside a finished batch job, as the HTTP status the request would have had
(other faults read as 500)."""


def token_count(text: str) -> int:
    """A stand-in tokenizer: about one token per 3 characters, at least 1."""
    return max(1, len(text) // 3)


def run_main(server_cls) -> None:
    """`python -m tests.fakes.fake_gemini --port 0 --latency 0.2 --port-file F`: serve until killed."""
    import argparse
    import os
    import signal

    parser = argparse.ArgumentParser(description=f"run {server_cls.__name__} until killed")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port-file", default=None, help="write the chosen port here")
    args = parser.parse_args()
    server = server_cls(latency_s=args.latency, record_bodies=False).start(args.port)
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w") as fh:
            fh.write(str(server.port))
        os.replace(tmp, args.port_file)
    print(f"listening on {server.base_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()


def kill_when_settled(victim, server: FakeLLMServer, stored_rows: Callable[[], int], *, timeout_s: float = 180) -> int:
    """SIGKILL `victim` (a subprocess talking to `server`, which holds calls past a point) at a
    moment when nothing is in flight: every admitted call answered and stored, the rest held.
    Then let the held calls go. Returns the number of rows stored before the kill."""
    import signal

    deadline = time.time() + timeout_s
    while True:
        assert time.time() < deadline, "the stage never reached the hold point"
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        answered = len(server.successes())
        if (
            server.settled()
            and answered
            and stored_rows() == answered
            and any(c.outcome == "held" for c in server.calls)
        ):
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    stored = stored_rows()
    deadline = time.time() + 30
    while any(c.outcome in ("held", "pending") for c in server.calls) and time.time() < deadline:
        time.sleep(0.05)
    server.release()
    assert len(server.successes()) == stored, "a call answered after the kill was never stored"
    return stored


def kill_in_flight(
    victim, server: FakeLLMServer, stored_rows: Callable[[], int], *, after: int, timeout_s: float = 180
):
    """SIGKILL `victim` at a moment when at least `after` answers are stored and some calls are
    in flight (admitted, not answered yet: their answers are lost). Returns (rows stored at the
    kill, calls in flight at the kill)."""
    import signal

    deadline = time.time() + timeout_s
    while True:
        assert time.time() < deadline, "the stage never had answers stored and calls in flight at once"
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        in_flight = len(server.in_flight())
        if in_flight and stored_rows() >= after:
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    deadline = time.time() + 30
    while server.in_flight() and time.time() < deadline:  # the server notices the dropped connections
        time.sleep(0.05)
    return stored_rows(), in_flight
