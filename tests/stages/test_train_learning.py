"""The preference term really learns, and tells ORPO from SFT, on held-out prompts.

The task (`preference_task`): the fact table of tests/train_helpers.py, each fact with its gold
answer and one *trap*, the wrong answer its rejected completions always pick (a student's
systematic error). A completion is the answer's name, then its answer line ("세종\\n\\n정답: 2").
The held-out split uses question wordings and filler never trained on, and its choice lists are
rotated, so the gold and the trap sit at positions never seen with that fact in training.

What is measured on the held-out pairs (`distill.training.dev_metrics`, as a dev split is):
preference accuracy (chosen more likely than rejected, per-token average log-prob), the mean
chosen-minus-rejected margin, and the MCQ logit accuracy on the held-out items.

The claim, at the same pairs and seed:
- ORPO (λ = 1) raises the held-out margin from about 0 and ranks the pairs right;
- SFT on the chosen completions raises it too: pushing the gold name up takes probability from
  every other name, the trap included (the softmax), so "margin > 0" alone cannot tell the two
  apart. SFT's held-out margin is clearly positive but at most SFT_MAX_MARGIN;
- ORPO, which pushes the rejected completion down as well, ends with a held-out margin at least
  MIN_ORPO_OVER_SFT above SFT's and at least MIN_ORPO_SFT_RATIO times it;
- the same seed gives the same numbers.
The logit accuracy stays at chance for every method: the answer *position* moved, and a random
2-layer model learns which label follows a fact, not how to read the choices. It is reported,
not asserted.

Measured on the 2-core CPU box (seed 0; 32 pairs, 6 epochs, 24 steps, lr 1e-2): before training
preference accuracy 0.375, margin −0.014; after, ORPO 1.00 and +0.65, SFT 1.00 and +0.29, both
with the rejected log-prob lower under ORPO (−7.7 against −7.4). The bounds below leave room
around those figures.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from distill.contracts import MCQItem
from distill.data.prompts import format_final_answer, render_messages
from distill.pairs import validate_pairs
from distill.stages.train import TrainConfig
from distill.training import (
    decide_backend,
    dev_items,
    dev_metrics,
    load_for_training,
    preference_rows,
    train_preference,
)
from tests.train_helpers import FACTS, HELDOUT_QUESTIONS, TRAIN_QUESTIONS, _filler

pytestmark = pytest.mark.slow

N_TRAIN, N_HELDOUT = 32, 24
MIN_ORPO_MARGIN_GAIN = 0.3
MIN_ORPO_REWARD_ACCURACY = 0.9
SFT_MIN_MARGIN, SFT_MAX_MARGIN = 0.1, 0.45
MIN_ORPO_OVER_SFT = 0.15
MIN_ORPO_SFT_RATIO = 1.5


def trap_of(gold: int, n_choices: int) -> int:
    """The wrong choice a fact's rejected completions pick: the one after the gold (cyclic)."""
    return gold % n_choices + 1


