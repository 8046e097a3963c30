"""The bundled example pairs (`distill/resources/example_pairs.jsonl`), the default of `train`.

Every pair must be in the pair schema of DESIGN.md, its prompt must be exactly what the
renderer makes of its problem today (so the file can never drift from `render_messages`),
and its chosen/rejected must end in the answer line training and evaluation rely on.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from distill.contracts import ANSWER_PREFIX
from distill.data.prompts import format_final_answer, render_messages
from distill.data.schema import item_from_dict
from distill.resources import resource_path

PAIR_FIELDS = {
    "id",
    "seed_id",
    "problem",
    "prompt",
    "chosen",
    "rejected",
    "gold",
    "rejected_choice",
    "subject",
    "transfer",
    "logic_structure",
    "error_type",
    "prompt_version",
}
PROBLEM_FIELDS = {"id", "paragraph", "question", "question_plus", "choices", "answer", "subject", "source"}
TRANSFERS = {"intra-subject", "cross-subject", "cross-domain"}
STRING_FIELDS = (
    "id",
    "seed_id",
    "chosen",
    "rejected",
    "subject",
    "transfer",
    "logic_structure",
    "error_type",
    "prompt_version",
)
STEP_LINE = re.compile(r"^\d\. \S")

# Size limits keep CPU training on tiny-qwen3 quick (the brief asks ~400 / ~350 characters).
MAX_PARAGRAPH_CHARS = 450
MAX_REASONING_CHARS = 400


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    path = resource_path("example_pairs.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), "blank line in example_pairs.jsonl"
    rows = [json.loads(line) for line in lines]
    assert all(isinstance(row, dict) for row in rows)
    return rows


def test_enough_pairs_with_unique_sequential_ids(pairs):
    assert len(pairs) >= 64
    ids = [pair["id"] for pair in pairs]
    assert len(set(ids)) == len(ids)
    assert ids == [f"ex-{n:03d}" for n in range(1, len(pairs) + 1)]


def test_fields_and_types(pairs):
    for pair in pairs:
        assert set(pair) == PAIR_FIELDS, pair["id"]
        for name in STRING_FIELDS:
            assert isinstance(pair[name], str) and pair[name].strip(), (pair["id"], name)
        for name in ("gold", "rejected_choice"):
            assert type(pair[name]) is int, (pair["id"], name)
        assert isinstance(pair["problem"], dict), pair["id"]
        assert isinstance(pair["prompt"], list), pair["id"]
        assert pair["transfer"] in TRANSFERS, pair["id"]
        assert pair["prompt_version"] == "example-v1", pair["id"]


def test_problem_is_a_canonical_item_that_matches_the_pair(pairs):
    path = resource_path("example_pairs.jsonl")
    for row, pair in enumerate(pairs, start=1):
        problem = pair["problem"]
        assert set(problem) == PROBLEM_FIELDS, pair["id"]
        item = item_from_dict(path, row, problem)
        assert item.id == pair["id"] + "-q"
        assert item.source == "distill-example-pairs"
        assert item.n_choices in (4, 5), pair["id"]
        assert item.answer == pair["gold"], pair["id"]
        assert item.subject == pair["subject"], pair["id"]
        assert isinstance(problem["question_plus"], str)
        assert len(item.paragraph) <= MAX_PARAGRAPH_CHARS, pair["id"]


def test_prompt_is_exactly_the_rendered_problem(pairs):
    path = resource_path("example_pairs.jsonl")
    for row, pair in enumerate(pairs, start=1):
        item = item_from_dict(path, row, pair["problem"])
        assert pair["prompt"] == render_messages(item), pair["id"]


def test_question_plus_reaches_the_prompt(pairs):
    with_box = [pair for pair in pairs if pair["problem"]["question_plus"]]
    assert with_box, "no pair exercises a <보기> box"
    for pair in with_box:
        assert pair["problem"]["question_plus"].strip() in pair["prompt"][-1]["content"]


def test_answers_in_range_and_different(pairs):
    for pair in pairs:
        n_choices = len(pair["problem"]["choices"])
        assert 1 <= pair["gold"] <= n_choices, pair["id"]
        assert 1 <= pair["rejected_choice"] <= n_choices, pair["id"]
        assert pair["gold"] != pair["rejected_choice"], pair["id"]


def test_chosen_and_rejected_end_in_their_answer_line(pairs):
    for pair in pairs:
        chosen, rejected = pair["chosen"], pair["rejected"]
        assert chosen != rejected, pair["id"]
        assert chosen.endswith("\n\n" + format_final_answer(pair["gold"])), pair["id"]
        assert rejected.endswith("\n\n" + format_final_answer(pair["rejected_choice"])), pair["id"]
        # The answer line appears once, at the end: extraction must not find an earlier one.
        assert chosen.count(ANSWER_PREFIX) == 1 and rejected.count(ANSWER_PREFIX) == 1, pair["id"]


def test_reasoning_is_three_to_six_numbered_steps_of_bounded_length(pairs):
    for pair in pairs:
        for name in ("chosen", "rejected"):
            text = pair[name]
            assert len(text) <= MAX_REASONING_CHARS, (pair["id"], name, len(text))
            body, _, _ = text.rpartition("\n\n")
            steps = body.split("\n")
            assert 3 <= len(steps) <= 6, (pair["id"], name)
            assert all(STEP_LINE.match(step) for step in steps), (pair["id"], name)
            assert [int(step.split(".")[0]) for step in steps] == list(range(1, len(steps) + 1))


def test_transfer_mix(pairs):
    counts = Counter(pair["transfer"] for pair in pairs)
    assert set(counts) == TRANSFERS
    share = {kind: counts[kind] / len(pairs) for kind in TRANSFERS}
    assert 0.35 <= share["intra-subject"] <= 0.65, share
    assert share["cross-subject"] >= 0.15 and share["cross-domain"] >= 0.15, share


def test_subjects_cover_the_suneung_areas(pairs):
    subjects = {pair["subject"] for pair in pairs}
    assert {"한국사", "경제", "윤리와사상", "사회문화", "세계사", "국어"} <= subjects


def test_answer_positions_are_spread(pairs):
    n = len(pairs)
    gold = Counter(pair["gold"] for pair in pairs)
    rejected = Counter(pair["rejected_choice"] for pair in pairs)
    for position in range(1, 6):
        assert gold[position] >= n // 10, (position, gold)
        assert rejected[position] >= n // 10, (position, rejected)
    assert max(gold.values()) <= 0.3 * n, gold


def test_seed_groups_are_small_and_shared(pairs):
    """The dev split holds out whole seed groups: many small groups keep it fine-grained."""
    sizes = Counter(pair["seed_id"] for pair in pairs)
    assert len(sizes) >= 16, sizes
    assert max(sizes.values()) <= 5, sizes
    assert sum(1 for size in sizes.values() if size >= 2) >= len(sizes) - 1, sizes


def _text(pair: dict) -> str:
    return json.dumps(pair, ensure_ascii=False)


def test_case_study_policy_purpose_heungseon_to_gwangjong(pairs):
    matches = [p for p in pairs if p["seed_id"] == "case-heungseon" and "광종" in _text(p)]
    assert matches, "the 흥선대원군 → 광종 case study is missing"
    pair = matches[0]
    assert pair["subject"] == "한국사" and pair["transfer"] == "intra-subject"
    assert "노비" in pair["problem"]["paragraph"]
    assert "왕권" in pair["problem"]["choices"][pair["gold"] - 1]


def test_case_study_explicit_priority_buffett_to_adam_smith(pairs):
    matches = [p for p in pairs if p["seed_id"] == "case-buffett" and "애덤 스미스" in p["problem"]["paragraph"]]
    assert matches, "the Buffett → Adam Smith case study is missing"
    # The student's error: the famous keyword wins over the priority the text states.
    keyword_traps = [p for p in matches if "보이지 않는 손" in p["problem"]["choices"][p["rejected_choice"] - 1]]
    assert keyword_traps
    pair = keyword_traps[0]
    assert "보이지 않는 손" not in pair["problem"]["choices"][pair["gold"] - 1]
    assert pair["error_type"] == "famous-keyword bias"


def test_training_loader_accepts_the_bundled_file():
    from distill.pairs import load_pairs

    pairset = load_pairs(resource_path("example_pairs.jsonl"))
    assert len(pairset.pairs) >= 64
