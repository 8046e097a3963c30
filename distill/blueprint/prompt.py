"""The blueprint and verify requests, filled from the template files in distill/resources/prompts.

The templates go through the one filling engine (distill/llm/templates.py), so the text
registered in the prompt registry is exactly the text filled here. Every request is a single
user message: the blueprint request carries the response schema (`BlueprintOutput`); the verify
request is a fresh prompt with the new problem only (no seed, no golden path, no chosen
reasoning), and its answer is read from the text like any model's answer.
"""

from __future__ import annotations

from distill.blueprint.plan import PlanEntry
from distill.blueprint.schema import BlueprintOutput
from distill.contracts import HardNegative, MCQItem
from distill.data import prompts as answer_prompt
from distill.llm.base import GenerationParams, Request
from distill.llm.templates import Template, load_template

TEMPLATE_NAMES = ("blueprint", "verify")

TRANSFER_KIND_WORDS = {
    "intra-subject": "intra-subject (같은 과목의 다른 시대·주제)",
    "cross-subject": "cross-subject (다른 과목)",
    "cross-domain": "cross-domain (수능 과목 밖의 다른 분야)",
}


def load_templates() -> dict[str, Template]:
    """The bundled blueprint and verify templates, by name."""
    return {name: load_template(name) for name in TEMPLATE_NAMES}


def problem_text(item: MCQItem) -> str:
    """Passage, question, <보기> and numbered choices: the answer prompt's user message without
    its answer instruction."""
    user = answer_prompt.render_user_prompt(item, reasoning=True)
    return user.removesuffix(answer_prompt.ANSWER_INSTRUCTION_REASONING).rstrip()


def blueprint_values(negative: HardNegative, entry: PlanEntry) -> dict[str, object]:
    item = negative.item
    gold = int(item.answer)  # type: ignore[arg-type]
    student = negative.student_choice
    return {
        "transfer_kind": TRANSFER_KIND_WORDS.get(entry.target.kind, entry.target.kind),
        "target_subject": entry.target.subject,
        "target_topic": entry.target.topic,
        "seed_subject": item.subject,
        "seed_problem": problem_text(item),
        "gold": f"{gold}. {item.choices[gold - 1].strip()}",
        "golden_path": negative.golden_path.strip(),
        "golden_steps": negative.golden_steps,
        "failed_path": negative.failed_path.strip(),
        "student_choice": student if student is not None else "읽을 수 없음",
        "error_type": negative.error_type.strip() or "(명시되지 않음: 오답 풀이에서 직접 파악하세요)",
        "n_choices": item.n_choices,
    }


def blueprint_request(
    negative: HardNegative, entry: PlanEntry, template: Template, params: GenerationParams
) -> Request:
    return Request(
        messages=tuple(template.fill(blueprint_values(negative, entry))),
        params=params,
        schema=BlueprintOutput,
        label=f"blueprint {entry.candidate_id}",
    )


def verify_request(
    problem: MCQItem, template: Template, params: GenerationParams, *, sample_index: int = 0, label: str = ""
) -> Request:
    return Request(
        messages=tuple(template.fill({"problem": answer_prompt.render_user_prompt(problem, reasoning=True)})),
        params=params,
        sample_index=sample_index,
        label=label or f"verify {problem.id}",
    )
