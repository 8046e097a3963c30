"""The `sweep` stage: Optuna over ORPO λ, LoRA rank, pair count (and more), every trial a full train run.

How one sweep is laid out in MLflow and Optuna:
- The search space is declarative YAML (`sweeps/*.yaml`, see `parse_space`): the parameters
  Optuna varies, the train parameters every trial shares, the objective (a `dev/*` metric of
  the train run: never the eval/test set), its direction, the sampler and the pruner.
- The parent MLflow run is opened here, explicitly (Optuna's MLflowCallback with nested runs
  leaves the parent out); each trial is `distill.training.run` as a nested child run, tagged
  with the study, the trial number, the parent and the worker. Its id is stored on the trial
  (`mlflow_run_id`), and the parent's id on the study (user attr `mlflow_parent_run_id`), so a
  resumed sweep and every worker of a distributed one log under the same parent.
- Pruning: training measures the dev split every `dev_eval_steps` steps
  (`TrainConfig.dev_eval_steps`, logged as `dev_curve/*`); each measurement is reported to the
  trial, and the pruner (median, percentile, Hyperband, threshold or none) may stop it.
  A pruned trial is PRUNED in Optuna and its child run is KILLED, tagged
  `distill.sweep.trial_state=PRUNED`.
- A trial that raises is FAIL in Optuna and its child run FAILED, with the traceback as the
  artifact `error.txt`; the study goes on. GPU memory is freed after every trial.
- Storage: any SQLAlchemy URL (`sqlite:///optuna.db` by default, `postgresql://...` for many
  workers on many machines). The study is loaded if it exists, so a killed sweep resumes.
  `n_trials` is the number of finished trials the *study* should have, not this process:
  a resumed sweep runs only what is missing, and N workers started with the same `n_trials`
  together run exactly that many. Deciding "one more trial?" and reserving it (Optuna's
  `ask`) happen under a lock shared by all workers (a file lock beside a SQLite database,
  `pg_advisory_lock` on PostgreSQL, `GET_LOCK` on MySQL). Trials keep a heartbeat in the
  storage; a trial whose worker died is failed once its heartbeat is `GRACE_PERIOD_S` old (at
  once when the dead worker ran on this machine: its process id is gone), and does not count
  (it never finished), so the budget runs a replacement.
- The sampler is seeded (`seed`) in the worker that creates the study; every other worker,
  and a resumed sweep, draws its own seed, so that parallel workers never propose the same
  parameters in lockstep. Every trial trains with the same `seed`, so all are measured on
  the same dev split.
- At the end each worker logs to the parent: best value, parameters and trial, counts per
  state, Optuna's optimization history, parameter importances (from 2 complete trials on),
  parallel-coordinate and intermediate-value plots (plotly HTML), and the trials table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import socket
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from distill.errors import ConfigError, DistillError, InputError

PARENT_ATTR = "mlflow_parent_run_id"
"""Study user attr: the MLflow run every trial of the study nests under."""
RUN_ATTR = "mlflow_run_id"
"""Trial user attr: the trial's child run."""
OUTCOME_ATTR = "distill.outcome"
"""Trial user attr set by the worker that finished the trial (complete, pruned, fail). A FAIL
trial without it was failed by the heartbeat check (its worker died): it does not count."""
WORKER_ATTR = "distill.worker"

TAG_STUDY = "distill.sweep.study"
TAG_TRIAL = "distill.sweep.trial_number"
TAG_PARENT = "distill.sweep.parent_run"
TAG_WORKER = "distill.sweep.worker"
TAG_STATE = "distill.sweep.trial_state"

HEARTBEAT_INTERVAL_S = 20
GRACE_PERIOD_S = 60
PARENT_WAIT_S = 60

DEV_OBJECTIVES = ("macro_f1", "accuracy", "reward_accuracy", "margin")
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical")
PRUNERS = ("median", "percentile", "hyperband", "threshold", "none")
SAMPLERS = ("tpe", "random")
SPACE_KEYS = ("study_name", "objective", "direction", "n_trials", "dev_eval_steps", "sampler", "pruner", "space", "fixed")
SWEEP_OWNED = ("experiment", "seed", "output_dir", "dev_eval_steps")
"""TrainConfig fields the sweep sets itself (not in a space file's `space` or `fixed`)."""


