"""Format loaders: every known MCQ file format into canonical `MCQItem`s, or a clear error.

Formats (docs/design.md, "Data flow and contracts"):
- `competition`: CSV `id, paragraph, problems[, question_plus][, category]`; `problems` is JSON
  or a Python dict literal (`ast.literal_eval`, never `eval`) with `question, choices, answer`
  and maybe `question_plus`. UTF-8 (with or without BOM) or CP949.
- `kice`: JSON list of passages `{id, paragraph, type?, problems: [{question, choices, answer,
  score, question_plus?, no_paragraph?}]}`; questions are numbered 1.. in file order across
  passages, ids are `<file stem>-<number>`, subjects come from the exam layout (subjects.py).
  Counting makes one missing question shift every later subject, so a passage id ending in a
  range (`2019_11_KICE_18-21`, as in the real files) is checked against the questions present.
- `kmmlu`: CSV `question, A, B, C, D[, E, ...], answer (1-based)[, Category]`; a blank optional
  column (E, ...) at the end of a row means fewer choices; ids `<file stem>-<row>`.
- `jsonl`: the canonical form itself, one object per line.

An answer is a whole number, or absent/null/empty for "no gold answer"; NaN, infinity and the
words nan/none/null are errors, not "no answer". A control character inside an id is an error
(normalising would change the key silently). A subject map none of whose keys is an item id or
subject of the file is an error. A file that is not text (UTF-16, xlsx, gzip, ...) or a CSV with
another delimiter is named for what it appears to be. JSON nested deeper than
`distill.io.MAX_JSON_DEPTH` is an error, not a RecursionError.

Where an error points:
- CSV: `row` is the 1-based data record (the header and blank lines are not counted; a
  quoted cell may span several lines), `field` the column or the key inside `problems`.
  A fault in the header (a missing column) is reported at row 1, the first row that lacks it.
- kice: `row` is the question number (1..45); a JSON syntax error or too-deep nesting gives
  the line instead.
- A whole-file fault (not text, wrong delimiter) is reported at row 1.
- jsonl: `row` is the line number.

Every text field goes through `normalize_text` before it is checked, so a choice that is only
invisible characters counts as empty and two choices that differ only in spacing as the same.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from distill.contracts import MCQItem
from distill.data.normalize import normalize_text
from distill.data.schema import check_id_text, check_unique_ids, item_from_dict, validate_item_fields
from distill.data.subjects import (
    apply_subject_map,
    exam_year_from_name,
    kice_layout,
    kice_subject,
    unmatched_subject_map,
)
from distill.errors import InputError
from distill.io import UNDECODABLE as _UNDECODABLE
from distill.io import UTF8_BOM as _UTF8_BOM
from distill.io import describe_non_text, iter_jsonl, json_nesting_fault, load_json_text, nesting_message, write_jsonl

FORMATS: tuple[str, ...] = ("competition", "kice", "kmmlu", "jsonl")
"""The `format` values every entry point accepts (besides `auto`)."""

_FORMAT_HINT = "pass --format " + "|".join(FORMATS)


# --------------------------------------------------------------------------- public API


def load_items(
    path: str | os.PathLike,
    format: str = "auto",
    subject_map: str | os.PathLike | Mapping[str, str] | None = None,
    *,
    require_answer: bool = False,
    allow_duplicate_choices: bool = False,
    subject_map_must_match: bool = True,
) -> list[MCQItem]:
    """Load an MCQ file as canonical items; any fault is an InputError naming file, row, field.

    `format`: one of FORMATS, or `auto` (by extension, and for CSV by the header columns).
    `subject_map`: a map file (see `load_subject_map`) or a mapping; item ids win over
    category labels. `require_answer`: an item without a gold answer is an error.
    `allow_duplicate_choices`: two choices with the same text are an error unless this is
    set; then the item is kept and its equal choices are listed in
    `extra["duplicate_choices"]` (the real competition train and test files each have one
    such item, a translation artifact).
    `subject_map_must_match`: a subject map none of whose keys is an item id or a subject of
    this file is an error (a map written for another file, or keys spelled differently), unless
    this is False (a caller that applies one map to several files on purpose).
    """
    checks = _Checks(require_answer, allow_duplicate_choices)
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a regular file")
    mapping = _resolve_subject_map(subject_map)
    map_origin = subject_map if isinstance(subject_map, (str, os.PathLike)) and mapping is not None else None
    fmt = str(format or "auto").strip().lower()
    if fmt != "auto" and fmt not in FORMATS:
        raise InputError(path, f"unknown format {format!r}; {_FORMAT_HINT}", field="format")

    if fmt == "auto":
        fmt = _format_from_extension(path)
    if fmt in ("competition", "kmmlu", "csv"):
        table = _read_csv(path)
        if fmt == "csv":
            fmt = _format_from_header(path, table.header)
        loader = _competition_items if fmt == "competition" else _kmmlu_items
        items, rows = loader(path, table, checks)
    elif fmt == "kice":
        items, rows = _kice_items(path, checks, rules_required=mapping is None)
    else:
        items, rows = _jsonl_items(path, checks)

    check_unique_ids(path, items, rows)
    if mapping and subject_map_must_match:
        _check_subject_map_matches(path, map_origin, mapping, items)
    return apply_subject_map(items, mapping)


def items_digest(items: Iterable[MCQItem]) -> str:
    """sha256 (hex) over the canonical JSON of the items, in order: equal items, equal digest.

    Covers every field `MCQItem.to_dict` writes (extra included), so any change to what an
    item says or how it is labelled changes the digest. Used as the evaluation cache key and
    as the MLflow dataset digest.
    """
    payload = [item.to_dict() for item in items]
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_items_jsonl(path: str | os.PathLike, items: Iterable[MCQItem]) -> Path:
    """Write items in canonical JSONL, atomically (temp file in the same folder, then rename)."""
    return write_jsonl(path, (item.to_dict() for item in items))


def load_subject_map(path: str | os.PathLike) -> dict[str, str]:
    """Read a subject map: CSV with header `key,subject`, or a JSON / YAML object key → subject.

    Keys are item ids or category labels. A bad file is an InputError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "subject map: no such file", field="subject_map")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        mapping = _subject_map_from_csv(path)
    elif suffix in (".json", ".yaml", ".yml"):
        mapping = _subject_map_from_object(path, suffix)
    else:
        raise InputError(path, "subject map must be a .csv (key,subject), .json or .yaml file", field="subject_map")
    if not mapping:
        raise InputError(path, "subject map has no entries", row=1, field="key")
    return mapping


