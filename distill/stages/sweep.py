"""The `sweep` stage: Optuna over ORPO λ, LoRA rank, pair count (and more), every trial a full train run.

How one sweep is laid out in MLflow and Optuna:
- The search space is declarative YAML (`sweeps/*.yaml`, parsed by `distill.sweep_space`): the
  parameters Optuna varies, the train parameters every trial shares, the objective (a `dev/*`
  metric of the train run: never the eval/test set), its direction, the sampler and the pruner.
- The parent MLflow run is opened here, explicitly (Optuna's MLflowCallback with nested runs
  leaves the parent out); each trial is `distill.stages.train.run` as a nested child run, tagged
  with the study, the trial number, the parent and the worker, and named after what it tried
  (`trial 3 orpo λ=0.13 r=8 lr=1.6e-4 pairs=16`: the train run's label with every varied
  parameter; float samples are rounded to 4 significant digits before training, so the name,
  the params and the adapter agree). Trials train with `score_eval=false`: they are scored on
  the dev split only, never on the test split, which `register` scores once for the chosen
  trial (a train run refuses a trial's tags with `score_eval=true`). Its id is stored on the trial
  (`mlflow_run_id`), and the parent's id on the study (user attr `mlflow_parent_run_id`), so a
  resumed sweep and every worker of a distributed one log under the same parent
  (`distill.sweep_runs`).
- Pruning: training measures the dev split every `dev_eval_steps` steps
  (`TrainConfig.dev_eval_steps`, logged as `dev/*` at that step); each measurement is reported to the
  trial, and the pruner (median, percentile, Hyperband, threshold or none) may stop it.
  A pruned trial is PRUNED in Optuna and its child run is KILLED, tagged
  `distill.sweep.trial_state=PRUNED`.
- A trial that raises is FAIL in Optuna and its child run FAILED, tagged with a short reason
  (`distill.failure_reason`, and the message of a distill error), with the traceback as the
  artifact `error.txt`; the study goes on. GPU memory is freed after every trial.
- Storage: any SQLAlchemy URL (`sqlite:///optuna.db` by default, `postgresql://...` for many
  workers on many machines). The study is loaded if it exists, so a killed sweep resumes.
  `n_trials` is the number of finished trials the *study* should have, not this process:
  a resumed sweep runs only what is missing, and N workers started with the same `n_trials`
  together run exactly that many. Deciding "one more trial?" and reserving it (Optuna's
  `ask`) happen under a lock shared by all workers (`distill.optuna_storage`: a file lock
  beside a SQLite database, `pg_advisory_lock` on PostgreSQL, `GET_LOCK` on MySQL). Trials keep
  a heartbeat in the storage; a trial whose worker died is failed once its heartbeat is
  `GRACE_PERIOD_S` old (at once when the dead worker ran on this machine: its process id is
  gone), and does not count (it never finished), so the budget runs a replacement.
- The sampler is seeded (`seed`) in the worker that creates the study; every other worker,
  and a resumed sweep, draws its own seed, so that parallel workers never propose the same
  parameters in lockstep. Every trial trains with the same `seed`, so all are measured on
  the same dev split.
- At the end each worker logs to the parent: best value, the best trial's parameters (tags
  `best.<name>`) and dev metrics (`dev/*`, copied), counts per state, Optuna's optimization
  history, parameter importances (from 2 complete trials on), parallel-coordinate and
  intermediate-value plots (plotly HTML), the trials table, and its description: the summary
  with links to the best trial and every trial. Parent and trials record system metrics.
- Under `mlflow run` (MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID set) the experiment is the one
  `mlflow run` chose, with or without --experiment-name: the run it made becomes the parent (or,
  for a study that has one, points to it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
from distill.errors import ConfigError, DistillError, InputError
from distill.optuna_storage import (
    OUTCOME_ATTR,
    heartbeat,
    open_storage,
    redact_storage,
    reserve_trial,
    study_lock,
    worker_name,
)
from distill.stages.train import TrainConfig
from distill.stages.train import run as run_train
from distill.sweep_runs import (
    RUN_ATTR,
    TAG_STUDY,
    TRIAL_STATE,
    close_stray_runs,
    log_parent_results,
    mark_dead_child,
    open_parent,
    point_to_parent,
    record_child,
    trial_tags,
)
from distill.sweep_space import (
    SweepSpace,
    check_objective,
    load_space,
    make_pruner,
    make_sampler,
    parse_overrides,
    resolve_space_path,
    suggest,
)


@dataclass
class SweepConfig:
    """Optuna sweep over ORPO and LoRA settings; every trial a nested train run, the objective on the dev split."""

    space: str = field(
        default="sweeps/default.yaml",
        metadata={
            "help": "Search space YAML (see sweeps/default.yaml). A bare name such as 'quick' means sweeps/quick.yaml."
        },
    )
    n_trials: int | None = unset_field(
        "auto",
        "Finished trials the study should have in total (a resumed or shared study runs only what is missing). auto: the space file's n_trials.",
    )
    storage: str = field(
        default="sqlite:///optuna.db",
        metadata={"help": "Optuna storage, any SQLAlchemy URL (postgresql://user:pass@host/db for many workers)."},
    )
    study_name: str | None = unset_field(
        "auto", "Optuna study (loaded when it exists, so a killed sweep resumes). auto: the space file's study_name."
    )
    objective: str | None = unset_field(
        "auto",
        "Dev metric to optimise: dev/macro_f1, dev/accuracy, dev/reward_accuracy or dev/margin. auto: the space file's.",
    )
    student: str | None = unset_field(
        "auto",
        "Base model of every trial (overrides the space file's fixed.student). auto: as the space file says, else tiny-qwen3.",
    )
    pairs: str | None = unset_field(
        "auto",
        "Preference pairs of every trial: a path or runs:/<id>/pairs. auto: as the space file says, else the bundled example pairs.",
    )
    eval_dataset: str | None = unset_field(
        "auto",
        "The test split recorded in every trial's config, for register to score the chosen trial on; trials never score it. auto: as the space file says, else the bundled eval sample.",
    )
    train_overrides: str | None = unset_field(
        "none",
        "Comma list of train parameters for every trial, applied after the space file's fixed ones, e.g. 'max_steps=20,epochs=1'.",
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of every trial's training and dev split, and of the sampler in the worker that creates the study."
        },
    )
    timeout_s: float | None = unset_field(
        "none", "This worker starts no new trial after this many seconds. none: no limit."
    )
    experiment: str | None = unset_field(
        "auto", "MLflow experiment of the parent and trial runs. auto: distill-sweep (mlflow run's, under mlflow run)."
    )
    output_dir: str = field(
        default="outputs/sweep", metadata={"help": "Local folder for the trials' adapters and the sweep's plots."}
    )

    def __post_init__(self) -> None:
        for name in ("study_name", "objective", "student", "pairs", "eval_dataset", "train_overrides", "experiment"):
            value = getattr(self, name)
            word = next(f for f in dataclasses.fields(self) if f.name == name).metadata.get("unset", "")
            if isinstance(value, str) and value.strip().lower() in ("", word):
                setattr(self, name, None)
        if not str(self.storage or "").strip():
            raise ConfigError("storage is empty: give a SQLAlchemy URL such as sqlite:///optuna.db")
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive (or empty for none), got {self.timeout_s}")


@dataclass
class TrialRecord:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_id: str | None
    seconds: float
    message: str = ""


@dataclass
class SweepOutputs:
    study_name: str
    parent_run_id: str
    trials: list[TrialRecord]
    """The trials this worker ran."""
    n_complete: int
    n_pruned: int
    n_failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_run_id: str | None
    wall_s: float
    summary: str
    experiment: str = ""


@dataclass
class _TrialResult:
    """What training one trial came to, before it is recorded in Optuna and MLflow."""

    outcome: str = "fail"
    """complete, pruned or fail."""
    value: float | None = None
    message: str = ""
    """What happened, for the console (a failure's full message)."""
    reason: str = ""
    """What happened, for the child run's tag: the pruning note, or a failure's short reason."""
    error_text: str = ""
    suggested: dict[str, Any] = field(default_factory=dict)
    failure_tags: dict[str, str] = field(default_factory=dict)


def run(cfg: SweepConfig) -> SweepOutputs:
    """Run (or resume, or join) the sweep until the study has n_trials finished trials."""
    import optuna

    started = time.perf_counter()
    space, n_trials, study_name = _plan(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # First, while MLFLOW_RUN_ID still says we run under `mlflow run`: then configure leaves the
    # experiment `mlflow run` chose (MLFLOW_EXPERIMENT_ID) in place, and the run it made joins
    # there (setting distill-sweep instead is what MLflow refuses with "active experiment ID
    # does not match environment run ID").
    tracking.configure(cfg.experiment, "sweep")
    env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # decided below: parent, or pointer to the parent
    study, parent_id, experiment = _join_study(cfg, space, study_name, env_run_id)
    folder = Path(cfg.output_dir) / study_name
    with tracking.resume_run(parent_id, system_metrics=True), tracking.tagging_failure():
        _log_sweep(cfg, space, study_name, n_trials, parent_id)
        records = _run_trials(
            study,
            space,
            cfg,
            n_trials,
            parent_id=parent_id,
            experiment=experiment,
            worker=worker_name(),
            started=started,
        )
        outputs = _finish(study, space, folder, parent_id=parent_id, records=records, started=started)
        outputs.experiment = experiment
    print()
    print(outputs.summary)
    return outputs


def _plan(cfg: SweepConfig) -> tuple[SweepSpace, int, str]:
    """The space file (with cfg's objective), the study's trial budget and its name; bad overrides fail here."""
    space = load_space(resolve_space_path(cfg.space), train_config=TrainConfig)
    if cfg.objective:
        try:
            space.objective = check_objective("objective", cfg.objective)
        except InputError as exc:
            raise ConfigError(exc.message) from None
    overrides = parse_overrides(cfg.train_overrides, train_config=TrainConfig)
    if not {**space.fixed, **overrides}.get("dev_fraction", 0.15):
        raise ConfigError("a sweep optimises a dev metric: dev_fraction must be > 0")
    return space, cfg.n_trials or space.n_trials, cfg.study_name or space.study_name


def _join_study(cfg: SweepConfig, space: SweepSpace, study_name: str, env_run_id: str | None) -> tuple[Any, str, str]:
    """(study, parent run id, the parent's experiment), creating what does not exist yet."""
    storage = open_storage(cfg.storage, on_dead_trial=mark_dead_child)
    with study_lock(cfg.storage, study_name):
        study, created = _load_or_create_study(storage, space, study_name, cfg)
        # Under the lock, so exactly one worker finds the study without a parent and makes one.
        parent_id = open_parent(study, env_run_id=env_run_id, run_name=f"sweep {study_name}")
    if created:
        print(f"sweep: created study {study_name!r} (sampler seed {space.sampler.get('seed', cfg.seed)})")
    if env_run_id and env_run_id != parent_id:
        point_to_parent(env_run_id, parent_id, study_name)
    client = tracking.client()
    experiment = client.get_experiment(client.get_run(parent_id).info.experiment_id).name
    return study, parent_id, experiment


def _load_or_create_study(storage: Any, space: SweepSpace, study_name: str, cfg: SweepConfig) -> tuple[Any, bool]:
    """(study, created). Called under `study_lock`, so only one worker ever creates it; that
    worker's sampler is seeded, every other worker's draws its own seed (see the module docstring)."""
    import optuna

    try:
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=make_sampler(space.sampler, None),
            pruner=make_pruner(space.pruner),
        )
        created = False
    except KeyError:
        seed = space.sampler.get("seed", cfg.seed)
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction=space.direction,
            load_if_exists=True,
            sampler=make_sampler(space.sampler, seed),
            pruner=make_pruner(space.pruner),
        )
        created = True
    if study.direction.name.lower() != space.direction:
        raise ConfigError(
            f"study {study_name!r} in {redact_storage(cfg.storage)} maximises/minimises differently ({study.direction.name.lower()}) from the space file ({space.direction})"
        )
    return study, created


