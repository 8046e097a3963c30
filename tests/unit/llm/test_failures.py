"""The failure taxonomy of distill/llm/errors.py, end to end against the fake servers:
- paid but unusable (an answer failing its schema, blocked, cut off): stored and counted as paid,
  never re-sent identically; a schema failure is repaired by a new, different request, capped;
- permanent configuration errors are refused before any request, or stop at the first one;
- the circuit breaker stops a backend whose first requests all fail the same way."""

from __future__ import annotations

import collections
import json

import pytest
from fakes import FaultPlan, Reply, token_count
from fakes.fake_gemini import FakeGeminiServer, gemini_prompt
from fakes.fake_openai import FakeOpenAIServer
from pydantic import BaseModel

from distill.errors import ConfigError
from distill.llm import PriceTable, Request, make_backend
from distill.llm.base import REPAIR_PROMPT, CircuitBreaker, Response
from distill.llm.errors import BackendStopped, PermanentError, TransientError, client_error

SECRET = "AIzaFAKE-failures-key-0123456789"
REPAIR_MARK = REPAIR_PROMPT.split("{")[0].strip()
"""The opening words of a repair message: how a fake server tells a repair from a first ask."""


class Solution(BaseModel):
    reasoning: str
    answer: int


def schema_requests(n: int) -> list[Request]:
    return [
        Request.chat(f"문제 {i}: 답을 JSON으로", schema=Solution, temperature=0.0, label=f"q{i}") for i in range(n)
    ]


def calls_per_key(server) -> collections.Counter:
    return collections.Counter(call.key for call in server.calls)


def test_an_answer_failing_its_schema_is_paid_once_stored_and_repaired_by_a_new_request(tmp_path, gemini_env):
    def answer(body) -> str:
        if REPAIR_MARK in gemini_prompt(body):
            return json.dumps({"reasoning": "다시 풀었다.", "answer": 2}, ensure_ascii=False)
        return json.dumps({"reasoning": "답을 빠뜨렸다."}, ensure_ascii=False)  # no "answer": fails the schema

    requests = schema_requests(3)
    with FakeGeminiServer(answer_fn=answer) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        cache = tmp_path / "c.sqlite"
        backend = make_backend("gemini", "gemini-2.5-flash", cache=cache, max_retries=6, backoff_base_s=0.01)
        responses = backend.generate(requests, progress=False)
        backend.close()

        # one paid call per request key: the bad answer was not asked again as it was
        assert set(calls_per_key(server).values()) == {1} and len(server.calls) == 2 * len(requests)
        assert all(r.usable and r.parsed == {"reasoning": "다시 풀었다.", "answer": 2} for r in responses)
        assert all(r.repairs == 1 for r in responses)
        # the repair shows the bad answer back and says what was wrong
        repair = next(c for c in server.calls if REPAIR_MARK in gemini_prompt(c.body))
        assert [c["role"] for c in repair.body["contents"]] == ["user", "model", "user"]
        assert "answer" in repair.body["contents"][-1]["parts"][0]["text"]  # the missing field is named

        # every paid answer is stored and counted: the unusable ones too
        usage = backend.usage
        assert (usage.fetched, usage.unusable, usage.repairs, usage.failures) == (6, 3, 3, 0)
        assert (usage.asked, usage.unanswered) == (3, 0)
        assert usage.input_tokens == sum(token_count(gemini_prompt(c.body)) for c in server.calls)
        price_in, price_out = PriceTable.default().lookup("gemini-2.5-flash")
        assert usage.cost_usd == pytest.approx((usage.input_tokens * price_in + usage.output_tokens * price_out) / 1e6)
        assert len(backend.cache) == 6
        first = backend.cache.get(backend.key(requests[0]))
        assert first.unusable and "does not match Solution" in first.unusable and first.parsed is None

        # a rerun pays for nothing: the bad answers and their repairs are cached
        again = make_backend("gemini", "gemini-2.5-flash", cache=cache)
        rerun = again.generate(requests, progress=False)
        again.close()
        assert len(server.calls) == 6 and again.usage.requests == 0
        assert [r.parsed for r in rerun] == [r.parsed for r in responses]
        assert (again.usage.unusable, again.usage.repairs, again.usage.unanswered) == (3, 3, 0)


