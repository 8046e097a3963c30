"""What goes into a blueprint request and what must come out of it.

In: a `HardNegative` (DESIGN.md, Data contracts): a seed item the teacher solved and the
student did not, with the teacher's golden path and the student's failed path.

Out: `BlueprintOutput`, the pydantic model sent as the response schema (structured output).
It holds only what a JSON schema can say (types, required fields, simple bounds). Checks that
relate one field to another (the answer within the number of choices, the rejected choice
differing from the answer, the chosen reasoning ending in the gold answer) are quality gates
(`distill.blueprint.gates`): a live backend retries an answer that fails its schema, so a
cross-field fault kept out of the schema is refused once, with a reason, instead of being
silently paid for again and again.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from distill.data.schema import MCQItem, item_from_dict
from distill.errors import InputError


class NewProblem(BaseModel):
    """The transferred problem, in the canonical MCQ shape (without id, subject, source)."""

    model_config = ConfigDict(extra="ignore")

    paragraph: str = Field(description="지문 (없으면 빈 문자열)")
    question: str = Field(description="발문")
    question_plus: str = Field(default="", description="<보기> 내용 (없으면 빈 문자열)")
    choices: list[str] = Field(description="선택지 텍스트 목록 (번호 없이, 순서대로)")
    answer: int = Field(description="정답 선택지 번호 (1부터)")


class AlignedStep(BaseModel):
    """One step of the chosen reasoning, and the golden-path step it mirrors."""

    model_config = ConfigDict(extra="ignore")

    golden_step: int = Field(description="이 단계가 대응하는 모범 풀이(golden path)의 단계 번호 (1부터)")
    text: str = Field(description="이 단계의 풀이 (번호 없이)")


class BlueprintOutput(BaseModel):
    """The teacher's answer to one blueprint request."""

    model_config = ConfigDict(extra="ignore")

    logic_structure: str = Field(description="씨앗 문제와 새 문제가 공유하는, 영역에 독립적인 논리 구조 (한두 문장)")
    problem: NewProblem
    chosen_steps: list[AlignedStep] = Field(description="새 문제의 모범 풀이: 모범 풀이의 단계에 하나씩 대응하는 단계들")
    chosen_answer_line: str = Field(description="모범 풀이의 마지막 줄: 정확히 '정답: N' (N은 problem.answer)")
    rejected_reasoning: str = Field(description="학생의 오류 유형을 재현한 오답 풀이, 마지막 줄은 '정답: M'")
    rejected_choice: int = Field(description="오답 풀이가 고르는 선택지 번호 M (정답과 달라야 함)")
    error_type: str = Field(description="오답 풀이가 재현한 오류 유형")


# ---------------------------------------------------------------------------------------------
# Hard negatives (the stage's input)

_NUMBERED_STEP = re.compile(r"^\s*\d{1,2}\s*[.)]\s+\S", re.MULTILINE)
_ANSWER_LINE = re.compile(r"^\s*정답\s*[:：]")


@dataclass(frozen=True)
class HardNegative:
    """A seed item with the teacher's golden path and the student's failed path."""

    item: MCQItem
    golden_path: str
    failed_path: str
    student_choice: int | None = None
    """The wrong choice the failed path reached (None when it was unparseable)."""
    error_type: str = ""
    """What went wrong in the failed path, when mining named it ("" otherwise)."""
    student_pass_rate: float | None = None

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def golden_steps(self) -> int:
        return count_steps(self.golden_path)


def count_steps(text: str) -> int:
    """Reasoning steps in a text: its numbered lines ("1. ...", "2) ..."); a text without
    numbering counts its non-empty lines other than the final answer line."""
    numbered = _NUMBERED_STEP.findall(text or "")
    if numbered:
        return len(numbered)
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return sum(1 for line in lines if not _ANSWER_LINE.match(line))


def hard_negative_from_dict(path, row: int, data: dict[str, Any]) -> HardNegative:
    """Build a HardNegative from one JSON line; any fault names file, row and field."""
    item = item_from_dict(path, row, data)
    if item.answer is None:
        raise InputError(path, "a hard negative needs the gold answer", row, "answer")
    texts: dict[str, str] = {}
    for name in ("golden_path", "failed_path"):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InputError(path, "missing or empty", row, name)
        texts[name] = value
    student_choice = data.get("student_choice")
    if student_choice is not None:
        if isinstance(student_choice, bool) or not isinstance(student_choice, int):
            raise InputError(path, f"must be a choice number or null, got {student_choice!r}", row, "student_choice")
    pass_rate = data.get("student_pass_rate")
    if pass_rate is not None and not isinstance(pass_rate, (int, float)):
        raise InputError(path, f"must be a number, got {pass_rate!r}", row, "student_pass_rate")
    # The item's own `extra` must not carry the paths twice.
    extra = {k: v for k, v in item.extra.items() if k not in _HARD_NEGATIVE_FIELDS}
    item = dataclasses.replace(item, extra=extra)
    return HardNegative(
        item=item,
        golden_path=texts["golden_path"],
        failed_path=texts["failed_path"],
        student_choice=student_choice,
        error_type=str(data.get("error_type") or ""),
        student_pass_rate=None if pass_rate is None else float(pass_rate),
    )


_HARD_NEGATIVE_FIELDS = {
    "golden_path", "failed_path", "student_pass_rate", "teacher_choice", "student_choice", "error_type",
    # mine's lineage fields: about the mining run, not about the item
    "student_choices", "golden_from", "judge_verdict",
}


def load_hard_negatives(path: str | Path) -> list[HardNegative]:
    """Read a hard_negatives.jsonl (mine's output); ids must be unique."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a regular file")
    negatives: list[HardNegative] = []
    first_row: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for row, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not valid JSON ({exc.msg})", row=row) from None
            if not isinstance(data, dict):
                raise InputError(path, "each line must be a JSON object", row=row)
            negative = hard_negative_from_dict(path, row, data)
            if negative.id in first_row:
                raise InputError(path, f"duplicate id {negative.id!r} (first seen at row {first_row[negative.id]})", row, "id")
            first_row[negative.id] = row
            negatives.append(negative)
    if not negatives:
        raise InputError(path, "no hard negatives in the file")
    return negatives