def _log_sweep(cfg: SweepConfig, space: SweepSpace, study_name: str, n_trials: int, parent_id: str) -> None:
    """The sweep's params, config, tags and space file on the (active) parent run.

    A resumed or joined sweep leaves params already there as they are (MLflow refuses to change
    one): the first worker's values stand."""
    params = {
        "study_name": study_name,
        "space": Path(space.path).stem,
        "objective": space.objective,
        "direction": space.direction,
        "pruner": json.dumps(space.pruner, sort_keys=True),
        "sampler": json.dumps(space.sampler, sort_keys=True),
        "dev_eval_steps": space.dev_eval_steps,
        "seed": cfg.seed,
        "space_params": ",".join(p.name for p in space.params),
        **{f"fixed.{k}": v for k, v in space.fixed.items()},
    }
    existing = tracking.client().get_run(parent_id).data.params
    tracking.log_params({k: v for k, v in params.items() if k not in existing})
    tracking.log_config(dataclasses.replace(cfg, storage=redact_storage(cfg.storage)))  # no password in artifacts
    tracking.set_tags(
        {
            "distill.stage": "sweep",
            TAG_STUDY: study_name,
            "sweep.n_trials": n_trials,
            "sweep.objective": space.objective,
            "distill.storage": redact_storage(cfg.storage),
            tracking.PATH_TAG + "space": str(Path(space.path).resolve()),
        }
    )
    with contextlib.suppress(Exception):
        tracking.log_artifact(space.path, "space")
    print(
        f"sweep: study {study_name!r} in {redact_storage(cfg.storage)} · parent run {parent_id} · {n_trials} trials in total · objective {space.objective} ({space.direction})"
    )


