"""The mine stage with a live Gemini teacher (google-genai against the local fake server):
- it meets every fault the server can inject, and still finishes every item with nothing paid twice;
- killed with SIGKILL at a quiet moment and rerun, it ends with the same attempts and hard
  negatives as an uninterrupted run, never paying again for a success, and marks the killed
  run (left RUNNING in MLflow) KILLED;
- killed with SIGKILL while answers are in flight, the rerun pays again for at most
  `concurrency` requests: the bound the README states.
(A run that fails loudly is in test_mine_failures.py.)"""

from __future__ import annotations

from pathlib import Path

from distill.stages.mine import run
from tests.fakes import FaultPlan, kill_in_flight, kill_when_settled
from tests.fakes.fake_gemini import FakeGeminiServer, stage_process
from tests.mine_helpers import (
    bundled_seeds,
    cache_keys,
    cache_rows,
    comparable_attempts,
    live_teacher_config,
    scripted_teacher,
    teacher_is_right,
)

REPO = Path(__file__).resolve().parents[2]

FAULT_KINDS = ("429", "500", "503", "slow", "malformed", "truncated")


def test_every_item_finishes_through_every_fault_and_nothing_is_fetched_twice(
    mlflow_store, gemini_env, tmp_path, capsys
):
    items = bundled_seeds()
    faults = FaultPlan(
        script={index: kind for index, kind in enumerate(FAULT_KINDS)},  # each kind at least once
        rates={"429": 0.06, "500": 0.06, "503": 0.06, "slow": 0.04, "malformed": 0.06, "truncated": 0.06},
        max_faults_per_key=2,
        seed=7,
    )
    server = FakeGeminiServer(answer_fn=scripted_teacher(items), faults=faults, retry_after="0.05", slow_s=1.5)
    with server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        cfg = live_teacher_config(tmp_path, "faults", timeout_s=0.5)
        result = run(cfg)
        printed = capsys.readouterr().out

        injected = server.faults_injected()
        assert {call.fault for call in injected} == set(FAULT_KINDS)
        assert server.duplicate_successes() == []

        attempts = result.attempts
        teacher = attempts[attempts["role"] == "teacher"]
        judge = attempts[attempts["role"] == "judge"]
        # every item finished: one answer per seed, no failure rows, every judge verdict in
        assert sorted(teacher["item_id"]) == sorted(item.id for item in items)
        assert attempts["error"].isna().all()
        assert len(judge) > 0 and judge["choice"].eq(1).all()  # the scripted judge says A
        # exactly one successful fetch per teacher/judge request, each now in the cache
        fetched = set(server.successful_keys())
        assert len(fetched) == len(teacher) + len(judge)
        assert fetched == cache_keys(cfg.cache_path, "gemini")
        # every fault cost one retry and nothing else; every call was counted
        usage = result.usage["teacher"]
        assert usage["retries"] == len(injected)
        assert usage["requests"] == len(server.calls)
        assert usage["fetched"] == len(fetched) and usage["failures"] == 0
        assert usage["input_tokens"] > 0 and usage["cost_usd"] > 0
        assert result.metrics["llm/teacher/retries"] == len(injected)
        assert "teacher 0, student 0, judge 0" in printed

        # the answers are the scripted teacher's: right where it was scripted to be
        right = {item.id: teacher_is_right(item.id) for item in items}
        assert teacher.set_index("item_id")["correct"].to_dict() == right
        assert 0 < sum(right.values()) < len(items)
        selected = {d.item_id for d in result.decisions if d.selected}
        assert selected == {negative.id for negative in result.hard_negatives}
        assert all(right[item_id] for item_id in selected)

        # rerun: no network at all
        calls_before = len(server.calls)
        again = run(cfg)
        capsys.readouterr()
        assert len(server.calls) == calls_before
        assert again.usage["teacher"]["requests"] == 0
        assert again.usage["teacher"]["cache_hits"] == len(teacher) + len(judge)
        assert again.hard_negatives == result.hard_negatives


KILL_AFTER = 9


def mlflow_client():
    import mlflow

    return mlflow.MlflowClient()


def running_mine_runs():
    import mlflow

    return mlflow.search_runs(
        experiment_names=["distill-mine"], filter_string="attributes.status = 'RUNNING'", output_format="list"
    )


def live_run_on_the_same_cache(killed) -> str:
    """A RUNNING run on the killed run's cache whose process (this one) is alive: not to be touched."""
    from distill import tracking

    client = mlflow_client()
    run = client.create_run(killed.info.experiment_id, run_name="still running elsewhere")
    client.set_tag(run.info.run_id, tracking.RESUME_TAG, killed.data.tags[tracking.RESUME_TAG])
    client.set_tag(run.info.run_id, tracking.PROCESS_TAG, tracking.process_identity())
    return run.info.run_id


