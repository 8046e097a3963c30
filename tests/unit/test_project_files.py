"""The front door stays honest: the stage registry is the only list of stages, and MLproject,
the README tables and `--help` are generated from it and from the config dataclasses."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.cli import NONE_WORDS, cli_fields, field_converter, field_default, field_default_text
from distill.stages import PIPELINE_STEPS, STAGES

REPO = Path(__file__).resolve().parents[2]


def _entry_points() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text(encoding="utf-8"))["entry_points"]


def test_every_registered_stage_has_a_module_config_and_run():
    assert set(PIPELINE_STEPS) <= set(STAGES)
    for name, stage in STAGES.items():
        assert (REPO / "distill" / "stages" / f"{name}.py").is_file(), f"{name} has no distill/stages/{name}.py"
        module = stage.module()
        assert callable(module.run), name
        assert dataclasses.is_dataclass(stage.config_class()), name


def test_stage_modules_on_disk_are_all_registered():
    on_disk = {p.stem for p in (REPO / "distill" / "stages").glob("*.py") if p.stem != "__init__"}
    assert on_disk == set(STAGES), f"unregistered stage modules: {on_disk - set(STAGES)}"


@pytest.mark.parametrize("name", list(STAGES))
def test_mlproject_entry_has_exactly_the_config_fields(name):
    spec = _entry_points()[name]
    cls = STAGES[name].config_class()
    fields = {f.name: f for f in cli_fields(cls)}
    params = spec.get("parameters", {})
    assert set(params) == set(fields) | {"config"}
    for field_name, field in fields.items():
        assert str(params[field_name]["default"]) == field_default_text(field), field_name
        assert field.metadata.get("help"), f"{name}.{field_name} has no help text"
    command = spec["command"]
    assert command.startswith(f"python -m distill {name} --from-mlproject --config {{config}}")
    passed = re.findall(r"--(\w+) \{(\w+)\}", command)
    assert all(flag == value for flag, value in passed)
    assert {flag for flag, _ in passed} == set(fields) | {"config"}


def test_no_mlproject_default_is_empty_and_each_reads_back_as_the_default():
    """`mlflow run` logs every MLproject parameter as a run param: an empty default would show as
    the literal '' in the UI. An unset default is a word (all, bundled, auto, none) that the
    command line reads back as the field's default."""
    for name, spec in _entry_points().items():
        cls = STAGES[name].config_class()
        for field in cli_fields(cls):
            text = str(spec["parameters"][field.name]["default"])
            assert text.strip(), f"{name}.{field.name} has an empty MLproject default"
            value = field_converter(cls, field.name)(text)
            assert value == field_default(field) or (value in (None, []) and field_default(field) in (None, [])), (
                f"{name}.{field.name}: {text!r} reads back as {value!r}, not {field_default(field)!r}"
            )
        assert str(spec["parameters"]["config"]["default"]).lower() in NONE_WORDS


def test_mlproject_lists_exactly_the_registered_stages():
    assert list(_entry_points()) == list(STAGES)


@pytest.mark.parametrize("name", list(STAGES))
def test_readme_has_a_parameter_table_and_an_example(name):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"<!-- params:{name} -->" in readme
    assert f"-e {name}" in readme, f"README never shows `mlflow run . -e {name}`"
    for field in cli_fields(STAGES[name].config_class()):
        assert f"| `{field.name}` |" in readme


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_help_lists_every_parameter(name):
    done = subprocess.run(
        [sys.executable, "-m", "distill", name, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout
    for field in cli_fields(STAGES[name].config_class()):
        assert f"--{field.name}" in done.stdout


def test_top_level_help_lists_the_stages_from_the_registry():
    done = subprocess.run([sys.executable, "-m", "distill", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for name in STAGES:
        assert f"  {name} " in done.stdout


def test_unknown_stage_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "distill", "trian"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "unknown stage 'trian'" in done.stderr


def test_generated_files_are_up_to_date():
    done = subprocess.run(
        [sys.executable, "-m", "distill", "generate", "--check"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_a_new_field_without_regenerating_fails_the_check(tmp_path, monkeypatch):
    """Adding a config field and not running `python -m distill generate` is caught."""
    from distill import project_files
    from distill.stages.eda import EdaConfig

    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copy(REPO / "MLproject", tmp_path / "MLproject")
    assert project_files.generate(tmp_path, check=True) == []
    extended = dataclasses.make_dataclass(
        "EdaConfig",
        [("brand_new", int, dataclasses.field(default=3, metadata={"help": "new"}))],
        bases=(EdaConfig,),
    )
    monkeypatch.setattr(sys.modules["distill.stages.eda"], "EdaConfig", extended)
    assert project_files.generate(tmp_path, check=True) == ["MLproject", "README.md"]
    project_files.generate(tmp_path)
    assert "--brand_new {brand_new}" in (tmp_path / "MLproject").read_text(encoding="utf-8")
    assert project_files.generate(tmp_path, check=True) == []


def test_ci_runs_the_readme_test_command_and_the_linter():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "make test" in ci and "make test" in readme
    assert "REQUIRE_SHARED_DATA=1" in ci
    assert re.search(r"^test:.*\blint\b", makefile, re.M), "make test runs the linter"
    assert "ruff" in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_the_stage_list_is_written_once():
    """No module other than the registry spells out the list of stages."""
    names = list(STAGES)
    pattern = re.compile(r"\(\s*" + r"\s*,\s*".join(f'"{n}"' for n in PIPELINE_STEPS) + r"\s*\)")
    for path in (REPO / "distill").rglob("*.py"):
        if path.name == "__init__.py" and path.parent.name == "stages":
            continue
        text = path.read_text(encoding="utf-8")
        assert not pattern.search(text), f"{path} lists the pipeline steps again"
        listed = sum(f'"{n}":' in text for n in names)
        assert listed < 5, f"{path} looks like another table of stages"