def _run_trials(
    study: Any,
    space: SweepSpace,
    cfg: SweepConfig,
    n_trials: int,
    *,
    parent_id: str,
    experiment: str,
    worker: str,
    started: float,
) -> list[TrialRecord]:
    """Reserve and run trials until the study's budget is used up (or this worker's timeout)."""
    records: list[TrialRecord] = []
    while True:
        if cfg.timeout_s is not None and time.perf_counter() - started > cfg.timeout_s:
            print(f"sweep: timeout_s={cfg.timeout_s} reached; no new trial")
            break
        trial = reserve_trial(study, cfg.storage, n_trials, worker, on_dead_trial=mark_dead_child)
        if trial is None:
            break
        record = _run_trial(
            study, trial, space=space, cfg=cfg, parent_id=parent_id, experiment=experiment, worker=worker
        )
        records.append(record)
        shown = f"{record.value:.4f}" if record.value is not None else "-"
        print(
            f"sweep: trial {record.number} {record.state.lower()} · {space.objective}={shown} · {_fmt_params(record.params)} · {record.seconds:.0f} s"
            + (f" · {record.message}" if record.message and record.state != "COMPLETE" else "")
        )
    return records


def _run_trial(
    study: Any, trial: Any, *, space: SweepSpace, cfg: SweepConfig, parent_id: str, experiment: str, worker: str
) -> TrialRecord:
    """Train one trial as a nested run, record its outcome in Optuna and MLflow."""
    from distill.training import free_memory

    started = time.perf_counter()
    tags = trial_tags(study.study_name, trial.number, parent_id, worker)
    with heartbeat(study._storage, trial._trial_id):
        result = _train_trial(
            study, trial, space=space, cfg=cfg, parent_id=parent_id, experiment=experiment, tags=tags
        )
    free_memory()
    run_id = record_child(
        study,
        trial,
        outcome=result.outcome,
        message=result.reason,
        error_text=result.error_text,
        parent_id=parent_id,
        tags=tags,
        suggested=result.suggested,
        failure_tags=result.failure_tags,
    )
    state = _tell(study, trial, result, run_id)
    return TrialRecord(
        number=trial.number,
        state=state,
        value=result.value,
        params=result.suggested,
        run_id=run_id,
        seconds=time.perf_counter() - started,
        message=result.message,
    )


