"""A run killed with SIGKILL mid-batch loses nothing: the rerun fetches only what was missing,
no key is ever fetched successfully twice, and the final outputs equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from fakes import FaultPlan, sqlite_rows
from fakes.fake_gemini import FakeGeminiServer

N_REQUESTS = 30
KILL_AFTER = 12

CHILD = textwrap.dedent(
    """
    import json, sys
    from pydantic import BaseModel
    from distill.llm import GenerationParams, Request, make_backend

    class Solution(BaseModel):
        reasoning: str
        answer: int

    cache_path, out_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    requests = [
        Request(
            messages=({"role": "user", "content": f"문항 {i // 3}: 옳은 것은? 1. 가 2. 나 3. 다 4. 라"},),
            params=GenerationParams(temperature=0.7, seed=11),
            schema=Solution if i % 2 else None,
            sample_index=i % 3,
            label=f"item {i // 3}",
        )
        for i in range(n)
    ]
    backend = make_backend("gemini", "gemini-2.5-flash", cache=cache_path, concurrency=4,
                           timeout_s=10, max_retries=5, backoff_base_s=0.02, backoff_max_s=0.1)
    responses = backend.generate(requests, progress=False)
    backend.close()
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump({
            "responses": [
                {"text": r.text, "parsed": r.parsed, "input_tokens": r.input_tokens,
                 "output_tokens": r.output_tokens, "finish_reason": r.finish_reason, "key": r.key, "ok": r.ok}
                for r in responses
            ],
            "usage": backend.usage.as_dict(),
        }, fh, ensure_ascii=False)
    """
)


def _child(cache_path, out_path, base_url: str) -> subprocess.Popen:
    env = dict(os.environ, GOOGLE_GEMINI_BASE_URL=base_url, GEMINI_API_KEY="resume-test-key-000111")
    env.pop("GOOGLE_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cache_path), str(out_path), str(N_REQUESTS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-3000:]


def _outputs(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_sigkill_midway_then_rerun_is_identical_and_pays_nothing_twice(tmp_path):
    # The reference: one uninterrupted run against its own server.
    with FakeGeminiServer(latency_s=0.02) as reference_server:
        _finish(_child(tmp_path / "reference.sqlite", tmp_path / "reference.json", reference_server.base_url))
    reference = _outputs(tmp_path / "reference.json")
    assert all(r["ok"] for r in reference["responses"])

    # A slow server with a few faults that stops answering after KILL_AFTER admissions.
    faults = FaultPlan(rates={"429": 0.1, "500": 0.1, "truncated": 0.1}, max_faults_per_key=1, seed=5)
    server = FakeGeminiServer(latency_s=0.1, faults=faults, retry_after="0")
    with server:
        server.hold_after(KILL_AFTER)
        cache_path = tmp_path / "killed.sqlite"
        victim = _child(cache_path, tmp_path / "killed.json", server.base_url)
        deadline = time.time() + 120
        while True:
            assert time.time() < deadline, "the child never reached the hold point"
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            stored = sqlite_rows(cache_path)
            answered = len(server.successes())
            # Kill only when nothing is in flight: every admitted call answered and stored,
            # everything else held by the server.
            if server.settled() and answered and stored == answered and any(c.outcome == "held" for c in server.calls):
                break
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        assert victim.returncode == -signal.SIGKILL
        assert not (tmp_path / "killed.json").exists()
        stored_before = sqlite_rows(cache_path)
        assert 0 < stored_before < N_REQUESTS

        # Held calls die with the client; nothing they would have answered counts.
        deadline = time.time() + 30
        while any(c.outcome in ("held", "pending") for c in server.calls) and time.time() < deadline:
            time.sleep(0.05)
        assert [c.outcome for c in server.calls if c.outcome in ("held", "pending")] == []
        assert any(c.outcome == "aborted" for c in server.calls)
        server.release()
        successes_before = len(server.successes())
        assert successes_before == stored_before

        _finish(_child(cache_path, tmp_path / "resumed.json", server.base_url))
        resumed = _outputs(tmp_path / "resumed.json")

        assert server.duplicate_successes() == []
        assert len(server.successes()) == N_REQUESTS
        assert sorted(server.successful_keys()) == sorted(r["key"] for r in resumed["responses"])

    usage = resumed["usage"]
    assert usage["cache_hits"] == stored_before
    assert usage["fetched"] == N_REQUESTS - stored_before
    assert usage["failures"] == 0
    assert resumed["responses"] == reference["responses"]
    assert sqlite_rows(cache_path) == N_REQUESTS


def test_local_backend_left_padding_seeds_and_cache(tmp_path):
    """transformers on the embedded tiny model: batching with left padding gives the same greedy
    text as one prompt at a time; sample k is reproducible and differs from sample j; thinking
    off puts the empty think block in the prompt; a rerun generates nothing."""
    from distill.llm import Request, make_backend

    prompts = [
        Request.chat(
            "짧은 질문 " * (1 + 4 * i), system="시스템", temperature=0.0, max_output_tokens=10, thinking=False
        )
        for i in range(4)
    ]
    one_by_one = make_backend("local", "tiny-qwen3", cache=tmp_path / "a.sqlite", batch_size=1)
    loaded = one_by_one.model_and_tokenizer()  # load the tiny model once, share it
    batched = make_backend("local", "tiny-qwen3", cache=tmp_path / "b.sqlite", batch_size=4, loaded=loaded)
    single = one_by_one.generate(prompts, progress=False)
    together = batched.generate(prompts, progress=False)
    assert [r.text for r in single] == [r.text for r in together]
    assert all(0 < r.output_tokens <= 10 and r.finish_reason in ("stop", "length") for r in together)
    assert together[3].input_tokens > together[0].input_tokens
    _, tokenizer = batched.model_and_tokenizer()
    assert "<think>\n\n</think>" in batched.prompt_text(tokenizer, prompts[0])

    samples = [Request.chat("질문", temperature=1.0, seed=3, sample_index=k, max_output_tokens=10) for k in range(3)]
    first = batched.generate(samples, progress=False)
    fresh = make_backend("local", "tiny-qwen3", cache=tmp_path / "c.sqlite", loaded=loaded)
    second = fresh.generate(samples, progress=False)
    assert [r.text for r in first] == [r.text for r in second]
    assert len({r.text for r in first}) == 3

    generated = batched.usage.fetched
    again = batched.generate(prompts + samples, progress=False)
    assert batched.usage.fetched == generated and batched.usage.cache_hits == len(prompts) + len(samples)
    assert [r.text for r in again] == [r.text for r in together + first]
