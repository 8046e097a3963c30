"""Atomic file writes and JSON-lines helpers.

Nothing half-written may stay on disk: every writer goes to a temporary file in the target
directory and is renamed into place only once complete (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as UTF-8 JSON lines (non-ASCII kept readable), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
    return Path(path)


UTF8_BOM = b"\xef\xbb\xbf"
UNDECODABLE = re.compile("[\udc80-\udcff]")
"""Lone surrogates: what undecodable bytes become under errors="surrogateescape"."""

MAX_JSON_DEPTH = 100
"""Deepest bracket nesting accepted in JSON (or a Python literal). Real items nest a few levels;
Python's parsers hit the recursion limit near 1000 and would end in a traceback, not an error."""

_SAVE_AS_UTF8 = "save it as UTF-8 text (e.g. iconv -f {enc} -t UTF-8, or Excel's 'CSV UTF-8') and retry"
_BYTE_ORDER_MARKS = (  # UTF-32 LE first: its mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "UTF-32 LE", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32 BE", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16 LE", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16 BE", "UTF-16BE"),
)
_MAGIC = (
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an old Excel workbook (.xls) or other MS Office file",
        "export the sheet as CSV UTF-8",
    ),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip)"),
    (b"PAR1", "a Parquet file", "write it out as CSV or JSON lines"),
    (b"%PDF", "a PDF document", "extract the items into CSV or JSON lines"),
)


def describe_non_text(raw: bytes) -> str | None:
    """What a file that is not UTF-8/CP949 text appears to be, and what to do; None if it looks like text.

    The byte-order marks of UTF-16/32, the magic bytes of ZIP (xlsx, ods), old Excel, gzip,
    Parquet and PDF, and UTF-16 without a mark (every other byte NUL). A UTF-8 byte-order mark is
    text: the readers skip it.
    """
    for mark, name, codec in _BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            hex_mark = " ".join(f"{b:02X}" for b in mark)
            return f"the file is {name} text (byte-order mark {hex_mark}), not UTF-8; " + _SAVE_AS_UTF8.format(
                enc=codec
            )
    if raw.startswith(b"PK\x03\x04"):
        return _describe_zip(raw)
    for magic, what, advice in _MAGIC:
        if raw.startswith(magic):
            return f"the file is {what}, not text; {advice}"
    sample = raw[:4096]
    if len(sample) >= 8 and sample.count(0) * 5 >= len(sample):
        odd, even = sample[1::2].count(0), sample[0::2].count(0)
        if max(odd, even) >= 0.9 * (odd + even):
            codec = "UTF-16LE" if odd > even else "UTF-16BE"
            return (
                f"the file looks like {codec[:6]} {codec[6:]} text without a byte-order mark (every other byte is 0); "
                + _SAVE_AS_UTF8.format(enc=codec)
            )
    return None


def _describe_zip(raw: bytes) -> str:
    try:
        names = set(zipfile.ZipFile(io.BytesIO(raw)).namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        names = set()
    if any(name.startswith("xl/") for name in names):
        what = "an Excel workbook (.xlsx)"
    elif "content.xml" in names:
        what = "an OpenDocument spreadsheet (.ods)"
    else:
        what = "a ZIP archive"
    return f"the file is {what} (it starts with the ZIP bytes PK\\x03\\x04), not text; export the sheet as CSV UTF-8"


_NESTING_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"(?P<dkey>\s*:)?'  # a JSON (or Python) string in double quotes; a key if ':' follows
    r"|'(?:[^'\\]|\\.)*'(?P<skey>\s*:)?"  # a Python string in single quotes
    r"|[\[{(]|[\]})]",
    re.DOTALL,
)


def json_nesting_fault(text: str, limit: int = MAX_JSON_DEPTH) -> tuple[int, str | None] | None:
    """Where brackets in `text` (JSON or a Python literal) first nest deeper than `limit`.

    Returns (1-based line, innermost key around that place, or None), or None when the nesting
    stays within `limit`. Brackets inside strings do not count. Cheap when the text holds fewer
    opening brackets than `limit` (the usual case): then it cannot be too deep.
    """
    if text.count("[") + text.count("{") + text.count("(") <= limit:
        return None
    keys: list[str | None] = [None]  # keys[d]: the last key seen inside the container at depth d
    for match in _NESTING_TOKEN.finditer(text):
        token = match.group()
        if token in "[{(":
            keys.append(None)
            if len(keys) - 1 > limit:
                key = next((k for k in reversed(keys) if k is not None), None)
                return text.count("\n", 0, match.start()) + 1, key
        elif token in "]})":
            if len(keys) > 1:
                keys.pop()
        elif match.group("dkey") or match.group("skey"):
            end = match.start("dkey") if match.group("dkey") else match.start("skey")
            keys[-1] = text[match.start() + 1 : end - 1]
    return None


def nesting_message(limit: int = MAX_JSON_DEPTH) -> str:
    return f"nested more than {limit} levels deep (brackets inside brackets); no item needs that"


def load_json_text(text: str, path, row: int | None, field: str | None = None, *, what: str = "JSON") -> Any:
    """`json.loads` that turns deep nesting into an InputError instead of a RecursionError.

    `row` and `field` name the place for a text that is one row (a JSON line, a CSV cell); for a
    whole file pass row=None and the line is used. A syntax error is left to the caller
    (`json.JSONDecodeError`), which knows how its format counts rows.
    """
    from distill.errors import InputError

    fault = json_nesting_fault(text)
    if fault is not None:
        line, key = fault
        raise InputError(path, f"{what} is {nesting_message()}", row if row is not None else line, key or field)
    try:
        return json.loads(text)
    except RecursionError:  # the scan above should make this unreachable; never a traceback
        raise InputError(path, f"{what} is {nesting_message()}", row if row is not None else 1, field) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """The one JSON-lines reader: (1-based row, object) for each non-blank line.

    A UTF-8 byte-order mark is skipped. A line that is not UTF-8, not JSON, or not a JSON object
    is an InputError naming the file and row (and, for bad bytes, the field that holds them).
    Every stage input in JSON lines (items, hard negatives, pairs, recordings) goes through here.
    """
    from distill.errors import InputError

    raw = Path(path).read_bytes()
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    elif (what := describe_non_text(raw)) is not None:
        raise InputError(path, what, 1)
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                path,
                f"not UTF-8: byte 0x{line_bytes[exc.start : exc.start + 1].hex()} cannot be decoded",
                lineno,
                _field_with_undecodable(line_bytes),
            ) from None
        try:
            value = load_json_text(line, path, lineno)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc.msg}, column {exc.colno})", lineno) from None
        if not isinstance(value, dict):
            raise InputError(path, f"each line must be a JSON object, got {type(value).__name__}", lineno)
        yield lineno, value


def _field_with_undecodable(line_bytes: bytes) -> str | None:
    """The key whose value holds the undecodable bytes of a JSON line, when the line still parses."""
    try:
        data = json.loads(line_bytes.decode("utf-8", errors="surrogateescape"))
    except (json.JSONDecodeError, RecursionError):
        return None
    if isinstance(data, dict):
        for key, value in data.items():
            if UNDECODABLE.search(json.dumps(value, ensure_ascii=False)):
                return str(key)
    return None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every object of a JSON-lines file (see `iter_jsonl` for the errors)."""
    return [value for _, value in iter_jsonl(path)]
