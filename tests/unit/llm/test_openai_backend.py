"""The openai backend (httpx, /v1/chat/completions) against a fake vLLM-style server."""

from __future__ import annotations

import logging

import pytest
from fakes import FaultPlan, expected_choice
from fakes.fake_openai import FakeOpenAIServer
from pydantic import BaseModel

from distill.extraction import extract_answer
from distill.llm import GenerationParams, Request, make_backend

SECRET = "sk-fake-openai-secret-987654321"


class Solution(BaseModel):
    reasoning: str
    answer: int


@pytest.fixture
def openai_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return monkeypatch


def student_requests(n: int) -> list[Request]:
    requests = []
    for i in range(n):
        prompt_id, sample = divmod(i, 3)
        requests.append(
            Request(
                messages=(
                    {"role": "system", "content": "단계적으로 풀고 마지막 줄에 '정답: 번호'를 쓰세요."},
                    {"role": "user", "content": f"문항 {prompt_id}\n1. 갑\n2. 을\n3. 병\n4. 정"},
                ),
                params=GenerationParams(
                    temperature=0.6,
                    top_p=0.95,
                    top_k=20,
                    presence_penalty=1.5,
                    repetition_penalty=1.05,
                    max_output_tokens=1024,
                    seed=7,
                    thinking=bool(prompt_id % 2),
                ),
                schema=Solution if prompt_id % 4 == 3 else None,
                sample_index=sample,
                label=f"student q{prompt_id}",
            )
        )
    return requests


def expected_for(request: Request) -> int:
    return expected_choice(
        "\n".join(m["content"] for m in request.messages), request.params.seed_for(request.sample_index)
    )


def test_openai_backend_with_faults_passthrough_and_rerun(tmp_path, openai_env, caplog):
    faults = FaultPlan(
        rates={
            "429": 0.1,
            "500": 0.08,
            "503": 0.05,
            "malformed": 0.08,
            "truncated": 0.08,
            "slow": 0.04,
            "echo_key": 0.05,
        },
        seed=3,
    )
    with FakeOpenAIServer(faults=faults, require_key=SECRET, retry_after="0", slow_s=3.0) as server:
        openai_env.setenv("OPENAI_BASE_URL", f"{server.base_url}/v1")
        requests = student_requests(30)
        caplog.set_level(logging.DEBUG)
        backend = make_backend(
            "openai",
            "Qwen/Qwen3-14B",
            cache=tmp_path / "c.sqlite",
            concurrency=6,
            timeout_s=1.2,
            max_retries=4,
            backoff_base_s=0.02,
            backoff_max_s=0.2,
        )
        responses = backend.generate(requests, progress=False)
        backend.close()

        injected = server.faults_injected()
        assert {c.fault for c in injected} >= {"429", "500", "503", "malformed", "truncated", "slow", "echo_key"}
        assert all(r.ok for r in responses), [r.error for r in responses if not r.ok]
        for response, request in zip(responses, requests):
            got = response.parsed["answer"] if request.schema else extract_answer(response.text, 4)
            assert got == expected_for(request)
            assert response.text.startswith("<think>") == bool(request.params.thinking)
        usage = backend.usage
        assert usage.requests == len(server.calls) and usage.retries == len(injected)
        assert usage.fetched == 30 and usage.failures == 0
        assert usage.output_tokens == sum(r.output_tokens for r in responses) > 0
        assert usage.cost_usd == 0.0  # a self-hosted model has no price (and got a warning)
        assert "no price known for model 'Qwen/Qwen3-14B'" in caplog.text
        assert server.duplicate_successes() == []

        # what the server was sent, per request
        body_by_key = {c.key: c.body for c in server.successes()}
        for request in requests:
            body = body_by_key[backend.key(request)]
            assert body["model"] == "Qwen/Qwen3-14B"
            assert body["messages"] == list(request.messages)
            assert (body["top_k"], body["presence_penalty"], body["repetition_penalty"]) == (20, 1.5, 1.05)
            assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.6, 0.95, 1024)
            assert body["seed"] == 7 + request.sample_index
            assert body["chat_template_kwargs"] == {"enable_thinking": bool(request.params.thinking)}
            if request.schema:
                assert body["response_format"] == {
                    "type": "json_schema",
                    "json_schema": {"name": "Solution", "schema": Solution.model_json_schema()},
                }
            else:
                assert "response_format" not in body
        assert all(c.headers["Authorization"] == f"Bearer {SECRET}" for c in server.calls)

        calls = len(server.calls)
        again = make_backend("openai", "Qwen/Qwen3-14B", cache=tmp_path / "c.sqlite")
        rerun = again.generate(requests, progress=False)
        again.close()
        assert len(server.calls) == calls and again.usage.requests == 0 and again.usage.cache_hits == 30
        assert [r.text for r in rerun] == [r.text for r in responses]

    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


def test_openai_minimal_request_and_auth_failure(tmp_path, monkeypatch):
    """A request with no optional parameters sends none (a hosted API rejects unknown ones);
    a wrong key is a permanent error: one attempt, the batch stops, nothing cached."""
    from distill.llm.errors import BackendStopped

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(require_key="right-key-123456") as server:
        good = make_backend(
            "openai",
            "gpt-4o-mini",
            cache=tmp_path / "c.sqlite",
            base_url=f"{server.base_url}/v1",
            api_key="right-key-123456",
        )
        [ok] = good.generate([Request.chat("안녕하세요")], progress=False)
        good.close()
        assert ok.ok and set(server.calls[-1].body) == {"model", "messages"}
        assert good.usage.cost_usd > 0  # a known hosted price

        wrong = make_backend(
            "openai",
            "gpt-4o-mini",
            cache=tmp_path / "c.sqlite",
            base_url=f"{server.base_url}/v1",
            api_key="wrong-key-654321",
            backoff_base_s=0.01,
        )
        with pytest.raises(BackendStopped, match="HTTP 401") as stopped:
            wrong.generate([Request.chat("다른 질문")], progress=False)
        wrong.close()
    assert stopped.value.reason == "permanent_error"
    assert "wrong-key-654321" not in str(stopped.value)
    assert (wrong.usage.requests, wrong.usage.failures, wrong.usage.fetched) == (1, 1, 0)
    assert len(wrong.cache) == 1  # only the good answer
