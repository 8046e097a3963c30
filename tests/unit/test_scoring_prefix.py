"""Shared-prefix scoring: items that share a passage reuse one key/value cache, and every score
still equals the one-item-at-a-time reference (1e-4 in fp32, same argmax), with and without a
LoRA adapter, 4-, 5- and 10-choice items, passage-sharing and standalone items mixed."""

from __future__ import annotations

import dataclasses

import pytest
from scoring_helpers import make_items

from distill.scoring import (
    choice_tokens,
    predict,
    prefix_groups,
    score_choices,
    score_choices_reference,
    scoring_prompt,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny():
    from distill.models import load_student

    return load_student("tiny-qwen3", device="cpu")


@pytest.fixture(scope="module")
def items():
    """Three passages shared by 3, 4 and 2 questions, plus standalone items (some without passage)."""
    pool = make_items(16, seed=7, with_ten=True)
    passages = [" ".join([pool[0].question] * 6), " ".join([pool[1].question] * 9), " ".join([pool[2].question] * 4)]
    shared = []
    for group, (passage, size) in enumerate(zip(passages, (3, 4, 2))):
        for k in range(size):
            source = pool[len(shared)]
            shared.append(dataclasses.replace(source, id=f"p{group}q{k}", paragraph=passage))
    loose = [dataclasses.replace(item, id=f"s{n}") for n, item in enumerate(pool[len(shared) :])]
    loose[0] = dataclasses.replace(loose[0], paragraph="")
    mixed = shared[:5] + loose[:3] + shared[5:] + loose[3:]  # groups are not contiguous in the input
    assert {item.n_choices for item in mixed} == {4, 5, 10}
    return mixed


@pytest.fixture(scope="module")
def contexts(tiny, items):
    _, tokenizer = tiny
    return [choice_tokens(tokenizer, scoring_prompt(tokenizer, item), item.n_choices).context for item in items]


def assert_same_scores(got, want, items):
    assert [len(row) for row in got] == [item.n_choices for item in items]
    for item, g, w in zip(items, got, want):
        assert g == pytest.approx(w, abs=TOLERANCE), item.id
    assert predict(got) == predict(want)


def test_items_sharing_a_passage_share_a_prefix(items, contexts):
    root, groups = prefix_groups(contexts)
    assert root > 0  # the chat header and system prompt every prompt starts with
    by_id = [sorted(items[i].id for i in members) for _, members in groups]
    assert sorted(by_id) == sorted(
        [
            ["p0q0", "p0q1", "p0q2"],
            ["p1q0", "p1q1", "p1q2", "p1q3"],
            ["p2q0", "p2q1"],
            sorted(item.id for item in items if item.id.startswith("s")),
        ]
    )
    for length, members in groups:
        assert all(length < len(contexts[i]) for i in members)  # a last position is left to score
        assert all(tuple(contexts[i][:length]) == tuple(contexts[members[0]][:length]) for i in members)
        if items[members[0]].id.startswith("p"):
            assert length > root
        else:
            assert length == root


def test_prefix_groups_edge_cases():
    assert prefix_groups([]) == (0, [])
    # identical contexts: the prefix stops one token short so the last position is still scored
    root, groups = prefix_groups([(1, 2, 3)] * 3, min_shared=1)
    assert root == 2 and groups == [(2, [0, 1, 2])]
    root, groups = prefix_groups([(1, 2, 3, 4, 5), (1, 2, 3, 4, 6), (1, 9)], min_shared=2)
    assert root == 1 and groups == [(1, [2]), (4, [0, 1])]


@pytest.fixture(scope="module")
def reference(tiny, items):
    model, tokenizer = tiny
    return score_choices_reference(model, tokenizer, items)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("fast_path", [True, False])
def test_shared_prefix_equals_reference(tiny, items, reference, batch_size, fast_path):
    model, tokenizer = tiny
    got = score_choices(model, tokenizer, items, batch_size=batch_size, progress=False, fast_path=fast_path)
    assert_same_scores(got, reference, items)


def test_without_prefix_cache_equals_reference(tiny, items, reference):
    model, tokenizer = tiny
    got = score_choices(model, tokenizer, items, batch_size=4, progress=False, shared_prefix=False)
    assert_same_scores(got, reference, items)


def test_thinking_on_with_shared_prefix(tiny, items):
    model, tokenizer = tiny
    got = score_choices(model, tokenizer, items[:6], thinking=True, batch_size=4, progress=False)
    assert_same_scores(got, score_choices_reference(model, tokenizer, items[:6], thinking=True), items[:6])


def test_shared_prefix_with_a_lora_adapter(tiny, items, reference):
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny
    fresh = type(base)(base.config)
    fresh.load_state_dict(base.state_dict())
    torch.manual_seed(3)
    # init_lora_weights=False: B is random too, so the adapter really changes the scores
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(fresh, config)
    want = score_choices_reference(model, tokenizer, items)
    assert any(w != pytest.approx(r, abs=TOLERANCE) for w, r in zip(want, reference))
    for batch_size in (1, 5):
        assert_same_scores(score_choices(model, tokenizer, items, batch_size=batch_size, progress=False), want, items)
