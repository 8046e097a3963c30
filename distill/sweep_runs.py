"""The MLflow side of a sweep: one parent run per study, one child run per trial, results on the parent.

- The parent's id is stored on the study (user attr PARENT_ATTR), so a resumed sweep and every
  worker of a distributed one log under the same parent. Under `mlflow run` the run `mlflow run`
  made becomes the parent of a new study, or only points to the parent of an existing one.
- Each trial's child run is tagged with the study, the trial number, the parent and the worker
  (TAG_*); its id is stored on the trial (user attr RUN_ATTR). `record_child` gives it its final
  state: FINISHED (complete), KILLED (pruned) or FAILED (fail: a short reason as tags, the
  traceback as `error.txt`), tagged TAG_STATE with Optuna's state. A trial that failed before
  training opened a run gets one here (named `trial N` and its parameters), so every trial has
  exactly one child run.
- At the end the parent gets the best value, the best trial's parameters (tags `best.<name>`,
  4 significant digits) and dev metrics (`dev/*`, copied from its run), counts per state,
  Optuna's plots (plotly HTML; a plot that could not be drawn is a short tag, the error in
  `optuna/figure_notes.json`) and the trials table.

Every MLflow call goes through `distill.tracking`.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill import tracking

if TYPE_CHECKING:
    from distill.sweep_space import SweepSpace

PARENT_ATTR = "mlflow_parent_run_id"
"""Study user attr: the MLflow run every trial of the study nests under."""
RUN_ATTR = "mlflow_run_id"
"""Trial user attr: the trial's child run."""

TAG_STUDY = "distill.sweep.study"
TAG_TRIAL = "distill.sweep.trial_number"
TAG_PARENT = "distill.sweep.parent_run"
TAG_WORKER = "distill.sweep.worker"
TAG_STATE = "distill.sweep.trial_state"
TAG_MESSAGE = "distill.sweep.message"
TAG_ERROR = "distill.sweep.error"

RUN_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "fail": "FAILED"}
"""A trial's outcome as its child run's MLflow status."""
TRIAL_STATE = {"complete": "COMPLETE", "pruned": "PRUNED", "fail": "FAIL"}
"""A trial's outcome as Optuna's state name (the child run's TAG_STATE)."""


def trial_tags(study_name: str, number: int, parent_id: str, worker: str) -> dict[str, str]:
    """The tags that link a trial's child run to its study, parent and worker."""
    return {
        TAG_STUDY: study_name,
        TAG_TRIAL: str(number),
        TAG_PARENT: parent_id,
        TAG_WORKER: worker,
        "distill.stage": "train",
    }


def find_child_run(study_name: str, number: int, parent_run_id: str | None) -> str | None:
    """The child run of trial `number`, looked up by its tags (None when there is none)."""
    if not parent_run_id:
        return None
    client = tracking.client()
    try:
        parent = client.get_run(parent_run_id)
    except Exception:
        return None
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{study_name}' AND tags.`{TAG_TRIAL}` = '{number}' AND tags.`{TAG_PARENT}` = '{parent_run_id}'",
        max_results=5,
    )
    return runs[0].info.run_id if runs else None


def open_parent(study: Any, *, env_run_id: str | None, run_name: str) -> str:
    """The parent run id for this study: the one stored on it, else a new one (stored).

    Call it under the study's lock, so exactly one worker finds the study without a parent."""
    stored = study.user_attrs.get(PARENT_ATTR)
    if stored:
        run = tracking.find_run(stored)
        if run is not None and run.info.lifecycle_stage == "active":
            return stored
        print(
            f"sweep: parent run {stored} of study {study.study_name!r} is not in this tracking store; starting a new parent"
        )
    if env_run_id:
        os.environ["MLFLOW_RUN_ID"] = env_run_id  # `mlflow run` made this run: it becomes the parent
    with tracking.start_run(run_name=run_name, nested=False) as active:
        parent_id = active.info.run_id
    study.set_user_attr(PARENT_ATTR, parent_id)
    return parent_id


