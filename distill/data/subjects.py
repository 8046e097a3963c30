"""Subjects: the KICE question-number rules, and applying a user's subject map.

KICE (수능 국어) files carry no subject labels; the exam layout gives them by question number
(../shared/data/SOURCES.md). The year is the 학년도 (school year) in the file name: the file
`2021_11_KICE.json` says "2021학년도 대학수학능력시험" in its own text and still has the old
layout, while `2022_11_KICE_.json` opens with a 독서 passage, so the file-name year is the
year the rules are keyed on.

In the 2015-2021 layout questions 16-45 interleave 독서 and 문학 passages in an order that
changes from year to year, and nothing in the files marks which is which (no `type` field),
so they share one subject, "독서·문학", rather than a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from distill.contracts import MCQItem


@dataclass(frozen=True)
class QuestionRange:
    first: int
    last: int
    subject: str


@dataclass(frozen=True)
class ExamLayout:
    """Subjects by question number for the exams of `first_year`..`last_year` (None: open)."""

    first_year: int
    last_year: int | None
    ranges: tuple[QuestionRange, ...]

    def covers(self, year: int) -> bool:
        return self.first_year <= year and (self.last_year is None or year <= self.last_year)

    @property
    def n_questions(self) -> int:
        return max(r.last for r in self.ranges)


KICE_LAYOUTS: tuple[ExamLayout, ...] = (
    ExamLayout(
        2015,
        2021,
        (
            QuestionRange(1, 10, "화법과작문"),
            QuestionRange(11, 15, "문법"),
            QuestionRange(16, 45, "독서·문학"),
        ),
    ),
    ExamLayout(
        2022,
        None,
        (
            QuestionRange(1, 17, "독서"),
            QuestionRange(18, 34, "문학"),
            QuestionRange(35, 45, "화법과작문"),
        ),
    ),
)

_YEAR = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")


def exam_year_from_name(name: str) -> int | None:
    """The first four-digit year in a file name (`2019_11_KICE.json` → 2019), or None."""
    match = _YEAR.search(name)
    return int(match.group(1)) if match else None


def kice_layout(year: int) -> ExamLayout | None:
    for layout in KICE_LAYOUTS:
        if layout.covers(year):
            return layout
    return None


def kice_subject(year: int, question_number: int) -> str | None:
    """Subject of question `question_number` (1-based) in the exam of `year`; None if unknown."""
    layout = kice_layout(year)
    if layout is None:
        return None
    for question_range in layout.ranges:
        if question_range.first <= question_number <= question_range.last:
            return question_range.subject
    return None


def unmatched_subject_map(items: list[MCQItem], subject_map: Mapping[str, str]) -> list[str] | None:
    """The map's keys when not one of them is an item id or a current subject; None when any is.

    Such a map is a no-op that looks like it worked (a map for another file, ids spelled
    differently); the loader turns it into an error.
    """
    known = {item.id for item in items} | {item.subject for item in items}
    if any(key in known for key in subject_map):
        return None
    return list(subject_map)


def apply_subject_map(items: list[MCQItem], subject_map: Mapping[str, str] | None) -> list[MCQItem]:
    """Re-label subjects: an item's id wins over its current subject (category) label."""
    if not subject_map:
        return items
    relabelled = []
    for item in items:
        subject = subject_map.get(item.id) or subject_map.get(item.subject)
        relabelled.append(replace(item, subject=subject) if subject and subject != item.subject else item)
    return relabelled
