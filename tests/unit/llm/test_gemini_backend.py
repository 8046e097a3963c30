"""The gemini backend (google-genai over real HTTP) against a fake Gemini server with faults."""

from __future__ import annotations

import logging

import pytest
from fakes import FaultPlan, expected_choice, token_count
from fakes.fake_gemini import FakeGeminiServer, gemini_prompt
from pydantic import BaseModel

from distill.extraction import extract_answer
from distill.llm import GenerationParams, PriceTable, Request, make_backend

SECRET = "AIzaFAKE-secret-key-0123456789"


class Solution(BaseModel):
    reasoning: str
    answer: int


def mcq_requests(n: int) -> list[Request]:
    """n requests over n // 2 prompts: samples 0 and 1 of each, half with a schema, a third
    with thinking, a few multi-turn."""
    requests = []
    for i in range(n):
        prompt_id, sample = divmod(i, 2)
        messages = [
            {"role": "system", "content": "객관식 문제를 푸는 전문가입니다."},
            {"role": "user", "content": f"문제 {prompt_id}: 다음 중 옳은 것은?\n1. 가\n2. 나\n3. 다\n4. 라"},
        ]
        if prompt_id % 5 == 4:
            messages += [
                {"role": "assistant", "content": "풀이를 시작합니다."},
                {"role": "user", "content": "계속하세요."},
            ]
        requests.append(
            Request(
                messages=tuple(messages),
                params=GenerationParams(
                    temperature=0.7,
                    top_p=0.95,
                    max_output_tokens=512,
                    seed=100,
                    thinking=True if prompt_id % 3 == 0 else None,
                    thinking_budget=256 if prompt_id % 3 == 0 else None,
                ),
                schema=Solution if prompt_id % 2 else None,
                sample_index=sample,
                label=f"teacher q{prompt_id}",
            )
        )
    return requests


def expected_for(request: Request) -> int:
    texts = [m["content"] for m in request.messages]
    return expected_choice("\n".join(texts), request.params.seed_for(request.sample_index))


def answer_of(response, request: Request) -> int | None:
    if request.schema is not None:
        return response.parsed["answer"]
    return extract_answer(response.text, 4)


ALL_FAULTS = {
    "429": 0.08,
    "500": 0.06,
    "503": 0.06,
    "slow": 0.04,
    "malformed": 0.06,
    "truncated": 0.06,
    "echo_key": 0.04,
}


@pytest.mark.parametrize("transport", ["rest", "sdk"])
def test_batch_survives_every_fault_and_never_pays_twice(tmp_path, gemini_env, caplog, transport):
    server = FakeGeminiServer(
        faults=FaultPlan(rates=ALL_FAULTS, max_faults_per_key=2, seed=7), retry_after="1", slow_s=3.0
    )
    with server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        requests = mcq_requests(40)
        cache_path = tmp_path / "cache.sqlite"
        caplog.set_level(logging.DEBUG)
        backend = make_backend(
            "gemini",
            "gemini-2.5-flash",
            cache=cache_path,
            concurrency=8,
            timeout_s=1.2,
            max_retries=4,
            backoff_base_s=0.02,
            backoff_max_s=0.2,
            transport=transport,
        )
        responses = backend.generate(requests, progress=False)
        backend.close()

        faults = server.faults_injected()
        assert {c.fault for c in faults} >= {"429", "500", "503", "slow", "malformed", "truncated", "echo_key"}
        assert all(r.ok for r in responses), [r.error for r in responses if not r.ok]
        assert [answer_of(r, q) for r, q in zip(responses, requests)] == [expected_for(q) for q in requests]
        thinking = [r for r, q in zip(responses, requests) if q.params.thinking]
        assert thinking and all(r.text.startswith("<think>\n") and "</think>" in r.text for r in thinking)

        # counters agree with what the server saw
        usage = backend.usage
        assert usage.requests == len(server.calls)
        assert usage.retries == len(faults) and usage.retries == usage.requests - len(requests)
        assert usage.failures == 0 and usage.fetched == len(requests) and usage.cache_hits == 0
        successes = server.successes()
        assert usage.input_tokens == sum(token_count(gemini_prompt(c.body)) for c in successes)
        assert usage.output_tokens == sum(r.output_tokens for r in responses) > 0
        price_in, price_out = PriceTable.default().lookup("gemini-2.5-flash")
        assert usage.cost_usd == pytest.approx((usage.input_tokens * price_in + usage.output_tokens * price_out) / 1e6)

        # no cache key was successfully fetched twice, and every key once
        assert server.duplicate_successes() == []
        assert sorted(server.successful_keys()) == sorted(backend.key(q) for q in requests)

        # Retry-After was honoured: the retry of a 429 came at least a second later
        for call in (c for c in faults if c.fault == "429"):
            later = [c for c in server.calls if c.key == call.key and c.attempt == call.attempt + 1]
            assert later and later[0].started - call.finished >= 0.95

        # a rerun makes zero requests
        calls_before = len(server.calls)
        again = make_backend("gemini", "gemini-2.5-flash", cache=cache_path, transport=transport)
        rerun = again.generate(requests, progress=False)
        again.close()
        assert len(server.calls) == calls_before
        assert again.usage.requests == 0 and again.usage.cache_hits == len(requests)
        assert [r.text for r in rerun] == [r.text for r in responses]
        assert all(r.cached for r in rerun) and not any(r.cached for r in responses)

    # the key never reached the cache or the logs, although the server echoed it back
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text
    assert SECRET not in repr(backend)