@dataclass(frozen=True)
class _Checks:
    require_answer: bool
    allow_duplicates: bool


def _checked_choices(path: Path, row: int, item_id: str, choices: Any, answer: Any, checks: _Checks):
    """Validated choices and answer, plus the extra flags an allowed duplicate leaves."""
    texts, parsed = validate_item_fields(
        path,
        row,
        item_id,
        _normalized_choices(choices),
        answer,
        require_answer=checks.require_answer,
        allow_duplicates=checks.allow_duplicates,
    )
    groups = duplicate_choice_groups(texts)
    return texts, parsed, ({"duplicate_choices": groups} if groups else {})


def duplicate_choice_groups(choices: Iterable[str]) -> list[list[int]]:
    """1-based positions of choices that share the same text, one list per shared text."""
    positions: dict[str, list[int]] = {}
    for position, text in enumerate(choices, start=1):
        positions.setdefault(" ".join(text.split()), []).append(position)
    return [group for group in positions.values() if len(group) > 1]


# --------------------------------------------------------------------------- format detection


def detect_format(path: str | os.PathLike) -> str:
    """What `format="auto"` resolves to: by extension, and for CSV by the header columns."""
    path = Path(path)
    fmt = _format_from_extension(path)
    if fmt != "csv":
        return fmt
    text = decode_text(path, path.read_bytes())
    for record in csv.reader(io.StringIO(text, newline="")):
        if any(cell.strip() for cell in record):
            return _format_from_header(path, [cell.strip() for cell in record])
    raise InputError(path, "the file is empty (no header, no rows)", row=1)


