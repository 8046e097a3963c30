"""The mine stage on its embedded default (the bundled recording), in a real temporary MLflow
store, read back with MlflowClient; the rerun pays for nothing; the bundled hard negatives are
exactly what the stage produces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.contracts import ATTEMPT_COLUMNS
from distill.errors import ConfigError
from distill.stages.mine import MineConfig, run

REPO = Path(__file__).resolve().parents[2]
HARD_NEGATIVE_FIELDS = {
    "id",
    "paragraph",
    "question",
    "question_plus",
    "choices",
    "answer",
    "subject",
    "source",
    "golden_path",
    "failed_path",
    "student_pass_rate",
    "teacher_choice",
    "student_choice",
    "student_choices",
    "error_type",
    "golden_from",
    "judge_verdict",
}


def _table(run_id: str, path: str):
    """A table the run logged with log_table, as a frame."""
    import mlflow

    return mlflow.load_table(path, run_ids=[run_id])


def _bundled_hard_negatives() -> str:
    from distill.resources import resource_path

    return resource_path("hard_negatives.jsonl").read_text(encoding="utf-8")


def test_default_run_logs_everything_and_rerun_pays_nothing(mlflow_store, capsys):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from distill import tracking
    from distill.io import read_jsonl
    from distill.llm.templates import load_template
    from distill.metrics import subject_keys
    from distill.stages.mine import load_seed_items

    cfg = MineConfig()
    first = run(cfg)
    printed = capsys.readouterr().out
    assert "overall (over samples)" in printed and "not selected" in printed and "parse failures" in printed

    # -- files, with the DESIGN.md schemas -------------------------------------------------
    out = Path("outputs/mine")
    attempts = pd.read_parquet(out / "attempts.parquet")
    assert list(attempts.columns) == list(ATTEMPT_COLUMNS)
    assert attempts["role"].value_counts().to_dict() == {"student": 72, "teacher": 24}
    assert attempts["error"].isna().all()
    assert (attempts["correct"] == (attempts["choice"] == _gold(attempts))).all()
    hard_text = (out / "hard_negatives.jsonl").read_text(encoding="utf-8")
    assert hard_text == _bundled_hard_negatives(), (
        "distill/resources/hard_negatives.jsonl is stale: run scripts/build_mine_replay.py"
    )
    hard = [json.loads(line) for line in hard_text.splitlines()]
    assert all(set(row) == HARD_NEGATIVE_FIELDS for row in hard)

    # -- the cases the recording was written to show --------------------------------------------
    reasons = {d.item_id: d.reason for d in first.decisions}
    assert reasons["seed-009"] == reasons["seed-021"] == "teacher wrong"
    for item_id in ("seed-006", "seed-013", "seed-018"):
        assert reasons[item_id] == "student pass rate above threshold"
        assert next(d for d in first.decisions if d.item_id == item_id).student_pass_rate == pytest.approx(2 / 3)
    unreadable = attempts[(attempts["role"] == "student") & attempts["choice"].isna()]
    assert sorted(unreadable["item_id"]) == ["seed-016", "seed-020", "seed-023"]
    by_id = {row["id"]: row for row in hard}
    assert len(hard) == sum(1 for d in first.decisions if d.selected) == 18
    assert by_id["seed-016"]["student_choice"] is not None  # a readable wrong answer is preferred
    assert sorted({round(row["student_pass_rate"], 6) for row in hard}) == [0.0, round(1 / 3, 6)]
    for row in hard:
        assert row["golden_path"].endswith(f"정답: {row['answer']}")
        assert row["student_choice"] != row["answer"] and row["error_type"]

    # -- MLflow, read back ----------------------------------------------------------------------
    client = MlflowClient()
    logged = client.get_run(first.run_id)
    assert client.get_experiment(logged.info.experiment_id).name == "distill-mine"
    params = logged.data.params
    assert (params["teacher"], params["teacher_backend"], params["student_samples"], params["judge"]) == (
        "example-teacher",
        "replay",
        "3",
        "off",
    )
    assert (
        params["seeds"] == "bundled"
        and params["max_items"] == "24"
        and params["pass_rate_threshold"] == "0.34"
        and params["max_output_tokens"] == "2048"
    )
    metrics = logged.data.metrics
    items = load_seed_items(cfg)
    keys = subject_keys(item.subject for item in items)
    teacher_rows = attempts[attempts["role"] == "teacher"]
    student_rows = attempts[attempts["role"] == "student"]
    assert metrics["mine/teacher_accuracy"] == pytest.approx(teacher_rows["correct"].mean()) == pytest.approx(22 / 24)
    assert metrics["mine/student_accuracy"] == pytest.approx(student_rows["correct"].mean())
    # per subject and per role: tables, not metrics (a run's metric list stays short)
    assert len(metrics) <= 25 and not any(k.count("/") > 1 for k in metrics), sorted(metrics)
    subject_of = {item.id: item.subject for item in items}
    subjects = _table(first.run_id, "mine/subjects.json").set_index("subject")
    assert set(subjects.index) == set(keys)
    for subject in keys:
        rows = student_rows[student_rows["item_id"].map(subject_of) == subject]
        assert subjects.loc[subject, "student_accuracy"] == pytest.approx(rows["correct"].mean())
        assert subjects.loc[subject, "hard_negatives"] == sum(1 for row in hard if row["subject"] == subject)
    assert metrics["mine/hard_negatives"] == 18
    assert first.metrics["mine/parse_failure_rate/student"] == pytest.approx(3 / 72)
    assert first.metrics["mine/parse_failure_rate/teacher"] == 0
    usage = _table(first.run_id, "mine/llm_usage.json").set_index("role")
    assert usage.loc["student", "cache_hits"] == 72 and usage.loc["teacher", "cache_hits"] == 24
    assert metrics["llm/cache_hits"] == 96
    assert metrics["llm/requests"] == 0 and metrics["llm/cost_usd"] == 0
    assert first.metrics["mine/recording_imported"] > 0
    assert logged.data.tags["mine.accuracy.average"].startswith("micro")

    artifacts = {info.path for info in client.list_artifacts(first.run_id, "mine")}
    assert artifacts == {
        "mine/attempts.parquet",
        "mine/hard_negatives.jsonl",
        "mine/summary.txt",
        "mine/subjects.json",
        "mine/llm_usage.json",
    }
    logged_hard = mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="mine/hard_negatives.jsonl")
    assert Path(logged_hard).read_text(encoding="utf-8") == hard_text

    contexts = {
        {t.key: t.value for t in d.tags}["mlflow.data.context"]: d.dataset for d in logged.inputs.dataset_inputs
    }
    assert set(contexts) == {"seeds"}, "outputs are artifacts, not dataset inputs"
    assert contexts["seeds"].digest == tracking.rows_digest(item.to_dict() for item in items)
    assert json.loads(contexts["seeds"].source)["uri"].endswith("seeds.jsonl")
    # the digest augment computes when it reads the file is the one mine recorded when it wrote it
    tags = logged.data.tags
    assert tags["distill.output.hard_negatives"] == f"runs:/{first.run_id}/mine/hard_negatives.jsonl"
    assert tags["distill.output.hard_negatives.digest"] == tracking.rows_digest(
        read_jsonl(out / "hard_negatives.jsonl")
    )
    # the description: the one-screen summary and where the outputs are
    note = tags["mlflow.note.content"]
    assert "overall (over samples)" in note and tags["distill.output.hard_negatives"] in note
    assert logged.info.run_name == "mine example-teacher vs example-student seeds=24 k=3/1"
    assert "config.yaml" in {info.path for info in client.list_artifacts(first.run_id)}

    # -- prompts: registered, recorded, linked ---------------------------------------------------
    uris = logged.data.tags["prompts"].split(",")
    assert uris == ["prompts:/distill-answer/1", "prompts:/distill-judge/1"]
    answer = client.load_prompt(uris[0], cache_ttl_seconds=0)
    assert answer.template == load_template("answer").registered()
    assert json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="prompts.json")).read_text()
    ) == {"distill-answer": uris[0], "distill-judge": uris[1]}
    linked = json.loads(logged.data.tags["mlflow.linkedPrompts"])
    assert {(p["name"], str(p["version"])) for p in linked} == {("distill-answer", "1"), ("distill-judge", "1")}

    # -- rerun: everything from the cache, no new prompt versions, the same outputs -----------------
    second = run(cfg)
    capsys.readouterr()
    assert second.metrics["mine/recording_imported"] == 0
    assert second.metrics["llm/requests"] == 0 and second.metrics["llm/fetched"] == 0
    assert second.metrics["llm/cache_hits"] == 96
    assert second.prompts == first.prompts
    assert len(client.search_prompt_versions("distill-answer")) == 1
    assert (out / "hard_negatives.jsonl").read_text(encoding="utf-8") == hard_text
    pd.testing.assert_frame_equal(pd.read_parquet(out / "attempts.parquet"), attempts)


def _gold(attempts):
    from distill.stages.mine import MineConfig, load_seed_items

    gold = {item.id: item.answer for item in load_seed_items(MineConfig())}
    return attempts["item_id"].map(gold)


def test_judge_on_compares_two_correct_reasonings_with_its_own_prompt(mlflow_store, capsys):
    import pandas as pd
    from mlflow import MlflowClient

    result = run(MineConfig(judge="on", output_dir="outputs/judged"))
    printed = capsys.readouterr().out
    assert "judge: 5 items compared" in printed
    attempts = pd.read_parquet("outputs/judged/attempts.parquet")
    judge_rows = attempts[attempts["role"] == "judge"]
    judged = {d.item_id: d for d in result.decisions if d.judge_verdict is not None}
    assert sorted(judge_rows["item_id"]) == sorted(judged)
    # the items that have a second correct reasoning: a student sample right once in three
    assert all(d.selected and d.student_pass_rate == pytest.approx(1 / 3) for d in judged.values())
    # the judge prompt is not the answer prompt: it shows both reasonings
    assert set(judge_rows["prompt_hash"]).isdisjoint(set(attempts[attempts["role"] != "judge"]["prompt_hash"]))
    assert {d.judge_verdict for d in judged.values()} >= {"TIE"}
    assert judge_rows["choice"].notna().all()  # every verdict was read (A=1, B=2, TIE=0)
    for negative in result.hard_negatives:
        assert negative.golden_from == "teacher:0"  # the recorded judge prefers the step-by-step path
    assert result.metrics["mine/judged"] == 5 and result.metrics["mine/parse_failure_rate/judge"] == 0
    tags = MlflowClient().get_run(result.run_id).data.tags
    assert "prompts:/distill-judge/1" in tags["prompts"].split(",")


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", "mine", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_entry_point_runs_offline_with_no_parameters_and_reports_bad_input_in_one_line(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        env.pop(name, None)
    done = _cli([], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "outputs" / "mine" / "hard_negatives.jsonl").read_text(
        encoding="utf-8"
    ) == _bundled_hard_negatives()
    assert "18 hard negatives" in done.stdout

    bad = _cli(["--seeds", str(tmp_path / "missing.jsonl")], tmp_path, env)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error: ") and "missing.jsonl" in bad.stderr


def test_replay_miss_names_the_request(mlflow_store):
    from distill.llm import ReplayMissError

    with pytest.raises(ReplayMissError, match=r"other-student.*student seed-001 sample 0"):
        run(MineConfig(student="other-student", output_dir="outputs/miss"))
    assert not Path("outputs/miss/hard_negatives.jsonl").exists()


# -- config and the bundled recording ---------------------------------------------------------------


def test_config_defaults_are_the_offline_embedded_default():
    cfg = MineConfig()
    assert (cfg.teacher_backend, cfg.student_backend) == ("replay", "replay")
    assert (cfg.teacher, cfg.student) == ("example-teacher", "example-student")
    assert Path(cfg.seeds_path()).name == "seeds.jsonl" and Path(cfg.error_types_path()).name == "seed_notes.jsonl"
    assert MineConfig(seeds="my.jsonl").error_types_path() is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"teacher_backend": "gemini"}, "exists only in the bundled recording"),
        ({"student_backend": "vllm"}, "student_backend must be one of"),
        ({"student_samples": 0}, "student_samples must be at least 1"),
        ({"pass_rate_threshold": 1.5}, "pass_rate_threshold"),
        ({"judge": "maybe"}, "must be 'on' or 'off'"),
    ],
)
def test_config_refuses_what_cannot_work(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MineConfig(**kwargs)


def test_every_field_is_documented_for_the_command_line():
    import dataclasses

    for f in dataclasses.fields(MineConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name


def test_bundled_recording_is_up_to_date_and_honestly_named():
    """The recording must match the stage's current requests (keys) and the build script."""
    import importlib.util

    from distill.llm.recording import bundled_recording, recording_text

    spec = importlib.util.spec_from_file_location("build_mine_replay", REPO / "scripts" / "build_mine_replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.build_rows()
    assert recording_text(rows) == bundled_recording("mine").read_text(encoding="utf-8")
    assert {r["model"] for r in rows} == {"example-teacher", "example-student"}
    assert {r["backend"] for r in rows} == {"recording"}
    roles = [r["role"] for r in rows]
    assert roles.count("teacher") == 24 and roles.count("student") == 72 and roles.count("judge") >= 1
