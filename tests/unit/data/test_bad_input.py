"""A corpus of malformed files: each must give one error naming file, row and field, both from
`load_items` and from the command line, and leave nothing behind.

Rows: CSV rows count data records (row 1 of most CSV cases is a record whose quoted paragraph
spans three lines, so a line-counting loader would report the wrong row); kice rows are
question numbers (a JSON syntax error or too-deep nesting gives its line); jsonl rows are line
numbers; a file that is not text at all (UTF-16, a workbook) is blamed at row 1.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from data_helpers import (
    COMPETITION_HEADER,
    KMMLU_HEADER,
    canonical_row,
    competition_row,
    csv_text,
    exam_passages,
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


DEEP = "[" * 1000 + "]" * 1000  # Python's JSON parser gives up near 1000 levels: a RecursionError


def _deep_kice_choices() -> tuple[bytes, int]:
    """A KICE file whose 5th question has a deeply nested first choice, and that choice's line."""
    text = kice(lambda ps: None).decode()
    marker = '"5번 선택지 1"'
    line = text[: text.index(marker)].count("\n") + 1
    return text.replace(marker, DEEP).encode(), line


DEEP_KICE, DEEP_KICE_LINE = _deep_kice_choices()


def _drop(passage_index, problem_index):
    def mutate(passages):
        del passages[passage_index]["problems"][problem_index]

    return mutate


def exam(year, sizes, mutate, extras=None) -> bytes:
    passages = exam_passages(year, sizes, extras)
    mutate(passages)
    return json.dumps(passages, ensure_ascii=False, indent=1).encode("utf-8")


