"""The mine stage fails loudly and pays once, with a live Gemini teacher (the fake server):
- a run where every request failed exits 2, its MLflow run FAILED with a reason tag, its outputs
  written for a look; the rerun against a healthy server fetches only what failed;
- a permanent error (400) stops it at the first one; so does the circuit breaker, at the first
  requests all failing alike;
- a configuration no request can carry (a base URL without http://, a key with a control
  character) is one line and exit 2, before any request and any run;
- a blocked prompt is an answer with no text: no choice, counted as blocked, cached, not re-asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.errors import StageFailed
from distill.stages.mine import run
from tests.fakes import FaultPlan, Reply
from tests.fakes.fake_gemini import FakeGeminiServer, gemini_prompt, stage_process
from tests.mine_helpers import bundled_seeds, cache_rows, live_teacher_config, scripted_teacher


def mine_runs():
    import mlflow

    return mlflow.search_runs(experiment_names=["distill-mine"], output_format="list")


def always(fault: str) -> FaultPlan:
    return FaultPlan(rates={fault: 1.0}, max_faults_per_key=99)


def test_every_request_failing_fails_the_stage_loudly_and_the_rerun_fetches_what_failed(
    mlflow_store, gemini_env, tmp_path, capsys
):
    items = bundled_seeds()[:3]
    cfg = live_teacher_config(tmp_path, "failing", max_items=3, max_retries=1, judge="off")
    with FakeGeminiServer(answer_fn=scripted_teacher(items), faults=always("503")) as broken:
        child = stage_process("mine", cfg, broken.base_url, extra_fields=("max_items", "judge"))
        out, err = child.communicate(timeout=300)
    assert child.returncode == 2, err[-3000:]
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "teacher 3 of 3 (100%)" in error_lines[0]
    assert "student" not in error_lines[0] and "max_failure_rate=0.1" in error_lines[0]
    assert "Traceback" not in err
    assert "teacher 3," in out and "rerun to retry the failed ones" in out  # the summary was printed first
    [failed] = mine_runs()
    assert failed.info.status == "FAILED"
    assert failed.data.tags["distill.failure_reason"] == "failure_rate"
    assert failed.data.tags["distill.failure"] == error_lines[0].removeprefix("error: ")
    assert failed.data.metrics["llm/unanswered"] == 3 and failed.data.metrics["llm/failure_rate"] == 3 / (3 + 9)
    # the outputs stay for a look (and the cache for the rerun): the failures are rows, not gaps
    import pandas as pd

    attempts = pd.read_parquet(Path(cfg.output_dir) / "attempts.parquet")
    teacher = attempts[attempts["role"] == "teacher"]
    assert len(teacher) == 3 and teacher["error"].str.contains("503").all()
    assert cache_rows(Path(cfg.cache_path), "gemini") == 0

    with FakeGeminiServer(answer_fn=scripted_teacher(items)) as healthy:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", healthy.base_url)
        fixed = run(cfg)
        capsys.readouterr()
    assert fixed.usage["teacher"]["fetched"] == 3 and len(healthy.calls) == 3  # failures were never cached
    assert fixed.attempts["error"].isna().all()
    assert {r.info.run_id: r.info.status for r in mine_runs()}[fixed.run_id] == "FINISHED"


def test_a_permanent_error_stops_mine_at_the_first_one(mlflow_store, gemini_env, tmp_path, capsys):
    items = bundled_seeds()
    with FakeGeminiServer(answer_fn=scripted_teacher(items), faults=always("400")) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        cfg = live_teacher_config(tmp_path, "bad-request", concurrency=4)
        with pytest.raises(StageFailed, match="HTTP 400") as stopped:
            run(cfg)
        capsys.readouterr()
    assert stopped.value.reason == "permanent_error"
    # what was in flight when the first 400 came back, and nothing after it
    assert 1 <= len(server.calls) <= cfg.concurrency < len(items)
    assert all(call.attempt == 1 for call in server.calls)  # never retried
    [failed] = mine_runs()
    assert failed.info.status == "FAILED" and failed.data.tags["distill.failure_reason"] == "permanent_error"


def test_the_circuit_breaker_stops_mine_when_the_first_requests_all_fail_alike(
    mlflow_store, gemini_env, tmp_path, capsys
):
    items = bundled_seeds()
    with FakeGeminiServer(answer_fn=scripted_teacher(items), faults=always("503")) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        cfg = live_teacher_config(tmp_path, "breaker", concurrency=2, max_retries=1, circuit_breaker=4)
        with pytest.raises(StageFailed, match="circuit_breaker=4") as stopped:
            run(cfg)
        capsys.readouterr()
    assert stopped.value.reason == "circuit_breaker"
    attempts_per_request = cfg.max_retries + 1
    assert len(server.calls) <= (cfg.circuit_breaker + cfg.concurrency) * attempts_per_request
    assert len(server.calls) < len(items) * attempts_per_request
    [failed] = mine_runs()
    assert failed.info.status == "FAILED" and failed.data.tags["distill.failure_reason"] == "circuit_breaker"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("GOOGLE_GEMINI_BASE_URL", "127.0.0.1:9", "GOOGLE_GEMINI_BASE_URL must be an http:// or https:// URL"),
        ("GEMINI_API_KEY", "AIza-pasted\x01-key-0123456789", "GEMINI_API_KEY holds a control character"),
    ],
)
def test_a_configuration_no_request_can_carry_is_one_line_and_exit_2_before_any_request(
    mlflow_store, tmp_path, variable, value, named
):
    with FakeGeminiServer() as server:
        cfg = live_teacher_config(tmp_path, "misconfigured", max_items=2, judge="off")
        child = stage_process("mine", cfg, server.base_url, extra_fields=("max_items", "judge"), env={variable: value})
        out, err = child.communicate(timeout=300)
    assert child.returncode == 2, err[-3000:]
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert named in line and "Traceback" not in err
    assert "pasted" not in err + out  # the key is never shown
    assert server.calls == [] and mine_runs() == []  # stopped before any request and any run


def test_a_blocked_prompt_is_no_answer_counted_as_blocked_and_never_asked_again(
    mlflow_store, gemini_env, tmp_path, capsys
):
    import pandas as pd

    items = bundled_seeds()[:4]
    blocked_item = items[1]
    answer = scripted_teacher(items)

    def teacher(body):
        if f"질문:\n{blocked_item.question.strip()}\n" in gemini_prompt(body):
            return Reply(block_reason="PROHIBITED_CONTENT")
        return answer(body)

    with FakeGeminiServer(answer_fn=teacher) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        cfg = live_teacher_config(tmp_path, "blocked", max_items=4, judge="off", max_failure_rate=0.5)
        result = run(cfg)
        again = run(cfg)
        capsys.readouterr()
    assert len(server.calls) == len(items)  # one call each, the blocked one too; none on the rerun
    teacher_rows = result.attempts[result.attempts["role"] == "teacher"].set_index("item_id")
    row = teacher_rows.loc[blocked_item.id]
    assert pd.isna(row["choice"]) and not row["correct"]  # no choice: not read as an empty, wrong answer
    assert "blocked by the provider (PROHIBITED_CONTENT)" in row["error"] and row["input_tokens"] > 0
    assert teacher_rows.drop(blocked_item.id)["error"].isna().all()
    assert result.metrics["llm/teacher/blocked"] == 1 and result.metrics["llm/teacher/unanswered"] == 1
    assert result.metrics["mine/teacher_answers"] == len(items) - 1  # counts in no accuracy
    assert next(d for d in result.decisions if d.item_id == blocked_item.id).reason == "teacher failed"
    assert again.metrics["llm/teacher/blocked"] == 1 and again.usage["teacher"]["requests"] == 0
