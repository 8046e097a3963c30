"""Provider batch mode (distill/llm/batch.py) against the fake Gemini and OpenAI servers' batch
endpoints, over real HTTP (google-genai's HTTP layer; httpx for /v1/files + /v1/batches).

- a batch run answers byte for byte as an online run, at half the estimated cost;
- jobs are split by the size limits, stored the moment they exist, and re-attached by a new
  backend on the same cache (nothing is sent twice);
- per-request errors inside a finished job: transient ones are retried in a new job, permanent
  ones recorded; an expired job's unfinished requests are resubmitted once, counted.
"""

from __future__ import annotations

import json

import pytest
from fakes import FaultPlan
from fakes.fake_gemini import FakeGeminiServer
from fakes.fake_openai import FakeOpenAIServer
from pydantic import BaseModel

from distill.llm import PriceTable, Request, make_backend
from distill.llm.batch import BatchSettings, BatchTimeout, check_mode, display_name, split_jobs
from distill.llm.cache import ResponseCache

SECRET = "AIzaFAKE-batch-secret-0123456789"
FAST = BatchSettings(poll_s=0.05, poll_max_s=0.2, timeout_s=60)


class Solution(BaseModel):
    reasoning: str
    answer: int


def requests(n: int) -> list[Request]:
    """n requests: a third with a schema, a third with thinking, two samples per prompt."""
    out = []
    for i in range(n):
        prompt, sample = divmod(i, 2)
        out.append(
            Request.chat(
                f"문제 {prompt}: 다음 중 옳은 것은?\n1. 가\n2. 나\n3. 다\n4. 라",
                system="객관식 문제를 푸는 전문가입니다.",
                schema=Solution if prompt % 3 == 1 else None,
                sample_index=sample,
                label=f"q{prompt}",
                temperature=0.7,
                max_output_tokens=256,
                seed=11,
                thinking=True if prompt % 3 == 2 else None,
            )
        )
    return out


def cache_texts(path) -> dict[str, dict]:
    """Every cached answer as stored, without its wall time (not a model output)."""
    with ResponseCache(path) as cache:
        out = {}
        for key in cache.keys():
            stored = json.loads(cache.get(key).to_cache_json())
            stored.pop("latency_s")
            out[key] = stored
        return out


def backend(kind: str, path, server, mode: str, batch: BatchSettings = FAST, **kwargs):
    extra = {"base_url": f"{server.base_url}/v1"} if kind == "openai" else {}
    return make_backend(
        kind,
        "gemini-2.5-flash" if kind == "gemini" else "gpt-4o-mini",
        cache=path,
        mode=mode,
        batch=batch,
        max_retries=3,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        **extra,
        **kwargs,
    )


@pytest.fixture
def servers(gemini_env):
    with FakeGeminiServer() as gemini, FakeOpenAIServer() as openai:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", gemini.base_url)
        gemini_env.setenv("OPENAI_API_KEY", "sk-fake-batch-key")
        yield {"gemini": gemini, "openai": openai}


CASES = [("gemini", "rest"), ("gemini", "sdk"), ("openai", None)]


