"""Optuna storage shared by many sweep workers: opening it, a cross-process lock, heartbeats,
dead workers' trials, and the trial budget.

- Storage is any SQLAlchemy URL (`sqlite:///optuna.db`, `postgresql://...` for many workers on
  many machines), opened as Optuna's RDBStorage with heartbeats.
- `study_lock` is held by every worker while it decides "one more trial?" and reserves it, so
  N workers started with the same budget run exactly that many trials: a file lock beside a
  SQLite database, `pg_advisory_lock` on PostgreSQL, `GET_LOCK` on MySQL.
- A running trial records a heartbeat (`heartbeat`). A trial whose worker died is failed once
  its heartbeat is GRACE_PERIOD_S old (`fail_stale_trials`), or at once when that worker ran on
  this machine and its process is gone (`fail_orphaned_trials`).
- The budget (`budget_used`): finished, running and queued trials count; a FAIL without the
  outcome attr (its worker died before recording it) does not, so a replacement runs.

Nothing here knows about MLflow: what a dead trial means for its run is the caller's callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from distill.errors import ConfigError

OUTCOME_ATTR = "distill.outcome"
"""Trial user attr set by the worker that finished the trial (complete, pruned, fail). A FAIL
trial without it was failed by the heartbeat check (its worker died): it does not count."""
WORKER_ATTR = "distill.worker"
"""Trial user attr: the worker (`host:pid`) that reserved the trial."""

HEARTBEAT_INTERVAL_S = 20
GRACE_PERIOD_S = 60

DeadTrialCallback = Callable[[Any, Any], None]
"""Called with (study, trial) for a trial failed because its worker died."""


def worker_name() -> str:
    """This process as a sweep worker: `host:pid` (what `fail_orphaned_trials` reads back)."""
    return f"{socket.gethostname()}:{os.getpid()}"


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


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def sqlalchemy_url(url: str) -> str:
    """`url` with a PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare
    `postgresql://` as psycopg 3; with only psycopg2 installed, name that driver instead."""
    if url.startswith("postgresql://") and not _module_available("psycopg") and _module_available("psycopg2"):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def open_storage(url: str, on_dead_trial: DeadTrialCallback | None = None, attempts: int = 3):
    """Optuna's RDBStorage with heartbeats; `on_dead_trial` runs for each trial the heartbeat
    check fails. Retried: workers started together on a fresh database race to create Optuna's
    tables, and the loser's first attempt fails."""
    import optuna

    url = sqlalchemy_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 120}  # several workers on one file: wait for the write lock
    else:
        engine_kwargs["pool_pre_ping"] = True
    # Optuna 4.9 renamed failed_trial_callback; accept both sides of the rename.
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = (
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
    )
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                # Heartbeats have been "experimental" since Optuna 2.9; the warning says nothing new.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=GRACE_PERIOD_S,
                    **{callback: on_dead_trial},
                )
        except Exception as exc:  # bad URL, unreachable server, missing driver, a creation race
            if attempt == attempts:
                raise ConfigError(
                    f"cannot open Optuna storage {redact_storage(url)}: {type(exc).__name__}: {exc}"
                ) from None
            time.sleep(1.0 * attempt)


@contextlib.contextmanager
def study_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """A lock shared by every worker of one study (see the module docstring)."""
    from sqlalchemy.engine import make_url

    storage_url = sqlalchemy_url(storage_url)
    url = make_url(storage_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        with _file_lock(url.database):
            yield
    elif backend in ("postgresql", "mysql", "mariadb"):
        with _server_lock(storage_url, backend, f"distill-sweep:{study_name}"):
            yield
    else:
        warnings.warn(
            f"no cross-process lock for {backend} storage: parallel workers may run a few trials more than n_trials",
            stacklevel=2,
        )
        yield


@contextlib.contextmanager
def _file_lock(database: str | None) -> Iterator[None]:
    """flock on `<database>.lock` (nothing to share for an in-memory database)."""
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


@contextlib.contextmanager
def _server_lock(storage_url: str, backend: str, key: str) -> Iterator[None]:
    """The database server's own named lock, held on one connection for the body."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

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


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int, interval_s: float = HEARTBEAT_INTERVAL_S) -> Iterator[None]:
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


def fail_stale_trials(study: Any) -> None:
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


def fail_orphaned_trials(study: Any, on_dead_trial: DeadTrialCallback | None = None) -> int:
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
                if on_dead_trial is not None:
                    on_dead_trial(study, trial)
                print(
                    f"sweep: trial {trial.number} was left RUNNING by worker {worker_host}:{pid}, which is gone; failed it (it does not count)"
                )
        except UpdateFinishedTrialError:
            pass
    return failed


def reserve_trial(
    study: Any, storage_url: str, n_trials: int, worker: str, on_dead_trial: DeadTrialCallback | None = None
):
    """The next trial of the study for this worker, or None when the budget is used up.

    Under `study_lock`: dead workers' trials are failed first (they stop counting), then the
    budget is checked and a trial asked for and marked as this worker's, all before another
    worker can look."""
    with study_lock(storage_url, study.study_name):
        fail_stale_trials(study)
        fail_orphaned_trials(study, on_dead_trial)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state.name == "WAITING" for t in trials)
        if not waiting and budget_used(trials) >= n_trials:
            return None
        with warnings.catch_warnings():
            # Optuna suggests optimize() with heartbeats; the sweep keeps its own (`heartbeat`).
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker)  # still under the lock: no trial is ever ownerless
        return trial