def point_to_parent(run_id: str, parent_id: str, study_name: str) -> None:
    """Under `mlflow run` on a study that already has a parent: the run `mlflow run` made only points there."""
    client = tracking.client()
    client.set_tag(run_id, TAG_PARENT, parent_id)
    tracking.describe_run(
        f"Joined sweep {study_name!r}: its trials are under its parent run.",
        {"sweep": tracking.run_link(parent_id)},
        run_id=run_id,
    )
    client.set_terminated(run_id, "FINISHED")


def close_stray_runs(parent_id: str, status: str) -> None:
    """End any run a failed trial left open, down to the parent."""
    while (active := tracking.active_run_id()) is not None and active != parent_id:
        tracking.end_run(status)


def record_child(
    study: Any,
    trial: Any,
    *,
    outcome: str,
    message: str,
    error_text: str,
    parent_id: str,
    tags: dict[str, str],
    suggested: dict[str, Any],
    failure_tags: dict[str, str] | None = None,
) -> str:
    """Final state and outcome of the trial's child run (created here, named `trial N` and its
    parameters, when the trial failed before training opened one, so every trial has exactly
    one child run); its id. `message` is a short tag (a pruning note or a failure's reason,
    never a raw exception text); `error_text` (the traceback) goes to `error.txt`."""
    client = tracking.client()
    run_id = trial.user_attrs.get(RUN_ATTR) or find_child_run(study.study_name, trial.number, parent_id)
    if run_id is None:
        parent = client.get_run(parent_id)
        shown = " ".join(f"{k}={tracking.short_number(v)}" for k, v in suggested.items())
        run = client.create_run(
            parent.info.experiment_id,
            tags={**tags, "mlflow.parentRunId": parent_id},
            run_name=f"trial {trial.number} {shown}".strip(),
        )
        run_id = run.info.run_id
        for name, value in suggested.items():
            client.log_param(run_id, name, tracking.param_text(value))
    client.set_tag(run_id, TAG_STATE, TRIAL_STATE[outcome])
    for key, value in (failure_tags or {}).items():
        client.set_tag(run_id, key, value)
    if message:
        client.set_tag(run_id, TAG_MESSAGE, message[:500])
    if error_text:
        client.log_text(run_id, error_text, "error.txt")
    if not client.get_run(run_id).data.tags.get(tracking.NOTE_TAG):
        what = f"{TRIAL_STATE[outcome].lower()}" + (f": {message[:500]}" if message else "")
        tracking.describe_run(
            f"trial {trial.number} of sweep {study.study_name}: {what}",
            {"sweep": tracking.run_link(parent_id)},
            run_id=run_id,
        )
    client.set_terminated(run_id, RUN_STATUS[outcome])
    return run_id


def mark_dead_child(study: Any, trial: Any) -> None:
    """A trial failed because its worker died (heartbeat or orphan check): its child run FAILED too."""
    run_id = trial.user_attrs.get(RUN_ATTR) or find_child_run(
        study.study_name, trial.number, study.user_attrs.get(PARENT_ATTR)
    )
    if run_id:
        with contextlib.suppress(Exception):
            client = tracking.client()
            client.set_tag(run_id, TAG_STATE, "FAIL")
            client.set_tag(run_id, TAG_ERROR, "its worker died (killed or crashed) before the trial finished")
            client.set_terminated(run_id, "FAILED")


