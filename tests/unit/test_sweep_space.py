"""Sweep space files: parsing, errors that name the field, suggestions, pruners and samplers, train overrides."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from distill.errors import ConfigError, InputError
from distill.stages.train import TrainConfig
from distill.sweep_space import (
    load_space,
    make_pruner,
    make_sampler,
    parse_overrides,
    parse_space,
    resolve_space_path,
    suggest,
)

REPO = Path(__file__).resolve().parents[2]


def _space(**changes):
    data = yaml.safe_load((REPO / "sweeps" / "quick.yaml").read_text(encoding="utf-8"))
    data.update(changes)
    return data


@pytest.mark.parametrize("name", ["default", "quick"])
def test_bundled_spaces_parse(name):
    space = load_space(resolve_space_path(name), train_config=TrainConfig)
    names = {p.name for p in space.params}
    assert {"beta", "lora_rank", "n_pairs"} <= names
    beta = next(p for p in space.params if p.name == "beta")
    assert beta.type == "float" and beta.log and beta.low > 0
    assert space.objective.startswith("dev/") and space.direction == "maximize"
    assert space.dev_eval_steps > 0 and space.pruner["type"] in ("median", "hyperband")


def test_default_space_varies_learning_rate_and_reads_scientific_notation():
    space = load_space(REPO / "sweeps" / "default.yaml", train_config=TrainConfig)
    lr = next(p for p in space.params if p.name == "learning_rate")
    assert lr.low == pytest.approx(5e-5) and lr.high == pytest.approx(1e-3) and lr.log
    assert (
        parse_space(
            _space(space={"learning_rate": {"type": "float", "low": "1e-5", "high": "1e-3", "log": True}}, fixed={}),
            train_config=TrainConfig,
        )
        .params[0]
        .low
        == 1e-5
    )


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
        ({"space": {"method": {"type": "categorical", "choices": ["orpo", "kto"]}}}, "space.method"),
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
        parse_space(_space(**changes), "space.yaml", train_config=TrainConfig)
    assert info.value.field == field
    assert "space.yaml" in str(info.value)


def test_method_is_a_sweep_dimension():
    space = load_space(resolve_space_path("methods"), train_config=TrainConfig)
    method = next(p for p in space.params if p.name == "method")
    assert method.type == "categorical" and set(method.choices) == {"orpo", "dpo", "simpo", "sft"}
    for choice in method.choices:  # each trial's config: the method with the file's fixed values
        cfg = TrainConfig(**space.fixed, method=choice)
        assert cfg.loss_spec.method == choice


def test_unknown_top_level_key_is_refused():
    with pytest.raises(InputError, match="unknown key"):
        parse_space(_space(trials=3), "space.yaml", train_config=TrainConfig)


def test_suggest_follows_the_declared_types():
    space = parse_space(_space(), train_config=TrainConfig)
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


def test_overrides_are_checked():
    assert parse_overrides("max_steps=3, beta=0.2", train_config=TrainConfig) == {"max_steps": 3, "beta": 0.2}
    with pytest.raises(ConfigError, match="not a train parameter"):
        parse_overrides("nope=1", train_config=TrainConfig)
    with pytest.raises(ConfigError, match="sweep"):
        parse_overrides("seed=1", train_config=TrainConfig)
    with pytest.raises(ConfigError, match="name=value"):
        parse_overrides("max_steps", train_config=TrainConfig)


def test_pruners_and_samplers():
    assert isinstance(make_pruner({"type": "median", "n_startup_trials": 1}), optuna.pruners.MedianPruner)
    assert isinstance(
        make_pruner({"type": "hyperband", "min_resource": 1, "max_resource": 9}), optuna.pruners.HyperbandPruner
    )
    assert isinstance(make_pruner({"type": "threshold", "lower": 0.5}), optuna.pruners.ThresholdPruner)
    assert isinstance(make_pruner({"type": "none"}), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match="pruner median"):
        make_pruner({"type": "median", "bogus": 1})
    assert isinstance(make_sampler({"type": "random"}, 0), optuna.samplers.RandomSampler)


def test_missing_space_file_is_a_config_error():
    with pytest.raises(ConfigError, match="not found"):
        resolve_space_path("no-such-space")
