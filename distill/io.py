"""Atomic file writes and JSON-lines helpers.

Nothing half-written may stay on disk: every writer goes to a temporary file in the target
directory and is renamed into place only once complete (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
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
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc.msg}, column {exc.colno})", lineno) from None
        if not isinstance(value, dict):
            raise InputError(path, f"each line must be a JSON object, got {type(value).__name__}", lineno)
        yield lineno, value


def _field_with_undecodable(line_bytes: bytes) -> str | None:
    """The key whose value holds the undecodable bytes of a JSON line, when the line still parses."""
    try:
        data = json.loads(line_bytes.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict):
        for key, value in data.items():
            if UNDECODABLE.search(json.dumps(value, ensure_ascii=False)):
                return str(key)
    return None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every object of a JSON-lines file (see `iter_jsonl` for the errors)."""
    return [value for _, value in iter_jsonl(path)]
