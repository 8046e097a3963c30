"""Format loaders: every known MCQ file format into canonical `MCQItem`s, or a clear error.

Every format is a format spec (distill/data/specs.py): the built-in ones below are the shipped
specs distill/formats/<name>.yaml, read by the same machinery as a user's own spec file, and
`auto` picks one by extension and CSV header. What follows is what those specs say.

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
from distill.data.schema import check_unique_ids, validate_item_fields
from distill.data.specs import FormatSpec, fit_report, is_spec_reference, load_spec, shipped_specs, spec_items
from distill.data.subjects import (
    apply_subject_map,
    unmatched_subject_map,
)
from distill.errors import InputError
from distill.io import UNDECODABLE as _UNDECODABLE
from distill.io import UTF8_BOM as _UTF8_BOM
from distill.io import describe_non_text, json_nesting_fault, load_json_text, nesting_message, write_jsonl

FORMATS: tuple[str, ...] = ("competition", "kice", "kmmlu", "jsonl")
"""The built-in formats (shipped specs that `auto` detects by extension and header); every entry
point also takes `auto`, the other shipped specs (`distill.data.specs.shipped_specs`) and a spec file."""


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

    `format`: a shipped spec's name (FORMATS, csat_qa, haerae), a spec file (.yaml), or `auto`
    (`resolve_spec`: by extension and CSV header, else the first shipped spec that fits).
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
    mapping = _resolve_subject_map(subject_map)
    map_origin = subject_map if isinstance(subject_map, (str, os.PathLike)) and mapping is not None else None
    spec = resolve_spec(path, format, checks=checks, rules_required=mapping is None)
    items, rows = spec_items(spec, path, checks, rules_required=mapping is None)
    check_unique_ids(path, items, rows)
    if mapping and subject_map_must_match:
        _check_subject_map_matches(path, map_origin, mapping, items)
    return apply_subject_map(items, mapping)


def resolve_spec(path: Path, format: str, *, checks: _Checks | None = None, rules_required: bool = True) -> FormatSpec:
    """The spec that reads `path`: a spec file, a shipped spec's name (the built-in formats are
    shipped specs), or `auto` (by extension and CSV header; when neither tells, the first shipped
    spec that reads the dataset, else one error saying which came closest and why)."""
    fmt = str(format or "auto").strip()
    if is_spec_reference(fmt):
        return load_spec(fmt)
    name = fmt.lower()
    shipped = shipped_specs()
    if name != "auto" and name not in shipped:
        raise InputError(path, f"unknown format {format!r}; {_format_hint()}", field="format")
    if not path.exists() and not any(ch in str(path) for ch in "*?[") and not str(path).startswith("hub:"):
        raise InputError(path, "no such file")
    if name != "auto":
        return load_spec(name)
    if not path.is_file():
        return _closest_spec(path)
    try:
        return load_spec(detect_format(path))
    except InputError as exc:
        if exc.field != "format":
            raise
        return _first_fitting_spec(path, exc, checks or _Checks(False, True), rules_required)


def is_known_format(fmt: str) -> bool:
    """A `format` value `load_items` takes: auto, a shipped spec's name, or a spec file (.yaml)."""
    text = str(fmt).strip()
    return text.lower() == "auto" or text.lower() in shipped_specs() or is_spec_reference(text)


def _format_hint() -> str:
    return "pass --format " + "|".join(shipped_specs()) + " or a spec file (.yaml)"


def _first_fitting_spec(path: Path, cause: InputError, checks: _Checks, rules_required: bool) -> FormatSpec:
    """The first shipped spec that reads the whole file; else `cause` plus which came closest and why."""
    tried = []
    for name in shipped_specs():
        spec = load_spec(name)
        try:
            spec_items(spec, path, checks, rules_required=rules_required)
            return spec
        except InputError as exc:
            score, why = fit_report(spec, path)
            tried.append((score, name, why if score else exc.message))
    _, name, why = min(tried)
    raise InputError(
        cause.path,
        f"{cause.message}; no shipped format spec fits either, closest: {name} ({why})",
        cause.row,
        cause.field,
    ) from None


def _closest_spec(path: Path) -> FormatSpec:
    """A folder, glob or saved dataset under `auto`: the first shipped spec whose columns all fit."""
    tried = []
    for name in shipped_specs():
        spec = load_spec(name)
        score, why = fit_report(spec, path)
        if score == 0:
            return spec
        tried.append((score, name, why))
    _, name, why = min(tried)
    raise InputError(path, f"no shipped format spec fits; closest: {name} ({why}); {_format_hint()}", field="format")


def detect_format_name(path: str | os.PathLike) -> str:
    """What `format="auto"` reads a dataset as: the name of the shipped spec."""
    return resolve_spec(Path(path), "auto").name


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
            header = [cell.strip() for cell in record]
            _check_delimiter(path, header)
            return _format_from_header(path, header)
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
        f"cannot tell the format from the extension {suffix or '(none)'!r}; {_format_hint()}",
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


def decode_as(path: Path, raw: bytes, encoding: str) -> str:
    """Text in the one encoding a format spec names (a UTF-8 BOM is skipped); else an InputError."""
    if raw.startswith(_UTF8_BOM) and encoding.replace("_", "-").lower() in ("utf-8", "utf8", "utf-8-sig"):
        raw = raw[len(_UTF8_BOM) :]
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 1].hex()
        raise InputError(path, f"not {encoding}: byte 0x{bad} cannot be decoded (line {line})", row=line) from None


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


def _read_csv(path: Path, delimiter: str = ",", encoding: str | None = None) -> _Table:
    """A CSV file as a _Table. `delimiter` other than a comma, and an explicit `encoding`
    (else UTF-8, then CP949), are what a format spec may ask for."""
    text = decode_text(path, path.read_bytes()) if encoding is None else decode_as(path, path.read_bytes(), encoding)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
    records: list[tuple[int, dict[str, str]]] = []
    header: list[str] = []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if not header:
                header = [cell.strip() for cell in record]
                if delimiter == ",":
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


def _normalized_choices(value: Any) -> Any:
    """Normalise string choices; leave anything else for `validate_item_fields` to judge."""
    if isinstance(value, (list, tuple)):
        return [normalize_text(choice) if isinstance(choice, str) else choice for choice in value]
    return value


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
