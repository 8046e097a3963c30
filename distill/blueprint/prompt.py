"""The blueprint and verify requests, built from the template files in distill/resources/prompts.

Templates use MLflow's prompt syntax (`{{name}}`), so the text registered in the prompt
registry is exactly the text filled here. Every request is a single user message: the
blueprint request carries the response schema (`BlueprintOutput`); the verify request is a
fresh prompt with the new problem only (no seed, no golden path, no chosen reasoning), and
its answer is read from the text like any model's answer.
"""

from __future__ import annotations

import hashlib
import re
from typing import Mapping

from distill.blueprint.plan import PlanEntry
from distill.blueprint.schema import BlueprintOutput, HardNegative
from distill.data.prompts import ANSWER_INSTRUCTION_REASONING, render_user_prompt
from distill.data.schema import MCQItem
from distill.llm.base import GenerationParams, Request

TEMPLATE_NAMES = ("blueprint", "verify")

TRANSFER_KIND_WORDS = {
    "intra-subject": "intra-subject (같은 과목의 다른 시대·주제)",
    "cross-subject": "cross-subject (다른 과목)",
    "cross-domain": "cross-domain (수능 과목 밖의 다른 분야)",
}

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def load_template(name: str) -> str:
    """The bundled template `name` (blueprint or verify)."""
    from distill.resources import resource_path

    return resource_path(f"prompts/{name}.txt").read_text(encoding="utf-8")


def template_variables(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template))


def fill(template: str, values: Mapping[str, object]) -> str:
    """Replace every `{{name}}`; a variable without a value (or a value nobody asked for) is an error."""
    wanted = template_variables(template)
    missing = wanted - set(values)
    if missing:
        raise KeyError(f"template variables without a value: {sorted(missing)}")
    unused = set(values) - wanted
    if unused:
        raise KeyError(f"values for variables the template does not have: {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def template_version(template: str) -> str:
    """A short content hash: what a pair records as `prompt_version` (the same in every store)."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


def problem_text(item: MCQItem) -> str:
    """Passage, question, <보기> and numbered choices, without the answer instruction."""
    text = render_user_prompt(item, reasoning=True)
    return text.removesuffix(ANSWER_INSTRUCTION_REASONING).rstrip()


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
    negative: HardNegative, entry: PlanEntry, template: str, params: GenerationParams
) -> Request:
    return Request(
        messages=({"role": "user", "content": fill(template, blueprint_values(negative, entry))},),
        params=params,
        schema=BlueprintOutput,
        label=f"blueprint {entry.candidate_id}",
    )


def verify_request(
    problem: MCQItem, template: str, params: GenerationParams, *, sample_index: int = 0, label: str = ""
) -> Request:
    return Request(
        messages=({"role": "user", "content": fill(template, {"problem": render_user_prompt(problem, reasoning=True)})},),
        params=params,
        sample_index=sample_index,
        label=label or f"verify {problem.id}",
    )
