"""Loaders on small hand-made files in every format: what comes out, subjects, digests."""

from __future__ import annotations

import json
import os

import pytest
from data_helpers import (
    COMPETITION_HEADER,
    KMMLU_HEADER,
    canonical_row,
    competition_row,
    exam_passages,
    kice_passages,
    write_csv,
    write_json,
    write_jsonl_rows,
)

from distill.contracts import MCQItem
from distill.data.loaders import (
    FORMATS,
    detect_format,
    items_digest,
    load_items,
    load_subject_map,
    passage_range,
    write_items_jsonl,
)
from distill.data.subjects import KICE_LAYOUTS, exam_year_from_name, kice_subject
from distill.errors import InputError
from distill.io import MAX_JSON_DEPTH, json_nesting_fault


def test_formats_tuple():
    assert FORMATS == ("competition", "kice", "kmmlu", "jsonl")


# --------------------------------------------------------------------------- competition


def _mixed_competition_rows(literal: bool) -> list[list]:
    return [
        competition_row("c-1", "4지선다?", ["하나", "둘", "셋", "넷"], 2, literal=literal, category="한국사"),
        competition_row(
            "c-2",
            "5지선다?",
            ["ㄱ", "ㄴ", "ㄷ", "ㄹ", "ㅁ"],
            5,
            literal=literal,
            question_plus="<보기> 상자",
            category="경제",
        ),
        competition_row(
            "c-3",
            "정답 없음?",
            ["예", "아니요", "모름", "몰라"],
            "" if literal else None,
            literal=literal,
            category="",
        ),
    ]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp949"])
@pytest.mark.parametrize("literal", [False, True], ids=["json", "literal"])
def test_competition_encodings_and_problem_spellings(tmp_path, encoding, literal):
    path = write_csv(tmp_path / "comp.csv", COMPETITION_HEADER, _mixed_competition_rows(literal), encoding)
    items = load_items(path, "competition")

    assert [item.id for item in items] == ["c-1", "c-2", "c-3"]
    assert [item.n_choices for item in items] == [4, 5, 4]
    assert [item.answer for item in items] == [2, 5, None]
    assert [item.subject for item in items] == ["한국사", "경제", "unknown"]
    assert items[0].choices == ("하나", "둘", "셋", "넷")
    assert items[1].question_plus == "<보기> 상자"
    assert items[0].question_plus == ""
    assert items[0].paragraph == "지문입니다."
    assert {item.source for item in items} == {"comp.csv"}


def test_competition_same_items_whatever_the_encoding_or_spelling(tmp_path):
    utf8 = load_items(write_csv(tmp_path / "a.csv", COMPETITION_HEADER, _mixed_competition_rows(False)))
    cp949 = load_items(write_csv(tmp_path / "b.csv", COMPETITION_HEADER, _mixed_competition_rows(True), "cp949"))
    assert [item.to_dict() | {"source": ""} for item in utf8] == [item.to_dict() | {"source": ""} for item in cp949]


def test_question_plus_inside_problems_and_column_precedence(tmp_path):
    header = ["id", "paragraph", "problems"]  # no question_plus column, no category
    rows = [
        ["q-1", "p", json.dumps({"question": "q?", "choices": ["a", "b"], "answer": 1, "question_plus": "안쪽 보기"})],
        [
            "q-2",
            "p",
            repr({"question": "q?", "choices": ["a", "b"], "answer": 2, "question_plus": ["첫 줄", "둘째 줄"]}),
        ],
    ]
    items = load_items(write_csv(tmp_path / "inside.csv", header, rows))
    assert items[0].question_plus == "안쪽 보기"
    assert items[1].question_plus == "첫 줄\n둘째 줄"
    assert {item.subject for item in items} == {"unknown"}

    both = [competition_row("q-3", question_plus="열의 보기")]
    both[0][2] = json.dumps({"question": "q?", "choices": ["a", "b"], "answer": 1, "question_plus": "안쪽 보기"})
    item = load_items(write_csv(tmp_path / "both.csv", COMPETITION_HEADER, both))[0]
    assert item.question_plus == "열의 보기"

    empty_column = [competition_row("q-4", question_plus="")]
    empty_column[0][2] = json.dumps({"question": "q?", "choices": ["a", "b"], "question_plus": "안쪽 보기"})
    item = load_items(write_csv(tmp_path / "empty_col.csv", COMPETITION_HEADER, empty_column))[0]
    assert item.question_plus == "안쪽 보기"


