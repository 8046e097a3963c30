"""The mine stage with its Gemini teacher in provider batch mode (the fake server's batch jobs,
over google-genai's HTTP layer):
- the same hard negatives and attempts as an online run, the same requests, at half the
  estimated cost, and the run description states the saving;
- killed with SIGKILL while its job runs, the rerun re-attaches to the stored job: no request
  is submitted twice, and the outputs equal the online run's."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from distill.stages.mine import run
from tests.fakes.fake_gemini import FakeGeminiServer, stage_process
from tests.mine_helpers import bundled_seeds, comparable_attempts, live_teacher_config, scripted_teacher

BATCH = dict(teacher_mode="batch", batch_poll_s=0.05)


def same_outputs(a: Path, b: Path) -> bool:
    return (a / "hard_negatives.jsonl").read_bytes() == (b / "hard_negatives.jsonl").read_bytes() and (
        comparable_attempts(a / "attempts.parquet").equals(comparable_attempts(b / "attempts.parquet"))
    )


def stored_jobs(path: Path) -> list[tuple[str, str]]:
    """(name, state) of the batch jobs in a cache file, read as another process would."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute("SELECT name, state FROM batch_jobs"))
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_batch_mode_mines_what_online_mode_mines_at_half_the_cost(mlflow_store, gemini_env, tmp_path, capsys):
    import mlflow

    items = bundled_seeds()
    with FakeGeminiServer(answer_fn=scripted_teacher(items)) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        online = run(live_teacher_config(tmp_path, "online"))
        online_calls = len(server.calls)
        server.reset()
        server.batch_duration_s = 0.5
        batch_cfg = live_teacher_config(tmp_path, "batch", **BATCH)
        batch = run(batch_cfg)
        printed = capsys.readouterr().out

    assert same_outputs(Path(batch_cfg.output_dir), tmp_path / "online" / "out")
    assert len(online.hard_negatives) > 0
    teacher_online, teacher_batch = online.usage["teacher"], batch.usage["teacher"]
    # the same requests: one HTTP call each online, one place in a job each in batch mode
    assert teacher_online["requests"] == online_calls == teacher_batch["requests"]
    assert sum(server.submissions.values()) == teacher_batch["requests"] and server.submitted_twice() == []
    assert teacher_batch["batch_jobs"] == len(server.jobs) == 2  # the answers, then the judge's verdicts
    assert teacher_batch["input_tokens"] == teacher_online["input_tokens"] > 0
    assert teacher_batch["cost_usd"] == pytest.approx(teacher_online["cost_usd"] / 2)
    assert batch.metrics["llm/online_cost_usd"] == pytest.approx(online.metrics["llm/cost_usd"])
    assert batch.metrics["llm/teacher/batch"] == 1 and online.metrics["llm/teacher/batch"] == 0

    saved = teacher_online["cost_usd"] - teacher_batch["cost_usd"]
    note = mlflow.get_run(batch.run_id).data.tags["mlflow.note.content"]
    assert f"(saved ${saved:.4f})" in note and "batch mode: 2 jobs" in note and "saved $" in printed
    assert mlflow.get_run(batch.run_id).data.params["teacher_mode"] == "batch"


def test_sigkill_while_a_job_runs_then_rerun_submits_nothing_twice(mlflow_store, gemini_env, tmp_path, capsys):
    items = bundled_seeds()
    with FakeGeminiServer(answer_fn=scripted_teacher(items)) as reference_server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", reference_server.base_url)
        run(live_teacher_config(tmp_path, "reference"))
    capsys.readouterr()

    server = FakeGeminiServer(answer_fn=scripted_teacher(items))
    server.batch_duration_s = 600.0  # the job runs until the test lets it finish
    cfg = live_teacher_config(tmp_path, "killed", **BATCH)
    cache = Path(cfg.cache_path)
    with server:
        victim = stage_process("mine", cfg, server.base_url, extra_fields=("judge", *BATCH))
        deadline = time.time() + 120
        while not (server.jobs and stored_jobs(cache)):
            assert time.time() < deadline and victim.poll() is None, victim.communicate()[1][-3000:]
            time.sleep(0.05)
        time.sleep(0.3)  # a few polls of the running job
        [job] = server.jobs.values()
        assert job.progress(server)[0] == "RUNNING"
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        assert victim.returncode == -signal.SIGKILL
        assert stored_jobs(cache) == [(f"batches/{job.id}", "RUNNING")]
        assert not (Path(cfg.output_dir) / "hard_negatives.jsonl").exists()

        server.batch_duration_s = 1.0  # the provider finishes the job while nobody watches
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        resumed = run(cfg)
        printed = capsys.readouterr().out

        submitted_twice = server.submitted_twice()
        assert submitted_twice == [], f"{len(submitted_twice)} requests were submitted twice"
        assert server.duplicate_successes() == []
        assert len(server.jobs) == 2  # the killed run's job (re-attached) and the judge's
    assert "marked it KILLED" in printed
    assert resumed.usage["teacher"]["batch_jobs"] == 1 and resumed.usage["teacher"]["failures"] == 0
    assert same_outputs(Path(cfg.output_dir), tmp_path / "reference" / "out")