@dataclass
class SweepConfig:
    """Optuna sweep over ORPO and LoRA settings; every trial a nested train run, the objective on the dev split."""

    space: str = field(default="sweeps/default.yaml", metadata={"help": "Search space YAML (see sweeps/default.yaml). A bare name such as 'quick' means sweeps/quick.yaml."})
    n_trials: int | None = field(default=None, metadata={"help": "Finished trials the study should have in total (a resumed or shared study runs only what is missing). Empty: the space file's n_trials."})
    storage: str = field(default="sqlite:///optuna.db", metadata={"help": "Optuna storage, any SQLAlchemy URL (postgresql://user:pass@host/db for many workers)."})
    study_name: str | None = field(default=None, metadata={"help": "Optuna study (loaded when it exists, so a killed sweep resumes). Empty: the space file's study_name."})
    objective: str | None = field(default=None, metadata={"help": "Dev metric to optimise: dev/macro_f1, dev/accuracy, dev/reward_accuracy or dev/margin. Empty: the space file's."})
    student: str | None = field(default=None, metadata={"help": "Base model of every trial (overrides the space file's fixed.student). Empty: as the space file says, else tiny-qwen3."})
    pairs: str | None = field(default=None, metadata={"help": "Preference pairs of every trial: a path or runs:/<id>/pairs. Empty: as the space file says, else the bundled example pairs."})
    eval_dataset: str | None = field(default=None, metadata={"help": "Eval items every trial is scored on (reported, never optimised). Empty: as the space file says, else the bundled eval sample."})
    train_overrides: str | None = field(default=None, metadata={"help": "Comma list of train parameters for every trial, applied after the space file's fixed ones, e.g. 'max_steps=20,epochs=1'."})
    seed: int = field(default=0, metadata={"help": "Seed of every trial's training and dev split, and of the sampler in the worker that creates the study."})
    timeout_s: float | None = field(default=None, metadata={"help": "This worker starts no new trial after this many seconds. Empty: no limit."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment of the parent and trial runs (default distill-sweep)."})
    output_dir: str = field(default="outputs/sweep", metadata={"help": "Local folder for the trials' adapters and the sweep's plots."})

    def __post_init__(self) -> None:
        for name in ("study_name", "objective", "student", "pairs", "eval_dataset", "train_overrides", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)
        if not str(self.storage or "").strip():
            raise ConfigError("storage is empty: give a SQLAlchemy URL such as sqlite:///optuna.db")
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive (or empty for none), got {self.timeout_s}")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass
class SweepSpace:
    """A parsed space file."""

    path: str
    study_name: str
    objective: str
    direction: str
    n_trials: int
    dev_eval_steps: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    params: list[ParamSpec]
    fixed: dict[str, Any]

    @property
    def objective_key(self) -> str:
        """The metric's name inside `dev_metrics` (`dev/macro_f1` -> `macro_f1`)."""
        return self.objective.split("/", 1)[1]


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


# --------------------------------------------------------------------------------------------
# The space file (pure)


def resolve_space_path(space: str) -> Path:
    """`space` as given; a bare name `quick` is `sweeps/quick.yaml` here or in the source tree."""
    given = Path(space).expanduser()
    candidates = [given]
    if given.suffix not in (".yaml", ".yml") and len(given.parts) == 1:
        candidates.append(Path("sweeps") / f"{space}.yaml")
    source_root = Path(__file__).resolve().parents[1]
    candidates += [source_root / c for c in list(candidates) if not c.is_absolute()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"space file {space!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def _number(path: str, value: Any, where: str) -> float:
    # YAML 1.1 reads 1e-5 (no dot) as a string; accept it as the number it plainly is.
    if isinstance(value, bool):
        raise InputError(path, f"expected a number, got {value!r}", field=where)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"expected a number, got {value!r}", field=where) from None
    if not math.isfinite(number):
        raise InputError(path, f"expected a finite number, got {value!r}", field=where)
    return number


def _train_fields() -> dict[str, dataclasses.Field]:
    from distill.training import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_param(path: str, name: str, spec: Any) -> ParamSpec:
    where = f"space.{name}"
    if not isinstance(spec, Mapping):
        raise InputError(path, "each parameter is a mapping with a type (float, int or categorical)", field=where)
    kind = str(spec.get("type", "")).strip().lower()
    if kind not in PARAM_TYPES:
        raise InputError(path, f"type must be one of {', '.join(PARAM_TYPES)}, got {spec.get('type')!r}", field=where)
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"}, "categorical": {"type", "choices"}}[kind]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InputError(path, f"unknown key(s) {', '.join(unknown)} for a {kind} parameter", field=where)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(path, "choices must be a non-empty list", field=where)
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise InputError(path, f"a choice must be a number, string, bool or null, got {choice!r}", field=where)
        if len(set(map(repr, choices))) != len(choices):
            raise InputError(path, "choices repeat a value", field=where)
        return ParamSpec(name=name, type=kind, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise InputError(path, "a float or int parameter needs low and high", field=where)
    low, high = _number(path, spec["low"], where + ".low"), _number(path, spec["high"], where + ".high")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise InputError(path, "an int parameter needs whole low and high", field=where)
    if not low < high:
        raise InputError(path, f"low ({low:g}) must be below high ({high:g})", field=where)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InputError(path, f"log must be true or false, got {log!r}", field=where + ".log")
    if log and low <= 0:
        raise InputError(path, f"a log-scale parameter needs low > 0, got {low:g}", field=where)
    step = spec.get("step")
    if step is not None:
        step = _number(path, step, where + ".step")
        if step <= 0:
            raise InputError(path, "step must be positive", field=where + ".step")
        if log:
            raise InputError(path, "step and log cannot be combined (Optuna samples one or the other)", field=where)
    return ParamSpec(name=name, type=kind, low=low, high=high, log=log, step=step)


def _check_objective(path: str, objective: Any) -> str:
    text = str(objective or "").strip()
    name = text.split("/", 1)[1] if text.startswith("dev/") else None
    if name not in DEV_OBJECTIVES:
        raise InputError(
            path,
            f"objective must be a dev-split metric ({', '.join('dev/' + n for n in DEV_OBJECTIVES)}), got {objective!r}; "
            "the eval set is the test split and is never optimised",
            field="objective",
        )
    return text


def _check_component(path: str, where: str, value: Any, kinds: tuple[str, ...], default: str) -> dict[str, Any]:
    if value is None:
        value = {"type": default}
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise InputError(path, f"expected a mapping with a type ({', '.join(kinds)})", field=where)
    out = dict(value)
    out["type"] = str(out.get("type", default)).strip().lower()
    if out["type"] not in kinds:
        raise InputError(path, f"type must be one of {', '.join(kinds)}, got {value.get('type')!r}", field=where + ".type")
    return out


def parse_space(data: Any, path: str = "<space>") -> SweepSpace:
    """Check a space file's content and turn it into a SweepSpace (errors name the field)."""
    if not isinstance(data, Mapping):
        raise InputError(path, "a space file is a YAML mapping (study_name, objective, space, fixed, ...)")
    unknown = sorted(set(data) - set(SPACE_KEYS))
    if unknown:
        raise InputError(path, f"unknown key(s): {', '.join(unknown)} (known: {', '.join(SPACE_KEYS)})")
    train_fields = _train_fields()
    space = data.get("space")
    if not isinstance(space, Mapping) or not space:
        raise InputError(path, "space must map at least one train parameter to its range", field="space")
    params = []
    for name, spec in space.items():
        if name not in train_fields or name in SWEEP_OWNED:
            raise InputError(path, f"{name!r} is not a train parameter a sweep can vary", field=f"space.{name}")
        params.append(parse_param(path, str(name), spec))
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise InputError(path, "fixed must map train parameters to values", field="fixed")
    for name in fixed:
        if name not in train_fields or name in SWEEP_OWNED:
            raise InputError(path, f"{name!r} is not a train parameter a space file can fix" + (" (the sweep sets it)" if name in SWEEP_OWNED else ""), field=f"fixed.{name}")
        if name in space:
            raise InputError(path, f"{name!r} is both varied (space) and fixed", field=f"fixed.{name}")
    direction = str(data.get("direction", "maximize")).strip().lower()
    if direction not in DIRECTIONS:
        raise InputError(path, f"direction must be maximize or minimize, got {data.get('direction')!r}", field="direction")
    n_trials = data.get("n_trials", 10)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise InputError(path, f"n_trials must be a whole number >= 1, got {n_trials!r}", field="n_trials")
    dev_eval_steps = data.get("dev_eval_steps", 0)
    if isinstance(dev_eval_steps, bool) or not isinstance(dev_eval_steps, int) or dev_eval_steps < 0:
        raise InputError(path, f"dev_eval_steps must be a whole number >= 0, got {dev_eval_steps!r}", field="dev_eval_steps")
    pruner = _check_component(path, "pruner", data.get("pruner"), PRUNERS, "median")
    if pruner["type"] != "none" and dev_eval_steps == 0:
        raise InputError(path, "a pruner needs intermediate dev evaluations: set dev_eval_steps > 0 (or pruner: none)", field="dev_eval_steps")
    study_name = str(data.get("study_name") or Path(path).stem).strip()
    return SweepSpace(
        path=str(path),
        study_name=study_name,
        objective=_check_objective(path, data.get("objective", "dev/macro_f1")),
        direction=direction,
        n_trials=n_trials,
        dev_eval_steps=dev_eval_steps,
        sampler=_check_component(path, "sampler", data.get("sampler"), SAMPLERS, "tpe"),
        pruner=pruner,
        params=params,
        fixed=dict(fixed),
    )


def load_space(path: str | os.PathLike) -> SweepSpace:
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc})") from None
    return parse_space(data, str(path))


def parse_overrides(text: str | None) -> dict[str, Any]:
    """`max_steps=20,epochs=1` -> {"max_steps": 20, "epochs": 1.0}, typed as TrainConfig's fields."""
    from distill.cli import _converter
    from distill.training import TrainConfig
    import typing

    if not text:
        return {}
    hints = typing.get_type_hints(TrainConfig)
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"train_overrides: expected name=value, got {part.strip()!r}")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in hints or name in SWEEP_OWNED:
            raise ConfigError(f"train_overrides: {name!r} is not a train parameter the sweep lets you set")
        try:
            out[name] = _converter(hints[name])(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"train_overrides: {name}={value!r}: {exc}") from None
    return out


