"""Batched logit scoring equals the slow one-item-one-choice reference (to 1e-4, same argmax)."""

from __future__ import annotations

import pytest
from scoring_helpers import make_items, merging_tokenizer, tiny_model_for

from distill.scoring import (
    choice_tokens,
    predict,
    score_choices,
    score_choices_reference,
    scoring_prompt,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny():
    from distill.models import load_student

    model, tokenizer = load_student("tiny-qwen3", device="cpu")
    return model, tokenizer


@pytest.fixture(scope="module")
def items():
    # 4- and 5-choice items of clearly different lengths, and one 10-choice item whose label
    # "10" is two tokens (digits are split one by one), so one item takes the general path.
    mixed = make_items(13, seed=1, with_ten=True)
    assert {item.n_choices for item in mixed} == {4, 5, 10}
    return mixed


@pytest.fixture(scope="module")
def reference(tiny, items):
    model, tokenizer = tiny
    return score_choices_reference(model, tokenizer, items)


def assert_same_scores(batched, reference, items):
    assert [len(row) for row in batched] == [item.n_choices for item in items]
    for item, got, want in zip(items, batched, reference):
        assert got == pytest.approx(want, abs=TOLERANCE), item.id
    assert predict(batched) == predict(reference)


def test_label_tokens_are_what_the_tokenizer_produces(tiny, items):
    _, tokenizer = tiny
    for item in items:
        prompt = scoring_prompt(tokenizer, item)
        assert prompt.endswith("</think>\n\n정답: ")  # thinking off: the empty think block, then the prefix
        spec = choice_tokens(tokenizer, prompt, item.n_choices)
        assert spec.boundary_stable
        for label, continuation in enumerate(spec.continuations, start=1):
            assert tokenizer.decode(list(spec.context) + list(continuation)) == prompt + str(label)
            assert tokenizer.decode(list(continuation)) == str(label)
    ten = choice_tokens(tokenizer, scoring_prompt(tokenizer, items[-1]), 10)
    assert not ten.single_token and len(ten.continuations[9]) == 2


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_equals_reference(tiny, items, reference, batch_size):
    model, tokenizer = tiny
    batched = score_choices(model, tokenizer, items, batch_size=batch_size, progress=False)
    assert_same_scores(batched, reference, items)


def test_general_path_equals_reference(tiny, items, reference):
    """Every item as one row per choice (the multi-token path), still equal to the oracle."""
    model, tokenizer = tiny
    batched = score_choices(model, tokenizer, items, batch_size=3, progress=False, fast_path=False)
    assert_same_scores(batched, reference, items)


def test_scores_are_log_probabilities_that_depend_on_the_item(tiny, items, reference):
    for row in reference:
        assert all(score < 0 for score in row)
    # single-token labels of the same item are exclusive next tokens: their probabilities sum below 1
    import math

    assert sum(math.exp(s) for s in reference[0]) < 1.0
    assert reference[0][:4] != pytest.approx(reference[2][:4], abs=TOLERANCE)


def test_thinking_on_scores_a_different_prompt(tiny, items):
    model, tokenizer = tiny
    on = scoring_prompt(tokenizer, items[0], thinking=True)
    assert "<think>" not in on.split("<|im_start|>assistant")[-1]
    thinking_on = score_choices(model, tokenizer, items[:2], thinking=True, progress=False)
    assert_same_scores(thinking_on, score_choices_reference(model, tokenizer, items[:2], thinking=True), items[:2])
    thinking_off = score_choices(model, tokenizer, items[:2], thinking=False, progress=False)
    assert thinking_on[0] != pytest.approx(thinking_off[0], abs=TOLERANCE)


def test_training_mode_is_restored(tiny, items):
    model, tokenizer = tiny
    model.train()
    try:
        score_choices(model, tokenizer, items[:1], progress=False)
        assert model.training
    finally:
        model.eval()


def test_boundary_crossing_merge_is_scored_honestly():
    """A tokenizer that merges the prefix's space with the digit (' 3' is one token)."""
    tokenizer = merging_tokenizer()
    model = tiny_model_for(tokenizer, seed=2)
    items = make_items(5, seed=4)
    prompt = scoring_prompt(tokenizer, items[0])
    spec = choice_tokens(tokenizer, prompt, items[0].n_choices)
    assert not spec.boundary_stable
    # the context stops before the space, and every continuation is the merged " N" token
    assert tokenizer.decode(list(spec.context)) == prompt[:-1]
    assert [tokenizer.decode(list(c)) for c in spec.continuations] == [
        f" {k}" for k in range(1, items[0].n_choices + 1)
    ]
    assert spec.single_token
    for batch_size in (1, 3, 8):
        batched = score_choices(model, tokenizer, items, batch_size=batch_size, progress=False)
        assert_same_scores(batched, score_choices_reference(model, tokenizer, items), items)


def test_predict_argmax_is_one_based_and_ties_go_to_the_lowest_label():
    assert predict([[-3.0, -1.0, -2.0], [-1.0, -1.0, -5.0, -0.5, -9.0], [-2.0, -2.0]]) == [2, 4, 1]
