"""Optuna storage for many workers: the budget rule, URL helpers, the study lock, reserving trials."""

from __future__ import annotations

import threading
import time

import optuna
import pytest

from distill.optuna_storage import (
    OUTCOME_ATTR,
    WORKER_ATTR,
    counts_toward_budget,
    fail_orphaned_trials,
    open_storage,
    redact_storage,
    reserve_trial,
    sqlalchemy_url,
    study_lock,
    worker_name,
)


def test_budget_counts_finished_running_and_queued_but_not_dead_workers():
    assert counts_toward_budget("COMPLETE", {}) and counts_toward_budget("PRUNED", {})
    assert counts_toward_budget("RUNNING", {}) and counts_toward_budget("WAITING", {})
    assert counts_toward_budget("FAIL", {OUTCOME_ATTR: "fail"}), "a trial that failed in its own code is finished"
    assert not counts_toward_budget("FAIL", {}), "failed by the heartbeat check: its worker died, it never finished"


def test_storage_url_helpers():
    assert redact_storage("postgresql://me:s3cret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert "s3cret" not in redact_storage("postgresql://me:s3cret@db/optuna")
    assert sqlalchemy_url("sqlite:///optuna.db") == "sqlite:///optuna.db"
    assert sqlalchemy_url("postgresql://u@h/d").startswith("postgresql")


def test_sqlite_study_lock_excludes_a_second_holder(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait()
        with study_lock(url, "s"):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with study_lock(url, "s"):
        inside.set()
        time.sleep(0.3)
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
    assert (tmp_path / "optuna.db.lock").is_file()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_reserve_trial_stops_at_the_budget_and_replaces_a_dead_workers_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    dead: list[int] = []
    storage = open_storage(url, on_dead_trial=lambda study, trial: dead.append(trial.number))
    study = optuna.create_study(study_name="budget", storage=storage)

    first = reserve_trial(study, url, 2, worker_name())
    assert first.user_attrs[WORKER_ATTR] == worker_name()
    first.set_user_attr(OUTCOME_ATTR, "complete")
    study.tell(first, 1.0)
    # A worker on this machine whose process is gone left its trial RUNNING.
    orphan = study.ask()
    orphan.set_user_attr(WORKER_ATTR, f"{worker_name().rpartition(':')[0]}:999999999")
    assert fail_orphaned_trials(study, lambda s, t: dead.append(t.number)) == 1
    assert dead == [orphan.number]
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL

    # The orphan does not count: one more trial fits in a budget of 2, then none.
    second = reserve_trial(study, url, 2, worker_name())
    assert second is not None and second.number == 2
    assert reserve_trial(study, url, 2, worker_name()) is None, "a running trial counts toward the budget"