def suggest(trial: Any, params: list[ParamSpec]) -> dict[str, Any]:
    """Ask `trial` for a value of every parameter of the space."""
    values: dict[str, Any] = {}
    for p in params:
        if p.type == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.type == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return values


def make_pruner(spec: Mapping[str, Any]):
    import optuna

    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    try:
        if kind == "median":
            return optuna.pruners.MedianPruner(**kwargs)
        if kind == "percentile":
            return optuna.pruners.PercentilePruner(**kwargs)
        if kind == "hyperband":
            return optuna.pruners.HyperbandPruner(**kwargs)
        if kind == "threshold":
            return optuna.pruners.ThresholdPruner(**kwargs)
        return optuna.pruners.NopPruner()
    except TypeError as exc:
        raise ConfigError(f"pruner {kind}: {exc}") from None


def make_sampler(spec: Mapping[str, Any], seed: int | None):
    import optuna

    kwargs = {k: v for k, v in spec.items() if k not in ("type", "seed")}
    try:
        if spec["type"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        kwargs.setdefault("constant_liar", True)  # parallel workers: running trials count as "bad" guesses, not as unexplored
        return optuna.samplers.TPESampler(seed=seed, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"sampler {spec['type']}: {exc}") from None


def trial_kwargs(space: SweepSpace, cfg: SweepConfig, suggested: Mapping[str, Any], *, experiment: str) -> dict[str, Any]:
    """TrainConfig keyword arguments of one trial: fixed < sweep parameters < overrides < suggested."""
    kwargs: dict[str, Any] = dict(space.fixed)
    for name in ("student", "pairs", "eval_dataset"):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    kwargs.update(parse_overrides(cfg.train_overrides))
    kwargs.update(suggested)
    kwargs.update(experiment=experiment, seed=cfg.seed, output_dir=str(Path(cfg.output_dir) / "trials"), dev_eval_steps=space.dev_eval_steps)
    return kwargs


def counts_toward_budget(state: str, user_attrs: Mapping[str, Any]) -> bool:
    """Does a trial use up one of the study's n_trials? Finished, running or queued ones do;
    a FAIL that no worker recorded (the heartbeat check failed it: its worker died) does not."""
    if state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING"):
        return True
    return state == "FAIL" and OUTCOME_ATTR in user_attrs


def budget_used(trials: list[Any]) -> int:
    return sum(1 for t in trials if counts_toward_budget(t.state.name, t.user_attrs))


def redact_storage(url: str) -> str:
    """The storage URL without its password (safe to log)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


# --------------------------------------------------------------------------------------------
# Storage edges: lock, heartbeat


@contextlib.contextmanager
def study_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """A lock shared by every worker of one study (see the module docstring)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    storage_url = sqlalchemy_url(storage_url)
    url = make_url(storage_url)
    backend = url.get_backend_name()
    key = f"distill-sweep:{study_name}"
    if backend == "sqlite":
        database = url.database
        if not database or database == ":memory:":
            yield
            return
        import fcntl

        lock_file = Path(database + ".lock")
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if backend in ("postgresql", "mysql", "mariadb"):
        engine = create_engine(storage_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                if backend == "postgresql":
                    number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": number})
                    release = (text("SELECT pg_advisory_unlock(:k)"), {"k": number})
                else:
                    conn.execute(text("SELECT GET_LOCK(:k, -1)"), {"k": key[:64]})
                    release = (text("SELECT RELEASE_LOCK(:k)"), {"k": key[:64]})
                try:
                    yield
                finally:
                    conn.execute(*release)
        finally:
            engine.dispose()
        return
    warnings.warn(f"no cross-process lock for {backend} storage: parallel workers may run a few trials more than n_trials")
    yield


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int, interval_s: float) -> Iterator[None]:
    """Record the trial's heartbeat every `interval_s` while the body runs (a dead worker's
    trial then goes stale and is failed by the next worker's check)."""
    if not hasattr(storage, "record_heartbeat"):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a transient storage error must not kill the trial
                storage.record_heartbeat(trial_id)
            stop.wait(interval_s)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s + 5)


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def sqlalchemy_url(url: str) -> str:
    """`url` with a PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare
    `postgresql://` as psycopg 3; with only psycopg2 installed, name that driver instead."""
    if url.startswith("postgresql://") and not _module_available("psycopg") and _module_available("psycopg2"):
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def open_storage(url: str, attempts: int = 3):
    """Optuna's RDBStorage with heartbeats. Retried: workers started together on a fresh
    database race to create Optuna's tables, and the loser's first attempt fails."""
    import optuna

    url = sqlalchemy_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 120}  # several workers on one file: wait for the write lock
    else:
        engine_kwargs["pool_pre_ping"] = True
    import inspect

    # Optuna 4.9 renamed failed_trial_callback; accept both sides of the rename.
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental since 2.9
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S,
                    **{callback: _mark_stale_child},
                )
        except Exception as exc:  # bad URL, unreachable server, missing driver, a creation race
            if attempt == attempts:
                raise ConfigError(f"cannot open Optuna storage {redact_storage(url)}: {type(exc).__name__}: {exc}") from None
            time.sleep(1.0 * attempt)


