"""The sweep stage on tiny-qwen3 in a temporary MLflow store and a real Optuna SQLite storage:
parent and children linked, a resumed study runs only what is missing under the same parent,
a pruned trial is PRUNED, a failing trial is FAIL and the study goes on; how a trial's train
parameters are layered (no training for that one); what the UI shows of a sweep (names that
differ, descriptions, a metric budget, the best trial on the parent, the test split untouched);
and a sweep under `mlflow run` without --experiment-name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.errors import ConfigError
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
    assert kwargs["score_eval"] is False, "a trial never scores the test split"
    TrainConfig(**kwargs)  # every key is a train parameter
    with pytest.raises(ConfigError, match="score_eval"):
        trial_kwargs(space, SweepConfig(train_overrides="score_eval=true"), {}, experiment="exp")


def test_float_samples_are_rounded_to_four_significant_digits():
    import optuna

    from distill.stages.train import TrainConfig
    from distill.sweep_space import load_space, suggest

    space = load_space(QUICK_SPACE, train_config=TrainConfig)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        values = suggest(trial, space.params)
        raw = trial.params["beta"]
        assert values["beta"] == float(f"{raw:.4g}") and len(repr(values["beta"]).strip("0.").replace(".", "")) <= 4
        assert isinstance(values["lora_rank"], int) and values["n_pairs"] == trial.params["n_pairs"]


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

    from distill.adapter_model import logged_model_name
    from distill.tracking import param_text

    client = mlflow.MlflowClient()
    parent = client.get_run(first.parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "distill-sweep" and "sweep" in experiment.tags["mlflow.note.content"]
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
        # The sample as trained: 4 significant digits, in the params and in the name.
        assert child.data.params["beta"] == param_text(float(f"{trial.params['beta']:.4g}"))
        assert child.data.params["lora_rank"] == str(trial.params["lora_rank"])
        # n_pairs is what was trained (the dev split comes first), the request a tag.
        pool = 24 - int(child.data.params["n_dev_pairs"])  # synthetic_task writes 24 pairs
        trained = min(trial.params["n_pairs"], pool)
        assert child.data.params["n_pairs"] == str(trained)
        assert child.data.tags["data.n_requested"] == str(trial.params["n_pairs"])
        assert child.data.params["score_eval"] == "false"
        assert child.info.run_name.startswith(f"trial {trial.number} orpo λ=")
        assert f"r={trial.params['lora_rank']} " in child.info.run_name
        assert child.info.run_name.endswith(f"pairs={trained}")
        assert "" not in child.data.params.values()
        assert f"runs/{first.parent_run_id}" in child.data.tags["mlflow.note.content"]  # linked to its sweep
        # The test split is untouched: dev figures only, within the budget.
        assert not [k for k in child.data.metrics if k.startswith(("eval/", "compare/", "base"))]
        assert not [i for i in child.inputs.dataset_inputs if i.tags[0].value == "eval"]
        assert len([k for k in child.data.metrics if not k.startswith("system/")]) <= 25
        # What Optuna saw at each step is what the child run logged as its dev curve.
        curve = client.get_metric_history(child.info.run_id, "dev/macro_f1")
        assert curve and trial.intermediate_values
        for step, value in trial.intermediate_values.items():
            assert any(m.step == step and m.value == pytest.approx(value) for m in curve), (step, curve)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            # A complete trial is a full train run: its adapter and dev metrics.
            assert child.info.status == "FINISHED"
            assert child.data.metrics["dev/macro_f1"] == pytest.approx(trial.value)
            assert child.data.tags["train/model_uri"] == (
                f"runs:/{child.info.run_id}/{logged_model_name(child.info.run_name)}"
            )
    names = [r.info.run_name for r in [parent, *children]]
    assert len(set(names)) == len(names), names

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, "the quick space's median pruner waits for 2 finished trials, so the first two complete"
    best = max(complete, key=lambda t: t.value)
    parent = client.get_run(first.parent_run_id)
    assert parent.data.metrics["sweep/best_value"] == pytest.approx(best.value)
    assert parent.data.tags["sweep.best_trial"] == str(best.number)
    assert parent.data.tags["sweep.best_run_id"] == best.user_attrs[RUN_ATTR]
    assert parent.data.metrics["sweep/n_trials"] == 3
    # The parent carries the best trial: its parameters, its dev metrics, a link.
    best_run = client.get_run(best.user_attrs[RUN_ATTR])
    assert parent.data.tags["best.beta"] == best_run.data.params["beta"]
    assert parent.data.tags["best.lora_rank"] == str(best.params["lora_rank"])
    assert parent.data.metrics["dev/macro_f1"] == pytest.approx(best.value)
    assert parent.data.metrics["dev/accuracy"] == best_run.data.metrics["dev/accuracy"]
    note = parent.data.tags["mlflow.note.content"]
    assert (
        f"best trial: [{best_run.info.run_name}](#/experiments/{parent.info.experiment_id}/runs/{best_run.info.run_id})"
        in note
    )
    assert "" not in parent.data.params.values() and "storage" not in parent.data.params
    assert "optuna/trials.csv" in {a.path for a in client.list_artifacts(first.parent_run_id, "optuna")}
    # Optuna's figures are sections of the parent's one chart page (plotly.js once).
    import mlflow

    from distill.charts import RUN_PAGE, page_sections

    page = mlflow.artifacts.load_text(f"runs:/{first.parent_run_id}/{RUN_PAGE}")
    figures = set(page_sections(page))
    assert {"optuna/optimization_history", "optuna/parallel_coordinate", "optuna/intermediate_values"} <= figures
    assert page.count("* plotly.js v") == 1  # the banner of plotly.js: one copy for every figure
    # Importances need variance among the complete trials' values; without it the parent says why.
    assert "optuna/param_importances" in figures or parent.data.tags["sweep.figure_note.param_importances"]


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
        curve_steps = [m.step for m in client.get_metric_history(child.info.run_id, "dev/macro_f1")]
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
        # A short reason in the tags (no raw exception text), the traceback in error.txt.
        assert child.data.tags["distill.failure_reason"] == "config_error"
        message = child.data.tags["distill.sweep.message"]
        assert "max_prompt_length" in message and "Error" not in message and "\n" not in message
        assert child.info.run_name.startswith("trial ") and "beta=" in child.info.run_name
        assert child.data.tags["mlflow.note.content"]
        error = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/error.txt")
        assert "ConfigError" in error and "max_prompt_length" in error and "Traceback" in error

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


@pytest.mark.slow
def test_a_sweep_under_mlflow_run_without_an_experiment_name(mlflow_store, tmp_path, monkeypatch):
    """`mlflow run . -e sweep` without --experiment-name: MLflow made the run in its Default
    experiment and exports MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID; the sweep must make that run
    its parent there (it used to set distill-sweep and fail with "active experiment ID does not
    match environment run ID")."""
    import mlflow

    client = mlflow.MlflowClient()
    default = client.get_experiment_by_name("Default")
    created = client.create_run(default.experiment_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", default.experiment_id)

    pairs, heldout = synthetic_task(tmp_path / "task")
    out = run(_config(tmp_path, pairs, heldout, n_trials=1, study_name="projectrun", train_overrides="max_steps=1"))
    assert out.parent_run_id == created.info.run_id and out.experiment == "Default"
    parent = client.get_run(created.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["distill.stage"] == "sweep"
    (child,) = _children(client, created.info.run_id)
    assert child.info.experiment_id == default.experiment_id and child.info.status in ("FINISHED", "KILLED")