def test_competition_text_is_normalised(tmp_path):
    row = competition_row(
        "n-1",
        " 다음\u00a0중  옳은 것은? ",
        ["\u200b하나 ", "둘\r\n\r\n\r\n셋"],
        1,
        paragraph="지봉유설은 \U000f0854지봉유설\U000f0855이다.\u3000끝",
        question_plus=" 보기\t내용 ",
    )
    item = load_items(write_csv(tmp_path / "n.csv", COMPETITION_HEADER, [row]))[0]
    assert item.question == "다음 중 옳은 것은?"
    assert item.choices == ("하나", "둘\n\n셋")
    assert item.paragraph == "지봉유설은 『지봉유설』이다. 끝"
    assert item.question_plus == "보기 내용"


def test_extra_keys_and_columns_are_kept(tmp_path):
    header = COMPETITION_HEADER + ["note"]
    row = competition_row("x-1", hint="힌트") + ["메모"]
    item = load_items(write_csv(tmp_path / "x.csv", header, [row]))[0]
    assert item.extra == {"hint": "힌트", "note": "메모"}


def test_literal_extras_that_json_cannot_hold_are_kept_as_text(tmp_path):
    row = [
        "s-1",
        "p",
        repr({"question": "q?", "choices": ["a", "b"], "answer": 1, "tags": {3}, "pair": (1, 2)}),
        "",
        "",
    ]
    path = write_csv(tmp_path / "s.csv", COMPETITION_HEADER, [row])
    item = load_items(path)[0]
    assert item.extra == {"tags": "{3}", "pair": [1, 2]}
    assert len(items_digest([item])) == 64


def test_unnamed_index_column_is_ignored(tmp_path):
    rows = [["0"] + competition_row("i-1"), ["1"] + competition_row("i-2")]
    items = load_items(write_csv(tmp_path / "pandas.csv", [""] + COMPETITION_HEADER, rows))
    assert [item.id for item in items] == ["i-1", "i-2"]
    assert items[0].extra == {}


def test_answer_as_text_digit_and_float(tmp_path):
    rows = [competition_row("a-1", answer="3"), competition_row("a-2", answer=4.0)]
    items = load_items(write_csv(tmp_path / "a.csv", COMPETITION_HEADER, rows))
    assert [item.answer for item in items] == [3, 4]


def test_require_answer(tmp_path):
    path = write_csv(tmp_path / "r.csv", COMPETITION_HEADER, _mixed_competition_rows(False))
    assert load_items(path)[2].answer is None
    with pytest.raises(InputError) as info:
        load_items(path, require_answer=True)
    assert (info.value.row, info.value.field) == (3, "answer")


def test_duplicate_choices_allowed_on_request_and_flagged(tmp_path):
    rows = [competition_row("d-1"), competition_row("d-2", choices=["같다", "다르다", "같다", " 다르다 "])]
    path = write_csv(tmp_path / "dup.csv", COMPETITION_HEADER, rows)
    with pytest.raises(InputError) as info:
        load_items(path)
    assert (info.value.row, info.value.field) == (2, "choices")
    items = load_items(path, allow_duplicate_choices=True)
    assert "duplicate_choices" not in items[0].extra
    assert items[1].extra["duplicate_choices"] == [[1, 3], [2, 4]]


# --------------------------------------------------------------------------- kice


