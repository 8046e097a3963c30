"""The bundled example items (eval sample, mining seeds and their notes) keep their contracts.

These files are the embedded default every stage runs on, so a broken line would break
`evaluate` and `mine` with no parameters. The checks here are the same ones a loader applies,
plus the properties the replay cache and the decontamination gate rely on.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from distill.data.schema import item_from_dict
from distill.resources import resource_path

SUBJECTS = {"한국사", "경제", "윤리와사상", "사회문화", "세계사", "국어"}
FINAL_LINE = re.compile(r"(?:^|\n)정답: (\d+)\s*$")
ANY_ANSWER_LINE = re.compile(r"정답\s*[:：]\s*\d")
NUMBERED_STEP = re.compile(r"^\d+\. ", re.MULTILINE)


def _rows(name: str) -> list[dict]:
    path = resource_path(name)
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _items(name: str):
    path = resource_path(name)
    return [item_from_dict(path, row, obj) for row, obj in enumerate(_rows(name), start=1)]


def _char_5grams(text: str) -> set[str]:
    compact = re.sub(r"\s+", "", text)
    return {compact[i : i + 5] for i in range(len(compact) - 4)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


@pytest.mark.parametrize(
    ("name", "source", "minimum"),
    [("eval_sample.jsonl", "distill-eval-sample", 48), ("seeds.jsonl", "distill-seeds", 24)],
)
def test_bundled_file_loads_as_canonical_items(name, source, minimum):
    items = _items(name)
    assert len(items) >= minimum
    ids = [item.id for item in items]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for item in items:
        assert item.source == source, item.id
        assert item.subject in SUBJECTS, item.id
        assert item.n_choices in (4, 5), item.id
        normalised = [" ".join(choice.split()) for choice in item.choices]
        assert len(set(normalised)) == item.n_choices, f"{item.id}: repeated choice"
        assert item.answer is not None and 1 <= item.answer <= item.n_choices, item.id
        assert item.paragraph.strip() and item.question.strip(), item.id
    assert {item.subject for item in items} == SUBJECTS


def test_eval_sample_has_boxes_and_uses_every_answer_position():
    items = _items("eval_sample.jsonl")
    assert sum(1 for item in items if item.question_plus.strip()) >= 8
    positions = Counter(item.answer for item in items)
    assert set(positions) >= {1, 2, 3, 4, 5}, positions


def test_seed_notes_match_seeds_and_end_in_the_right_answers():
    seeds = {item.id: item for item in _items("seeds.jsonl")}
    notes = _rows("seed_notes.jsonl")
    assert [note["id"] for note in notes] == list(seeds), "one note per seed, same order"
    unparseable = 0
    for note in notes:
        seed = seeds[note["id"]]
        golden = FINAL_LINE.search(note["golden_path"])
        assert golden and int(golden.group(1)) == seed.answer, f"{seed.id}: golden path"
        assert 4 <= len(NUMBERED_STEP.findall(note["golden_path"])) <= 7, f"{seed.id}: steps"
        failed = FINAL_LINE.search(note["failed_path"])
        assert failed, f"{seed.id}: failed path has no final answer line"
        wrong = int(failed.group(1))
        assert wrong != seed.answer and 1 <= wrong <= seed.n_choices, f"{seed.id}: failed path"
        assert note["error_type"].strip(), seed.id
        assert isinstance(note["student_unparseable"], bool), seed.id
        if note["student_unparseable"]:
            unparseable += 1
            output = note["unparseable_output"]
            assert output.strip() and not ANY_ANSWER_LINE.search(output), seed.id
    assert unparseable >= 3


def test_eval_and_seed_items_do_not_overlap():
    evals = _items("eval_sample.jsonl")
    seeds = _items("seeds.jsonl")
    assert not {item.id for item in evals} & {item.id for item in seeds}
    seed_grams = [(item.id, _char_5grams(item.question + item.paragraph)) for item in seeds]
    for item in evals:
        grams = _char_5grams(item.question + item.paragraph)
        for seed_id, other in seed_grams:
            similarity = _jaccard(grams, other)
            assert similarity < 0.5, f"{item.id} and {seed_id}: 5-gram Jaccard {similarity:.2f}"