@pytest.mark.parametrize(("kind", "transport"), CASES)
def test_a_batch_run_answers_as_an_online_run_at_half_the_cost(tmp_path, servers, kind, transport):
    server = servers[kind]
    asked = requests(12)
    extra = {"transport": transport} if transport else {}
    with backend(kind, tmp_path / "online.sqlite", server, "online", **extra) as online:
        online_responses = online.generate(asked, progress=False)
    online_calls = len(server.calls)
    with backend(kind, tmp_path / "batch.sqlite", server, "batch", **extra) as batch:
        batch_responses = batch.generate(asked, progress=False)

    # the same answers, stored the same way, byte for byte
    assert [r.text for r in batch_responses] == [r.text for r in online_responses]
    assert [r.parsed for r in batch_responses] == [r.parsed for r in online_responses]
    assert cache_texts(tmp_path / "batch.sqlite") == cache_texts(tmp_path / "online.sqlite")
    assert all(r.usable for r in batch_responses)

    # online: one HTTP call per request; batch: one job that carried each request once
    assert online_calls == len(asked) == online.usage.requests
    assert len(server.jobs) == 1 == batch.usage.batch_jobs
    assert server.submissions == {batch.key(q): 1 for q in asked}
    assert batch.usage.requests == len(asked) and batch.usage.fetched == len(asked)
    assert batch.usage.batch == 1 and online.usage.batch == 0

    # the same tokens, priced at the batch column: half the online estimate
    assert batch.usage.input_tokens == online.usage.input_tokens > 0
    assert batch.usage.online_cost_usd == pytest.approx(online.usage.cost_usd)
    assert batch.usage.cost_usd == pytest.approx(online.usage.cost_usd / 2)
    assert online.usage.online_cost_usd == pytest.approx(online.usage.cost_usd)
    assert "saved $" in batch.usage.summary() and "batch mode" not in online.usage.summary()

    # a later online run over the batch run's cache sends nothing
    calls = len(server.calls)
    with backend(kind, tmp_path / "batch.sqlite", server, "online", **extra) as later:
        assert [r.text for r in later.generate(asked, progress=False)] == [r.text for r in online_responses]
    assert len(server.calls) == calls and later.usage.cache_hits == len(asked)


def test_jobs_are_split_by_the_size_limits_and_each_request_sent_once(tmp_path, servers):
    asked = requests(7)
    settings = BatchSettings(poll_s=0.05, timeout_s=60, max_requests=3)
    with backend("gemini", tmp_path / "c.sqlite", servers["gemini"], "batch", batch=settings) as teacher:
        responses = teacher.generate(asked, progress=False)
    assert [len(job.requests) for job in servers["gemini"].jobs.values()] == [3, 3, 1]
    assert servers["gemini"].submitted_twice() == []
    assert all(r.usable for r in responses)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        jobs = cache.batch_jobs("gemini", "gemini-2.5-flash")
        assert len(jobs) == 3 and all(job.closed and job.state == "SUCCEEDED" for job in jobs)
        assert sorted(k for job in jobs for k in job.keys) == sorted(teacher.key(q) for q in asked)

    sizes = [5, 5, 5, 20, 1]
    assert [len(c) for c in split_jobs(list("abcde"), sizes, max_requests=10, max_bytes=12)] == [2, 1, 1, 1]


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_a_new_backend_reattaches_to_a_stored_running_job(tmp_path, servers, kind):
    server = servers[kind]
    server.batch_duration_s = 1.5
    asked = requests(6)
    impatient = BatchSettings(poll_s=0.05, timeout_s=0.3)
    first = backend(kind, tmp_path / "c.sqlite", server, "batch", batch=impatient)
    with pytest.raises(BatchTimeout, match="re-attaches"):
        first.generate(asked, progress=False)
    first.close()
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        [job] = cache.batch_jobs(open_only=True)
        assert job.state in ("PENDING", "RUNNING") and len(job.keys) == len(asked)

    with backend(kind, tmp_path / "c.sqlite", server, "batch") as second:
        responses = second.generate(asked, progress=False)
    assert all(r.usable for r in responses)
    assert len(server.jobs) == 1 and server.submitted_twice() == []
    assert second.usage.batch_jobs == 0 and second.usage.fetched == len(asked)
    assert server.duplicate_successes() == []


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_a_partially_failed_job_completes_through_retries(tmp_path, servers, kind):
    server = servers[kind]
    asked = requests(8)
    with backend(kind, tmp_path / "keys.sqlite", server, "online") as probe:
        keys = [probe.key(q) for q in asked]
    server.reset()
    server.faults = FaultPlan(
        per_key_attempt={(keys[0], 1): "503", (keys[1], 1): "429", (keys[1], 2): "500", (keys[2], 1): "400"}
    )
    with backend(kind, tmp_path / "c.sqlite", server, "batch", circuit_breaker=0) as teacher:
        responses = teacher.generate(asked, progress=False)

    # transient errors: retried in new jobs until answered; the permanent one recorded as failed
    assert [r.ok for r in responses] == [True, True, False, *[True] * 5]
    assert "HTTP 400" in responses[2].error
    assert server.submissions[keys[0]] == 2 and server.submissions[keys[1]] == 3
    assert server.submissions[keys[2]] == 1 and all(server.submissions[k] == 1 for k in keys[3:])
    assert len(server.jobs) == 3 == teacher.usage.batch_jobs
    assert teacher.usage.retries == 3 and teacher.usage.failures == 1
    assert teacher.usage.fetched == 7 and server.duplicate_successes() == []


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_an_expired_job_is_resubmitted_once(tmp_path, servers, kind):
    server = servers[kind]
    server.expire_jobs = {0}
    asked = requests(8)
    with backend(kind, tmp_path / "c.sqlite", server, "batch") as teacher:
        responses = teacher.generate(asked, progress=False)
    assert all(r.usable for r in responses)
    assert [job.state for job in server.jobs.values()] == ["EXPIRED", "SUCCEEDED"]
    assert len(list(server.jobs.values())[1].requests) == 4 == teacher.usage.batch_resubmitted
    assert server.duplicate_successes() == [] and teacher.usage.fetched == len(asked)