def test_kice_old_layout_numbers_ids_and_subjects(tmp_path):
    passages = kice_passages([3, 7, 5, 30])  # 45 questions, passage 2 runs over 4..10
    passages[0]["problems"][1]["question_plus"] = ["보기 첫째", "보기 둘째"]
    passages[2]["problems"][4]["no_paragraph"] = 1
    path = write_json(tmp_path / "2019_11_KICE.json", passages)
    items = load_items(path)

    assert len(items) == 45
    assert [item.id for item in items[:3]] == ["2019_11_KICE-1", "2019_11_KICE-2", "2019_11_KICE-3"]
    assert [item.extra["question_number"] for item in items] == list(range(1, 46))
    subjects = [item.subject for item in items]
    assert subjects == ["화법과작문"] * 10 + ["문법"] * 5 + ["독서·문학"] * 30
    assert items[1].question_plus == "보기 첫째\n보기 둘째"
    assert items[14].paragraph == "" and items[14].extra["no_paragraph"] is True
    assert items[13].paragraph == "지문 3. 다음 글을 읽고 물음에 답하시오."
    assert items[6].extra["score"] == 3 and items[0].extra["score"] == 2
    assert items[4].extra["passage_id"] == "KICE_2"
    assert items[0].question == "질문 1번으로 가장 적절한 것은?"
    assert [item.answer for item in items[:5]] == [2, 3, 4, 5, 1]


def test_kice_new_layout_and_passage_type(tmp_path):
    passages = kice_passages([17, 17, 11])
    passages[0]["type"] = 0
    items = load_items(write_json(tmp_path / "2024_11_KICE.json", passages), "kice")
    counts = {subject: sum(item.subject == subject for item in items) for subject in {i.subject for i in items}}
    assert counts == {"독서": 17, "문학": 17, "화법과작문": 11}
    assert items[16].subject == "독서" and items[17].subject == "문학" and items[34].subject == "화법과작문"
    assert items[0].extra["passage_type"] == 0


def test_kice_passage_ranges_parsed_from_real_ids():
    assert passage_range("2015_11_KICE_A_9-10") == (9, 10)
    assert passage_range("2019_11_KICE_43-45") == (43, 45)
    assert passage_range("KICE_2") is None
    assert passage_range("2019_11_KICE") is None
    assert passage_range("KICE_5-3") is None
    assert passage_range(7) is None


def test_kice_ranged_ids_with_appended_questions_load(tmp_path):
    """Like 2019_11_KICE.json: passage 8-10 holds 8..11 and 12-13 holds 12..15 (stand-alone ones appended)."""
    path = write_json(tmp_path / "2019_11_KICE.json", exam_passages(2019, [3, 4, 3, 2, 30], extras={2: 1, 3: 2}))
    items = load_items(path)
    assert [item.extra["question_number"] for item in items] == list(range(1, 46))
    assert items[10].extra["passage_id"] == "2019_11_KICE_8-10"
    assert [item.subject for item in items[9:16]] == ["화법과작문"] + ["문법"] * 5 + ["독서·문학"]


def test_kice_missing_question_is_caught_before_it_shifts_subjects(tmp_path):
    """The finding: with question 17 gone, question 18 (문학) was labelled 독서."""
    passages = exam_passages(2023, [17, 4, 13, 11])
    complete = load_items(write_json(tmp_path / "2023_11_KICE.json", passages))
    assert complete[17].subject == "문학" and complete[17].extra["passage_id"] == "2023_11_KICE_18-21"
    del passages[1]["problems"][0]  # question 18
    path = write_json(tmp_path / "2023_11_KICE.json", passages)
    with pytest.raises(InputError) as info:
        load_items(path)
    assert (info.value.row, info.value.field) == (18, "problems")
    assert "passage 2 (2023_11_KICE_18-21) holds 3 questions but its id says 18-21" in info.value.message


def test_kice_rules_table():
    assert exam_year_from_name("2019_11_KICE.json") == 2019
    assert exam_year_from_name("2022_11_KICE_.json") == 2022
    assert exam_year_from_name("KICE.json") is None
    assert exam_year_from_name("x20191.json") is None
    assert [kice_subject(2015, n) for n in (1, 10, 11, 15, 16, 45)] == [
        "화법과작문",
        "화법과작문",
        "문법",
        "문법",
        "독서·문학",
        "독서·문학",
    ]
    assert [kice_subject(2021, n) for n in (10, 11)] == ["화법과작문", "문법"]
    assert [kice_subject(2022, n) for n in (1, 17, 18, 34, 35, 45)] == [
        "독서",
        "독서",
        "문학",
        "문학",
        "화법과작문",
        "화법과작문",
    ]
    assert kice_subject(2030, 20) == "문학"
    assert kice_subject(2014, 1) is None
    assert kice_subject(2019, 46) is None
    for layout in KICE_LAYOUTS:  # ranges tile 1..45 with no gap or overlap
        numbers = [n for r in layout.ranges for n in range(r.first, r.last + 1)]
        assert numbers == list(range(1, 46))