def _mark_stale_child(study: Any, trial: Any) -> None:
    """A trial failed by the heartbeat check: mark its child run FAILED too."""
    from mlflow import MlflowClient

    run_id = trial.user_attrs.get(RUN_ATTR) or _find_child_run(study.study_name, trial.number, study.user_attrs.get(PARENT_ATTR))
    if run_id:
        with contextlib.suppress(Exception):
            client = MlflowClient()
            client.set_tag(run_id, TAG_STATE, "FAIL")
            client.set_tag(run_id, "distill.sweep.error", "its worker died (killed or crashed) before the trial finished")
            client.set_terminated(run_id, "FAILED")


# --------------------------------------------------------------------------------------------
# MLflow edges


def _find_child_run(study_name: str, number: int, parent_run_id: str | None) -> str | None:
    import mlflow

    if not parent_run_id:
        return None
    client = mlflow.MlflowClient()
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


def _open_parent(study: Any, *, env_run_id: str | None, run_name: str) -> str:
    """The parent run id for this study: the one stored on it, else a new one (stored)."""
    import mlflow

    from distill import tracking

    client = mlflow.MlflowClient()
    stored = study.user_attrs.get(PARENT_ATTR)
    if stored:
        try:
            run = client.get_run(stored)
            if run.info.lifecycle_stage == "active":
                return stored
        except Exception:
            pass
        print(f"sweep: parent run {stored} of study {study.study_name!r} is not in this tracking store; starting a new parent")
    if env_run_id:
        os.environ["MLFLOW_RUN_ID"] = env_run_id  # `mlflow run` made this run: it becomes the parent
    with tracking.start_run(run_name=run_name, nested=False) as active:
        parent_id = active.info.run_id
    study.set_user_attr(PARENT_ATTR, parent_id)
    return parent_id


