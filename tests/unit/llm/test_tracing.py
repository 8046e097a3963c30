"""Trace spans of LLM batches (distill/llm/tracing.py) in a real MLflow store, from a gemini
backend against the fake server: one trace per batch, linked to the active run, a bounded
sample of request spans with tokens, latency, retries and paid-or-cached, and no secret."""

from __future__ import annotations

import mlflow
import pytest
from fakes.fake_gemini import FakeGeminiServer

from distill import tracking
from distill.llm import Request, make_backend
from distill.llm.tracing import sampled

SECRET = "AIzaFAKE-tracing-key-0123456789"


def spans_by_key(trace) -> dict:
    return {s.attributes["distill.request_key"]: s for s in trace.data.spans if s.parent_id is not None}


def test_each_batch_is_one_trace_of_the_run_with_paid_or_cached_request_spans(mlflow_store, gemini_env, tmp_path):
    requests = [Request.chat(f"질문 {i}", temperature=0.0, label=f"teacher q{i}") for i in range(6)]
    with FakeGeminiServer(latency_s=0.01) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        backend = make_backend("gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite", backoff_base_s=0.01)
        backend.role = "teacher"
        retried = backend.key(requests[2])
        server.faults.per_key_attempt[(retried, 1)] = "503"
        mlflow.set_experiment("tracing")
        with mlflow.start_run() as run:
            paid = backend.generate(requests, progress=False)
            cached = backend.generate(requests[:3], progress=False, role="judge")
        backend.generate(requests, progress=False)  # outside a run: nothing is traced
        backend.close()

    traces = sorted(tracking.search_traces(run.info.run_id), key=lambda t: t.info.request_time)
    assert [t.data.spans[0].name for t in traces] == ["teacher", "judge"]
    first, second = traces
    assert all(t.info.trace_metadata["mlflow.sourceRun"] == run.info.run_id for t in traces)
    # the batch span: totals and the trace's token count (what the answers cost)
    root = first.data.spans[0]
    assert root.attributes["distill.model"] == "gemini-2.5-flash"
    assert root.attributes["distill.usage.fetched"] == 6 and root.attributes["distill.usage.retries"] == 1
    assert root.attributes["distill.usage.cost_usd"] > 0
    assert first.info.token_usage["input_tokens"] == sum(r.input_tokens for r in paid) > 0
    # a span per request: paid, its latency and attempts; the retried one says so
    spans = spans_by_key(first)
    assert set(spans) == {backend.key(r) for r in requests}
    assert {s.attributes["distill.cache"] for s in spans.values()} == {"paid"}
    assert spans[retried].attributes["distill.retries"] == 1 and spans[retried].attributes["distill.attempts"] == 2
    for response in paid:
        span = spans[response.key]
        assert span.attributes["mlflow.chat.tokenUsage"]["output_tokens"] == response.output_tokens
        assert span.attributes["distill.latency_s"] == pytest.approx(response.latency_s)
        assert span.end_time_ns > span.start_time_ns and span.outputs["text"] == response.text
    # the second batch came from the cache, under the role it was asked as
    assert {s.attributes["distill.cache"] for s in spans_by_key(second).values()} == {"hit"}
    assert second.info.token_usage["input_tokens"] == sum(r.input_tokens for r in cached)
    assert len(tracking.search_traces(run.info.run_id)) == 2  # the batch outside the run left none
    assert SECRET not in "".join(t.to_json() for t in traces)


def test_a_large_batch_is_one_trace_with_a_bounded_spread_sample_of_request_spans(mlflow_store, gemini_env, tmp_path):
    assert sampled(100, 5) == [0, 25, 50, 74, 99] and sampled(3, 5) == [0, 1, 2] and sampled(10, 0) == []
    requests = [Request.chat(f"문항 {i}", temperature=0.0) for i in range(40)]
    with FakeGeminiServer() as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        backend = make_backend("gemini", "gemini-2.5-flash", cache=tmp_path / "c.sqlite", concurrency=8)
        backend.role, backend.trace_requests = "student", 5
        with mlflow.start_run() as run:
            responses = backend.generate(requests, progress=False)
        backend.close()
    [trace] = tracking.search_traces(run.info.run_id)
    assert len(trace.data.spans) == 1 + 5
    assert trace.data.spans[0].attributes["distill.traced_requests"] == 5
    # the trace's tokens are the whole batch's, not only the sampled spans'
    assert trace.info.token_usage["output_tokens"] == sum(r.output_tokens for r in responses)
