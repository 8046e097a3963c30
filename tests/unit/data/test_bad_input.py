"""A corpus of malformed files: each must give one error naming file, row and field, both from
`load_items` and from the command line, and leave nothing behind.

Rows: CSV rows count data records (row 1 of most CSV cases is a record whose quoted paragraph
spans three lines, so a line-counting loader would report the wrong row); kice rows are
question numbers (a JSON syntax error gives its line); jsonl rows are line numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from data_helpers import (
    COMPETITION_HEADER,
    KMMLU_HEADER,
    canonical_row,
    competition_row,
    csv_text,
    kice_passages,
    problems_json,
)

from distill.data.loaders import load_items
from distill.errors import InputError


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, bytes]
    dataset: str
    row: int | None
    field: str | None
    fmt: str = "auto"
    subject_map: str | None = None
    blamed: str | None = None  # the file the error must name (default: the dataset)
    message: str = ""  # a fragment the message must contain
    extra_args: tuple[str, ...] = field(default_factory=tuple)


MULTILINE = "첫 줄\n둘째 줄\n셋째 줄"


def comp(rows, header=COMPETITION_HEADER, encoding="utf-8") -> bytes:
    return csv_text(header, [competition_row("ok-1", paragraph=MULTILINE)] + rows).encode(encoding)


def kmmlu(rows, header=KMMLU_HEADER) -> bytes:
    good = ["첫 문제?", 1, "가", "나", "다", "라", "Law", ""]
    return csv_text(header, [good] + rows).encode("utf-8")


def kice(mutate, sizes=(3, 2)) -> bytes:
    passages = kice_passages(list(sizes))
    mutate(passages)
    return json.dumps(passages, ensure_ascii=False, indent=1).encode("utf-8")


def jsonl(rows) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode()


def _set(passage_index, problem_index, key, value):
    def mutate(passages):
        passages[passage_index]["problems"][problem_index][key] = value

    return mutate


def _wrong_encoding() -> bytes:
    good = comp([competition_row("c-2", paragraph="둘째 지문")], encoding="cp949")
    return good.replace("둘째 지문".encode("cp949"), "둘째".encode("cp949") + b" \xff\xfe ")


BAD_KICE_JSON = b'[\n {"id": "p1",\n  "problems": [\n   {"question": "q?" "choices": ["a", "b"]}\n  ]\n }\n]\n'

CASES = [
    # --- competition CSV
    Case(
        "missing column",
        {"c.csv": csv_text(["id", "paragraph", "question_plus"], [["1", "p", ""]]).encode()},
        "c.csv",
        1,
        "problems",
        fmt="competition",
        message="missing column",
    ),
    Case(
        "answer out of range",
        {"c.csv": comp([competition_row("c-2", answer=5)])},
        "c.csv",
        2,
        "answer",
        message="out of range 1..4",
    ),
    Case("answer not a number", {"c.csv": comp([competition_row("c-2", answer="셋")])}, "c.csv", 2, "answer"),
    Case(
        "empty choice",
        {"c.csv": comp([competition_row("c-2", choices=["a", "  ", "c", "d"])])},
        "c.csv",
        2,
        "choices",
        message="choice 2 is empty",
    ),
    Case(
        "invisible-only choice",
        {"c.csv": comp([competition_row("c-2", choices=["a", "b", "\u200b\u00a0", "d"])])},
        "c.csv",
        2,
        "choices",
        message="choice 3 is empty",
    ),
    Case(
        "duplicate choices",
        {"c.csv": comp([competition_row("c-2", choices=["같다", "b", "같다 ", "d"])])},
        "c.csv",
        2,
        "choices",
        message="same text",
    ),
    Case(
        "too few choices",
        {"c.csv": comp([competition_row("c-2", choices=["하나뿐"])])},
        "c.csv",
        2,
        "choices",
        message="1 choices",
    ),
    Case(
        "duplicate ids",
        {"c.csv": comp([competition_row("c-2"), competition_row("ok-1")])},
        "c.csv",
        3,
        "id",
        message="duplicate id",
    ),
    Case("empty id", {"c.csv": comp([competition_row(" ")])}, "c.csv", 2, "id"),
    Case(
        "unparseable problems",
        {"c.csv": comp([["c-2", "p", "{'question': 'q', 'choices': [", "", ""]])},
        "c.csv",
        2,
        "problems",
        message="neither JSON",
    ),
    Case("problems not an object", {"c.csv": comp([["c-2", "p", "[1, 2, 3]", "", ""]])}, "c.csv", 2, "problems"),
    Case(
        "problems without choices",
        {"c.csv": comp([["c-2", "p", '{"question": "q?", "answer": 1}', "", ""]])},
        "c.csv",
        2,
        "choices",
    ),
    Case(
        "empty question",
        {"c.csv": comp([competition_row("c-2", question="  \u3000 ")])},
        "c.csv",
        2,
        "question",
        message="question is empty",
    ),
    Case(
        "choices not a list",
        {"c.csv": comp([["c-2", "p", problems_json("q?", "가, 나, 다", 1), "", ""]])},
        "c.csv",
        2,
        "choices",
        message="must be a list",
    ),
    Case(
        "short row",
        {"c.csv": comp([["c-2", "p", problems_json("q?", ["a", "b"], 1)]])},
        "c.csv",
        2,
        "question_plus",
        message="header has 5 columns",
    ),
    Case(
        "unterminated quote",
        {"c.csv": comp([]) + b'c-2,"never closed,{},,\r\n'},
        "c.csv",
        2,
        None,
        message="CSV syntax error",
    ),
    Case("wrong encoding", {"c.csv": _wrong_encoding()}, "c.csv", 2, "paragraph", message="not UTF-8 or CP949"),
    Case("empty file", {"c.csv": b""}, "c.csv", 1, None, fmt="competition", message="empty"),
    Case(
        "header only", {"c.csv": csv_text(COMPETITION_HEADER, []).encode()}, "c.csv", 1, None, message="no data rows"
    ),
    # --- kmmlu CSV
    Case(
        "kmmlu missing column",
        {
            "k.csv": csv_text(
                ["question", "answer", "A", "B", "C", "Category"], [["q?", 1, "a", "b", "c", "Law"]]
            ).encode()
        },
        "k.csv",
        1,
        "D",
        fmt="kmmlu",
        message="missing column",
    ),
    Case(
        "kmmlu answer out of range", {"k.csv": kmmlu([["q?", 0, "a", "b", "c", "d", "Law", ""]])}, "k.csv", 2, "answer"
    ),
    Case(
        "kmmlu answer letter",
        {"k.csv": kmmlu([["q?", "B", "a", "b", "c", "d", "Law", ""]])},
        "k.csv",
        2,
        "answer",
        message="not a number",
    ),
    Case("kmmlu empty choice", {"k.csv": kmmlu([["q?", 1, "a", "b", "", "d", "Law", ""]])}, "k.csv", 2, "choices"),
    Case("kmmlu empty question", {"k.csv": kmmlu([["", 1, "a", "b", "c", "d", "Law", ""]])}, "k.csv", 2, "question"),
    # --- kice JSON
    Case(
        "kice answer out of range",
        {"2019_11_KICE.json": kice(_set(0, 2, "answer", 6))},
        "2019_11_KICE.json",
        3,
        "answer",
    ),
    Case(
        "kice empty question",
        {"2019_11_KICE.json": kice(_set(1, 0, "question", " "))},
        "2019_11_KICE.json",
        4,
        "question",
    ),
    Case(
        "kice choices not a list",
        {"2019_11_KICE.json": kice(_set(1, 1, "choices", {"1": "a", "2": "b"}))},
        "2019_11_KICE.json",
        5,
        "choices",
    ),
    Case(
        "kice passage without problems",
        {"2019_11_KICE.json": kice(lambda ps: ps[1].pop("problems"))},
        "2019_11_KICE.json",
        4,
        "problems",
        message="passage 2",
    ),
    Case(
        "kice question past the layout",
        {"2019_11_KICE.json": kice(lambda ps: None, sizes=(40, 6))},
        "2019_11_KICE.json",
        46,
        "problems",
        message="45 questions",
    ),
    Case(
        "kice bad JSON",
        {"2019_11_KICE.json": BAD_KICE_JSON},
        "2019_11_KICE.json",
        4,
        None,
        message="not valid JSON (Expecting ',' delimiter, line 4",
    ),
    # --- jsonl
    Case(
        "jsonl too many choices",
        {"j.jsonl": jsonl([canonical_row("1"), canonical_row("2", choices=[str(i) for i in range(11)])])},
        "j.jsonl",
        2,
        "choices",
        message="11 choices",
    ),
    Case(
        "jsonl duplicate ids",
        {"j.jsonl": jsonl([canonical_row("1"), canonical_row("2"), canonical_row("1")])},
        "j.jsonl",
        3,
        "id",
        message="first seen at row 1",
    ),
    Case(
        "jsonl bad JSON",
        {"j.jsonl": jsonl([canonical_row("1"), '{"id": "2", "question": '])},
        "j.jsonl",
        2,
        None,
        message="not valid JSON",
    ),
    Case("jsonl missing question", {"j.jsonl": jsonl([{"id": "1", "choices": ["a", "b"]}])}, "j.jsonl", 1, "question"),
    Case(
        "jsonl question_plus not text",
        {"j.jsonl": jsonl([canonical_row("1", question_plus=["a"])])},
        "j.jsonl",
        1,
        "question_plus",
    ),
    Case(
        "jsonl not UTF-8",
        {"j.jsonl": jsonl([canonical_row("1")]) + b'{"id": "2", "question": "q\xff?"}\n'},
        "j.jsonl",
        2,
        "question",
        message="not UTF-8",
    ),
    # --- whole-file faults
    Case("unknown extension", {"d.xml": b"<items/>"}, "d.xml", None, "format", message="pass --format"),
    Case(
        "unknown format name",
        {"c.csv": comp([])},
        "c.csv",
        None,
        "format",
        fmt="parquet",
        message="unknown format 'parquet'",
    ),
    Case(
        "bad subject map",
        {"c.csv": comp([]), "map.csv": b"key,subject\nok-1\n"},
        "c.csv",
        1,
        "subject",
        subject_map="map.csv",
        blamed="map.csv",
    ),
]


def _materialise(case: Case, folder: Path) -> tuple[Path, Path | None, Path]:
    folder.mkdir()
    for name, content in case.files.items():
        (folder / name).write_bytes(content)
    blamed = folder / (case.blamed or case.dataset)
    subject_map = folder / case.subject_map if case.subject_map else None
    return folder / case.dataset, subject_map, blamed


def _assert_names_place(text: str, case: Case, blamed: Path) -> None:
    assert str(blamed) in text
    if case.row is not None:
        assert f", row {case.row}" in text
    else:
        assert ", row " not in text
    if case.field is not None:
        assert f"field '{case.field}'" in text
    if case.message:
        assert case.message in text


def test_corpus_is_big_and_varied():
    with_row_and_field = [case for case in CASES if case.row is not None and case.field is not None]
    assert len({case.name for case in CASES}) == len(CASES)
    assert len(with_row_and_field) >= 15
    extensions = {Path(case.dataset).suffix for case in CASES}
    assert {".csv", ".json", ".jsonl"} <= extensions


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_load_items_names_file_row_field(tmp_path, case):
    dataset, subject_map, blamed = _materialise(case, tmp_path / "in")
    with pytest.raises(InputError) as info:
        load_items(dataset, case.fmt, subject_map)
    error = info.value
    assert error.path == str(blamed)
    assert (error.row, error.field) == (case.row, case.field)
    _assert_names_place(str(error), case, blamed)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_cli_prints_one_line_and_leaves_nothing(tmp_path, case):
    dataset, subject_map, blamed = _materialise(case, tmp_path / "in")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [
        sys.executable,
        "-m",
        "distill.data",
        "convert",
        "--dataset",
        str(dataset),
        "--format",
        case.fmt,
        "--output",
        str(out_dir / "items.jsonl"),
    ]
    if subject_map is not None:
        args += ["--subject_map", str(subject_map)]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    _assert_names_place(lines[0], case, blamed)
    assert list(out_dir.iterdir()) == []  # no output, no temp file
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted(case.files)
