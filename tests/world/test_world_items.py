"""The known-truth world's items: every structure solvable from its text alone, content pools
disjoint, generation deterministic, and `python -m distill world data` writes loadable files."""

from __future__ import annotations

import json
import random

import pytest

from distill.data.loaders import load_items
from distill.world import items as world
from distill.world.cli import main as world_main


def test_pools_share_no_content_word():
    pools = {pool: set(world.pool_words(pool)) for pool in world.POOLS}
    for a in world.POOLS:
        for b in world.POOLS:
            if a < b:
                assert not pools[a] & pools[b], (a, b)
    assert all(len(words) >= 1000 for words in pools.values())


@pytest.mark.parametrize("structure", world.STRUCTURES)
def test_solver_reads_the_truth_back_in_any_order(structure):
    rng = random.Random(7)
    for k in range(40):
        item, truth = world.make_item(structure, rng, world.pool_words("test"), f"t{k}")
        assert item.subject == structure and item.n_choices == world.N_CHOICES
        assert len(set(item.choices)) == item.n_choices
        assert world.solve_item(item) == truth
        assert item.answer == truth.answer
        assert (truth.lure is not None) == (structure in world.DEFECTIVE)
        order = list(range(item.n_choices))
        rng.shuffle(order)
        shuffled = [item.choices[i] for i in order]
        again = world.solve(item.question, shuffled)
        assert shuffled[again.answer - 1] == item.choices[truth.answer - 1]


def test_generation_is_deterministic_and_seeded():
    a = world.generate("seed", 3)
    assert [i.to_dict() for i in a] == [i.to_dict() for i in world.generate("seed", 3)]
    assert [i.to_dict() for i in a] != [i.to_dict() for i in world.generate("seed", 3, seed=1)]
    assert {i.subject for i in a} == set(world.STRUCTURES)


def test_content_comes_from_its_own_pool():
    test_words = set(world.pool_words("test"))
    other = set().union(*(world.pool_words(p) for p in world.POOLS if p != "test"))
    for item in world.generate("test", 5):
        words = set(" ".join([item.paragraph, item.question, *item.choices]).replace(",", " ").split())
        assert words & test_words
        assert not {w.rstrip(".:?은") for w in words} & other


def test_reasoning_puts_the_pick_first_and_ends_in_the_answer_line():
    text = world.reasoning_text("explicit_over_popular", 3)
    assert text.splitlines()[0] == "1. 정답은 3번이다."
    assert text.endswith("\n\n정답: 3")
    wrong = world.reasoning_text("explicit_over_popular", 2, wrong=True)
    assert world.WRONG_RULES["explicit_over_popular"] in wrong and wrong.endswith("정답: 2")
    with pytest.raises(KeyError):
        world.reasoning_text("time_order", 1, wrong=True)  # no wrong rule was taught there


def test_a_question_of_no_structure_is_not_solved():
    assert world.solve("다음 중 옳은 것은?", ["가", "나", "다", "라", "마"]) is None
    item = world.generate("seed", 1)[0]
    untagged = [c.replace(world.TAG_EXPLICIT, "").strip() for c in item.choices]
    assert world.solve(item.question, untagged) is None


def test_world_data_cli_writes_loadable_disjoint_sets(tmp_path, capsys):
    world_main(["data", "--out", str(tmp_path), "--seeds", "2", "--test", "3", "--guard", "2"])
    assert "synthetic" in capsys.readouterr().out
    loaded = {stem: load_items(str(tmp_path / f"{stem}.jsonl"), "jsonl") for stem in ("seeds", "test", "guard")}
    assert len(loaded["seeds"]) == 2 * len(world.STRUCTURES)
    assert len(loaded["test"]) == 3 * len(world.STRUCTURES)
    assert {i.subject for i in loaded["guard"]} == set(world.STRUCTURES) - set(world.DEFECTIVE)
    texts = {stem: {json.dumps(i.choices, ensure_ascii=False) for i in items} for stem, items in loaded.items()}
    assert not texts["seeds"] & texts["test"] and not texts["test"] & texts["guard"]
    assert not list(tmp_path.glob(".*.tmp"))
