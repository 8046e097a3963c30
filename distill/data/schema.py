"""Checks of the canonical multiple-choice item (docs/design.md, "Contracts"); the item itself is `distill.contracts.MCQItem`.

One JSON object per line: `id, paragraph, question, question_plus, choices, answer, subject,
source`. Every loader returns these, and every later stage reads only these.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from distill.contracts import MCQItem
from distill.errors import InputError

MIN_CHOICES = 2
MAX_CHOICES = 10


def validate_item_fields(
    path,
    row: int | None,
    item_id: Any,
    choices: Any,
    answer: Any,
    *,
    require_answer: bool = False,
    allow_duplicates: bool = False,
) -> tuple[tuple[str, ...], int | None]:
    """Check choices and answer of one raw row; return them normalised or raise InputError.

    Shared by every loader so the same fault gives the same message whatever the format.
    `allow_duplicates` lets two choices with the same text through (the real competition
    files each carry one such item); the caller is expected to flag them.
    """
    if not isinstance(choices, (list, tuple)):
        raise InputError(path, f"choices must be a list, got {type(choices).__name__}", row, "choices")
    texts = []
    for position, choice in enumerate(choices, start=1):
        if not isinstance(choice, (str, int, float)):
            raise InputError(path, f"choice {position} is not text", row, "choices")
        text = str(choice).strip()
        if not text:
            raise InputError(path, f"choice {position} is empty", row, "choices")
        texts.append(str(choice))
    if not (MIN_CHOICES <= len(texts) <= MAX_CHOICES):
        raise InputError(path, f"{len(texts)} choices; expected {MIN_CHOICES} to {MAX_CHOICES}", row, "choices")
    seen: dict[str, int] = {}
    for position, text in enumerate(texts, start=1):
        key = " ".join(text.split())
        if key in seen and not allow_duplicates:
            raise InputError(path, f"choices {seen[key]} and {position} are the same text", row, "choices")
        seen[key] = position
    parsed_answer = parse_answer(path, row, answer, len(texts))
    if require_answer and parsed_answer is None:
        raise InputError(path, "answer is missing", row, "answer")
    return tuple(texts), parsed_answer


NO_ANSWER_HINT = "leave it empty (JSON null) for an item without a gold answer"


def parse_answer(path, row: int | None, answer: Any, n_choices: int) -> int | None:
    """A 1-based answer from int, whole float or digit string; None only for absent/null/empty.

    NaN, infinity and the words `nan`/`none`/`null` are errors, not "no answer": a NaN is what a
    broken export leaves (a pandas round trip, a failed formula), and reading it as "no gold"
    would silently drop the item from scoring. Callers that know a NaN means "missing" (a
    pandas frame) turn it into None first.
    """
    if answer is None:
        return None
    shown = answer  # the value as the file wrote it, for the message
    if isinstance(answer, str):
        shown = answer = answer.strip()
        if answer == "":
            return None
        try:
            answer = float(answer)
        except ValueError:
            raise InputError(path, f"answer {shown!r} is not a number; {NO_ANSWER_HINT}", row, "answer") from None
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise InputError(path, f"answer {shown!r} is not a number; {NO_ANSWER_HINT}", row, "answer")
        if not answer.is_integer():
            raise InputError(path, f"answer {shown!r} is not a whole number", row, "answer")
        answer = int(answer)
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise InputError(path, f"answer {answer!r} is not a number", row, "answer")
    if not (1 <= answer <= n_choices):
        raise InputError(path, f"answer {answer} is out of range 1..{n_choices}", row, "answer")
    return answer


def check_id_text(path, row: int | None, value: str) -> str:
    """An id with surrounding space stripped; a control character inside it (NUL, ...) is an error.

    Text normalisation drops control characters, which for an id would silently change the key
    that subject maps, predictions and caches join on.
    """
    text = value.strip()
    for position, ch in enumerate(text, start=1):
        if unicodedata.category(ch) == "Cc":
            name = unicodedata.name(ch, "") or {0: "NUL"}.get(ord(ch), "control character")
            raise InputError(
                path, f"id contains the control character U+{ord(ch):04X} ({name}) at position {position}", row, "id"
            )
    return text


def check_unique_ids(path, items: list[MCQItem], rows: list[int] | None = None) -> None:
    """Raise InputError on the first id seen twice."""
    first_row: dict[str, int] = {}
    for index, item in enumerate(items):
        row = rows[index] if rows else index + 1
        if item.id in first_row:
            raise InputError(path, f"duplicate id {item.id!r} (first seen at row {first_row[item.id]})", row, "id")
        first_row[item.id] = row


def item_from_dict(path, row: int, data: dict[str, Any], *, allow_duplicates: bool = False) -> MCQItem:
    """Build an item from the canonical JSON form, with the same checks as every loader."""
    for name in ("id", "question", "choices"):
        if name not in data:
            raise InputError(path, "missing required field", row, name)
    item_id = check_id_text(path, row, str(data["id"]))
    if not item_id:
        raise InputError(path, "id is empty", row, "id")
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError(path, "question is empty", row, "question")
    choices, answer = validate_item_fields(
        path, row, item_id, data["choices"], data.get("answer"), allow_duplicates=allow_duplicates
    )
    known = {"id", "paragraph", "question", "question_plus", "choices", "answer", "subject", "source", "extra"}
    extra = dict(data.get("extra") or {})
    extra.update({k: v for k, v in data.items() if k not in known})
    return MCQItem(
        id=item_id,
        paragraph=str(data.get("paragraph") or ""),
        question=question,
        question_plus=str(data.get("question_plus") or ""),
        choices=choices,
        answer=answer,
        subject=str(data.get("subject") or "unknown"),
        source=str(data.get("source") or ""),
        extra=extra,
    )