def test_sigkill_then_rerun_gives_identical_outputs_and_pays_nothing_twice(
    mlflow_store, tmp_path, monkeypatch, capsys
):
    items = bundled_seeds()
    monkeypatch.setenv("GEMINI_API_KEY", "dummy-key-for-the-fake-server")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)

    # The reference: one uninterrupted run against its own server.
    reference_cfg = live_teacher_config(tmp_path, "reference")
    with FakeGeminiServer(answer_fn=scripted_teacher(items)) as reference_server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", reference_server.base_url)
        reference = run(reference_cfg)
    capsys.readouterr()
    n_live = len(reference_server.successful_keys())  # teacher answers + judge verdicts
    assert n_live > len(items)

    # A slow server with a few faults that stops answering after KILL_AFTER admissions.
    faults = FaultPlan(rates={"429": 0.1, "500": 0.1, "truncated": 0.1}, max_faults_per_key=1, seed=3)
    server = FakeGeminiServer(answer_fn=scripted_teacher(items), latency_s=0.05, faults=faults, retry_after="0")
    cfg = live_teacher_config(tmp_path, "killed")
    with server:
        server.hold_after(KILL_AFTER)
        victim = stage_process("mine", cfg, server.base_url, extra_fields=("judge",))
        stored_before = kill_when_settled(victim, server, lambda: cache_rows(Path(cfg.cache_path), "gemini"))
        assert not (Path(cfg.output_dir) / "hard_negatives.jsonl").exists()
        assert 0 < stored_before < n_live

        # MLflow never heard of the kill: the victim's run is still RUNNING
        [killed] = running_mine_runs()
        assert killed.data.tags["distill.process"].split("/")[1] == str(victim.pid)
        alive = live_run_on_the_same_cache(killed)

        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        resumed = run(cfg)
        printed = capsys.readouterr().out

        assert server.duplicate_successes() == []
        assert len(server.successes()) == n_live

    # the rerun found the killed run, marked it KILLED and said so; a run whose process lives is left alone
    assert f"note: run {killed.info.run_id}" in printed and "marked it KILLED" in printed
    closed = mlflow_client().get_run(killed.info.run_id)
    assert closed.info.status == "KILLED" and closed.data.tags["distill.closed_by"] == resumed.run_id
    assert closed.data.tags["distill.failure_reason"] == "killed"
    assert mlflow_client().get_run(alive).info.status == "RUNNING"
    assert alive not in printed

    usage = resumed.usage["teacher"]
    assert usage["cache_hits"] == stored_before
    assert usage["fetched"] == n_live - stored_before
    assert usage["failures"] == 0
    out, ref = Path(cfg.output_dir), Path(reference_cfg.output_dir)
    assert (out / "hard_negatives.jsonl").read_text(encoding="utf-8") == (ref / "hard_negatives.jsonl").read_text(
        encoding="utf-8"
    )
    assert comparable_attempts(out / "attempts.parquet").equals(comparable_attempts(ref / "attempts.parquet"))
    assert len(reference.hard_negatives) > 0


def test_a_kill_with_answers_in_flight_pays_again_for_at_most_concurrency_requests(
    mlflow_store, tmp_path, monkeypatch, capsys
):
    """The README's bound: a run killed while requests are in flight loses their answers (the
    provider may still bill them), and the rerun pays again for those, at most `concurrency`
    per backend. Counted at the server: every call that got as far as being answered."""
    items = bundled_seeds()
    monkeypatch.setenv("GEMINI_API_KEY", "dummy-key-for-the-fake-server")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    server = FakeGeminiServer(answer_fn=scripted_teacher(items), latency_s=0.3)
    cfg = live_teacher_config(tmp_path, "in-flight", judge="off", concurrency=4)
    with server:
        victim = stage_process("mine", cfg, server.base_url, extra_fields=("judge",))
        stored, in_flight = kill_in_flight(
            victim, server, lambda: cache_rows(Path(cfg.cache_path), "gemini"), after=cfg.concurrency
        )
        assert in_flight >= 1 and 0 < stored < len(items)  # killed mid-batch, answers on the wire

        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        resumed = run(cfg)
        capsys.readouterr()
        answered = server.answered_per_key()

    paid_twice = [key for key, count in answered.items() if count > 1]
    assert 1 <= len(paid_twice) <= cfg.concurrency
    assert len(answered) == len(items)  # every teacher request answered, none lost
    assert resumed.usage["teacher"]["cache_hits"] == stored
    assert resumed.usage["teacher"]["fetched"] == len(items) - stored
    assert resumed.attempts["error"].isna().all()
