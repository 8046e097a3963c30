"""The API key never leaves the process environment: after mine runs with a live Gemini teacher
(including a server that echoes the key back in its error bodies), the key's text is nowhere in
the MLflow database, the artifact tree, the traces (every request traced, the failed ones
with their error text), the response cache, the output files, or anything the run printed or
logged."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pandas as pd
import pytest

from distill.errors import StageFailed
from distill.stages.mine import run
from tests.fakes import FaultPlan
from tests.fakes.fake_gemini import FakeGeminiServer
from tests.mine_helpers import bundled_seeds, live_teacher_config, scripted_teacher


def mlflow_runs():
    import mlflow

    return mlflow.search_runs(experiment_names=["distill-mine"], output_format="list")


def _files_containing(root: Path, secret: bytes) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and secret in path.read_bytes()]


def test_api_key_reaches_no_store_artifact_cache_or_log(mlflow_store, tmp_path, monkeypatch, capfd, caplog):
    secret = f"sk-test-SECRET-{uuid.uuid4().hex}"
    monkeypatch.setenv("GEMINI_API_KEY", secret)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)  # every logger, every level: retries log their reason at DEBUG
    items = bundled_seeds()

    # 1. a run that recovers from a leaky server (the key echoed in 500 bodies)
    leaky = FakeGeminiServer(
        answer_fn=scripted_teacher(items), faults=FaultPlan(script={0: "echo_key", 1: "echo_key", 2: "echo_key"})
    )
    with leaky:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", leaky.base_url)
        recovered = run(live_teacher_config(tmp_path, "recovered", trace_requests=100))
    # the test means something only if the key really travelled and really came back
    assert leaky.calls[0].headers.get("x-goog-api-key") == secret
    assert sum(1 for c in leaky.calls if c.fault == "echo_key") == 3
    assert recovered.metrics["llm/teacher/retries"] == 3

    # 2. a run where the leak is the final answer: the error text lands in attempts.parquet
    always_leaky = FakeGeminiServer(
        answer_fn=scripted_teacher(items), faults=FaultPlan(rates={"echo_key": 1.0}, max_faults_per_key=99)
    )
    failing = live_teacher_config(tmp_path, "failed", max_items=2, max_retries=1, judge="off", trace_requests=100)
    with always_leaky:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", always_leaky.base_url)
        with pytest.raises(StageFailed) as failed:  # every teacher request failed: the stage fails loudly
            run(failing)
    assert secret not in str(failed.value)
    attempts = pd.read_parquet(Path(failing.output_dir) / "attempts.parquet")
    errors = attempts[attempts["role"] == "teacher"]["error"].tolist()
    assert len(errors) == 2 and all("internal error while handling key" in e for e in errors)
    assert all("<redacted>" in e for e in errors)

    # the traces: every request of both runs, the echoed errors among them, scrubbed
    from distill import tracking

    traces = tracking.search_traces(recovered.run_id)
    traced = "".join(trace.to_json() for trace in traces)
    assert {trace.data.spans[0].name for trace in traces} == {"teacher", "student", "judge"}
    [failed_run] = [r for r in mlflow_runs() if r.info.status == "FAILED"]
    failed_traces = "".join(trace.to_json() for trace in tracking.search_traces(failed_run.info.run_id))
    assert "internal error while handling key <redacted>" in failed_traces
    assert secret not in traced + failed_traces

    captured = capfd.readouterr()
    key = secret.encode("utf-8")
    assert secret not in captured.out and secret not in captured.err
    assert secret not in caplog.text
    assert "<redacted>" in caplog.text  # the retry reason was logged, scrubbed
    # tmp_path holds it all: mlflow.db, ./mlruns (artifacts), the caches, the outputs
    assert (tmp_path / "mlflow.db").is_file() and any((tmp_path / "mlruns").rglob("attempts.parquet"))
    assert _files_containing(tmp_path, key) == []