def log_optuna_figures(study: Any) -> dict[str, str]:
    """Optuna's plotly figures on the active (parent) run's chart page, sections `optuna/<name>`
    (plotly.js once per run, not once per figure); {name: note} for those that could not be drawn."""
    import optuna
    from optuna.trial import TrialState

    from distill.charts import log_figure

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    notes: dict[str, str] = {}
    plots = {
        "optimization_history": lambda: optuna.visualization.plot_optimization_history(study),
        "parallel_coordinate": lambda: optuna.visualization.plot_parallel_coordinate(study),
        "intermediate_values": lambda: optuna.visualization.plot_intermediate_values(study),
    }
    if len(complete) >= 2:
        plots["param_importances"] = lambda: optuna.visualization.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    else:
        notes["param_importances"] = f"needs at least 2 complete trials, has {len(complete)}"
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
        except Exception as exc:  # e.g. importances when no parameter varied among complete trials
            notes[name] = f"could not be drawn ({type(exc).__name__}: {exc})"
            continue
        log_figure(fig, f"optuna/{name}", title=f"Optuna: {name.replace('_', ' ')}")
    return notes


def best_trial(study: Any) -> dict[str, Any]:
    """The best complete trial's value, params, number and run id (all None/empty without one)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return {"value": None, "params": {}, "number": None, "run_id": None}
    trial = study.best_trial
    return {
        "value": trial.value,
        "params": dict(trial.params),
        "number": trial.number,
        "run_id": trial.user_attrs.get(RUN_ATTR),
    }


def log_parent_results(study: Any, space: SweepSpace, folder: Path) -> dict[str, Any]:
    """Best trial (its parameters, its dev metrics, a link), counts, figures and the trials table
    onto the active (parent) run; return the best trial."""
    from distill.io import write_text_atomic
    from distill.sweep_space import rounded_params

    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(1 for t in trials if t.state.name == state) for state in ("COMPLETE", "PRUNED", "FAIL")}
    metrics = {
        "sweep/n_trials": float(len(trials)),
        "sweep/n_complete": float(counts["COMPLETE"]),
        "sweep/n_pruned": float(counts["PRUNED"]),
        "sweep/n_failed": float(counts["FAIL"]),
    }
    best = best_trial(study)
    if best["value"] is not None:
        metrics["sweep/best_value"] = float(best["value"])
        tags = {"sweep.best_trial": str(best["number"]), "sweep.best_run_id": best["run_id"] or ""}
        tags.update({f"best.{k}": tracking.param_text(v) for k, v in rounded_params(best["params"]).items()})
        tracking.set_tags(tags)
        metrics.update(_best_dev_metrics(best["run_id"]))
    tracking.log_metrics(metrics)
    folder.mkdir(parents=True, exist_ok=True)
    notes = log_optuna_figures(study)
    tracking.set_tags({f"sweep.figure_note.{name}": note.split(" (", 1)[0] for name, note in notes.items()})
    if notes:
        write_text_atomic(folder / "figure_notes.json", json.dumps(notes, indent=2) + "\n")
        tracking.log_artifact(folder / "figure_notes.json", "optuna")
    _trials_table(study, folder / "trials.csv")
    write_text_atomic(
        folder / "best.json",
        json.dumps({**best, "objective": space.objective, "direction": space.direction}, indent=2, default=str) + "\n",
    )
    tracking.log_artifact(folder / "trials.csv", "optuna")
    tracking.log_artifact(folder / "best.json")
    return best


def _best_dev_metrics(run_id: str | None) -> dict[str, float]:
    """The best trial's `dev/*` metrics (its latest values), for the parent's row in the UI."""
    found = tracking.find_run(run_id) if run_id else None
    if found is None:
        return {}
    return {k: v for k, v in found.data.metrics.items() if k.startswith("dev/")}


def _trials_table(study: Any, path: Path) -> None:
    """Every trial of the study as CSV (dates and objects as text)."""
    frame = study.trials_dataframe(
        attrs=("number", "state", "value", "params", "user_attrs", "datetime_start", "datetime_complete", "duration")
    )
    for column in frame.columns:
        if str(frame[column].dtype).startswith(("datetime", "timedelta")) or frame[column].dtype == object:
            frame[column] = frame[column].astype(str)
    frame.to_csv(path, index=False)
