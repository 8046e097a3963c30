"""Shared fixtures: a temporary MLflow store per test, one distill cache per session,
and the real data folder that CI must have."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _distill_home(tmp_path_factory):
    """One cache per test session, so tiny-qwen3 is built once and never in ~/.cache."""
    home = os.environ.get("DISTILL_TEST_HOME") or str(tmp_path_factory.mktemp("distill_home"))
    old = os.environ.get("DISTILL_HOME")
    os.environ["DISTILL_HOME"] = home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    yield Path(home)
    if old is None:
        os.environ.pop("DISTILL_HOME", None)
    else:
        os.environ["DISTILL_HOME"] = old


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A real MLflow tracking store (SQLite) with artifacts, all inside tmp_path."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    # set_experiment() is process-global: forget an experiment id from an earlier test's store.
    mlflow.tracking.fluent._active_experiment_id = None
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.tracking.fluent._active_experiment_id = None


@pytest.fixture
def gemini_env(request, monkeypatch):
    """GEMINI_API_KEY set to the test module's SECRET (a dummy where it has none), and no other
    variable that would make google-genai pick another key or endpoint."""
    monkeypatch.setenv("GEMINI_API_KEY", getattr(request.module, "SECRET", "dummy-key-for-the-fake-server"))
    for name in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _shared_data_dir() -> Path:
    explicit = os.environ.get("DISTILL_SHARED_DATA")
    if explicit:
        return Path(explicit)
    return REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data. Skips on a user's machine without it; fails in CI (REQUIRE_SHARED_DATA=1)."""
    path = _shared_data_dir()
    if not path.is_dir():
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"REQUIRE_SHARED_DATA=1 but {path} is missing")
        pytest.skip(f"{path} not present")
    return path