def test_kice_without_year_needs_a_subject_map(tmp_path):
    path = write_json(tmp_path / "mock_exam.json", kice_passages([2, 2]))
    with pytest.raises(InputError) as info:
        load_items(path, "kice")
    assert info.value.field == "subject" and "mock_exam.json" in str(info.value)
    items = load_items(path, "kice", {"mock_exam-1": "문학"})
    assert [item.subject for item in items] == ["문학", "unknown", "unknown", "unknown"]


# --------------------------------------------------------------------------- kmmlu and jsonl


def test_kmmlu(tmp_path):
    rows = [
        ["다음 중 수도는?", 2, "부산", "서울", "대구", "광주", "Geography", 0.5],
        ["1+1은?", "4", "1", "3", "5", "2", "Math", ""],
    ]
    path = write_csv(tmp_path / "kmmlu_geo.csv", KMMLU_HEADER, rows)
    assert detect_format(path) == "kmmlu"
    items = load_items(path)
    assert [item.id for item in items] == ["kmmlu_geo-1", "kmmlu_geo-2"]
    assert [item.answer for item in items] == [2, 4]
    assert items[0].choices == ("부산", "서울", "대구", "광주")
    assert [item.subject for item in items] == ["Geography", "Math"]
    assert items[0].paragraph == ""
    assert items[0].extra == {"Human Accuracy": "0.5"}


def test_kmmlu_optional_e_column_blank_means_four_choices(tmp_path):
    header = ["question", "answer", "A", "B", "C", "D", "E", "Category"]
    rows = [
        ["다섯 개?", 5, "가", "나", "다", "라", "마", "Law"],
        ["네 개?", 4, "가", "나", "다", "라", "", "Law"],
        ["공백만?", 1, "가", "나", "다", "라", " \u200b", "Law"],
    ]
    items = load_items(write_csv(tmp_path / "kmmlu_e.csv", header, rows))
    assert [item.n_choices for item in items] == [5, 4, 4]
    assert items[1].choices == ("가", "나", "다", "라")
    assert [item.answer for item in items] == [5, 4, 1]
    assert "E" not in items[1].extra


def test_answers_that_mean_a_number_still_load(tmp_path):
    rows = [canonical_row("1", answer="3.0"), canonical_row("2", answer=" 2 "), canonical_row("3", answer=None)]
    rows.append(canonical_row("4", answer=""))
    items = load_items(write_jsonl_rows(tmp_path / "a.jsonl", rows))
    assert [item.answer for item in items] == [3, 2, None, None]


@pytest.mark.parametrize("name", ["b.jsonl", "2019_11_KICE.json", "k.csv"])
def test_utf8_byte_order_mark_just_works(tmp_path, name):
    plain = tmp_path / "plain" / name
    plain.parent.mkdir()
    if name.endswith(".jsonl"):
        write_jsonl_rows(plain, [canonical_row("1"), canonical_row("2")])
    elif name.endswith(".json"):
        write_json(plain, kice_passages([2, 1]))
    else:
        write_csv(plain, KMMLU_HEADER, [["q?", 1, "a", "b", "c", "d", "Law", ""]])
    with_bom = tmp_path / name
    with_bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert [item.to_dict() for item in load_items(with_bom)] == [item.to_dict() for item in load_items(plain)]


def test_json_nesting_limit_counts_brackets_outside_strings_only():
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_nesting_fault(at_limit) is None
    assert json_nesting_fault("[" + at_limit + "]") == (1, None)
    assert json_nesting_fault('["' + "[" * 500 + '"]') is None  # inside a string
    assert json_nesting_fault("['" + "{" * 500 + "']") is None  # inside a Python string
    text = '{"a": 1,\n "meta": {"deep": ' + "[" * 200 + "]" * 200 + "}}"
    assert json_nesting_fault(text) == (2, "deep")