def _format_from_extension(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "kice"
    if suffix == ".csv":
        return "csv"  # decided from the header once the file is read
    raise InputError(
        path,
        f"cannot tell the format from the extension {suffix or '(none)'!r}; {_FORMAT_HINT}",
        field="format",
    )


def _format_from_header(path: Path, header: list[str]) -> str:
    names = {name.lower() for name in header}
    if "problems" in names:
        return "competition"
    if {"question", "a", "b", "c", "d", "answer"} <= names:
        return "kmmlu"
    raise InputError(
        path,
        f"cannot tell the format from the header ({', '.join(header) or 'empty'}); "
        "pass --format competition (id,paragraph,problems,...) or kmmlu (question,A,B,C,D,answer,...)",
        field="format",
    )


# --------------------------------------------------------------------------- decoding


def decode_text(path: Path, raw: bytes) -> str:
    """UTF-8 (BOM or not) first, strictly; then CP949; else an InputError.

    A file that is not text in either (UTF-16, a workbook, an archive) is named for what it
    appears to be, with what to do, before any attempt to decode it.
    """
    if not raw.startswith(_UTF8_BOM) and (what := describe_non_text(raw)) is not None:
        raise InputError(path, what, row=1)
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _raise_undecodable(path, raw, [("utf-8", exc)])
    errors = []
    for encoding in ("utf-8", "cp949"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as exc:
            errors.append((encoding, exc))
    _raise_undecodable(path, raw, errors)


def _raise_undecodable(path: Path, raw: bytes, errors: list[tuple[str, UnicodeDecodeError]]) -> NoReturn:
    """Point at the first undecodable cell, read with the encoding that got furthest."""
    encoding, exc = max(errors, key=lambda pair: pair[1].start)
    bad_byte = raw[exc.start : exc.start + 1].hex()
    message = f"not UTF-8 or CP949: byte 0x{bad_byte} cannot be decoded"
    text = raw.decode(encoding, errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
        if any(_UNDECODABLE.search(cell) for cell in header):
            raise InputError(path, message + " (in the header)", row=1)
        row = 0
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            row += 1
            for position, cell in enumerate(record):
                if _UNDECODABLE.search(cell):
                    field = header[position].strip() if position < len(header) else None
                    raise InputError(path, message, row=row, field=field)
    except csv.Error:
        pass
    line = raw[: exc.start].count(b"\n") + 1
    raise InputError(path, f"{message} (line {line})", row=line)


# --------------------------------------------------------------------------- CSV


class _Table:
    """A decoded CSV: header names and (data row, cells by lower-cased column) records."""

    def __init__(self, header: list[str], records: list[tuple[int, dict[str, str]]], columns: dict[str, str]):
        self.header = header
        self.records = records
        self.columns = columns  # lower-cased name -> name as written

    def has(self, name: str) -> bool:
        return name.lower() in self.columns


def _read_csv(path: Path) -> _Table:
    text = decode_text(path, path.read_bytes())
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, dict[str, str]]] = []
    header: list[str] = []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if not header:
                header = [cell.strip() for cell in record]
                _check_delimiter(path, header)
                columns = _header_columns(path, header)
                continue
            row = len(records) + 1
            if len(record) > len(header) and any(cell.strip() for cell in record[len(header) :]):
                raise InputError(path, f"{len(record)} values but the header has {len(header)} columns", row=row)
            if len(record) < len(header):
                raise InputError(
                    path,
                    f"{len(record)} values but the header has {len(header)} columns",
                    row=row,
                    field=header[len(record)],
                )
            # unnamed columns (a pandas index written with the frame) are dropped
            records.append((row, {name.lower(): record[i] for i, name in enumerate(header) if name}))
    except csv.Error as exc:
        raise InputError(path, f"CSV syntax error: {exc}", row=len(records) + 1) from None
    if not header:
        raise InputError(path, "the file is empty (no header, no rows)", row=1)
    if not records:
        raise InputError(path, "no data rows after the header", row=1)
    return _Table(header, records, columns)


_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _check_delimiter(path: Path, header: list[str]) -> None:
    """A header that reads as one column but holds `;`, tab or `|` is a file with another delimiter."""
    named = [name for name in header if name]
    if len(named) != 1:
        return
    counts = {sep: named[0].count(sep) for sep in _OTHER_DELIMITERS}
    sep = max(counts, key=lambda key: counts[key])
    if counts[sep]:
        raise InputError(
            path,
            f"the header reads as one column {named[0][:60]!r}: the file looks {_OTHER_DELIMITERS[sep]}-delimited "
            f"({counts[sep]} {sep!r} in the header); this loader reads comma-separated CSV, so re-save it "
            "with commas (quoting cells that contain commas)",
            row=1,
        )


def _header_columns(path: Path, header: list[str]) -> dict[str, str]:
    columns: dict[str, str] = {}
    for name in header:
        key = name.lower()
        if not key:
            continue
        if key in columns:
            raise InputError(path, "column appears twice in the header", row=1, field=name)
        columns[key] = name
    return columns


def _require_columns(path: Path, table: _Table, names: Iterable[str], fmt: str) -> None:
    for name in names:
        if not table.has(name):
            raise InputError(
                path,
                f"missing column (header has: {', '.join(table.header)}); "
                f"a {fmt} file needs {', '.join(_REQUIRED_COLUMNS[fmt])}",
                row=1,
                field=name,
            )


_REQUIRED_COLUMNS = {
    "competition": ("id", "paragraph", "problems"),
    "kmmlu": ("question", "A", "B", "C", "D", "answer"),
}


def _parse_problems(path: Path, row: int, text: str) -> dict[str, Any]:
    """`problems` as JSON, else as a Python literal; never `eval`."""
    stripped = text.strip()
    if not stripped:
        raise InputError(path, "problems is empty", row, "problems")
    fault = json_nesting_fault(stripped)
    if fault is not None:
        raise InputError(path, f"problems is {nesting_message()}", row, fault[1] or "problems")
    try:
        value = load_json_text(stripped, path, row, "problems", what="problems")
    except json.JSONDecodeError as json_error:
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise InputError(
                path,
                f"problems is neither JSON ({json_error.msg}) nor a Python dict literal",
                row,
                "problems",
            ) from None
    if not isinstance(value, dict):
        raise InputError(
            path,
            f"problems must be an object with question/choices/answer, got {type(value).__name__}",
            row,
            "problems",
        )
    return value


def _json_safe(value: Any) -> Any:
    """Extra values must survive JSON (a Python literal may hold a set or a tuple)."""
    try:
        return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)


