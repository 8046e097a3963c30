"""The distributed sweep, proven: two worker processes on one Optuna study in PostgreSQL.

The server: `DISTILL_TEST_POSTGRES_URL` when set (CI exports it from scripts/ci_postgres.sh);
otherwise the test starts a throwaway one with the same script from the PostgreSQL binaries on
this machine (as the `postgres` user when run as root: the server refuses root). With neither
it skips on a user's machine, and fails in CI (CI=true or REQUIRE_SHARED_DATA=1).

Both workers are the real entry point (`python -m distill sweep`), started at the same moment,
each asked for the same total. The MLflow tracking store is PostgreSQL too when the server lets
the test create databases (as a shared tracking server's backend would be), else SQLite.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from distill.optuna_storage import OUTCOME_ATTR, WORKER_ATTR, sqlalchemy_url
from distill.sweep_runs import PARENT_ATTR, RUN_ATTR, TAG_TRIAL, TAG_WORKER
from tests.sweep_helpers import synthetic_task

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ci_postgres.sh"
N_TRIALS = 4


def _must_run() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1") or os.environ.get("REQUIRE_SHARED_DATA") == "1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    url = os.environ.get("DISTILL_TEST_POSTGRES_URL", "").strip()
    if url:
        yield url
        return
    # Not under pytest's tmp_path: that folder is private to this user, and the server may run
    # as another one (postgres refuses root).
    folder = tempfile.mkdtemp(prefix="distill-pg-")
    started = subprocess.run(
        ["bash", str(SCRIPT), "--no-install", "--dir", folder, "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if started.returncode != 0 or not started.stdout.strip():
        shutil.rmtree(folder, ignore_errors=True)
        reason = f"no PostgreSQL server could be started here: {started.stderr.strip()[-400:]}"
        if _must_run():
            pytest.fail(
                reason + " — CI must run this test: export DISTILL_TEST_POSTGRES_URL=$(scripts/ci_postgres.sh)"
            )
        pytest.skip(reason)
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "--stop", "--dir", folder, "--clean"], capture_output=True, timeout=120)


def _fresh_database(url: str, prefix: str) -> str | None:
    """A new empty database on the server (its URL), or None when this role may not create one."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception:
        return None
    finally:
        engine.dispose()
    return make_url(sqlalchemy_url(url)).set(database=name).render_as_string(hide_password=False)


def test_two_workers_run_one_study_without_overlap(postgres_url, tmp_path, monkeypatch):
    import mlflow
    import optuna

    optuna_url = _fresh_database(postgres_url, "optuna") or postgres_url
    study_name = f"two-workers-{uuid.uuid4().hex[:8]}"
    tracking_uri = _fresh_database(postgres_url, "mlflow") or f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(tracking_uri)
    # The tracking store's schema is made once, before the workers (a tracking server does this).
    client = mlflow.MlflowClient()
    client.search_experiments()

    pairs, heldout = synthetic_task(tmp_path / "task")
    command = [
        sys.executable,
        "-m",
        "distill",
        "sweep",
        "--space",
        "quick",
        "--storage",
        optuna_url,
        "--study_name",
        study_name,
        "--n_trials",
        str(N_TRIALS),
        "--pairs",
        str(pairs),
        "--eval_dataset",
        str(heldout),
        "--train_overrides",
        "max_steps=2",
        "--output_dir",
        str(tmp_path / "outputs"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = []
    for log in logs:
        with open(log, "w") as handle:
            workers.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=handle, stderr=subprocess.STDOUT))
    try:
        codes = [worker.wait(timeout=900) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    tails = "\n\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:] for log in logs)
    assert codes == [0, 0], tails

    study = optuna.load_study(study_name=study_name, storage=sqlalchemy_url(optuna_url))
    trials = study.get_trials()
    # Exactly what was asked, all finished, none extra.
    assert sorted(t.number for t in trials) == list(range(N_TRIALS)), tails
    assert all(t.state.is_finished() and OUTCOME_ATTR in t.user_attrs for t in trials)
    # No trial ran twice: distinct parameter sets, and one child run per trial number.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == N_TRIALS
    assert {t.user_attrs[WORKER_ATTR] for t in trials} and len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2, (
        "both workers ran trials"
    )
    parent_id = study.user_attrs[PARENT_ATTR]
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in children) == list(range(N_TRIALS))
    by_number = {int(r.data.tags[TAG_TRIAL]): r for r in children}
    for trial in trials:
        child = by_number[trial.number]
        assert child.info.run_id == trial.user_attrs[RUN_ATTR]
        assert child.data.tags[TAG_WORKER] == trial.user_attrs[WORKER_ATTR]
    # The two workers really ran at the same time: some trials of different workers overlap.
    spans = [(t.datetime_start, t.datetime_complete, t.user_attrs[WORKER_ATTR]) for t in trials]
    assert any(a[2] != b[2] and a[0] < b[1] and b[0] < a[1] for a in spans for b in spans), spans
    # Both logged under the one parent, which holds the study's figures.
    for log in logs:
        assert f"parent run {parent_id}" in log.read_text(errors="replace")
    assert parent.data.tags["distill.stage"] == "sweep"
    assert client.get_run(parent_id).data.metrics["sweep/n_trials"] == N_TRIALS