def test_a_job_that_expires_twice_fails_its_requests_instead_of_a_third_try(tmp_path, servers):
    server = servers["gemini"]
    server.expire_jobs = {0, 1}
    asked = requests(8)
    with backend("gemini", tmp_path / "c.sqlite", server, "batch", circuit_breaker=0) as teacher:
        responses = teacher.generate(asked, progress=False)
    assert len(server.jobs) == 2
    assert sum(r.ok for r in responses) == 6 and teacher.usage.failures == 2
    assert teacher.usage.batch_resubmitted == 4
    assert all("EXPIRED twice" in r.error for r in responses if not r.ok)


def test_batch_prices_are_a_column_of_their_own(tmp_path):
    table = PriceTable.default()
    for model in ("gemini-2.5-flash", "gpt-4o-mini", "gemini-2.5-flash-preview-09-2025"):
        online, batch = table.lookup(model), table.lookup(model, batch=True)
        assert batch == pytest.approx((online[0] / 2, online[1] / 2))
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "mine-model: {input: 1.0, output: 2.0}\nother: {input: 1, output: 1, batch_input: 0.9, batch_output: 0.1}\n"
    )
    custom = PriceTable.from_file(prices)
    assert custom.cost("mine-model", 1_000_000, 1_000_000, batch=True) == pytest.approx(1.5)
    assert custom.cost("other", 1_000_000, 1_000_000, batch=True) == pytest.approx(1.0)


def test_modes_are_checked_against_the_backend():
    from distill.errors import ConfigError

    assert check_mode("teacher", "gemini", " Batch ") == "batch"
    with pytest.raises(ConfigError, match="teacher_mode=batch needs"):
        check_mode("teacher", "local", "batch")
    with pytest.raises(ConfigError, match="verifier_mode=export"):
        check_mode("verifier", "gemini", "export")
    with pytest.raises(ConfigError, match="student_mode must be one of"):
        check_mode("student", "openai", "later")


def test_a_kill_between_a_retry_job_and_the_close_of_its_parent_sends_nothing_again(tmp_path, servers):
    """The parent job is closed only after its retry job was created: a kill in between leaves
    both open, and the rerun must let the retry job answer, not retry the parent's error again."""
    import sqlite3

    server = servers["gemini"]
    asked = requests(4)
    path = tmp_path / "c.sqlite"
    with backend("gemini", path, server, "batch") as first:
        key = first.key(asked[0])
        server.faults = FaultPlan(per_key_attempt={(key, 1): "503"})
        first.generate(asked, progress=False)
    assert server.submissions[key] == 2 and len(server.jobs) == 2
    # the state a kill after the retry job's creation leaves: both jobs open, the answer not stored
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE batch_jobs SET closed = 0")
        conn.execute("DELETE FROM responses WHERE key = ?", (key,))
    conn.close()

    with backend("gemini", path, server, "batch") as rerun:
        [response] = rerun.generate(asked[:1], progress=False)
    assert response.usable and rerun.usage.batch_jobs == 0
    assert server.submissions[key] == 2 and len(server.jobs) == 2