def test_an_answer_that_never_fits_is_unusable_after_max_repairs_and_a_cut_off_one_is_asked_shorter(tmp_path):
    with FakeOpenAIServer(
        answer_fn=lambda body: Reply('{"reasoning": "아주 긴 풀이가 이어', finish_reason="length")
    ) as server:
        backend = make_backend(
            "openai", "qwen-test", cache=tmp_path / "c.sqlite", base_url=f"{server.base_url}/v1", max_repairs=2
        )
        responses = backend.generate(schema_requests(2), progress=False)
        backend.close()
    assert set(calls_per_key(server).values()) == {1} and len(server.calls) == 2 * 3  # first ask + 2 repairs
    for response in responses:
        assert response.ok and not response.usable and response.truncated and response.repairs == 2
        assert response.unusable.startswith("the answer was cut off at the output token limit and is not valid JSON")
    last = server.calls[-1].body["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert "shorter" in last[-1]["content"]
    usage = backend.usage
    assert (usage.fetched, usage.unusable, usage.truncated, usage.repairs) == (6, 6, 6, 4)
    assert (usage.asked, usage.unanswered, usage.failure_rate) == (2, 2, 1.0)


@pytest.mark.parametrize("transport", ["rest", "sdk"])
def test_blocked_and_cut_off_answers_are_recorded_as_such_cached_and_counted(tmp_path, gemini_env, transport):
    replies = {
        "prompt-blocked": Reply(block_reason="SAFETY"),
        "answer-withheld": Reply("부분 답", finish_reason="RECITATION"),
        "cut-off": Reply("풀이가 길어져 끝나지 않", finish_reason="MAX_TOKENS"),
        "normal": Reply("풀이.\n정답: 3"),
    }

    def answer(body) -> Reply:
        return next(reply for marker, reply in replies.items() if marker in gemini_prompt(body))

    requests = [Request.chat(marker, temperature=0.0, label=marker) for marker in replies]
    requests[0] = Request.chat("prompt-blocked", schema=Solution, label="prompt-blocked")  # blocked: never repaired
    with FakeGeminiServer(answer_fn=answer) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        backend = make_backend("gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite", transport=transport)
        blocked, withheld, cut_off, normal = backend.generate(requests, progress=False)
        backend.close()
    assert len(server.calls) == 4  # nothing retried, nothing repaired
    assert blocked.ok and blocked.blocked == "SAFETY" and blocked.unusable and blocked.text == ""
    assert withheld.blocked == "RECITATION" and not withheld.usable
    assert cut_off.truncated and cut_off.usable and cut_off.blocked is None  # free text: the answer as it came
    assert normal.usable and not normal.truncated and normal.blocked is None
    usage = backend.usage
    assert (usage.fetched, usage.blocked, usage.truncated, usage.unusable, usage.unanswered) == (4, 2, 1, 2, 2)
    assert usage.input_tokens > 0  # a blocked prompt was still paid for
    stored = backend.cache.get(backend.key(requests[0]))
    assert stored.blocked == "SAFETY" and stored.unusable and stored.cached


def test_openai_content_filter_is_blocked_and_an_old_cache_entry_reads_the_same():
    assert Response(text="", finish_reason="content_filter").blocked == "content_filter"
    # an entry cached before these fields existed: derived from its finish reason
    old = Response.from_cache_json(json.dumps({"text": "", "finish_reason": "BLOCKED:PROHIBITED_CONTENT"}), "k")
    assert old.blocked == "PROHIBITED_CONTENT" and not old.usable
    assert Response.from_cache_json(json.dumps({"text": "x", "finish_reason": "length"}), "k").truncated
    plain = Response(text="x", finish_reason="STOP")
    assert plain.usable and json.loads(plain.to_cache_json()).keys() == {
        "text",
        "parsed",
        "input_tokens",
        "output_tokens",
        "latency_s",
        "backend",
        "model",
        "finish_reason",
    }


@pytest.mark.parametrize(
    ("kind", "env", "value", "field"),
    [
        ("gemini", "GOOGLE_GEMINI_BASE_URL", "127.0.0.1:8080", "GOOGLE_GEMINI_BASE_URL"),
        ("gemini", "GEMINI_API_KEY", "AIza-pasted\x01-key-123", "GEMINI_API_KEY"),
        ("gemini", "GEMINI_API_KEY", "AIza-pasted-key-123\n", "GEMINI_API_KEY"),
        ("openai", "OPENAI_BASE_URL", "localhost:8000/v1", "OPENAI_BASE_URL"),
        ("openai", "OPENAI_API_KEY", "sk-pasted\x7f-key-123", "OPENAI_API_KEY"),
    ],
)
def test_a_configuration_no_request_can_carry_is_refused_before_any_request(
    tmp_path, monkeypatch, kind, env, value, field
):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=field) as refused:
        make_backend(kind, "some-model", cache=tmp_path / "c.sqlite")
    assert value.strip() not in str(refused.value) or "URL" in field  # a key is never shown