def _text_field(path: Path, row: int, value: Any, field: str) -> str:
    """Normalised text of an optional text field: str, or a list of str joined by lines."""
    if value is None:
        return ""
    if isinstance(value, str):
        return normalize_text(value)
    if isinstance(value, (list, tuple)) and all(isinstance(part, str) for part in value):
        return normalize_text("\n".join(value))
    raise InputError(path, f"{field} must be text, got {type(value).__name__}", row, field)


def _question_text(path: Path, row: int, value: Any) -> str:
    if value is None:
        raise InputError(path, "question is missing", row, "question")
    if not isinstance(value, str):
        raise InputError(path, f"question must be text, got {type(value).__name__}", row, "question")
    text = normalize_text(value)
    if not text:
        raise InputError(path, "question is empty", row, "question")
    return text


def _normalized_choices(value: Any) -> Any:
    """Normalise string choices; leave anything else for `validate_item_fields` to judge."""
    if isinstance(value, (list, tuple)):
        return [normalize_text(choice) if isinstance(choice, str) else choice for choice in value]
    return value


def _competition_items(path: Path, table: _Table, checks: _Checks):
    _require_columns(path, table, _REQUIRED_COLUMNS["competition"], "competition")
    known = {"id", "paragraph", "problems", "question_plus", "category"}
    items, rows = [], []
    for row, cells in table.records:
        item_id = normalize_text(check_id_text(path, row, cells["id"]))
        if not item_id:
            raise InputError(path, "id is empty", row, "id")
        problems = _parse_problems(path, row, cells["problems"])
        question = _question_text(path, row, problems.get("question"))
        if "choices" not in problems:
            raise InputError(path, "problems has no 'choices'", row, "choices")
        choices, answer, flags = _checked_choices(
            path, row, item_id, problems["choices"], problems.get("answer"), checks
        )
        # question_plus: the column when it says something, else the key inside problems.
        question_plus = normalize_text(cells.get("question_plus", "")) or _text_field(
            path, row, problems.get("question_plus"), "question_plus"
        )
        extra = {
            str(k): _json_safe(v)
            for k, v in problems.items()
            if k not in {"question", "choices", "answer", "question_plus"}
        }
        extra.update({table.columns[k]: v for k, v in cells.items() if k not in known and v.strip()})
        extra.update(flags)
        items.append(
            MCQItem(
                id=item_id,
                paragraph=normalize_text(cells["paragraph"]),
                question=question,
                choices=choices,
                answer=answer,
                question_plus=question_plus,
                subject=normalize_text(cells.get("category", "")) or "unknown",
                source=path.name,
                extra=extra,
            )
        )
        rows.append(row)
    return items, rows


