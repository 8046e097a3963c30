"""Quality gates: each a pure function that says pass or refuse, and why.

A candidate meets the gates in the order of `GATES`; the first refusal ends its way and is
written to rejected_candidates.jsonl with the gate's name and the reason. The cheap gates
come first so that the verifier (an LLM call) only sees candidates that could still pass, and
the duplicate filter comes last so that a copy of a candidate that a later gate refuses does
not take the good one down with it.

- schema:          a usable response that parses as `BlueprintOutput`; a sensible number of
                   distinct, non-empty choices; answer and rejected choice in range.
- answers:         the chosen reasoning's extracted final answer is the gold answer; the rejected
                   reasoning's extracted final answer is its named wrong choice, which is not gold.
- form:            chosen and rejected both non-empty, different, within length bounds; chosen's
                   step count near the golden path's; each step mapped to a golden step, in order.
- decontamination: the new problem does not overlap any evaluation or seed item above a threshold.
- alignment:       (only with `min_alignment` set) the chosen steps follow the golden path's steps
                   closely enough (`distill.alignment`: a monotone step alignment, 0-1).
- verification:    an independent re-solve (fresh prompt, nothing of the chosen reasoning shown)
                   agrees with gold.
- dedup:           not a near-duplicate of a candidate kept before it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distill.blueprint.decontam import Match
from distill.blueprint.schema import BlueprintOutput
from distill.data.prompts import format_final_answer

GATES: tuple[str, ...] = ("schema", "answers", "form", "decontamination", "alignment", "verification", "dedup")


def active_gates(*, verify: bool, alignment: bool) -> list[str]:
    """The gates a run applies, in order: the verifier's and the alignment gate only when on."""
    return [g for g in GATES if (verify or g != "verification") and (alignment or g != "alignment")]


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    reason: str = ""

    @classmethod
    def ok(cls, gate: str) -> GateResult:
        return cls(gate, True, "")

    @classmethod
    def refuse(cls, gate: str, reason: str) -> GateResult:
        return cls(gate, False, reason)


# ---------------------------------------------------------------------------------------------
# Texts a pair is made of

# "1." or "2)" in front of a step is a step number; a circled number is not: in a step it names
# a choice ("① 균역법은 영조 때의 일이다") and must stay.
_LEADING_NUMBER = re.compile(r"^\s*\d{1,2}\s*[.)](?=\s)\s*")
_FINAL_ANSWER_LINE = re.compile(r"^\s*\**\s*정답\s*\**\s*[:：]")


def step_text(text: str) -> str:
    """A chosen step without any number the teacher put in front of it."""
    return _LEADING_NUMBER.sub("", text.strip(), count=1).strip()


def chosen_reasoning(output: BlueprintOutput) -> str:
    """The chosen steps as numbered lines ("1. ...")."""
    return "\n".join(f"{k}. {step_text(step.text)}" for k, step in enumerate(output.chosen_steps, start=1))


def without_answer_lines(text: str) -> str:
    """The reasoning of a text whose last lines may be answer lines ("정답: 3")."""
    lines = text.strip().splitlines()
    while lines and (not lines[-1].strip() or _FINAL_ANSWER_LINE.match(lines[-1])):
        lines.pop()
    return "\n".join(lines).strip()


def chosen_text_as_written(output: BlueprintOutput) -> str:
    """What the teacher wrote for chosen: the steps, then its own final line."""
    return f"{chosen_reasoning(output)}\n\n{output.chosen_answer_line.strip()}"


def final_text(reasoning: str, choice: int) -> str:
    """A pair's chosen or rejected: reasoning, a blank line, the exact answer line."""
    return f"{reasoning.strip()}\n\n{format_final_answer(choice)}"