def test_wire_format_of_both_transports(tmp_path, gemini_env):
    """What reaches the server: the REST body built here says what google-genai's typed
    conversion says (modulo spelling), and both carry the key and the request key."""
    with FakeGeminiServer() as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        request = Request(
            messages=(
                {"role": "system", "content": "시스템 지시"},
                {"role": "user", "content": "질문"},
                {"role": "assistant", "content": "이전 답"},
                {"role": "user", "content": "다시"},
            ),
            params=GenerationParams(
                temperature=0.3,
                top_p=0.9,
                top_k=20,
                max_output_tokens=300,
                presence_penalty=0.2,
                seed=10,
                thinking=True,
                thinking_budget=128,
            ),
            schema=Solution,
            sample_index=2,
        )
        no_thinking = Request.chat("질문 2", thinking=False, temperature=0.0)
        bodies = {}
        for transport in ("rest", "sdk"):
            backend = make_backend(
                "gemini", "gemini-2.5-flash", cache=tmp_path / f"{transport}.sqlite", transport=transport
            )
            first, second = backend.generate([request, no_thinking], progress=False)
            backend.close()
            assert first.ok and second.ok
            assert first.parsed["answer"] == expected_for(request)
            calls = server.calls[-2:]
            assert all(c.path.endswith("/models/gemini-2.5-flash:generateContent") for c in calls)
            assert all(c.headers.get("x-goog-api-key") == SECRET for c in calls)
            by_key = {c.key: c.body for c in calls}
            assert set(by_key) == {backend.key(request), backend.key(no_thinking)}
            bodies[transport] = (
                _normalise(by_key[backend.key(request)]),
                _normalise(by_key[backend.key(no_thinking)]),
            )

    rest, sdk = bodies["rest"], bodies["sdk"]
    rest_body, sdk_body = rest[0], sdk[0]
    assert rest_body["contents"] == sdk_body["contents"]
    assert [c["role"] for c in rest_body["contents"]] == ["user", "model", "user"]
    assert (
        rest_body["systemInstruction"]["parts"] == sdk_body["systemInstruction"]["parts"] == [{"text": "시스템 지시"}]
    )
    rest_config, sdk_config = dict(rest_body["generationConfig"]), dict(sdk_body["generationConfig"])
    # structured output: JSON Schema (rest) or google-genai's converted schema (sdk)
    assert rest_config.pop("responseJsonSchema") == Solution.model_json_schema()
    assert set(sdk_config.pop("responseSchema")["properties"]) == {"reasoning", "answer"}
    assert rest_config == sdk_config
    assert rest_config["seed"] == 12  # base seed 10 + sample 2
    assert rest_config["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 128}
    assert rest_config["responseMimeType"] == "application/json"
    assert (
        rest[1]["generationConfig"]
        == sdk[1]["generationConfig"]
        == {"temperature": 0.0, "thinkingConfig": {"thinkingBudget": 0}}
    )


def _normalise(value):
    """camelCase keys and float numbers, as the server reads them either way."""
    if isinstance(value, dict):
        return {_camel(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def test_exhausted_retries_are_failures_not_cache_entries(tmp_path, gemini_env, caplog):
    requests = [Request.chat(f"질문 {i}", temperature=0.0, label=f"q{i}") for i in range(3)]
    with FakeGeminiServer() as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        backend = make_backend(
            "gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite", max_retries=3, backoff_base_s=0.01, timeout_s=5
        )
        flaky = backend.key(requests[1])
        server.faults.per_key_attempt.update({(flaky, a): "echo_key" for a in range(1, 5)})
        caplog.set_level(logging.DEBUG)
        responses = backend.generate(requests, progress=False)
        backend.close()

    assert [r.ok for r in responses] == [True, False, True]
    assert responses[1].attempts == 4 and "q1" in responses[1].error
    assert SECRET not in responses[1].error and "<redacted>" in responses[1].error
    usage = backend.usage
    assert (usage.failures, usage.fetched, usage.requests, usage.retries) == (1, 2, 1 + 4 + 1, 3)
    assert (usage.asked, usage.unanswered) == (3, 1)
    assert flaky not in backend.cache and backend.key(requests[0]) in backend.cache
    assert SECRET not in caplog.text
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes()


def test_a_permanent_error_stops_the_batch_at_once_and_keeps_what_was_paid(tmp_path, gemini_env):
    """A 400 is not retried, and nothing after it is sent: the batch raises BackendStopped
    (permanent_error); the answer that arrived before it is cached, and the rerun reuses it."""
    from distill.llm.errors import BackendStopped

    requests = [Request.chat(f"질문 {i}", temperature=0.0, label=f"q{i}") for i in range(6)]
    with FakeGeminiServer() as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        backend = make_backend("gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite", concurrency=1, max_retries=3)
        bad = backend.key(requests[1])
        server.faults.per_key_attempt[(bad, 1)] = "400"
        with pytest.raises(BackendStopped, match="HTTP 400") as stopped:
            backend.generate(requests, progress=False)
        assert stopped.value.reason == "permanent_error"
        assert [c.key for c in server.calls] == [backend.key(requests[0]), bad]  # nothing after it
        assert backend.key(requests[0]) in backend.cache and bad not in backend.cache
        with pytest.raises(BackendStopped):  # a stopped backend sends nothing more
            backend.generate(requests[2:], progress=False)
        assert len(server.calls) == 2
        backend.close()


def test_environment_is_the_librarys_own(tmp_path, monkeypatch):
    """GOOGLE_API_KEY wins over GEMINI_API_KEY (google-genai's rule); GOOGLE_GEMINI_BASE_URL
    alone points the client at the fake; no key at all is a clear configuration error."""
    from distill.errors import ConfigError

    with FakeGeminiServer() as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("GOOGLE_API_KEY", "google-key-abcdef")
        monkeypatch.setenv("GEMINI_API_KEY", "gemini-key-abcdef")
        backend = make_backend("gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite")
        [response] = backend.generate([Request.chat("안녕", temperature=0.0)], progress=False)
        backend.close()
        assert response.ok
        assert server.calls[-1].headers["x-goog-api-key"] == "google-key-abcdef"

        monkeypatch.delenv("GOOGLE_API_KEY")
        monkeypatch.delenv("GEMINI_API_KEY")
        keyless = make_backend("gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite")
        with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
            keyless.generate([Request.chat("다른 질문")], progress=False)
        keyless.close()


def test_async_api_and_duplicates_in_one_batch(tmp_path, gemini_env):
    """generate_many from the caller's own event loop; the same request twice in one batch
    is fetched once; order is preserved."""
    import asyncio

    with FakeGeminiServer(latency_s=0.02) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        backend = make_backend("gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite", concurrency=4)
        base = [Request.chat(f"질문 {i}", temperature=0.0, seed=1) for i in range(6)]
        batch = base + [base[2], base[0]]

        async def main():
            return await backend.generate_many(batch, progress=False)

        responses = asyncio.run(main())
        backend.close()
    assert len(server.calls) == 6 and server.duplicate_successes() == []
    assert [extract_answer(r.text, 4) for r in responses] == [expected_for(q) for q in batch]
    assert responses[6].text == responses[2].text and responses[7].text == responses[0].text