def test_nesting_up_to_the_limit_loads(tmp_path):
    row = canonical_row("1", meta=json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)))
    item = load_items(write_jsonl_rows(tmp_path / "n.jsonl", [row]))[0]
    assert item.extra["meta"] == row["meta"]


def test_jsonl_round_trip_keeps_items_and_digest(tmp_path):
    passages = kice_passages([3, 2])
    passages[0]["problems"][0]["question_plus"] = "보기"
    source = load_items(write_json(tmp_path / "2017_11_KICE.json", passages))
    out = write_items_jsonl(tmp_path / "out" / "items.jsonl", source)
    again = load_items(out)
    assert detect_format(out) == "jsonl"
    assert again == source
    assert [item.extra for item in again] == [item.extra for item in source]
    assert items_digest(again) == items_digest(source)
    assert sorted(os.listdir(out.parent)) == ["items.jsonl"]  # no temp file left


def test_jsonl_canonical_rows_and_defaults(tmp_path):
    rows = [canonical_row("j-1"), canonical_row("j-2", answer=None, subject=None, source=None, score=3)]
    items = load_items(write_jsonl_rows(tmp_path / "c.jsonl", rows))
    assert items[0] == MCQItem(
        id="j-1",
        paragraph="",
        question="다음 중 옳은 것은?",
        choices=("가", "나", "다", "라"),
        answer=2,
        question_plus="",
        subject="국어",
        source="hand",
    )
    assert (items[1].answer, items[1].subject, items[1].source) == (None, "unknown", "c.jsonl")
    assert items[1].extra == {"score": 3}


def test_write_items_jsonl_leaves_old_file_when_interrupted(tmp_path):
    target = tmp_path / "items.jsonl"
    target.write_text("old\n", encoding="utf-8")
    item = MCQItem(id="1", paragraph="", question="q", choices=("a", "b"))

    def broken():
        yield item
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_items_jsonl(target, broken())
    assert target.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(tmp_path) == ["items.jsonl"]


# --------------------------------------------------------------------------- detection


def test_auto_detection(tmp_path):
    comp = write_csv(tmp_path / "a.csv", COMPETITION_HEADER, [competition_row("1")])
    kice = write_json(tmp_path / "2016_11_KICE.json", kice_passages([1]))
    jsonl = write_jsonl_rows(tmp_path / "a.jsonl", [canonical_row("1")])
    assert [detect_format(p) for p in (comp, kice, jsonl)] == ["competition", "kice", "jsonl"]
    for path in (comp, kice, jsonl):
        assert len(load_items(path)) == 1
    other = write_csv(tmp_path / "b.csv", ["x", "y"], [["1", "2"]])
    with pytest.raises(InputError, match="pass --format"):
        load_items(other)
    text = tmp_path / "a.txt"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match="pass --format"):
        load_items(text)


def test_explicit_format_overrides_extension(tmp_path):
    path = write_csv(tmp_path / "data.txt", COMPETITION_HEADER, [competition_row("1")])
    assert load_items(path, "competition")[0].id == "1"


# --------------------------------------------------------------------------- subject maps


def _categorised(tmp_path):
    rows = [
        competition_row("c-1", category="klue-mrc-경제"),
        competition_row("c-2", category="klue-mrc-경제"),
        competition_row("c-3", category="kmmlu-한국사"),
    ]
    return write_csv(tmp_path / "cat.csv", COMPETITION_HEADER, rows)


@pytest.mark.parametrize("kind", ["csv", "json", "yaml", "mapping"])
def test_subject_map_ids_win_over_categories(tmp_path, kind):
    entries = {"klue-mrc-경제": "경제", "c-2": "특별", "kmmlu-한국사": "한국사", "unused": "x"}
    if kind == "csv":
        lines = ["key,subject"] + [f"{k},{v}" for k, v in entries.items()]
        subject_map = tmp_path / "map.csv"
        subject_map.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif kind == "json":
        subject_map = write_json(tmp_path / "map.json", entries)
    elif kind == "yaml":
        subject_map = tmp_path / "map.yaml"
        subject_map.write_text("".join(f"{k}: {v}\n" for k, v in entries.items()), encoding="utf-8")
    else:
        subject_map = entries
    items = load_items(_categorised(tmp_path), subject_map=subject_map)
    assert [item.subject for item in items] == ["경제", "특별", "한국사"]