def test_the_fake_batch_jobs_read_as_google_genai_reads_them(tmp_path, servers):
    """The fake's job format is the Developer API's: google-genai's own `client.batches.get`
    parses a job the backend created (state, inline responses with their request keys)."""
    from google import genai
    from google.genai import types

    server = servers["gemini"]
    asked = requests(3)
    with backend("gemini", tmp_path / "c.sqlite", server, "batch") as teacher:
        teacher.generate(asked, progress=False)
        keys = [teacher.key(q) for q in asked]
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        [name] = [job.name for job in cache.batch_jobs()]
    client = genai.Client(api_key=SECRET, http_options=types.HttpOptions(base_url=server.base_url))
    job = client.batches.get(name=name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.model == "models/gemini-2.5-flash"
    assert [r.metadata["key"] for r in job.dest.inlined_responses] == keys
    assert all(r.response.text for r in job.dest.inlined_responses)
    # the fake's job list (what a lost create reply is looked up in) reads as google-genai's batches.list
    server.list_page_max = 1
    listed = list(client.batches.list(config={"page_size": 1}))
    assert [j.name for j in listed] == [name] and listed[0].display_name == display_name(teacher, keys, "first", 1)


def test_the_timeout_holds_even_when_the_next_poll_is_later_than_it(tmp_path, servers):
    """A poll interval longer than what is left of batch_timeout_s must not stretch the wait."""
    import time

    server = servers["gemini"]
    server.batch_duration_s = 600.0
    slow_polls = BatchSettings(poll_s=30.0, poll_max_s=30.0, timeout_s=0.3)
    with backend("gemini", tmp_path / "c.sqlite", server, "batch", batch=slow_polls) as teacher:
        started = time.monotonic()
        with pytest.raises(BatchTimeout):
            teacher.generate(requests(2), progress=False)
        waited = time.monotonic() - started
    assert waited < 15.0, f"batch_timeout_s=0.3 but the stage waited {waited:.1f}s (one poll interval is 30s)"


def test_unreadable_results_of_an_ended_job_stop_the_backend_cleanly_and_keep_the_job(tmp_path, servers):
    """A permanent error reading a finished job's results (here its output file is gone: 404)
    is a BackendStopped (a StageFailed the stage reports), not a raw PermanentError, and the job
    stays open in the cache for the rerun."""
    from distill.llm.errors import BackendStopped

    class LostOutputs(dict):
        def get(self, key, default=None):
            return None if str(key).endswith("-out") else super().get(key, default)

    server = servers["openai"]
    server.files = LostOutputs(server.files)
    with backend("openai", tmp_path / "c.sqlite", server, "batch") as teacher:
        with pytest.raises(BackendStopped, match="cannot be read") as stopped:
            teacher.generate(requests(3), progress=False)
    assert stopped.value.reason == "permanent_error" and "sk-fake-batch-key" not in str(stopped.value)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        [job] = cache.batch_jobs(open_only=True)
        assert len(job.keys) == 3


def test_a_rerun_after_a_kill_reattaches_to_many_held_requests_in_linear_time(tmp_path, monkeypatch):
    """Re-attaching to an open job that holds every request must not cost requests x held: with
    20,000 held requests a quadratic check took over a minute here; linear, a few seconds."""
    import time

    from distill.llm.batch import BatchPending

    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-needed-offline")
    asked = [Request.chat(f"q{i}", temperature=0.6, seed=3) for i in range(20_000)]
    settings = BatchSettings(export_dir=str(tmp_path / "batch"), poll_s=0.01)
    path = tmp_path / "c.sqlite"
    with make_backend("openai", "Qwen/Qwen3-8B", cache=path, mode="export", batch=settings, prices=None) as rerun:
        keys = [rerun.key(q) for q in asked]
        with ResponseCache(path) as cache:
            name = f"export:{tmp_path / 'batch' / 'killed.jsonl'}"
            cache.add_batch_job(
                name, backend="openai", model="Qwen/Qwen3-8B", keys=keys, kind="first", attempt=1, state="PENDING"
            )
        started = time.monotonic()
        with pytest.raises(BatchPending, match="killed.jsonl"):
            rerun.generate(asked, progress=False)
        took = time.monotonic() - started
    assert rerun.usage.batch_jobs == 0, "a held request was sent again"
    assert took < 20.0, f"re-attaching to 20,000 held requests took {took:.0f}s"


def test_a_backend_stopped_inside_a_job_pays_for_no_retry_job(tmp_path, servers):
    """The circuit breaker trips on a finished job's first answers (two permanent errors): as
    online, the stopped backend sends nothing more, so the transient failure of that job gets no
    retry job (it fails, not sent) and the stage's BackendStopped follows."""
    from distill.llm.errors import BackendStopped

    server = servers["gemini"]
    asked = requests(4)
    with backend("gemini", tmp_path / "keys.sqlite", server, "online") as probe:
        keys = [probe.key(q) for q in asked]
    server.reset()
    server.faults = FaultPlan(per_key_attempt={(keys[0], 1): "400", (keys[1], 1): "400", (keys[2], 1): "503"})
    with backend("gemini", tmp_path / "c.sqlite", server, "batch", circuit_breaker=2) as teacher:
        with pytest.raises(BackendStopped) as stopped:
            teacher.generate(asked, progress=False)
    assert stopped.value.reason == "circuit_breaker"
    assert len(server.jobs) == 1 == teacher.usage.batch_jobs and server.submissions[keys[2]] == 1
    assert teacher.usage.failures == 3 and teacher.usage.fetched == 1


# -- never paid twice: deterministic display names, intents, and the provider's list of jobs ---


@pytest.mark.parametrize(("kind", "lost"), [("gemini", "slow"), ("openai", "disconnect"), ("gemini", "disconnect")])
def test_a_lost_create_reply_adopts_the_job_the_provider_made(tmp_path, servers, kind, lost):
    """The create call made the job but its reply was lost (a timeout, a dropped connection): the
    retry finds the job by its display name in the provider's list instead of paying for another."""
    server = servers[kind]
    server.lose_create_replies, server.lost_create_mode, server.slow_s = 1, lost, 2.0
    asked = requests(4)
    with backend(kind, tmp_path / "c.sqlite", server, "batch", timeout_s=1.0) as teacher:
        responses = teacher.generate(asked, progress=False)
        keys = [teacher.key(q) for q in asked]
    assert all(r.usable for r in responses)
    assert len(server.jobs) == 1 == teacher.usage.batch_jobs and server.list_calls >= 1
    assert server.submitted_twice() == [] and server.submissions == {key: 1 for key in keys}
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        [job] = cache.batch_jobs()
        assert job.name.removeprefix("batches/") in server.jobs and job.closed
        assert cache.batch_intents(teacher.name, teacher.model) == []


class Killed(RuntimeError):
    """Stands in for a SIGKILL between the provider's create and the cache's add_batch_job."""


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_a_kill_between_create_and_store_is_adopted_on_rerun(tmp_path, servers, kind):
    server = servers[kind]
    asked = requests(4)
    path = tmp_path / "c.sqlite"
    first = backend(kind, path, server, "batch")
    create = first._batch_create

    async def created_then_killed(lines, display):
        await create(lines, display)
        raise Killed("killed before the job was stored")

    first._batch_create = created_then_killed
    with pytest.raises(Killed):
        first.generate(asked, progress=False)
    first.close()
    assert len(server.jobs) == 1
    with ResponseCache(path) as cache:
        assert cache.batch_jobs() == []
        [intent] = cache.batch_intents(first.name, first.model)
        assert len(intent.keys) == len(asked)
    # someone else's newer job, and one job per list page: the look-up must page past it
    with backend(kind, tmp_path / "other.sqlite", server, "batch") as other:
        other.generate([Request.chat("another question", temperature=0.2)], progress=False)
    server.list_page_max = 1

    with backend(kind, path, server, "batch") as rerun:
        responses = rerun.generate(asked, progress=False)
    assert all(r.usable for r in responses)
    assert len(server.jobs) == 2 and server.submitted_twice() == [] and rerun.usage.batch_jobs == 0
    assert rerun.usage.fetched == len(asked) and server.duplicate_successes() == []
    with ResponseCache(path) as cache:
        assert cache.batch_intents(rerun.name, rerun.model) == [] and all(j.closed for j in cache.batch_jobs())


def test_an_intent_whose_job_was_never_made_is_forgotten_and_sent_once(tmp_path, servers):
    """A kill before the create call reached the provider: the list has no such job, the intent
    is dropped and its requests go out in one new job."""
    server = servers["gemini"]
    asked = requests(3)
    path = tmp_path / "c.sqlite"
    with backend("gemini", path, server, "batch") as teacher:
        keys = [teacher.key(q) for q in asked]
        with ResponseCache(path) as cache:
            cache.add_batch_intent(
                "distill-teacher-never-made", backend="gemini", model=teacher.model, keys=keys, kind="first", attempt=1
            )
        responses = teacher.generate(asked, progress=False)
    assert all(r.usable for r in responses) and server.list_calls >= 1
    assert len(server.jobs) == 1 and server.submitted_twice() == []
    with ResponseCache(path) as cache:
        assert cache.batch_intents("gemini", teacher.model) == []


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_a_failed_jobs_error_text_is_redacted_in_the_log(tmp_path, servers, kind, caplog):
    server = servers[kind]
    secret = SECRET if kind == "gemini" else "sk-fake-batch-key"
    server.fail_jobs = {0}
    server.job_error_message = f"quota exceeded for key {secret}"
    with caplog.at_level("WARNING", logger="distill"):
        with backend(kind, tmp_path / "c.sqlite", server, "batch") as teacher:
            responses = teacher.generate(requests(2), progress=False)
    assert all(r.usable for r in responses) and teacher.usage.batch_resubmitted == 2
    assert "quota exceeded for key <redacted>" in caplog.text and secret not in caplog.text


def test_a_partially_succeeded_job_ends_and_its_missing_requests_are_resubmitted(tmp_path, servers):
    """google-genai's JOB_STATE_PARTIALLY_SUCCEEDED is an ended state: collected, not polled
    until batch_timeout_s."""
    server = servers["gemini"]
    server.expire_jobs = {0}
    server.report_state = {"EXPIRED": "JOB_STATE_PARTIALLY_SUCCEEDED"}
    asked = requests(6)
    settings = BatchSettings(poll_s=0.05, poll_max_s=0.2, timeout_s=5)
    with backend("gemini", tmp_path / "c.sqlite", server, "batch", batch=settings) as teacher:
        responses = teacher.generate(asked, progress=False)
    assert all(r.usable for r in responses) and teacher.usage.batch_resubmitted == 3
    assert len(server.jobs) == 2 and server.duplicate_successes() == []
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert [job.state for job in cache.batch_jobs()] == ["PARTIALLY_SUCCEEDED", "SUCCEEDED"]


def test_an_unknown_job_state_is_polled_as_running_and_logged_once(tmp_path, servers, caplog):
    server = servers["gemini"]
    server.batch_duration_s = 0.8
    server.report_state = {"RUNNING": "JOB_STATE_PAUSED"}
    with caplog.at_level("WARNING", logger="distill"):
        with backend("gemini", tmp_path / "c.sqlite", server, "batch") as teacher:
            responses = teacher.generate(requests(2), progress=False)
    assert all(r.usable for r in responses)
    assert caplog.text.count("reports state PAUSED, which distill does not know") == 1


@pytest.mark.parametrize("path", ["files", "batches"])
def test_an_openai_batch_reply_without_an_id_stops_the_backend_cleanly(tmp_path, servers, path):
    from distill.llm.errors import BackendStopped

    server = servers["openai"]
    server.reply_without_id = path
    with backend("openai", tmp_path / "c.sqlite", server, "batch") as teacher:
        with pytest.raises(BackendStopped, match=f"POST /v1/{path} answered without an id") as stopped:
            teacher.generate(requests(2), progress=False)
    assert stopped.value.reason == "permanent_error"