def _figures_html(study: Any, folder: Path) -> dict[str, str]:
    """Optuna's plotly figures as HTML files; {file: note} for those that could not be drawn."""
    import optuna
    from optuna.trial import TrialState

    from distill.charts import figure_html
    from distill.io import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    notes: dict[str, str] = {}
    plots = {
        "optimization_history.html": lambda: optuna.visualization.plot_optimization_history(study),
        "parallel_coordinate.html": lambda: optuna.visualization.plot_parallel_coordinate(study),
        "intermediate_values.html": lambda: optuna.visualization.plot_intermediate_values(study),
    }
    if len(complete) >= 2:
        plots["param_importances.html"] = lambda: optuna.visualization.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    else:
        notes["param_importances.html"] = f"needs at least 2 complete trials, has {len(complete)}"
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
        except Exception as exc:  # e.g. importances when no parameter varied among complete trials
            notes[name] = f"{type(exc).__name__}: {exc}"
            continue
        write_text_atomic(folder / name, figure_html(fig))
    return notes


def _log_parent_results(study: Any, space: SweepSpace, cfg: SweepConfig, folder: Path) -> dict[str, Any]:
    """Best trial, counts and figures onto the active (parent) run; return the figures."""
    import mlflow
    from optuna.trial import TrialState

    from distill.io import write_text_atomic

    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(1 for t in trials if t.state == state) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    metrics = {
        "sweep/n_trials": float(len(trials)),
        "sweep/n_complete": float(counts[TrialState.COMPLETE]),
        "sweep/n_pruned": float(counts[TrialState.PRUNED]),
        "sweep/n_failed": float(counts[TrialState.FAIL]),
    }
    best: dict[str, Any] = {"value": None, "params": {}, "number": None, "run_id": None}
    if counts[TrialState.COMPLETE]:
        trial = study.best_trial
        best = {"value": trial.value, "params": dict(trial.params), "number": trial.number, "run_id": trial.user_attrs.get(RUN_ATTR)}
        metrics["sweep/best_value"] = float(trial.value)
        tags = {"sweep.best_trial": str(trial.number), "sweep.best_run_id": best["run_id"] or ""}
        tags.update({f"sweep.best.{k}": str(v) for k, v in trial.params.items()})
        mlflow.set_tags(tags)
    mlflow.log_metrics(metrics)
    folder.mkdir(parents=True, exist_ok=True)
    notes = _figures_html(study, folder / "optuna")
    for name, note in notes.items():
        mlflow.set_tag(f"sweep.figure_note.{name.removesuffix('.html')}", note[:250])
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "datetime_start", "datetime_complete", "duration"))
    for column in frame.columns:
        if str(frame[column].dtype).startswith(("datetime", "timedelta")) or frame[column].dtype == object:
            frame[column] = frame[column].astype(str)
    frame.to_csv(folder / "trials.csv", index=False)
    write_text_atomic(folder / "best.json", json.dumps({**best, "objective": space.objective, "direction": space.direction}, indent=2, default=str) + "\n")
    mlflow.log_artifacts(str(folder / "optuna"), "optuna")
    mlflow.log_artifact(str(folder / "trials.csv"), "optuna")
    mlflow.log_artifact(str(folder / "best.json"))
    return best


