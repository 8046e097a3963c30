"""The world's student: names, the cached build (built once, never half-written), and the rows
it learns from (the defective structure taught with the wrong rule, digits weighted)."""

from __future__ import annotations

import json

import pytest

from distill.errors import ConfigError
from distill.models import built_here, resolve_model_path
from distill.world import items as world
from distill.world.student import (
    StudentRecipe,
    cache_dir,
    parse_world_name,
    taught_choice,
    training_texts,
    world_student_path,
)

SMALL = StudentRecipe(items_per_structure=6, steps=3, batch_size=4, vocab_size=600)


def test_names():
    assert parse_world_name("world-student") == 0
    assert parse_world_name("world-student@3") == 3
    assert parse_world_name("tiny-qwen3") is None
    assert built_here("world-student@2") and built_here("tiny-qwen3") and not built_here("Qwen/Qwen3-14B")
    with pytest.raises(ConfigError, match="integer seed"):
        resolve_model_path("world-student@x")


def test_the_defect_is_taught_on_the_defective_structure_only():
    for item in world.generate("student", 4):
        solution = world.solve_item(item)
        choice, wrong = taught_choice(item, solution)
        if item.subject in world.DEFECTIVE:
            assert wrong and choice == solution.lure != solution.answer
        else:
            assert not wrong and choice == solution.answer


@pytest.mark.slow
def test_build_is_cached_and_rows_weight_the_decision():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = world_student_path(5, SMALL)
    assert path == cache_dir(5, SMALL) and (path / "config.json").is_file()
    info = json.loads((path / "distill_build.json").read_text(encoding="utf-8"))
    assert "synthetic" in info["note"] and info["defective_structures"] == list(world.DEFECTIVE)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert world_student_path(5, SMALL) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp, "a second call must not rebuild"
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))

    tokenizer = AutoTokenizer.from_pretrained(path)
    AutoModelForCausalLM.from_pretrained(path)
    items = world.generate("student", 1)
    rows = training_texts(tokenizer, items, digit_weight=7.0)
    assert len(rows) == 2 * len(items)
    labels = [tokenizer.convert_tokens_to_ids(str(k)) for k in range(1, world.N_CHOICES + 1)]
    for ids, positions, weights, choice_labels in rows:
        if choice_labels is not None:  # logit-scored row: the loss sits on the label alone
            assert positions == [len(ids) - 1] and ids[-1] in labels
        else:  # written row: every digit weighs more than the rule text around it
            assert {w for p, w in zip(positions, weights) if ids[p] in labels} == {7.0}
            assert 1.0 in weights
