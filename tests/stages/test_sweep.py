"""The sweep stage on tiny-qwen3 in a temporary MLflow store and a real Optuna SQLite storage:
parent and children linked, a resumed study runs only what is missing under the same parent,
a pruned trial is PRUNED, a failing trial is FAIL and the study goes on; how a trial's train
parameters are layered (no training for that one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.optuna_storage import OUTCOME_ATTR
from distill.stages.sweep import SweepConfig, run, trial_kwargs
from distill.sweep_runs import PARENT_ATTR, RUN_ATTR, TAG_PARENT, TAG_STATE, TAG_STUDY, TAG_TRIAL
from tests.sweep_helpers import QUICK_SPACE, space_file, synthetic_task


def _config(tmp_path: Path, pairs: Path, heldout: Path, **kwargs) -> SweepConfig:
    defaults = dict(
        space="quick",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        pairs=str(pairs),
        eval_dataset=str(heldout),
        train_overrides="max_steps=2",
        output_dir=str(tmp_path / "outputs"),
    )
    defaults.update(kwargs)
    return SweepConfig(**defaults)


def test_trial_kwargs_layering():
    from distill.stages.train import TrainConfig
    from distill.sweep_space import load_space

    space = load_space(QUICK_SPACE, train_config=TrainConfig)
    cfg = SweepConfig(pairs="p.jsonl", train_overrides="max_steps=7,epochs=1", seed=3, output_dir="o")
    kwargs = trial_kwargs(space, cfg, {"beta": 0.5, "lora_rank": 8}, experiment="exp")
    assert kwargs["pairs"] == "p.jsonl" and kwargs["max_steps"] == 7 and kwargs["epochs"] == 1.0
    assert kwargs["beta"] == 0.5 and kwargs["lora_rank"] == 8 and kwargs["student"] == "tiny-qwen3"
    assert kwargs["seed"] == 3 and kwargs["experiment"] == "exp" and kwargs["dev_eval_steps"] == space.dev_eval_steps
    TrainConfig(**kwargs)  # every key is a train parameter


def _children(client, parent_id: str):
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow
def test_sweep_links_trials_to_its_parent_and_resumes(mlflow_store, tmp_path):
    import mlflow
    import optuna

    pairs, heldout = synthetic_task(tmp_path / "task")
    first = run(_config(tmp_path, pairs, heldout, n_trials=2, study_name="resume"))
    assert [t.number for t in first.trials] == [0, 1]

    # A second call with a larger budget is a resumed sweep: exactly the missing trial runs,
    # under the same parent run.
    second = run(_config(tmp_path, pairs, heldout, n_trials=3, study_name="resume"))
    assert [t.number for t in second.trials] == [2]
    assert second.parent_run_id == first.parent_run_id

    # Asking for what the study already has runs nothing.
    third = run(_config(tmp_path, pairs, heldout, n_trials=3, study_name="resume"))
    assert third.trials == [] and third.parent_run_id == first.parent_run_id

    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.user_attrs[PARENT_ATTR] == first.parent_run_id
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state.is_finished() for t in trials)
    assert all(t.user_attrs[OUTCOME_ATTR] in ("complete", "pruned") for t in trials)

    client = mlflow.MlflowClient()
    parent = client.get_run(first.parent_run_id)
    assert client.get_experiment(parent.info.experiment_id).name == "distill-sweep"
    assert parent.data.tags["distill.stage"] == "sweep"
    logged = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{first.parent_run_id}/config.yaml"))
    assert logged["study_name"] == "resume" and logged["train_overrides"] == "max_steps=2"
    children = _children(client, first.parent_run_id)
    assert len(children) == 3, "exactly one child run per trial"
    by_number = {int(r.data.tags[TAG_TRIAL]): r for r in children}
    assert sorted(by_number) == [0, 1, 2]
    for trial in trials:
        child = by_number[trial.number]
        assert child.info.run_id == trial.user_attrs[RUN_ATTR]
        assert child.info.experiment_id == parent.info.experiment_id
        assert child.data.tags[TAG_STUDY] == "resume" and child.data.tags[TAG_PARENT] == first.parent_run_id
        assert child.data.tags[TAG_STATE] == trial.state.name
        assert child.data.params["beta"] == str(trial.params["beta"])
        assert child.data.params["lora_rank"] == str(trial.params["lora_rank"])
        # What Optuna saw at each step is what the child run logged as its dev curve.
        curve = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "dev_curve/macro_f1")}
        assert curve and trial.intermediate_values
        for step, value in trial.intermediate_values.items():
            assert curve[step] == pytest.approx(value)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            # A complete trial is a full train run: its adapter, eval and dev metrics.
            assert child.info.status == "FINISHED"
            assert child.data.metrics["dev/macro_f1"] == pytest.approx(trial.value)
            assert "eval/accuracy" in child.data.metrics and "compare/mcnemar_p" in child.data.metrics
            assert child.data.tags["train/model_uri"] == f"runs:/{child.info.run_id}/adapter"

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, "the quick space's median pruner waits for 2 finished trials, so the first two complete"
    best = max(complete, key=lambda t: t.value)
    parent = client.get_run(first.parent_run_id)
    assert parent.data.metrics["sweep/best_value"] == pytest.approx(best.value)
    assert parent.data.tags["sweep.best_trial"] == str(best.number)
    assert parent.data.tags["sweep.best_run_id"] == best.user_attrs[RUN_ATTR]
    assert parent.data.metrics["sweep/n_trials"] == 3
    figures = {Path(a.path).name for a in client.list_artifacts(first.parent_run_id, "optuna")}
    assert {
        "optimization_history.html",
        "parallel_coordinate.html",
        "intermediate_values.html",
        "trials.csv",
    } <= figures
    # Importances need variance among the complete trials' values; without it the parent says why.
    assert "param_importances.html" in figures or parent.data.tags["sweep.figure_note.param_importances"]


@pytest.mark.slow
def test_pruned_trial_is_recorded_as_pruned(mlflow_store, tmp_path):
    import mlflow
    import optuna

    pairs, heldout = synthetic_task(tmp_path / "task")
    # Macro-F1 is at most 1, so a lower threshold of 2 prunes every trial at its first report.
    space = space_file(tmp_path, pruner={"type": "threshold", "lower": 2.0})
    out = run(
        _config(
            tmp_path, pairs, heldout, space=str(space), n_trials=2, study_name="prune", train_overrides="max_steps=3"
        )
    )
    assert [t.state for t in out.trials] == ["PRUNED", "PRUNED"], "a pruned trial does not end the study"
    assert out.n_pruned == 2 and out.best_value is None

    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    client = mlflow.MlflowClient()
    for trial in study.get_trials():
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert list(trial.intermediate_values) == [1], "pruned at the first dev evaluation, so no later step ran"
        child = client.get_run(trial.user_attrs[RUN_ATTR])
        assert child.data.tags["mlflow.parentRunId"] == out.parent_run_id
        assert child.info.status == "KILLED" and child.data.tags[TAG_STATE] == "PRUNED"
        assert "pruned at step 1" in child.data.tags["distill.sweep.message"]
        curve_steps = [m.step for m in client.get_metric_history(child.info.run_id, "dev_curve/macro_f1")]
        assert curve_steps == [1], "training stopped at the pruned step"
        assert all(m.step <= 1 for m in client.get_metric_history(child.info.run_id, "train/loss"))
        assert "eval/accuracy" not in child.data.metrics
    parent = client.get_run(out.parent_run_id)
    assert parent.data.metrics["sweep/n_pruned"] == 2
    assert "sweep/best_value" not in parent.data.metrics
    assert "at least 2 complete trials" in parent.data.tags["sweep.figure_note.param_importances"]


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_study_goes_on(mlflow_store, tmp_path):
    import mlflow
    import optuna

    pairs, heldout = synthetic_task(tmp_path / "task")
    # A prompt limit above the total limit is refused by TrainConfig: every trial fails.
    space = space_file(tmp_path, fixed_update={"max_length": 256, "max_prompt_length": 512})
    out = run(_config(tmp_path, pairs, heldout, space=str(space), n_trials=2, study_name="fail"))
    assert [t.state for t in out.trials] == ["FAIL", "FAIL"]
    assert "max_prompt_length" in out.trials[0].message

    study = optuna.load_study(study_name="fail", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL] * 2
    client = mlflow.MlflowClient()
    children = _children(client, out.parent_run_id)
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FAILED" and child.data.tags[TAG_STATE] == "FAIL"
        error = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/error.txt")
        assert "ConfigError" in error and "max_prompt_length" in error

    # The failures count: asking again for 2 trials runs nothing.
    again = run(_config(tmp_path, pairs, heldout, space=str(space), n_trials=2, study_name="fail"))
    assert again.trials == []


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_reruns_the_killed_trial(mlflow_store, tmp_path):
    """A worker killed (SIGKILL) in the middle of a trial; the same command again finishes the study."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow
    import optuna

    pairs, heldout = synthetic_task(tmp_path / "task")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [
        sys.executable,
        "-m",
        "distill",
        "sweep",
        "--space",
        "quick",
        "--storage",
        storage,
        "--study_name",
        "killed",
        "--n_trials",
        "1",
        "--pairs",
        str(pairs),
        "--eval_dataset",
        str(heldout),
        "--train_overrides",
        "max_steps=50",
        "--output_dir",
        str(tmp_path / "outputs"),
    ]
    log = tmp_path / "killed.log"
    with open(log, "w") as handle:
        worker = subprocess.Popen(
            command, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 300
        running = None
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
            except KeyError:
                trials = []
            running = next((t for t in trials if t.state.name == "RUNNING" and t.intermediate_values), None)
            if running:  # training has started and reported at least one dev evaluation
                break
            time.sleep(0.5)
        assert running is not None, log.read_text()[-3000:]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()

    resumed = run(_config(tmp_path, pairs, heldout, n_trials=1, study_name="killed"))
    assert [t.number for t in resumed.trials] == [1], "the killed trial does not count; its replacement runs"
    study = optuna.load_study(study_name="killed", storage=storage)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {0: "FAIL", 1: resumed.trials[0].state}
    assert OUTCOME_ATTR not in study.trials[0].user_attrs
    client = mlflow.MlflowClient()
    children = _children(client, resumed.parent_run_id)
    by_number = {int(r.data.tags[TAG_TRIAL]): r for r in children}
    assert sorted(by_number) == [0, 1]
    assert by_number[0].info.status == "FAILED" and by_number[0].data.tags[TAG_STATE] == "FAIL"
    assert "worker died" in by_number[0].data.tags["distill.sweep.error"]
    assert by_number[1].info.run_id == study.trials[1].user_attrs[RUN_ATTR]