# --------------------------------------------------------------------------------------------
# One trial


def _run_trial(study: Any, trial: Any, *, space: SweepSpace, cfg: SweepConfig, parent_id: str, experiment: str, worker: str) -> TrialRecord:
    """Train one trial as a nested run, record its outcome in Optuna and MLflow."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from distill import training

    started = time.perf_counter()
    tags = {TAG_STUDY: study.study_name, TAG_TRIAL: str(trial.number), TAG_PARENT: parent_id, TAG_WORKER: worker, "distill.stage": "train"}
    outcome, value, message, error_text = "fail", None, "", ""
    suggested: dict[str, Any] = {}

    def on_dev_eval(step: int, metrics: dict[str, float]) -> None:
        current = metrics.get(space.objective_key)
        if current is None or not math.isfinite(current):
            return
        if trial.user_attrs.get(RUN_ATTR) is None and mlflow.active_run() is not None:
            trial.set_user_attr(RUN_ATTR, mlflow.active_run().info.run_id)
        trial.report(float(current), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {space.objective}={current:.4f}")

    with heartbeat(study._storage, trial._trial_id, HEARTBEAT_INTERVAL_S):
        try:
            suggested = suggest(trial, space.params)
            train_cfg = training.TrainConfig(**trial_kwargs(space, cfg, suggested, experiment=experiment))
            outputs = training.run(train_cfg, on_dev_eval=on_dev_eval, run_tags=tags)
            value = outputs.metrics.get(space.objective)
            if value is None or not math.isfinite(float(value)):
                raise DistillError(f"the train run measured no finite {space.objective} (is there a dev split? dev_fraction > 0)")
            value = float(value)
            outcome = "complete"
        except optuna.TrialPruned as exc:
            outcome, message = "pruned", str(exc)
        except KeyboardInterrupt:
            _close_stray_runs(parent_id, "KILLED")
            with contextlib.suppress(Exception):
                study.tell(trial, state=TrialState.FAIL)  # no outcome attr: a resume runs it again
            raise
        except Exception as exc:  # any failure is this trial's, never the study's
            outcome, message, error_text = "fail", f"{type(exc).__name__}: {exc}", traceback.format_exc()
        finally:
            _close_stray_runs(parent_id, "FAILED")
    training.free_memory()

    run_id = _record_child(study, trial, outcome=outcome, message=message, error_text=error_text, parent_id=parent_id, tags=tags, suggested=suggested)
    trial.set_user_attr(OUTCOME_ATTR, outcome)
    if run_id:
        trial.set_user_attr(RUN_ATTR, run_id)
    state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}[outcome]
    try:
        study.tell(trial, value if outcome == "complete" else None, state=state)
    except Exception as exc:  # e.g. another worker failed it as stale meanwhile
        print(f"sweep: could not record trial {trial.number} as {state.name}: {exc}")
    return TrialRecord(number=trial.number, state=state.name, value=value, params=suggested, run_id=run_id, seconds=time.perf_counter() - started, message=message)


def _close_stray_runs(parent_id: str, status: str) -> None:
    """End any run a failed trial left open, down to the parent."""
    import mlflow

    while (active := mlflow.active_run()) is not None and active.info.run_id != parent_id:
        mlflow.end_run(status=status)


def _record_child(study, trial, *, outcome: str, message: str, error_text: str, parent_id: str, tags: dict[str, str], suggested: dict[str, Any]) -> str | None:
    """Final state, name and error of the trial's child run (created here when the trial failed
    before training opened one, so every trial has exactly one child run)."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = trial.user_attrs.get(RUN_ATTR) or _find_child_run(study.study_name, trial.number, parent_id)
    if run_id is None:
        parent = client.get_run(parent_id)
        run = client.create_run(parent.info.experiment_id, tags={**tags, "mlflow.parentRunId": parent_id}, run_name=f"trial {trial.number}")
        run_id = run.info.run_id
        for name, value in suggested.items():
            client.log_param(run_id, name, str(value))
    state = {"complete": "COMPLETE", "pruned": "PRUNED", "fail": "FAIL"}[outcome]
    client.set_tag(run_id, TAG_STATE, state)
    client.set_tag(run_id, "mlflow.runName", f"trial {trial.number}")
    if message:
        client.set_tag(run_id, "distill.sweep.message", message[:5000])
    if error_text:
        client.log_text(run_id, error_text, "error.txt")
    status = {"complete": "FINISHED", "pruned": "KILLED", "fail": "FAILED"}[outcome]
    client.set_terminated(run_id, status)
    return run_id


