"""The training library's pure parts: target modules, backend choice, think-block handling, over-long pairs."""

from __future__ import annotations

import pytest

from distill.errors import ConfigError
from distill.training import (
    completion_text,
    handle_overlong,
    parse_target_modules,
    preference_metrics,
    resolve_backend,
)


def test_target_modules():
    assert parse_target_modules("all-linear") == "all-linear"
    assert parse_target_modules("q_proj, v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="target_modules is empty"):
        parse_target_modules(" , ")


@pytest.mark.parametrize(
    "four_bit, unsloth, cuda, bnb, has_unsloth, name, expected_4bit, note",
    [
        ("auto", "auto", False, True, False, "lora", False, "4-bit off: no CUDA GPU"),
        ("auto", "auto", True, True, True, "unsloth", True, None),
        ("auto", "auto", True, True, False, "qlora", True, "unsloth off: not installed"),
        ("auto", "auto", True, False, False, "lora", False, "4-bit off: bitsandbytes not installed"),
        ("false", "auto", True, True, True, "unsloth", False, "4-bit off: load_in_4bit=false"),
        ("true", "auto", False, True, False, "qlora", True, "4-bit on CPU"),
        ("auto", "false", True, True, True, "qlora", True, "unsloth off: use_unsloth=false"),
    ],
)
def test_backend_choice(four_bit, unsloth, cuda, bnb, has_unsloth, name, expected_4bit, note):
    backend = resolve_backend(four_bit, unsloth, cuda=cuda, has_bitsandbytes=bnb, has_unsloth=has_unsloth)
    assert backend.name == name and backend.load_in_4bit == expected_4bit
    assert backend.device == ("cuda" if cuda else "cpu")
    if note:
        assert any(n.startswith(note) for n in backend.notes), backend.notes
    else:
        assert backend.notes == ()


def test_backend_refuses_what_the_machine_cannot_do():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve_backend("auto", "true", cuda=False, has_bitsandbytes=True, has_unsloth=False)
    with pytest.raises(ConfigError, match="not installed"):
        resolve_backend("auto", "true", cuda=True, has_bitsandbytes=True, has_unsloth=False)
    with pytest.raises(ConfigError, match="needs bitsandbytes"):
        resolve_backend("true", "false", cuda=True, has_bitsandbytes=False, has_unsloth=False)


def test_thinking_off_and_on_completions():
    text = "첫째 근거.\n둘째 근거.\n\n정답: 3"
    assert completion_text(text, thinking=False, eos_token="<E>") == "첫째 근거.\n둘째 근거.\n\n정답: 3<E>"
    assert (
        completion_text(text, thinking=True, eos_token="<E>")
        == "<think>\n첫째 근거.\n둘째 근거.\n</think>\n\n정답: 3<E>"
    )
    # think tags already in a pair are removed first, so both modes start from plain reasoning
    tagged = "<think>첫째 근거.</think>\n\n정답: 3"
    assert completion_text(tagged, thinking=False, eos_token="<E>") == "첫째 근거.\n\n정답: 3<E>"
    assert completion_text("정답: 1", thinking=True, eos_token="<E>") == "<think>\n\n</think>\n\n정답: 1<E>"


def test_prompts_follow_the_thinking_decision_with_the_tiny_tokenizer():
    import random

    from transformers import AutoTokenizer

    from distill.models import resolve_model_path
    from distill.pairs import validate_pairs
    from distill.training import preference_rows, split_completion_tokens
    from tests.train_helpers import pair_for, synthetic_items

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-qwen3"))
    (pair,) = validate_pairs(
        "mem", [(1, pair_for(synthetic_items(1, heldout=False, seed=0)[0], random.Random(0), reasoning=True))]
    )
    (off,) = preference_rows([pair], tokenizer, thinking=False)
    (on,) = preference_rows([pair], tokenizer, thinking=True)
    assert off["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on["prompt"].endswith("<|im_start|>assistant\n")
    assert on["chosen"].startswith("<think>\n") and "</think>\n\n정답: 2" in on["chosen"]
    for row in (off, on):
        for side in ("chosen", "rejected"):
            context, completion = split_completion_tokens(tokenizer, row["prompt"], row[side])
            assert completion[-1] == tokenizer.eos_token_id, "completion ends with eos exactly once"
            assert completion.count(tokenizer.eos_token_id) == 1
            assert tokenizer.decode(context) == row["prompt"]


def test_overlong_pairs_are_counted_then_dropped_or_kept():
    rows = [{"id": str(i)} for i in range(4)]
    lengths = [(10, 30), (50, 60), (10, 90), (20, 40)]
    kept, report = handle_overlong(rows, lengths, max_length=80, max_prompt_length=40, mode="drop")
    assert [r["id"] for r in kept] == ["0", "3"]
    assert (report.n_overlong, report.n_dropped, report.n_truncated) == (2, 2, 0)
    assert report.ids == ["1", "2"] and report.max_prompt_tokens == 50 and report.max_total_tokens == 90
    kept, report = handle_overlong(rows, lengths, max_length=80, max_prompt_length=40, mode="truncate")
    assert len(kept) == 4 and (report.n_overlong, report.n_dropped, report.n_truncated) == (2, 0, 2)


def test_preference_metrics():
    metrics = preference_metrics([-1.0, -2.0, -0.5], [-2.0, -1.0, -1.5])
    assert metrics["reward_accuracy"] == pytest.approx(2 / 3)
    assert metrics["margin"] == pytest.approx((1.0 - 1.0 + 1.0) / 3)
    assert preference_metrics([], []) == {}
