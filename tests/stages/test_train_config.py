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
    assert cfg.pairs.endswith("example_pairs.jsonl") and cfg.eval_dataset.endswith("eval_sample.jsonl")
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
    ],
)
def test_bad_config_is_a_config_error(changes, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**changes)


def test_config_normalises_command_line_words():
    cfg = TrainConfig(pairs="", eval_dataset="", n_pairs=0, load_in_4bit="True", use_unsloth="no", thinking="true")
    assert cfg.pairs.endswith("example_pairs.jsonl") and cfg.n_pairs is None
    assert (cfg.load_in_4bit, cfg.use_unsloth, cfg.thinking) == ("true", "false", "on")