def test_subject_map_matching_nothing_is_an_error(tmp_path):
    data = _categorised(tmp_path)
    path = tmp_path / "map.json"
    path.write_text(json.dumps({f"other-{i}": "x" for i in range(7)}), encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_items(data, subject_map=path)
    assert info.value.path == str(path) and (info.value.row, info.value.field) == (1, "key")
    message = info.value.message
    assert "7 keys" in message and "'other-0'" in message and "and 2 more" in message
    assert "'klue-mrc-경제', 'kmmlu-한국사'" in message and "'c-1'" in message

    with pytest.raises(InputError) as info:
        load_items(data, subject_map={"other": "x"})
    assert info.value.path == str(data) and info.value.field == "subject_map"

    items = load_items(data, subject_map=path, subject_map_must_match=False)
    assert [item.subject for item in items] == ["klue-mrc-경제", "klue-mrc-경제", "kmmlu-한국사"]


def test_subject_map_on_kice_relabels_rule_subjects(tmp_path):
    path = write_json(tmp_path / "2018_11_KICE.json", kice_passages([10, 5, 30]))
    items = load_items(path, subject_map={"독서·문학": "독서문학", "2018_11_KICE-45": "문학"})
    assert items[15].subject == "독서문학" and items[44].subject == "문학" and items[0].subject == "화법과작문"


def test_subject_map_csv_in_cp949(tmp_path):
    path = tmp_path / "map.csv"
    path.write_bytes("key,subject\nkmmlu-한국사,역사\n".encode("cp949"))
    assert load_subject_map(path) == {"kmmlu-한국사": "역사"}


@pytest.mark.parametrize(
    "name, content, row, field",
    [
        ("map.csv", "id,label\na,b\n", 1, "key"),
        ("map.csv", "key,subject\na,b\nc\n", 2, "subject"),
        ("map.csv", "key,subject\na,b\na,c\n", 2, "key"),
        ("map.csv", "key,subject\na,\n", 1, "subject"),
        ("map.csv", "key,subject\n", 1, "key"),
        ("map.json", '{"a": "b",', 1, None),
        ("map.json", '["a", "b"]', 1, "key"),
        ("map.json", '{"a": {"b": 1}}', 1, "a"),
        ("map.yaml", "a: [b\n", 2, None),
        ("map.json", "[" * 1000 + "]" * 1000, 1, None),
        ("map.yaml", '"x": ' + "[" * 1000 + "]" * 1000, 1, "x"),
        ("map.txt", "a,b", None, "subject_map"),
    ],
)
def test_bad_subject_map_names_the_map_file(tmp_path, name, content, row, field):
    data = _categorised(tmp_path)
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_items(data, subject_map=path)
    assert info.value.path == str(path)
    assert (info.value.row, info.value.field) == (row, field)


# --------------------------------------------------------------------------- digest


def test_items_digest_is_stable_and_sensitive(tmp_path):
    path = write_csv(tmp_path / "d.csv", COMPETITION_HEADER, _mixed_competition_rows(False))
    first = load_items(path)
    digest = items_digest(first)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert items_digest(load_items(path)) == digest
    assert items_digest(list(first)) == items_digest(iter(first))

    changed_choice = _mixed_competition_rows(False)
    changed_choice[0][2] = changed_choice[0][2].replace("하나", "하냐")
    other = load_items(write_csv(tmp_path / "d2.csv", COMPETITION_HEADER, changed_choice))
    assert items_digest(other) != digest

    relabelled = load_items(path, subject_map={"c-1": "다른 과목"})
    assert items_digest(relabelled) != digest
    assert items_digest(list(reversed(first))) != digest
    assert items_digest([]) != digest