def test_a_configuration_error_met_at_request_time_stops_at_the_first_attempt(tmp_path, gemini_env):
    """The HTTP layer's own refusals (a URL it cannot use, a header it will not send) are
    permanent: one attempt, the backend stops (config_error), nothing is retried."""
    import aiohttp

    assert client_error(aiohttp.NonHttpUrlClientError("127.0.0.1:1/v1")).config
    refused = client_error(ValueError("Forbidden control character detected in headers."))
    assert isinstance(refused, PermanentError) and refused.config
    assert isinstance(client_error(aiohttp.ClientConnectionError("reset")), TransientError)

    backend = make_backend("gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite", max_retries=6)
    backend.base_url = "127.0.0.1:9/"  # past the constructor's check: as if the environment changed
    with pytest.raises(BackendStopped) as stopped:
        backend.generate([Request.chat("질문")], progress=False)
    backend.close()
    assert stopped.value.reason == "config_error" and "cannot be sent as configured" in str(stopped.value)
    assert (backend.usage.requests, backend.usage.retries) == (1, 0)


def test_the_circuit_breaker_stops_a_backend_whose_first_requests_all_fail_alike(tmp_path, gemini_env):
    failing = FaultPlan(rates={"503": 1.0}, max_faults_per_key=99)
    with FakeGeminiServer(faults=failing) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        backend = make_backend(
            "gemini",
            "gemini-2.5-flash",
            cache=tmp_path / "c.sqlite",
            concurrency=2,
            max_retries=1,
            backoff_base_s=0.01,
            circuit_breaker=4,
        )
        requests = [Request.chat(f"질문 {i}", temperature=0.0) for i in range(30)]
        with pytest.raises(BackendStopped, match="HTTP 503") as stopped:
            backend.generate(requests, progress=False)
        backend.close()
    assert stopped.value.reason == "circuit_breaker"
    # 4 requests failed after their 2 attempts each; the one in flight beside them finished
    assert 4 * 2 <= len(server.calls) <= (4 + 2) * 2 < len(requests)


def test_the_breaker_settles_at_a_usable_answer_or_two_different_failures():
    breaker = CircuitBreaker(3)
    assert [breaker.record("HTTP 503") for _ in range(2)] == [False, False]
    assert breaker.record("HTTP 503") is True
    settled = CircuitBreaker(3)
    assert settled.record("HTTP 503") is False and settled.record(None) is False
    assert [settled.record("HTTP 503") for _ in range(5)] == [False] * 5
    mixed = CircuitBreaker(3)
    assert [mixed.record(x) for x in ("HTTP 503", "timeout", "HTTP 503", "HTTP 503")] == [False] * 4
    off = CircuitBreaker(0)
    assert [off.record("HTTP 503") for _ in range(10)] == [False] * 10