def _xlsx() -> bytes:
    """The first entries of a real .xlsx: a ZIP with [Content_Types].xml and xl/workbook.xml."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook/>')
    return buffer.getvalue()


def delimited(sep: str) -> bytes:
    rows = [COMPETITION_HEADER, competition_row("d-1", paragraph="쉼표, 들어간 지문"), competition_row("d-2")]
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=sep, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


KMMLU_WITH_E = ["question", "answer", "A", "B", "C", "D", "E", "Category"]

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
    # --- deep nesting: a RecursionError traceback before, in every JSON-reading path
    Case(
        "kice file nested too deep",
        {"2019_11_KICE.json": DEEP.encode()},
        "2019_11_KICE.json",
        1,
        None,
        message="nested more than 100 levels",
    ),
    Case(
        "kice choice nested too deep",
        {"2019_11_KICE.json": DEEP_KICE},
        "2019_11_KICE.json",
        DEEP_KICE_LINE,
        "choices",
        message="nested more than 100 levels",
    ),
    Case(
        "jsonl line nested too deep",
        {"j.jsonl": jsonl([canonical_row("1"), '{"id": "2", "question": "q?", "choices": ' + DEEP + "}"])},
        "j.jsonl",
        2,
        "choices",
        message="nested more than 100 levels",
    ),
    Case(
        "problems nested too deep",
        {"c.csv": comp([["c-2", "p", DEEP, "", ""]])},
        "c.csv",
        2,
        "problems",
        message="nested more than 100 levels",
    ),
    Case(
        "problems literal nested too deep",
        {"c.csv": comp([["c-2", "p", "{'question': 'q?', 'choices': " + "(" * 300 + ")" * 300 + "}", "", ""]])},
        "c.csv",
        2,
        "choices",
        message="nested more than 100 levels",
    ),
    # --- a KICE question missing: every later question got the wrong subject before
    Case(
        "kice question missing at a passage end",
        {"2023_11_KICE.json": exam(2023, [17, 4, 13, 11], _drop(0, 16))},
        "2023_11_KICE.json",
        1,
        "problems",
        message="passage 1 (2023_11_KICE_1-17) holds 16 questions but its id says 1-17",
    ),
    Case(
        "kice question missing inside a passage",
        {"2023_11_KICE.json": exam(2023, [17, 4, 13, 11], _drop(2, 5))},
        "2023_11_KICE.json",
        22,
        "problems",
        message="passage 3 (2023_11_KICE_22-34) holds 12 questions",
    ),
    Case(
        "kice stand-alone question missing",
        {"2019_11_KICE.json": exam(2019, [3, 4, 3, 2, 30], _drop(2, 3), extras={2: 1, 3: 2})},
        "2019_11_KICE.json",
        11,
        "problems",
        message="passage 4 (2019_11_KICE_12-13) should start at question 12",
    ),
    # --- NaN answers: "no answer" before, so evaluate reported "answer is missing" much later
    Case(
        "jsonl NaN answer",
        {"j.jsonl": jsonl([canonical_row("1"), canonical_row("2", answer=float("nan"))])},
        "j.jsonl",
        2,
        "answer",
        message="answer nan is not a number",
    ),
    Case(
        "problems answer text nan",
        {"c.csv": comp([competition_row("c-2", answer="nan")])},
        "c.csv",
        2,
        "answer",
        message="answer 'nan' is not a number",
    ),
    Case(
        "problems answer JSON NaN",
        {"c.csv": comp([["c-2", "p", problems_json("q?", ["a", "b"], float("nan")), "", ""]])},
        "c.csv",
        2,
        "answer",
        message="is not a number",
    ),
    Case(
        "problems answer infinity",
        {"c.csv": comp([competition_row("c-2", answer="inf")])},
        "c.csv",
        2,
        "answer",
        message="answer 'inf' is not a number",
    ),
    Case(
        "problems answer fraction text",
        {"c.csv": comp([competition_row("c-2", answer="2.5")])},
        "c.csv",
        2,
        "answer",
        message="not a whole number",
    ),
    Case(
        "kmmlu answer text none",
        {"k.csv": kmmlu([["q?", "None", "a", "b", "c", "d", "Law", ""]])},
        "k.csv",
        2,
        "answer",
        message="answer 'None' is not a number",
    ),
    # --- ids, subject maps, optional KMMLU columns
    Case(
        "NUL inside an id",
        {"c.csv": comp([competition_row("c\x002")])},
        "c.csv",
        2,
        "id",
        message="control character U+0000 (NUL) at position 2",
    ),
    Case(
        "jsonl NUL inside an id",
        {"j.jsonl": jsonl([canonical_row("1"), canonical_row("2\x00")])},
        "j.jsonl",
        2,
        "id",
        message="U+0000",
    ),
    Case(
        "subject map matching nothing",
        {"c.csv": comp([]), "map.csv": "key,subject\nc-9,역사\n경제학,경제\n".encode()},
        "c.csv",
        1,
        "key",
        subject_map="map.csv",
        blamed="map.csv",
        message="keys 'c-9', '경제학'; the file's subjects are '한국사'",
    ),
    Case(
        "kmmlu blank E with answer 5",
        {
            "k.csv": csv_text(
                KMMLU_WITH_E, [["q1?", 5, "a", "b", "c", "d", "e", "Law"], ["q2?", 5, "a", "b", "c", "d", "", "Law"]]
            ).encode()
        },
        "k.csv",
        2,
        "answer",
        message="out of range 1..4",
    ),
    Case(
        "kmmlu blank E before a filled F",
        {
            "k.csv": csv_text(
                KMMLU_WITH_E[:7] + ["F"],
                [["q?", 1, "a", "b", "c", "d", "e", "f"], ["q?", 1, "a", "b", "c", "d", "", "f"]],
            ).encode()
        },
        "k.csv",
        2,
        "choices",
        message="choice 5 is empty",
    ),
    # --- files that are not UTF-8/CP949 CSV or JSON at all
    Case(
        "UTF-16 LE csv",
        {"c.csv": b"\xff\xfe" + comp([]).decode().encode("utf-16-le")},
        "c.csv",
        1,
        None,
        message="UTF-16 LE text (byte-order mark FF FE)",
    ),
    Case(
        "UTF-16 BE jsonl",
        {"j.jsonl": b"\xfe\xff" + jsonl([canonical_row("1")]).decode().encode("utf-16-be")},
        "j.jsonl",
        1,
        None,
        message="UTF-16 BE text",
    ),
    Case(
        "UTF-16 kice",
        {"2019_11_KICE.json": b"\xff\xfe" + kice(lambda ps: None).decode().encode("utf-16-le")},
        "2019_11_KICE.json",
        1,
        None,
        message="UTF-16 LE text",
    ),
    Case(
        "UTF-16 without a byte-order mark",
        {"k.csv": kmmlu([]).decode().encode("utf-16-le")},
        "k.csv",
        1,
        None,
        fmt="kmmlu",
        message="UTF-16 LE text without a byte-order mark",
    ),
    Case(
        "UTF-16 subject map",
        {"c.csv": comp([]), "map.csv": b"\xff\xfe" + "key,subject\nok-1,역사\n".encode("utf-16-le")},
        "c.csv",
        1,
        None,
        subject_map="map.csv",
        blamed="map.csv",
        message="UTF-16 LE",
    ),
    Case("xlsx saved as csv", {"c.csv": _xlsx()}, "c.csv", 1, None, message="an Excel workbook (.xlsx)"),
    Case(
        "old xls saved as csv",
        {"k.csv": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64)},
        "k.csv",
        1,
        None,
        message="old Excel workbook (.xls)",
    ),
    Case(
        "semicolon-delimited csv",
        {"c.csv": delimited(";")},
        "c.csv",
        1,
        None,
        message="looks semicolon-delimited",
    ),
    Case("tab-delimited csv", {"c.csv": delimited("\t")}, "c.csv", 1, None, message="looks tab-delimited"),
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
    assert len(CASES) >= 40
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


CHECK_CASES = [
    "jsonl NaN answer",
    "problems answer text nan",
    "kice file nested too deep",
    "kice stand-alone question missing",
]


@pytest.mark.parametrize("name", CHECK_CASES)
def test_data_check_command_fails_too(tmp_path, name):
    """`python -m distill data check` said "0 with answer" and exited 0 for a NaN answer."""
    case = next(case for case in CASES if case.name == name)
    dataset, _, blamed = _materialise(case, tmp_path / "in")
    args = [sys.executable, "-m", "distill", "data", "check", "--dataset", str(dataset)]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    _assert_names_place(result.stderr.strip(), case, blamed)
