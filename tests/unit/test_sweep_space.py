"""Sweep space files, the trial budget rule, overrides, the storage lock (no training here)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from distill.errors import ConfigError, InputError
from distill.sweep import (
    OUTCOME_ATTR, counts_toward_budget, load_space, make_pruner, make_sampler, parse_overrides, parse_space, redact_storage,
    resolve_space_path, sqlalchemy_url, study_lock, suggest, trial_kwargs, SweepConfig,
)

REPO = Path(__file__).resolve().parents[2]


def _space(**changes):
    data = yaml.safe_load((REPO / "sweeps" / "quick.yaml").read_text(encoding="utf-8"))
    data.update(changes)
    return data


@pytest.mark.parametrize("name", ["default", "quick"])
def test_bundled_spaces_parse(name):
    space = load_space(resolve_space_path(name))
    names = {p.name for p in space.params}
    assert {"beta", "lora_rank", "n_pairs"} <= names
    beta = next(p for p in space.params if p.name == "beta")
    assert beta.type == "float" and beta.log and beta.low > 0
    assert space.objective.startswith("dev/") and space.direction == "maximize"
    assert space.dev_eval_steps > 0 and space.pruner["type"] in ("median", "hyperband")


def test_default_space_varies_learning_rate_and_reads_scientific_notation():
    space = load_space(REPO / "sweeps" / "default.yaml")
    lr = next(p for p in space.params if p.name == "learning_rate")
    assert lr.low == pytest.approx(5e-5) and lr.high == pytest.approx(1e-3) and lr.log
    assert parse_space(_space(space={"learning_rate": {"type": "float", "low": "1e-5", "high": "1e-3", "log": True}}, fixed={})).params[0].low == 1e-5


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"objective": "eval/accuracy"}, "objective"),  # the test split is never the objective
        ({"objective": "dev/loss"}, "objective"),
        ({"direction": "up"}, "direction"),
        ({"space": {"not_a_param": {"type": "float", "low": 0, "high": 1}}}, "space.not_a_param"),
        ({"space": {"seed": {"type": "int", "low": 0, "high": 3}}}, "space.seed"),  # the sweep owns the seed
        ({"space": {"beta": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "space.beta"),
        ({"space": {"beta": {"type": "float", "low": 1.0, "high": 0.5}}}, "space.beta"),
        ({"space": {"lora_rank": {"type": "categorical", "choices": []}}}, "space.lora_rank"),
        ({"space": {"lora_rank": {"type": "grid", "choices": [1]}}}, "space.lora_rank"),
        ({"space": {"n_pairs": {"type": "int", "low": 1.5, "high": 4}}}, "space.n_pairs"),
        ({"fixed": {"beta": 0.1}}, "fixed.beta"),  # both varied and fixed
        ({"fixed": {"output_dir": "x"}}, "fixed.output_dir"),
        ({"dev_eval_steps": 0}, "dev_eval_steps"),  # a pruner with nothing to prune on
        ({"pruner": {"type": "magic"}}, "pruner.type"),
        ({"n_trials": 0}, "n_trials"),
    ],
)
def test_bad_space_names_the_field(changes, field):
    with pytest.raises(InputError) as info:
        parse_space(_space(**changes), "space.yaml")
    assert info.value.field == field
    assert "space.yaml" in str(info.value)


def test_unknown_top_level_key_is_refused():
    with pytest.raises(InputError, match="unknown key"):
        parse_space(_space(trials=3), "space.yaml")


def test_suggest_follows_the_declared_types():
    space = parse_space(_space())
    study = optuna.create_study(sampler=make_sampler(space.sampler, 0), direction="maximize")
    seen = []
    for _ in range(6):
        trial = study.ask()
        values = suggest(trial, space.params)
        study.tell(trial, 0.0)
        assert 0.01 <= values["beta"] <= 1.0
        assert values["lora_rank"] in (4, 8)
        assert values["n_pairs"] in (8, 16, 24)
        seen.append(values)
    assert len({v["beta"] for v in seen}) == 6, "a continuous beta never repeats"


def test_trial_kwargs_layering():
    space = parse_space(_space())
    cfg = SweepConfig(pairs="p.jsonl", train_overrides="max_steps=7,epochs=1", seed=3, output_dir="o")
    kwargs = trial_kwargs(space, cfg, {"beta": 0.5, "lora_rank": 8}, experiment="exp")
    assert kwargs["pairs"] == "p.jsonl" and kwargs["max_steps"] == 7 and kwargs["epochs"] == 1.0
    assert kwargs["beta"] == 0.5 and kwargs["lora_rank"] == 8 and kwargs["student"] == "tiny-qwen3"
    assert kwargs["seed"] == 3 and kwargs["experiment"] == "exp" and kwargs["dev_eval_steps"] == space.dev_eval_steps
    from distill.training import TrainConfig

    TrainConfig(**kwargs)  # every key is a train parameter


def test_overrides_are_checked():
    assert parse_overrides("max_steps=3, beta=0.2") == {"max_steps": 3, "beta": 0.2}
    with pytest.raises(ConfigError, match="not a train parameter"):
        parse_overrides("nope=1")
    with pytest.raises(ConfigError, match="sweep"):
        parse_overrides("seed=1")
    with pytest.raises(ConfigError, match="name=value"):
        parse_overrides("max_steps")


def test_pruners_and_samplers():
    assert isinstance(make_pruner({"type": "median", "n_startup_trials": 1}), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner({"type": "hyperband", "min_resource": 1, "max_resource": 9}), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner({"type": "threshold", "lower": 0.5}), optuna.pruners.ThresholdPruner)
    assert isinstance(make_pruner({"type": "none"}), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match="pruner median"):
        make_pruner({"type": "median", "bogus": 1})
    assert isinstance(make_sampler({"type": "random"}, 0), optuna.samplers.RandomSampler)


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


def test_missing_space_file_is_a_config_error():
    with pytest.raises(ConfigError, match="not found"):
        resolve_space_path("no-such-space")