def _train_trial(
    study: Any,
    trial: Any,
    *,
    space: SweepSpace,
    cfg: SweepConfig,
    parent_id: str,
    experiment: str,
    tags: dict[str, str],
) -> _TrialResult:
    """Suggest the trial's parameters and train them; a failure is the trial's, never the study's."""
    import optuna
    from optuna.trial import TrialState

    result = _TrialResult()
    try:
        result.suggested = suggest(trial, space.params)
        train_cfg = TrainConfig(**trial_kwargs(space, cfg, result.suggested, experiment=experiment))
        assert not train_cfg.score_eval, "a trial never scores the test split"
        outputs = run_train(
            train_cfg,
            on_dev_eval=_reporter(trial, space),
            run_tags=tags,
            name_prefix=f"trial {trial.number}",
            name_fields=tuple(p.name for p in space.params),
        )
        value = outputs.metrics.get(space.objective)
        if value is None or not math.isfinite(float(value)):
            raise DistillError(
                f"the train run measured no finite {space.objective} (is there a dev split? dev_fraction > 0)"
            )
        result.outcome, result.value = "complete", float(value)
    except optuna.TrialPruned as exc:
        result.outcome, result.message = "pruned", str(exc)
        result.reason = result.message
    except KeyboardInterrupt:
        close_stray_runs(parent_id, "KILLED")
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL)  # no outcome attr: a resume runs it again
        raise
    except Exception as exc:  # any failure is this trial's, never the study's
        result.outcome, result.message = "fail", f"{type(exc).__name__}: {exc}"
        result.failure_tags = tracking.failure_tags(exc)
        result.reason = (
            result.failure_tags.get(tracking.FAILURE_TAG) or result.failure_tags[tracking.FAILURE_REASON_TAG]
        )
        result.error_text = tracking.redact(traceback.format_exc())
    finally:
        close_stray_runs(parent_id, "FAILED")
    return result