def _norm(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# The gates


def check_schema(
    payload: Any, *, error: str | None = None, min_choices: int = 4, max_choices: int = 5
) -> tuple[GateResult, BlueprintOutput | None]:
    """Parse the teacher's response (a dict, or its JSON text) and check its shape."""
    from pydantic import ValidationError

    gate = "schema"
    if error:
        return GateResult.refuse(gate, f"no usable response from the teacher: {error}"), None
    if payload is None or (isinstance(payload, str) and not payload.strip()):
        return GateResult.refuse(gate, "empty response"), None
    try:
        if isinstance(payload, str):
            output = BlueprintOutput.model_validate_json(payload)
        else:
            output = BlueprintOutput.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":  # e.g. an answer cut off at the token limit
            return GateResult.refuse(gate, f"not valid JSON ({first.get('msg')})"), None
        where = ".".join(str(part) for part in first.get("loc", ())) or "(root)"
        return GateResult.refuse(gate, f"not a BlueprintOutput: {where}: {first.get('msg')}"), None
    except ValueError as exc:
        return GateResult.refuse(gate, f"not JSON: {str(exc).splitlines()[0]}"), None

    problem = output.problem
    if not problem.question.strip():
        return GateResult.refuse(gate, "the new problem has an empty question"), output
    n = len(problem.choices)
    if not min_choices <= n <= max_choices:
        return GateResult.refuse(gate, f"{n} choices; expected {min_choices} to {max_choices}"), output
    seen: dict[str, int] = {}
    for position, choice in enumerate(problem.choices, start=1):
        key = _norm(choice)
        if not key:
            return GateResult.refuse(gate, f"choice {position} is empty"), output
        if key in seen:
            return GateResult.refuse(gate, f"choices {seen[key]} and {position} are the same text"), output
        seen[key] = position
    if not 1 <= problem.answer <= n:
        return GateResult.refuse(gate, f"answer {problem.answer} is out of range 1..{n}"), output
    if not 1 <= output.rejected_choice <= n:
        return GateResult.refuse(gate, f"rejected_choice {output.rejected_choice} is out of range 1..{n}"), output
    return GateResult.ok(gate), output


def check_answers(output: BlueprintOutput) -> GateResult:
    """Chosen ends in gold; rejected ends in its own named wrong choice, which is not gold."""
    from distill.extraction import extract_answer

    gate = "answers"
    gold = output.problem.answer
    n = len(output.problem.choices)
    chosen = extract_answer(chosen_text_as_written(output), n)
    if chosen is None:
        return GateResult.refuse(gate, "the chosen answer has no readable final answer")
    if chosen != gold:
        return GateResult.refuse(gate, f"the chosen answer ends in {chosen}, but the gold answer is {gold}")
    if output.rejected_choice == gold:
        return GateResult.refuse(gate, f"rejected_choice is the gold answer ({gold})")
    rejected = extract_answer(output.rejected_reasoning, n)
    if rejected is None:
        return GateResult.refuse(gate, "the rejected answer has no readable final answer")
    if rejected != output.rejected_choice:
        return GateResult.refuse(
            gate, f"the rejected answer ends in {rejected}, but it names {output.rejected_choice} as its choice"
        )
    return GateResult.ok(gate)


def check_form(
    output: BlueprintOutput,
    golden_steps: int,
    *,
    min_chars: int = 40,
    max_chars: int = 3000,
    step_tolerance: int = 2,
) -> GateResult:
    """Non-empty, different, bounded reasonings; chosen's steps mirror the golden path's."""
    gate = "form"
    chosen = chosen_reasoning(output) if output.chosen_steps else ""
    rejected = without_answer_lines(output.rejected_reasoning)
    if not chosen.strip() or not any(step_text(s.text) for s in output.chosen_steps):
        return GateResult.refuse(gate, "the chosen reasoning is empty")
    if not rejected.strip():
        return GateResult.refuse(gate, "the rejected reasoning is empty")
    if _norm(chosen) == _norm(rejected):
        return GateResult.refuse(gate, "chosen and rejected are the same text")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if len(text) < min_chars:
            return GateResult.refuse(
                gate, f"the {name} reasoning is {len(text)} characters; at least {min_chars} needed"
            )
        if len(text) > max_chars:
            return GateResult.refuse(
                gate, f"the {name} reasoning is {len(text)} characters; at most {max_chars} allowed"
            )
    steps = len(output.chosen_steps)
    if abs(steps - golden_steps) > step_tolerance:
        return GateResult.refuse(
            gate,
            f"the chosen reasoning has {steps} steps, the golden path {golden_steps} (tolerance {step_tolerance})",
        )
    previous = 0
    for position, step in enumerate(output.chosen_steps, start=1):
        if not 1 <= step.golden_step <= golden_steps:
            return GateResult.refuse(
                gate, f"chosen step {position} maps to golden step {step.golden_step}, outside 1..{golden_steps}"
            )
        if step.golden_step < previous:
            return GateResult.refuse(
                gate,
                f"chosen step {position} maps to golden step {step.golden_step}, before step {previous} (out of order)",
            )
        previous = step.golden_step
    return GateResult.ok(gate)


def check_decontamination(match: Match | None, threshold: float) -> GateResult:
    """Refuse when the closest evaluation or seed item overlaps at `threshold` or more."""
    gate = "decontamination"
    if match is not None and match.score >= threshold:
        return GateResult.refuse(
            gate,
            f"overlaps {match.kind} item {match.ref_id}: character n-gram overlap {match.score:.2f} >= {threshold:.2f}",
        )
    return GateResult.ok(gate)


def check_alignment(score: float, min_alignment: float) -> GateResult:
    """Refuse a chosen reasoning whose step alignment with the golden path is below `min_alignment`."""
    gate = "alignment"
    if score < min_alignment:
        return GateResult.refuse(
            gate, f"the chosen steps align with the golden path at {score:.2f} < min_alignment {min_alignment:.2f}"
        )
    return GateResult.ok(gate)


def check_verification(answers: Sequence[int | None], gold: int, errors: Sequence[str | None] = ()) -> GateResult:
    """Every independent re-solve reached the gold answer."""
    gate = "verification"
    for error in errors:
        if error:
            return GateResult.refuse(gate, f"no usable response from the verifier: {error}")
    if not answers:
        return GateResult.refuse(gate, "no verifier answer")
    for sample, answer in enumerate(answers):
        label = f"verifier sample {sample}" if len(answers) > 1 else "the verifier"
        if answer is None:
            return GateResult.refuse(gate, f"{label} gave no readable answer (gold {gold})")
        if answer != gold:
            return GateResult.refuse(gate, f"{label} answered {answer}, the gold answer is {gold}")
    return GateResult.ok(gate)


def check_duplicate(match: Match | None, threshold: float) -> GateResult:
    """Refuse a near-duplicate of a candidate kept before it."""
    gate = "dedup"
    if match is not None and match.score >= threshold:
        return GateResult.refuse(
            gate, f"near-duplicate of {match.ref_id}: character n-gram overlap {match.score:.2f} >= {threshold:.2f}"
        )
    return GateResult.ok(gate)
