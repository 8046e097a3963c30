"""Loaders on the real files in ../shared/data (SOURCES.md there). Never skipped in CI."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from distill.data.loaders import items_digest, load_items, passage_range, write_items_jsonl
from distill.data.normalize import is_private_use
from distill.errors import InputError

TRAIN = "competition/cleaned_category_labeled_train.cp949.csv"
TEST = "competition/test.csv"
KICE_FILES = [f"kice/{year}_11_KICE.json" for year in range(2015, 2020)]


def _texts(item):
    return [item.paragraph, item.question, item.question_plus, *item.choices]


@pytest.fixture(scope="module")
def train_items(shared_data):
    return load_items(shared_data / TRAIN, allow_duplicate_choices=True)


@pytest.fixture(scope="module")
def test_items(shared_data):
    return load_items(shared_data / TEST, allow_duplicate_choices=True)


def test_train_file_is_cp949_and_complete(shared_data, train_items):
    raw = (shared_data / TRAIN).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert len(train_items) == 2003
    assert all(item.answer is not None for item in train_items)
    assert Counter(item.answer for item in train_items) == {1: 941, 2: 446, 3: 313, 4: 272, 5: 31}
    assert Counter(item.n_choices for item in train_items).keys() == {4, 5}
    assert len({item.subject for item in train_items}) == 16
    assert all(item.answer <= item.n_choices for item in train_items)


def test_test_file_question_plus_no_answers_no_pua(test_items):
    assert len(test_items) == 869
    assert sum(bool(item.question_plus) for item in test_items) == 44
    assert all(item.answer is None for item in test_items)
    assert not any(is_private_use(ch) for item in test_items for text in _texts(item) for ch in text)
    paragraphs = "\n".join(item.paragraph for item in test_items)
    # the PUA code points were mapped, not dropped: old Hangul (사미인곡) and book-title marks
    assert "\u1112\u119e\u11ab\u1109\u11a1\u11bc 연분" in paragraphs  # ᄒᆞᆫᄉᆡᆼ 연분
    assert "『지봉유설』" in paragraphs
    assert "\u200b" not in paragraphs and "\u00a0" not in paragraphs


def test_each_real_file_has_exactly_one_duplicate_choice_item(shared_data, train_items, test_items):
    """Strict by default (the error names the row); kept and flagged on request."""
    for name, items, row in ((TRAIN, train_items, 423), (TEST, test_items, 701)):
        with pytest.raises(InputError) as info:
            load_items(shared_data / name)
        assert (info.value.row, info.value.field) == (row, "choices")
        flagged = [
            (index + 1, item.extra["duplicate_choices"])
            for index, item in enumerate(items)
            if "duplicate_choices" in item.extra
        ]
        assert flagged == [(row, [[2, 4]])]


def test_kice_files_subjects_by_question_number(shared_data):
    all_items = []
    for name in KICE_FILES:
        items = load_items(shared_data / name, require_answer=True)
        assert [item.extra["question_number"] for item in items] == list(range(1, 46))
        assert Counter(item.subject for item in items) == {"화법과작문": 10, "문법": 5, "독서·문학": 30}
        assert [item.subject for item in items[9:11]] == ["화법과작문", "문법"]
        assert [item.subject for item in items[14:16]] == ["문법", "독서·문학"]
        assert {item.n_choices for item in items} == {5}
        assert all("score" in item.extra for item in items)
        all_items += items
    assert len(all_items) == 225
    assert len({item.id for item in all_items}) == 225
    assert sum(bool(item.question_plus) for item in all_items) > 0


@pytest.mark.parametrize("name", KICE_FILES)
def test_kice_real_passage_ids_catch_a_missing_question(tmp_path, shared_data, name):
    """Every real passage id carries its question range, so any one question dropped is an error."""
    passages = json.loads((shared_data / name).read_text(encoding="utf-8"))
    assert all(passage_range(passage["id"]) is not None for passage in passages)
    number = 0
    for index, passage in enumerate(passages):
        for position in range(len(passage["problems"])):
            number += 1
            if number % 9 != 4:  # questions 4, 13, 22, 31, 40: in every section of both layouts
                continue
            damaged = json.loads(json.dumps(passages))
            del damaged[index]["problems"][position]
            if not damaged[index]["problems"]:
                del damaged[index]
            path = tmp_path / str(number) / (shared_data / name).name
            path.parent.mkdir()
            path.write_text(json.dumps(damaged, ensure_ascii=False), encoding="utf-8")
            with pytest.raises(InputError) as info:
                load_items(path)
            assert info.value.field == "problems" and "is missing" in info.value.message


def test_real_round_trip_through_canonical_jsonl(tmp_path, train_items):
    out = write_items_jsonl(tmp_path / "train.jsonl", train_items)
    again = load_items(out, allow_duplicate_choices=True)
    assert items_digest(again) == items_digest(train_items)
