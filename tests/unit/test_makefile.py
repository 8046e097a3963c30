"""The README's commands work from a fresh clone: `make test` and `make demo` set up the venv first."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _dry_run(workdir: Path, target: str) -> list[str]:
    """The commands `make <target>` would run in `workdir` (a copy of the Makefile and the
    requirement files, no venv), without running them."""
    done = subprocess.run(
        ["make", "-n", target], cwd=workdir, capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def fresh_clone(tmp_path):
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def _first(lines: list[str], fragment: str) -> int:
    hits = [i for i, line in enumerate(lines) if fragment in line]
    assert hits, f"{fragment!r} not among: {lines}"
    return hits[0]


@pytest.mark.parametrize("target, runs", [("test", "-m pytest"), ("demo", "mlflow run . -e pipeline")])
def test_target_sets_up_before_it_runs_on_a_fresh_clone(fresh_clone, target, runs):
    lines = _dry_run(fresh_clone, target)
    assert _first(lines, "-m venv") < _first(lines, "pip install -q -c constraints.txt") < _first(lines, runs)


def test_test_does_not_reinstall_once_set_up(fresh_clone):
    venv = fresh_clone / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".distill-setup").touch()
    lines = _dry_run(fresh_clone, "test")
    assert not any("pip install" in line for line in lines)
    assert any("-m pytest" in line for line in lines)