def _reporter(trial: Any, space: SweepSpace):
    """The train stage's `on_dev_eval`: report each dev measurement to the trial, and prune."""
    import optuna

    def on_dev_eval(step: int, metrics: dict[str, float]) -> None:
        current = metrics.get(space.objective_key)
        if current is None or not math.isfinite(current):
            return
        run_id = tracking.active_run_id()
        if trial.user_attrs.get(RUN_ATTR) is None and run_id is not None:
            trial.set_user_attr(RUN_ATTR, run_id)
        trial.report(float(current), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {space.objective}={current:.4f}")

    return on_dev_eval


def _tell(study: Any, trial: Any, result: _TrialResult, run_id: str) -> str:
    """The trial's outcome into Optuna (its state name), with the outcome attr that makes it count."""
    from optuna.trial import TrialState

    trial.set_user_attr(OUTCOME_ATTR, result.outcome)
    trial.set_user_attr(RUN_ATTR, run_id)
    state = TrialState[TRIAL_STATE[result.outcome]]
    try:
        study.tell(trial, result.value if result.outcome == "complete" else None, state=state)
    except Exception as exc:  # e.g. another worker failed it as stale meanwhile
        print(f"sweep: could not record trial {trial.number} as {state.name}: {exc}")
    return state.name


def trial_kwargs(
    space: SweepSpace, cfg: SweepConfig, suggested: Mapping[str, Any], *, experiment: str
) -> dict[str, Any]:
    """TrainConfig keyword arguments of one trial: fixed < sweep parameters < overrides < suggested."""
    kwargs: dict[str, Any] = dict(space.fixed)
    for name in ("student", "pairs", "eval_dataset"):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    kwargs.update(parse_overrides(cfg.train_overrides, train_config=TrainConfig))
    kwargs.update(suggested)
    kwargs.update(
        experiment=experiment,
        seed=cfg.seed,
        output_dir=str(Path(cfg.output_dir) / "trials"),
        dev_eval_steps=space.dev_eval_steps,
        score_eval=False,  # the test split is register's, once, for the chosen trial
    )
    return kwargs


def _finish(
    study: Any, space: SweepSpace, folder: Path, *, parent_id: str, records: list[TrialRecord], started: float
) -> SweepOutputs:
    """Results and summary on the parent run; what this worker did and where the study stands."""
    from distill.io import write_text_atomic

    best = log_parent_results(study, space, folder)
    trials = study.get_trials(deepcopy=False)
    wall_s = time.perf_counter() - started
    summary = summary_text(study.study_name, parent_id, trials, space, best, wall_s, len(records))
    tracking.log_artifact(write_text_atomic(folder / "summary.txt", summary + "\n"))
    tracking.describe_run(summary, parent_links(trials, best))
    states = [t.state.name for t in trials]
    return SweepOutputs(
        study_name=study.study_name,
        parent_run_id=parent_id,
        trials=records,
        n_complete=states.count("COMPLETE"),
        n_pruned=states.count("PRUNED"),
        n_failed=states.count("FAIL"),
        best_value=best["value"],
        best_params=best["params"],
        best_run_id=best["run_id"],
        wall_s=wall_s,
        summary=summary,
    )


def parent_links(trials: list[Any], best: Mapping[str, Any], limit: int = 30) -> dict[str, str]:
    """The parent's description links: the best trial, then the trials (the first `limit`)."""
    from distill.sweep_runs import RUN_ATTR

    links: dict[str, str] = {}
    if best.get("run_id"):
        links["best trial"] = tracking.run_link(best["run_id"])
    for t in sorted(trials, key=lambda t: t.number)[:limit]:
        run_id = t.user_attrs.get(RUN_ATTR)
        if run_id:
            links[f"trial {t.number} ({t.state.name.lower()})"] = tracking.run_link(run_id)
    return links


def _fmt_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def summary_text(
    study_name: str,
    parent_id: str,
    trials: list[Any],
    space: SweepSpace,
    best: dict[str, Any],
    wall_s: float,
    n_here: int,
) -> str:
    """The sweep's summary: every trial of the study, the best one, the parent run."""
    lines = [
        f"sweep  {study_name}: {len(trials)} trials in the study ({n_here} run by this worker in {wall_s:.0f} s); objective {space.objective} ({space.direction})"
    ]
    lines.append(f"{'trial':>5}  {'state':<8}  {'value':>8}  params")
    for t in sorted(trials, key=lambda t: t.number):
        value = f"{t.value:.4f}" if t.value is not None else "-"
        lines.append(f"{t.number:>5}  {t.state.name.lower():<8}  {value:>8}  {_fmt_params(t.params)}")
    if best["value"] is not None:
        lines.append(
            f"best   trial {best['number']}: {space.objective}={best['value']:.4f}  {_fmt_params(best['params'])}  run {best['run_id']}"
        )
    else:
        lines.append("best   none yet (no complete trial)")
    lines.append(f"parent run {parent_id}")
    return "\n".join(lines)
