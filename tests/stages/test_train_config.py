"""The train stage's config: documented fields, defaults, checks, command-line words."""

from __future__ import annotations

import dataclasses

import pytest

from distill.errors import ConfigError
from distill.stages.train import TrainConfig


def test_every_config_field_is_documented_and_defaults_are_the_embedded_default():
    cfg = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name
    assert cfg.student == "tiny-qwen3" and cfg.beta == 0.1
    assert cfg.pairs is None and cfg.pairs_source.endswith("example_pairs.jsonl")
    assert cfg.eval_dataset is None and cfg.eval_source.endswith("eval_sample.jsonl")
    assert cfg.score_eval, "a train run of its own scores the test split; a sweep turns it off"
    assert (cfg.load_in_4bit, cfg.use_unsloth, cfg.thinking, cfg.overlong) == ("auto", "auto", "off", "drop")


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(max_prompt_length=1024, max_length=1024), "must be below max_length"),
        (dict(overlong="cut"), "overlong must be"),
        (dict(load_in_4bit="maybe"), "load_in_4bit must be auto, true or false"),
        (dict(thinking="sometimes"), "thinking must be"),
        (dict(dev_fraction=1.0), "dev_fraction"),
        (dict(n_pairs=-1), "n_pairs"),
        (dict(target_modules=" , "), "target_modules is empty"),
        (dict(lora_rank=0), "lora_rank must be at least 1"),
        (dict(method="kto"), "method must be one of orpo, dpo, simpo, sft"),
        (dict(method="dpo", dpo_beta=0.0), "dpo_beta must be > 0"),
        (dict(method="simpo", simpo_gamma=-1.0), "simpo_gamma must be >= 0"),
    ],
)
def test_bad_config_is_a_config_error(changes, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**changes)


def test_config_normalises_command_line_words():
    cfg = TrainConfig(pairs="", eval_dataset="", n_pairs=0, load_in_4bit="True", use_unsloth="no", thinking="true")
    assert cfg.pairs_source.endswith("example_pairs.jsonl") and cfg.n_pairs is None
    assert (cfg.load_in_4bit, cfg.use_unsloth, cfg.thinking) == ("true", "false", "on")


def test_unset_values_have_names_on_the_command_line_and_in_params():
    """MLproject's defaults are words (bundled, all, auto), which the command line reads as unset
    and the run's params show: never the literal '' the MLflow UI used to show."""
    from distill.cli import parse_config
    from distill.tracking import config_params

    cfg = parse_config(
        TrainConfig, ["--pairs", "bundled", "--n_pairs", "all", "--experiment", "auto", "--epochs", "3"]
    )
    assert (cfg.pairs, cfg.n_pairs, cfg.experiment, cfg.epochs) == (None, None, None, 3.0)
    params, tags = config_params(cfg)
    assert (params["pairs"], params["n_pairs"], params["eval_dataset"]) == ("bundled", "all", "bundled")
    assert params["epochs"] == "3" and params["prompt_loss"] == "false" and params["learning_rate"] == "0.0002"
    assert "" not in params.values()
    # Where the run writes is a tag, not a param; so is a path (its param is the file's name).
    assert "experiment" not in params and "output_dir" not in params and tags["distill.output_dir"] == "outputs/train"
    params, tags = config_params(TrainConfig(pairs="/data/my pairs/pairs.jsonl"))
    assert params["pairs"] == "pairs.jsonl" and tags["distill.path.pairs"] == "/data/my pairs/pairs.jsonl"


def test_method_picks_the_loss_and_the_name_shows_its_own_hyperparameters():
    from distill.stages.train import run_label

    assert TrainConfig().loss_spec.method == "orpo" and TrainConfig().loss_spec.beta == 0.1
    dpo = TrainConfig(method=" DPO ", dpo_beta=0.2, rpo_alpha=1.0)
    assert dpo.method == "dpo" and (dpo.loss_spec.beta, dpo.loss_spec.nll_weight) == (0.2, 1.0)
    assert dpo.loss_spec.needs_reference and not TrainConfig(method="simpo").loss_spec.needs_reference
    simpo = TrainConfig(method="simpo", simpo_beta=2.5, simpo_gamma=1.0, cpo_alpha=0.5)
    assert (simpo.loss_spec.beta, simpo.loss_spec.gamma, simpo.loss_spec.nll_weight) == (2.5, 1.0, 0.5)
    assert run_label(dpo, 10) == "dpo β=0.2 α=1 r=16 lr=2e-4 pairs=10"
    assert run_label(TrainConfig(method="sft"), 10) == "sft r=16 lr=2e-4 pairs=10"
    # A sweep varying beta and method: beta is ORPO's, so a DPO trial's name leaves it out.
    assert run_label(dpo, 10, ("beta", "method", "lora_alpha")) == "dpo β=0.2 α=1 r=16 lr=2e-4 pairs=10 lora_alpha=32"
    assert dpo.method_text == "DPO β=0.2 α=1" and TrainConfig().method_text == "ORPO λ=0.1"