def preference_task(n: int, *, heldout: bool, seed: int) -> list[dict]:
    """`n` pairs over the fact table (facts cycled). Held-out: other wordings, and the choice list
    rotated by 1-3 places, so gold and trap move to positions training never showed for the fact."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        fact, choices, gold = FACTS[index % len(FACTS)]
        trap = trap_of(gold, len(choices))
        order = list(range(1, len(choices) + 1))
        if heldout:
            shift = 1 + (index // len(FACTS)) % (len(choices) - 1)
            order = order[shift:] + order[:shift]
        texts = [choices[k - 1] for k in order]
        gold_at, trap_at = order.index(gold) + 1, order.index(trap) + 1
        item = MCQItem(
            id=f"{'h' if heldout else 't'}{seed}-{index:03d}",
            paragraph=_filler(rng),
            question=rng.choice(HELDOUT_QUESTIONS if heldout else TRAIN_QUESTIONS).format(fact=fact),
            choices=tuple(texts),
            answer=gold_at,
            subject="인물",
            source="synthetic",
        )
        rows.append(
            {
                "id": f"pair-{item.id}",
                "problem": item.to_dict(),
                "prompt": render_messages(item, reasoning=False),
                "chosen": f"{texts[gold_at - 1]}\n\n{format_final_answer(gold_at)}",
                "rejected": f"{texts[trap_at - 1]}\n\n{format_final_answer(trap_at)}",
                "gold": gold_at,
                "rejected_choice": trap_at,
                "subject": "인물",
            }
        )
    return rows


def test_heldout_split_moves_answers_and_wordings():
    train = preference_task(N_TRAIN, heldout=False, seed=0)
    heldout = preference_task(N_HELDOUT, heldout=True, seed=1000)
    seen_positions = {(r["problem"]["choices"][r["gold"] - 1], r["gold"]) for r in train}
    seen_questions = {r["problem"]["question"] for r in train}
    for row in heldout:
        name = row["problem"]["choices"][row["gold"] - 1]
        assert (name, row["gold"]) not in seen_positions, "a held-out gold sits where training showed it"
        assert row["problem"]["question"] not in seen_questions
        assert row["rejected_choice"] != row["gold"]


def _train_and_measure(folder: Path, method: str, seed: int = 0) -> tuple[dict, dict]:
    """(held-out metrics before, after) training `method` on the task's training pairs."""
    from distill.models import load_student, resolve_model_path

    cfg = TrainConfig(
        method=method,
        beta=1.0,  # ORPO's λ: at 0.1 the odds-ratio term barely moves a random 2-layer model in 24 steps
        seed=seed,
        epochs=6,
        learning_rate=1e-2,
        lora_dropout=0.0,
        per_device_batch_size=8,
        max_length=256,
        max_prompt_length=200,
        logging_steps=8,
        output_dir=str(folder / "outputs"),
    )
    train = validate_pairs("train", list(enumerate(preference_task(N_TRAIN, heldout=False, seed=0), start=1)))
    heldout = validate_pairs("heldout", list(enumerate(preference_task(N_HELDOUT, heldout=True, seed=1000), start=1)))
    backend = decide_backend(cfg.load_in_4bit, cfg.use_unsloth)
    model, tokenizer, lora = load_for_training(cfg, backend, resolve_model_path(cfg.student))
    heldout_rows = preference_rows(heldout, tokenizer, thinking=False)
    scoring = dict(
        thinking=cfg.thinking,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        batch_size=cfg.eval_batch_size,
    )
    before = dev_metrics(model, tokenizer, heldout_rows, dev_items(heldout), **scoring)
    rows = preference_rows(train, tokenizer, thinking=False)
    result = train_preference(cfg, backend, model, tokenizer, lora, rows, folder / f"work-{method}")
    trained, tokenizer = load_student(cfg.student, adapter=str(result.adapter_dir))
    after = dev_metrics(trained, tokenizer, heldout_rows, dev_items(heldout), **scoring)
    return before, after


def test_orpo_lowers_heldout_rejected_more_than_sft_deterministically(tmp_path):
    before, orpo = _train_and_measure(tmp_path / "orpo", "orpo")
    _, sft = _train_and_measure(tmp_path / "sft", "sft")
    for name, after in (("orpo", orpo), ("sft", sft)):
        print(
            f"\n{name}: held-out ({N_HELDOUT} pairs) preference accuracy {before['reward_accuracy']:.3f} -> "
            f"{after['reward_accuracy']:.3f}, margin {before['margin']:+.4f} -> {after['margin']:+.4f}, "
            f"logit accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}"
        )
    assert before["n_pairs"] == orpo["n_pairs"] == sft["n_pairs"] == N_HELDOUT
    assert orpo["margin"] - before["margin"] >= MIN_ORPO_MARGIN_GAIN
    assert orpo["reward_accuracy"] >= MIN_ORPO_REWARD_ACCURACY > before["reward_accuracy"]
    assert SFT_MIN_MARGIN <= sft["margin"] <= SFT_MAX_MARGIN, "SFT's held-out margin is not what it was"
    assert orpo["margin"] - sft["margin"] >= MIN_ORPO_OVER_SFT
    assert orpo["margin"] >= MIN_ORPO_SFT_RATIO * sft["margin"]
    # The gap is the rejected side: ORPO pushes the trap down, SFT only lets it lose to the gold.
    assert orpo["rejected_logp"] < sft["rejected_logp"]

    again_before, again = _train_and_measure(tmp_path / "again", "orpo")
    assert again_before == before
    assert again == orpo, "same seed, same numbers"
