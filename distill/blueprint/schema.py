"""What goes into a blueprint request and what must come out of it.

In: a `HardNegative` (distill/contracts.py; docs/design.md, "Data flow and contracts"): a seed
item the teacher solved and the student did not, with the teacher's golden path and the
student's failed path.

Out: `BlueprintOutput`, the pydantic model sent as the response schema (structured output).
It holds only what a JSON schema can say (types, required fields, simple bounds). Checks that
relate one field to another (the answer within the number of choices, the rejected choice
differing from the answer, the chosen reasoning ending in the gold answer) are quality gates
(`distill.blueprint.gates`): a live backend retries an answer that fails its schema, so a
cross-field fault kept out of the schema is refused once, with a reason, instead of being
silently paid for again and again.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field


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
    chosen_steps: list[AlignedStep] = Field(
        description="새 문제의 모범 풀이: 모범 풀이의 단계에 하나씩 대응하는 단계들"
    )
    chosen_answer_line: str = Field(description="모범 풀이의 마지막 줄: 정확히 '정답: N' (N은 problem.answer)")
    rejected_reasoning: str = Field(description="학생의 오류 유형을 재현한 오답 풀이, 마지막 줄은 '정답: M'")
    rejected_choice: int = Field(description="오답 풀이가 고르는 선택지 번호 M (정답과 달라야 함)")
    error_type: str = Field(description="오답 풀이가 재현한 오류 유형")


# ---------------------------------------------------------------------------------------------
# Hard negatives (the stage's input)

_NUMBERED_STEP = re.compile(r"^\s*\d{1,2}\s*[.)]\s+\S", re.MULTILINE)
_ANSWER_LINE = re.compile(r"^\s*정답\s*[:：]")


def count_steps(text: str) -> int:
    """Reasoning steps in a text: its numbered lines ("1. ...", "2) ..."); a text without
    numbering counts its non-empty lines other than the final answer line."""
    numbered = _NUMBERED_STEP.findall(text or "")
    if numbered:
        return len(numbered)
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return sum(1 for line in lines if not _ANSWER_LINE.match(line))
