"""The front door stays honest: MLproject, the config dataclasses, the entry-point scripts and
the README describe the same parameters."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

CONFIGS = {
    "evaluate": "distill.evaluation:EvaluateConfig",
    "mine": "distill.mining:MineConfig",
    "augment": "distill.blueprint.stage:AugmentConfig",
    "train": "distill.training:TrainConfig",
    "sweep": "distill.sweep:SweepConfig",
    "register": "distill.registry:RegisterConfig",
    "pipeline": "distill.pipeline:PipelineConfig",
    "eda": "distill.eda.stage:EdaConfig",
    "analyze": "distill.error_analysis:AnalyzeConfig",
}


def _entry_points() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text(encoding="utf-8"))["entry_points"]


def _config_class(entry: str):
    module, name = CONFIGS[entry].split(":")
    return getattr(importlib.import_module(module), name)


ENTRIES = sorted(_entry_points())


def test_every_stage_of_the_design_is_an_entry_point():
    assert {"evaluate", "mine"} <= set(ENTRIES)
    assert set(ENTRIES) <= set(CONFIGS), f"add the config class of {set(ENTRIES) - set(CONFIGS)} here"


@pytest.mark.parametrize("entry", ENTRIES)
def test_mlproject_parameters_match_command_and_config(entry):
    spec = _entry_points()[entry]
    params = set(spec.get("parameters", {}))
    command = spec["command"]
    passed = set(re.findall(r"--(\w+) \{(\w+)\}", command))
    assert all(flag == value for flag, value in passed), f"{entry}: a flag passes another parameter"
    assert {flag for flag, _ in passed} == params, f"{entry}: command and parameters differ"
    assert command.startswith(f"python entrypoints/{entry}.py")
    fields = {f.name for f in dataclasses.fields(_config_class(entry)) if f.init}
    assert params <= fields, f"{entry}: MLproject passes {params - fields}, which the config lacks"
    for field in dataclasses.fields(_config_class(entry)):
        if field.init and field.metadata.get("cli") is not False:
            assert field.metadata.get("help"), f"{entry}.{field.name} has no help text"


@pytest.mark.parametrize("entry", ENTRIES)
def test_readme_documents_every_entry_point_parameter(entry):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"-e {entry}" in readme, f"README never shows `mlflow run . -e {entry}`"
    for name in _entry_points()[entry].get("parameters", {}):
        assert f"`{name}`" in readme, f"README does not document {entry}'s parameter `{name}`"


@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_point_help_runs(entry):
    done = subprocess.run(
        [sys.executable, str(REPO / "entrypoints" / f"{entry}.py"), "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in _entry_points()[entry].get("parameters", {}):
        assert f"--{name}" in done.stdout


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make test" in ci and "make test" in readme
    assert "REQUIRE_SHARED_DATA=1" in ci


def test_readme_parameter_tables_are_generated_from_the_configs():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_params.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
