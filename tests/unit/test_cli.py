"""The command line: defaults < --config file < flags; unknown keys named; on/off and blank helpers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import yaml

from distill.cli import blank_to_none, config_dict, parse_config, switch
from distill.errors import ConfigError


@dataclass
class DemoConfig:
    """A config for these tests."""

    name: str = field(default="tiny", metadata={"help": "A name."})
    rate: float = field(default=2e-4, metadata={"help": "A rate."})
    steps: int = field(default=-1, metadata={"help": "Steps."})
    flag: bool = field(default=False, metadata={"help": "A switch."})
    extra: str | None = field(default=None, metadata={"help": "Optional."})
    sets: list[str] = field(default_factory=list, metadata={"help": "A list."})


def _write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_defaults_then_file_then_flags(tmp_path):
    config = _write(tmp_path, {"name": "from-file", "rate": 1, "steps": 5, "flag": "on", "sets": ["a", "b"]})
    cfg = parse_config(DemoConfig, ["--config", config, "--steps", "7"])
    assert cfg == DemoConfig(name="from-file", rate=1.0, steps=7, flag=True, extra=None, sets=["a", "b"])
    assert isinstance(cfg.rate, float)
    assert parse_config(DemoConfig, []) == DemoConfig()


def test_unknown_keys_are_one_error_naming_them(tmp_path):
    config = _write(tmp_path, {"name": "x", "learning_rat": 1, "zeta": 2})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) learning_rat, zeta"):
        parse_config(DemoConfig, ["--config", config])


def test_a_wrong_type_in_the_file_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="steps"):
        parse_config(DemoConfig, ["--config", _write(tmp_path, {"steps": "many"})])
    with pytest.raises(ConfigError, match="flag"):
        parse_config(DemoConfig, ["--config", _write(tmp_path, {"flag": "maybe"})])


def test_a_missing_or_non_mapping_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(DemoConfig, ["--config", str(tmp_path / "nope.yaml")])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(DemoConfig, ["--config", str(tmp_path / "list.yaml")])


def test_under_mlproject_a_default_valued_flag_does_not_override_the_file(tmp_path):
    """`mlflow run` passes every parameter; one left at its default must not undo the file."""
    config = _write(tmp_path, {"rate": 0.5, "steps": 9})
    argv = [
        "--from-mlproject",
        "--config",
        config,
        "--rate",
        "0.0002",
        "--steps",
        "3",
        "--name",
        "tiny",
        "--extra",
        "",
    ]
    cfg = parse_config(DemoConfig, argv)
    assert cfg.rate == 0.5  # at its default on the command line: the file wins
    assert cfg.steps == 3  # set on the command line: it wins
    # without --from-mlproject, a flag always wins
    assert parse_config(DemoConfig, ["--config", config, "--rate", "0.0002"]).rate == 0.0002


def test_the_resolved_config_reads_back_to_the_same_config(tmp_path):
    cfg = parse_config(DemoConfig, ["--name", "x", "--flag", "yes", "--sets", "a,b"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(cfg)), encoding="utf-8")
    assert parse_config(DemoConfig, ["--config", str(path)]) == cfg


def test_switch_and_blank():
    assert switch("On", "x") is True and switch("0", "x") is False and switch(True, "x") is True
    with pytest.raises(ConfigError, match="use_unsloth: expected on/off"):
        switch("perhaps", "use_unsloth")
    assert blank_to_none("  ") is None and blank_to_none("a") == "a" and blank_to_none(3) == 3


def test_a_stage_reads_a_config_file_from_the_command_line(tmp_path):
    """End to end through `python -m distill`: a bad key in a stage's config file exits 2 in one line."""
    config = _write(tmp_path, {"n_trials": 2, "not_a_field": 1})
    done = subprocess.run(
        [sys.executable, "-m", "distill", "sweep", "--config", config], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not_a_field" in done.stderr


def test_an_unset_word_reads_as_unset_and_is_the_default_shown():
    """`unset_field`: the word is the default MLproject and --help show, and reads back as None."""
    from distill.cli import build_parser, field_default_text, unset_field

    @dataclass
    class Named:
        """A config with named unset values."""

        n: int | None = unset_field("all", "How many.")
        items: list[str] = unset_field("bundled", "Sets.", default=[])
        plain: str | None = field(default=None, metadata={"help": "No word of its own."})

    fields = {f.name: f for f in __import__("dataclasses").fields(Named)}
    assert [field_default_text(fields[name]) for name in ("n", "items", "plain")] == ["all", "bundled", "none"]
    cfg = parse_config(Named, ["--n", "all", "--items", "bundled", "--plain", "none"])
    assert (cfg.n, cfg.items, cfg.plain) == (None, [], None)
    assert parse_config(Named, ["--n", "7", "--items", "a,b"]).n == 7
    assert "(default: all)" in build_parser(Named).format_help()
    assert parse_config(DemoConfig, ["--config", "none"]) == DemoConfig(), "MLproject's config=none: no file"