def _kmmlu_items(path: Path, table: _Table, checks: _Checks):
    _require_columns(path, table, _REQUIRED_COLUMNS["kmmlu"], "kmmlu")
    labels = [letter for letter in "ABCDEFGHIJ" if table.has(letter)]
    known = {"question", "answer", "category", *(letter.lower() for letter in labels)}
    items, rows = [], []
    for row, cells in table.records:
        item_id = f"{path.stem}-{row}"
        question = _question_text(path, row, cells["question"])
        choices, answer, flags = _checked_choices(
            path, row, item_id, _kmmlu_choices(cells, labels), cells["answer"], checks
        )
        extra = {table.columns[k]: v for k, v in cells.items() if k not in known and v.strip()}
        extra.update(flags)
        items.append(
            MCQItem(
                id=item_id,
                paragraph="",
                question=question,
                choices=choices,
                answer=answer,
                subject=normalize_text(cells.get("category", "")) or "unknown",
                source=path.name,
                extra=extra,
            )
        )
        rows.append(row)
    return items, rows


KMMLU_REQUIRED_CHOICES = 4
"""A to D are required; E.. are optional columns, and a row may leave them blank."""


def _kmmlu_choices(cells: dict[str, str], labels: list[str]) -> list[str]:
    """The row's choices: trailing blank optional columns (E..) dropped, so blank E means 4 choices.

    A blank optional choice followed by a filled one stays, and is reported as an empty choice.
    """
    values = [cells[letter.lower()] for letter in labels]
    while len(values) > KMMLU_REQUIRED_CHOICES and not normalize_text(values[-1]):
        values.pop()
    return values


# --------------------------------------------------------------------------- JSON formats


def _decode_json_file(path: Path) -> str:
    """JSON files are UTF-8 (RFC 8259); a BOM is tolerated."""
    raw = path.read_bytes()
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
    elif (what := describe_non_text(raw)) is not None:
        raise InputError(path, what, row=1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            path, f"not UTF-8: byte 0x{raw[exc.start : exc.start + 1].hex()} cannot be decoded", row=line
        ) from None