# --------------------------------------------------------------------------------------------
# The stage


def _load_or_create_study(storage: Any, space: SweepSpace, study_name: str, cfg: SweepConfig):
    """(study, created). Called under `study_lock`, so only one worker ever creates it; that
    worker's sampler is seeded, every other worker's draws its own seed (see the module docstring)."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=make_sampler(space.sampler, None), pruner=make_pruner(space.pruner))
        created = False
    except KeyError:
        seed = space.sampler.get("seed", cfg.seed)
        study = optuna.create_study(
            study_name=study_name, storage=storage, direction=space.direction, load_if_exists=True,
            sampler=make_sampler(space.sampler, seed), pruner=make_pruner(space.pruner),
        )
        created = True
    if study.direction.name.lower() != space.direction:
        raise ConfigError(f"study {study_name!r} in {redact_storage(cfg.storage)} maximises/minimises differently ({study.direction.name.lower()}) from the space file ({space.direction})")
    return study, created


def run(cfg: SweepConfig) -> SweepOutputs:
    """Run (or resume, or join) the sweep until the study has n_trials finished trials."""
    started = time.perf_counter()
    space = load_space(resolve_space_path(cfg.space))
    if cfg.objective:
        try:
            space.objective = _check_objective("objective", cfg.objective)
        except InputError as exc:
            raise ConfigError(exc.message) from None
    n_trials = cfg.n_trials or space.n_trials
    study_name = cfg.study_name or space.study_name
    parse_overrides(cfg.train_overrides)  # fail on a bad override before anything starts
    fixed_dev = {**space.fixed, **parse_overrides(cfg.train_overrides)}.get("dev_fraction", 0.15)
    if not fixed_dev:
        raise ConfigError("a sweep optimises a dev metric: dev_fraction must be > 0")

    import mlflow
    import optuna

    from distill import tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # decided below: parent, or pointer to the parent
    experiment = tracking.configure(cfg.experiment, "sweep")
    worker = f"{socket.gethostname()}:{os.getpid()}"
    storage = open_storage(cfg.storage)

    with study_lock(cfg.storage, study_name):
        study, created = _load_or_create_study(storage, space, study_name, cfg)
        # Under the lock, so exactly one worker finds the study without a parent and makes one.
        parent_id = _open_parent(study, env_run_id=env_run_id, run_name=f"sweep {study_name}")
    if created:
        print(f"sweep: created study {study_name!r} (sampler seed {space.sampler.get('seed', cfg.seed)})")
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    experiment = client.get_experiment(parent.info.experiment_id).name
    if env_run_id and env_run_id != parent_id:
        # Under `mlflow run` on a study that already has a parent: this run only points there.
        client.set_tag(env_run_id, "distill.sweep.parent_run", parent_id)
        client.set_tag(env_run_id, "mlflow.note.content", f"Joined sweep {study_name!r}; its trials are under run {parent_id}.")
        client.set_terminated(env_run_id, "FINISHED")

    mlflow.set_experiment(experiment_id=parent.info.experiment_id)
    records: list[TrialRecord] = []
    folder = Path(cfg.output_dir) / study_name
    with mlflow.start_run(run_id=parent_id):
        existing = client.get_run(parent_id).data.params
        params = {
            "study_name": study_name, "storage": redact_storage(cfg.storage), "space": str(space.path), "objective": space.objective,
            "direction": space.direction, "pruner": json.dumps(space.pruner, sort_keys=True), "sampler": json.dumps(space.sampler, sort_keys=True),
            "dev_eval_steps": space.dev_eval_steps, "seed": cfg.seed, "space_params": ",".join(p.name for p in space.params),
        }
        params.update({f"fixed.{k}": v for k, v in space.fixed.items()})
        fresh = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
        if fresh:
            mlflow.log_params(fresh)
        mlflow.set_tags({"distill.stage": "sweep", TAG_STUDY: study_name, "sweep.n_trials": str(n_trials), "sweep.objective": space.objective})
        with contextlib.suppress(Exception):
            mlflow.log_artifact(str(space.path), "space")
        print(f"sweep: study {study_name!r} in {redact_storage(cfg.storage)} · parent run {parent_id} · {n_trials} trials in total · objective {space.objective} ({space.direction})")

        while True:
            if cfg.timeout_s is not None and time.perf_counter() - started > cfg.timeout_s:
                print(f"sweep: timeout_s={cfg.timeout_s} reached; no new trial")
                break
            with study_lock(cfg.storage, study_name):
                _fail_stale_trials(study)
                _fail_orphaned_trials(study)
                trials = study.get_trials(deepcopy=False)
                waiting = any(t.state.name == "WAITING" for t in trials)
                if not waiting and budget_used(trials) >= n_trials:
                    break
                with warnings.catch_warnings():
                    # Optuna suggests optimize() with heartbeats; this loop keeps its own (`heartbeat`).
                    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                    trial = study.ask()
                trial.set_user_attr(WORKER_ATTR, worker)  # still under the lock: no trial is ever ownerless
            record = _run_trial(study, trial, space=space, cfg=cfg, parent_id=parent_id, experiment=experiment, worker=worker)
            records.append(record)
            shown = f"{record.value:.4f}" if record.value is not None else "-"
            print(f"sweep: trial {record.number} {record.state.lower()} · {space.objective}={shown} · {_fmt_params(record.params)} · {record.seconds:.0f} s" + (f" · {record.message}" if record.message and record.state != "COMPLETE" else ""))

        best = _log_parent_results(study, space, cfg, folder)
        all_trials = study.get_trials(deepcopy=False)
        n_complete = sum(1 for t in all_trials if t.state.name == "COMPLETE")
        n_pruned = sum(1 for t in all_trials if t.state.name == "PRUNED")
        n_failed = sum(1 for t in all_trials if t.state.name == "FAIL")
        wall_s = time.perf_counter() - started
        summary = summary_text(study_name, parent_id, all_trials, space, best, wall_s, len(records))
        from distill.io import write_text_atomic

        write_text_atomic(folder / "summary.txt", summary + "\n")
        mlflow.log_artifact(str(folder / "summary.txt"))
    print()
    print(summary)
    return SweepOutputs(
        study_name=study_name, parent_run_id=parent_id, trials=records, n_complete=n_complete, n_pruned=n_pruned, n_failed=n_failed,
        best_value=best["value"], best_params=best["params"], best_run_id=best["run_id"], wall_s=wall_s, summary=summary,
    )


def _fmt_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def summary_text(study_name: str, parent_id: str, trials: list[Any], space: SweepSpace, best: dict[str, Any], wall_s: float, n_here: int) -> str:
    lines = [f"sweep  {study_name}: {len(trials)} trials in the study ({n_here} run by this worker in {wall_s:.0f} s); objective {space.objective} ({space.direction})"]
    lines.append(f"{'trial':>5}  {'state':<8}  {'value':>8}  params")
    for t in sorted(trials, key=lambda t: t.number):
        value = f"{t.value:.4f}" if t.value is not None else "-"
        lines.append(f"{t.number:>5}  {t.state.name.lower():<8}  {value:>8}  {_fmt_params(t.params)}")
    if best["value"] is not None:
        lines.append(f"best   trial {best['number']}: {space.objective}={best['value']:.4f}  {_fmt_params(best['params'])}  run {best['run_id']}")
    else:
        lines.append("best   none yet (no complete trial)")
    lines.append(f"parent run {parent_id}")
    return "\n".join(lines)


def _fail_stale_trials(study: Any) -> None:
    """Optuna's heartbeat check (marked experimental since 2.9; its warning says nothing new)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _fail_orphaned_trials(study: Any) -> int:
    """Fail RUNNING trials whose worker ran on this machine and is gone (killed, crashed).

    The heartbeat check finds dead workers anywhere, but only after GRACE_PERIOD_S; a sweep
    resumed on the same machine right after a kill knows at once. Like a stale trial, the
    orphan gets no outcome attr, so it does not count and the budget runs a replacement."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed += 1
                _mark_stale_child(study, trial)
                print(f"sweep: trial {trial.number} was left RUNNING by worker {worker_host}:{pid}, which is gone; failed it (it does not count)")
        except UpdateFinishedTrialError:
            pass
    return failed