def _kice_items(path: Path, checks: _Checks, *, rules_required: bool):
    text = _decode_json_file(path)
    if not text.strip():
        raise InputError(path, "the file is empty", row=1)
    try:
        passages = load_json_text(text, path, None)
    except json.JSONDecodeError as exc:
        raise InputError(
            path, f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})", row=exc.lineno
        ) from None
    if not isinstance(passages, list):
        raise InputError(path, f"expected a JSON list of passages, got {type(passages).__name__}", row=1)
    if not passages:
        raise InputError(path, "no passages in the file", row=1, field="problems")

    year = exam_year_from_name(path.name)
    layout = kice_layout(year) if year is not None else None
    if layout is None and rules_required:
        raise InputError(
            path,
            "no KICE subject rule for this file: its name must carry the exam year, 2015 or later "
            "(e.g. 2019_11_KICE.json), or pass --subject_map",
            field="subject",
        )

    items, rows = [], []
    number = 0
    for index, passage in enumerate(passages, start=1):
        where = f"passage {index}"
        if not isinstance(passage, dict):
            raise InputError(path, f"{where} is not an object", number + 1, "problems")
        if "id" in passage:
            where += f" ({passage['id']})"
        problems = passage.get("problems")
        if not isinstance(problems, list) or not problems:
            raise InputError(path, f"{where}: problems must be a non-empty list", number + 1, "problems")
        paragraph = _text_field(path, number + 1, passage.get("paragraph"), "paragraph")
        _check_passage_range(path, index, passage.get("id"), number + 1, len(problems))
        for problem in problems:
            number += 1
            if not isinstance(problem, dict):
                raise InputError(path, f"{where}: question is not an object", number, "problems")
            item_id = f"{path.stem}-{number}"
            question = _question_text(path, number, problem.get("question"))
            if "choices" not in problem:
                raise InputError(path, f"{where}: question has no choices", number, "choices")
            choices, answer, flags = _checked_choices(
                path, number, item_id, problem["choices"], problem.get("answer"), checks
            )
            subject = kice_subject(year, number) if layout is not None else None
            if subject is None and layout is not None:
                raise InputError(
                    path,
                    f"question {number} is past the {layout.n_questions} questions of the {year} exam layout",
                    number,
                    "problems",
                )
            extra: dict[str, Any] = {"question_number": number}
            if "score" in problem:
                extra["score"] = problem["score"]
            if "id" in passage:
                extra["passage_id"] = passage["id"]
            if "type" in passage:
                extra["passage_type"] = passage["type"]
            extra.update(flags)
            no_paragraph = bool(problem.get("no_paragraph"))
            if no_paragraph:
                extra["no_paragraph"] = True
            items.append(
                MCQItem(
                    id=item_id,
                    paragraph="" if no_paragraph else paragraph,
                    question=question,
                    choices=choices,
                    answer=answer,
                    question_plus=_text_field(path, number, problem.get("question_plus"), "question_plus"),
                    subject=subject or "unknown",
                    source=path.name,
                    extra=extra,
                )
            )
            rows.append(number)
    return items, rows


_PASSAGE_RANGE = re.compile(r"(?<!\d)(\d{1,3})\s*[-~\u2013]\s*(\d{1,3})\s*$")


def passage_range(passage_id: Any) -> tuple[int, int] | None:
    """The question range a KICE passage id ends with (`2019_11_KICE_18-21` → (18, 21)), or None."""
    if not isinstance(passage_id, str):
        return None
    match = _PASSAGE_RANGE.search(passage_id)
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    return (first, last) if 1 <= first <= last else None


def _check_passage_range(path: Path, index: int, passage_id: Any, first_number: int, size: int) -> None:
    """Questions are numbered by counting, so one missing question shifts every later subject.

    Passage ids in the real files carry the range of questions they hold (`…_18-21`): the
    passage must start at its first number and hold every number up to its last. It may hold
    more: the files append the stand-alone questions that follow a passage to it (`2019_11_KICE_8-10`
    holds 8-11), so only missing questions are caught, not extra ones.
    """
    claimed = passage_range(passage_id)
    if claimed is None:
        return
    first, last = claimed
    where = f"passage {index} ({passage_id})"
    if first_number != first:
        missing_or_extra = "a question before it is missing" if first_number < first else "it has extra questions"
        raise InputError(
            path,
            f"{where} should start at question {first} but its first question is number {first_number} "
            f"by count: {missing_or_extra}, or the passages are out of order; every later subject would be wrong",
            first_number,
            "problems",
        )
    if size < last - first + 1:
        raise InputError(
            path,
            f"{where} holds {size} questions but its id says {first}-{last} ({last - first + 1}): "
            "one of them is missing; every later subject would be wrong",
            first,
            "problems",
        )


_CANONICAL_TEXT_FIELDS = ("paragraph", "question", "question_plus", "subject", "source")


def _jsonl_items(path: Path, checks: _Checks):
    items, rows = [], []
    for lineno, data in iter_jsonl(path):
        data = dict(data)
        for name in _CANONICAL_TEXT_FIELDS:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise InputError(path, f"{name} must be text, got {type(value).__name__}", lineno, name)
            if isinstance(value, str):
                data[name] = normalize_text(value)
        if "choices" in data:
            data["choices"] = _normalized_choices(data["choices"])
        if not data.get("source"):
            data["source"] = path.name
        item = item_from_dict(path, lineno, data, allow_duplicates=checks.allow_duplicates)
        groups = duplicate_choice_groups(item.choices)
        if groups:
            item.extra["duplicate_choices"] = groups
        if checks.require_answer and item.answer is None:
            raise InputError(path, "answer is missing", lineno, "answer")
        items.append(item)
        rows.append(lineno)
    if not items:
        raise InputError(path, "the file has no items", row=1)
    return items, rows


# --------------------------------------------------------------------------- subject maps


def _resolve_subject_map(subject_map) -> dict[str, str] | None:
    if subject_map is None or (isinstance(subject_map, str) and not subject_map.strip()):
        return None
    if isinstance(subject_map, Mapping):
        return {str(k): str(v) for k, v in subject_map.items()}
    return load_subject_map(subject_map)


def _subject_map_from_csv(path: Path) -> dict[str, str]:
    text = decode_text(path, path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""))
    mapping: dict[str, str] = {}
    header: list[str] | None = None
    row = 0
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in record]
                if header != ["key", "subject"]:
                    raise InputError(
                        path,
                        f"subject map header must be 'key,subject', got {','.join(record)!r}",
                        row=1,
                        field="key",
                    )
                continue
            row += 1
            if len(record) != 2:
                raise InputError(path, f"expected 2 values (key,subject), got {len(record)}", row, "subject")
            _add_map_entry(path, mapping, record[0], record[1], row)
    except csv.Error as exc:
        raise InputError(path, f"CSV syntax error: {exc}", row=row + 1) from None
    return mapping


def _subject_map_from_object(path: Path, suffix: str) -> dict[str, str]:
    text = decode_text(path, path.read_bytes())
    if suffix == ".json":
        try:
            data = load_json_text(text, path, None, what="subject map")
        except json.JSONDecodeError as exc:
            raise InputError(path, f"subject map is not valid JSON ({exc.msg})", row=exc.lineno) from None
    else:
        import yaml

        fault = json_nesting_fault(text)
        if fault is not None:
            raise InputError(path, f"subject map is {nesting_message()}", row=fault[0], field=fault[1])
        try:
            data = yaml.safe_load(text)
        except RecursionError:
            raise InputError(path, f"subject map is {nesting_message()}", row=1) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise InputError(
                path,
                f"subject map is not valid YAML ({getattr(exc, 'problem', None) or exc})",
                row=mark.line + 1 if mark is not None else None,
            ) from None
    if not isinstance(data, dict):
        raise InputError(
            path, f"subject map must be an object of key: subject, got {type(data).__name__}", row=1, field="key"
        )
    mapping: dict[str, str] = {}
    for row, (key, subject) in enumerate(data.items(), start=1):
        if not isinstance(subject, (str, int, float)) or isinstance(subject, bool):
            raise InputError(path, f"subject for {key!r} must be text", row, str(key))
        _add_map_entry(path, mapping, str(key), str(subject), row)
    return mapping


MAX_LISTED = 5


def _check_subject_map_matches(path: Path, origin, mapping: dict[str, str], items: list[MCQItem]) -> None:
    """A map none of whose keys names an item id or a subject here would change nothing, silently."""
    unmatched = unmatched_subject_map(items, mapping)
    if unmatched is None:
        return
    subjects = sorted({item.subject for item in items})
    listed = ", ".join(repr(key) for key in unmatched[:MAX_LISTED])
    more = f" and {len(unmatched) - MAX_LISTED} more" if len(unmatched) > MAX_LISTED else ""
    known = ", ".join(repr(subject) for subject in subjects[:MAX_LISTED])
    known += f" and {len(subjects) - MAX_LISTED} more" if len(subjects) > MAX_LISTED else ""
    message = (
        f"none of the subject map's {len(unmatched)} keys is an item id or a subject of {path.name}: "
        f"keys {listed}{more}; the file's subjects are {known}, its ids look like {items[0].id!r}"
    )
    if origin is not None:
        raise InputError(origin, message, row=1, field="key")
    raise InputError(path, message, field="subject_map")


def _add_map_entry(path: Path, mapping: dict[str, str], key: str, subject: str, row: int) -> None:
    key, subject = normalize_text(key), normalize_text(subject)
    if not key:
        raise InputError(path, "key is empty", row, "key")
    if not subject:
        raise InputError(path, f"subject for {key!r} is empty", row, "subject")
    if key in mapping and mapping[key] != subject:
        raise InputError(path, f"key {key!r} is mapped twice ({mapping[key]!r} and {subject!r})", row, "key")
    mapping[key] = subject
