"""Augment's candidates: one planned transfer each, put through the gates, and what becomes of it.

A `Candidate` starts as a plan entry and the hard negative it transfers from; the teacher's
response is screened by the cheap gates (`screen`: schema, answers, form, decontamination), the
survivors are re-solved by the verifier (`apply_verification`) and filtered for near-duplicates
(`apply_dedup`). An accepted candidate becomes a `distill.contracts.PreferencePair`
(`preference_pair`), a refused one a row of rejected_candidates.jsonl (`rejected_row`). The
counts per gate, the `augment/*` and `gate/*` metrics and the one-screen summary are here too;
distill/stages/augment.py asks the models and writes and logs the results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distill.contracts import MCQItem, PreferencePair

if TYPE_CHECKING:
    from distill.llm import GenerationParams, Request
    from distill.llm.templates import Template
    from distill.stages.augment import AugmentConfig

PAIR_SOURCE = "distill-augment"
"""The `source` of every new problem."""


@dataclass
class Candidate:
    """One planned transfer and what became of it."""

    entry: Any
    """PlanEntry."""
    negative: Any
    """HardNegative the transfer starts from."""
    response: Any = None
    """The teacher's Response."""
    output: Any = None
    """BlueprintOutput, once parsed."""
    problem: Any = None
    """The new MCQItem, once the schema gate passed."""
    verifier_answers: list[int | None] = field(default_factory=list)
    alignment: dict[str, float] = field(default_factory=dict)
    """Reasoning-alignment scores (`distill.alignment.pair_alignment`), once computed."""
    refusal: Any = None
    """The GateResult that refused it (None: accepted)."""
    passed: list[str] = field(default_factory=list)
    """Gates passed, in order."""

    @property
    def id(self) -> str:
        return self.entry.candidate_id

    @property
    def alive(self) -> bool:
        return self.refusal is None

    def record(self, result) -> bool:
        if result.passed:
            self.passed.append(result.gate)
            return True
        self.refusal = result
        return False


# ---------------------------------------------------------------------------------------------
# Requests


def blueprint_requests(candidates: Sequence[Candidate], template: Template, params: GenerationParams) -> list[Request]:
    """One blueprint request per candidate, in candidate order."""
    from distill.blueprint.prompt import blueprint_request

    return [blueprint_request(c.negative, c.entry, template, params) for c in candidates]


def verification_requests(
    candidates: Sequence[Candidate], template: Template, params: GenerationParams, samples: int
) -> list[Request]:
    """`samples` re-solve requests per candidate still alive, in candidate order."""
    from distill.blueprint.prompt import verify_request

    return [
        verify_request(c.problem, template, params, sample_index=k, label=f"verify {c.id}")
        for c in candidates
        if c.alive
        for k in range(samples)
    ]


# ---------------------------------------------------------------------------------------------
# The gates, applied


def new_problem(entry, output) -> MCQItem:
    """The transferred problem as a canonical MCQ item (id = the candidate's id)."""
    problem = output.problem
    return MCQItem(
        id=entry.candidate_id,
        paragraph=problem.paragraph.strip(),
        question=problem.question.strip(),
        question_plus=problem.question_plus.strip(),
        choices=tuple(choice.strip() for choice in problem.choices),
        answer=int(problem.answer),
        subject=entry.target.subject,
        source=PAIR_SOURCE,
    )


def _answer_part(text: str | None) -> str | None:
    """The JSON a response carries, without a think block before it."""
    if text is None:
        return None
    from distill.extraction import strip_think

    return strip_think(text)


def screen(candidates: Sequence[Candidate], index, cfg: AugmentConfig) -> None:
    """The cheap gates, in order: schema, answers, form, decontamination."""
    from distill.blueprint import gates
    from distill.blueprint.decontam import item_text

    for candidate in candidates:
        response = candidate.response
        payload = None
        error = None
        if response is not None:
            error = response.error or response.unusable  # paid but unusable: blocked, or failing the schema
            payload = response.parsed if response.parsed is not None else _answer_part(response.text)
        result, output = gates.check_schema(
            payload, error=error, min_choices=cfg.min_choices, max_choices=cfg.max_choices
        )
        candidate.output = output
        if not candidate.record(result):
            continue
        candidate.problem = new_problem(candidate.entry, output)
        if not candidate.record(gates.check_answers(output)):
            continue
        if not candidate.record(
            gates.check_form(
                output,
                candidate.negative.golden_steps,
                min_chars=cfg.min_reasoning_chars,
                max_chars=cfg.max_reasoning_chars,
                step_tolerance=cfg.step_tolerance,
            )
        ):
            continue
        candidate.record(
            gates.check_decontamination(index.best_match(item_text(candidate.problem)), cfg.decontam_threshold)
        )


def apply_verification(candidates: Sequence[Candidate], responses_by_candidate: dict[str, list]) -> None:
    """The verification gate: every re-solve of a candidate must reach its gold answer."""
    from distill.blueprint import gates
    from distill.extraction import extract_answer

    for candidate in candidates:
        if not candidate.alive:
            continue
        responses = responses_by_candidate[candidate.id]
        errors = [r.error or r.unusable for r in responses]
        answers = [None if r.error else extract_answer(r.text, candidate.problem.n_choices) for r in responses]
        candidate.verifier_answers = answers
        candidate.record(gates.check_verification(answers, candidate.problem.answer, errors))


def apply_dedup(candidates: Sequence[Candidate], threshold: float, n: int) -> None:
    """The duplicate gate: a candidate too close to one kept before it is refused."""
    from distill.blueprint import gates
    from distill.blueprint.decontam import item_text
    from distill.blueprint.dedup import DuplicateFilter

    kept = DuplicateFilter(threshold, n)
    for candidate in candidates:
        if not candidate.alive:
            continue
        text = item_text(candidate.problem)
        if candidate.record(gates.check_duplicate(kept.closest(text), threshold)):
            kept.keep(candidate.id, text)


# ---------------------------------------------------------------------------------------------
# What the run writes


def preference_pair(
    candidate: Candidate, *, prompt_version: str, teacher: str, verifier: str | None
) -> PreferencePair:
    """An accepted candidate as a preference pair (the contract train reads), with its lineage
    in `meta`: seed, transfer, logic structure, error type, prompt version, models."""
    from distill.blueprint.gates import chosen_reasoning, final_text, without_answer_lines
    from distill.data.prompts import render_messages

    output, problem, entry = candidate.output, candidate.problem, candidate.entry
    return PreferencePair(
        id=candidate.id,
        messages=tuple(render_messages(problem)),
        chosen=final_text(chosen_reasoning(output), problem.answer),
        rejected=final_text(without_answer_lines(output.rejected_reasoning), output.rejected_choice),
        gold=problem.answer,
        rejected_choice=output.rejected_choice,
        subject=problem.subject,
        problem=problem,
        meta={
            "seed_id": entry.seed_id,
            "transfer": entry.target.kind,
            "logic_structure": output.logic_structure.strip(),
            "error_type": output.error_type.strip(),
            "prompt_version": prompt_version,
            "target_topic": entry.target.topic,
            "seed_subject": candidate.negative.item.subject,
            "golden_steps": [step.golden_step for step in output.chosen_steps],
            "teacher": teacher,
            "verifier": verifier or "",
            **candidate.alignment,
        },
    )


def rejected_row(candidate: Candidate) -> dict[str, Any]:
    """A refused candidate: the gate, its reason, the gates passed and what the teacher wrote."""
    refusal = candidate.refusal
    row: dict[str, Any] = {
        "id": candidate.id,
        "seed_id": candidate.entry.seed_id,
        "gate": refusal.gate,
        "reason": refusal.reason,
        "transfer": candidate.entry.target.kind,
        "subject": candidate.entry.target.subject,
        "target_topic": candidate.entry.target.topic,
        "passed_gates": list(candidate.passed),
    }
    if candidate.verifier_answers:
        row["verifier_answers"] = list(candidate.verifier_answers)
    if candidate.output is not None:
        row["candidate"] = candidate.output.model_dump(mode="json")
    elif candidate.response is not None:
        row["response_text"] = (candidate.response.text or "")[:4000]
    return row


def plan_rows(entries: Sequence[Any]) -> list[dict[str, str]]:
    """The run's plan (plan.json): per PlanEntry, candidate, seed, transfer kind, subject and topic."""
    return [
        {
            "id": e.candidate_id,
            "seed_id": e.seed_id,
            "transfer": e.target.kind,
            "subject": e.target.subject,
            "topic": e.target.topic,
        }
        for e in entries
    ]


# ---------------------------------------------------------------------------------------------
# Counts, metrics, summary


def gate_counts(candidates: Sequence[Candidate], gate_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per gate: candidates that reached it, passed it, were refused by it."""
    counts = {name: {"reached": 0, "passed": 0, "rejected": 0} for name in gate_names}
    for candidate in candidates:
        for name in candidate.passed:
            counts[name]["reached"] += 1
            counts[name]["passed"] += 1
        if candidate.refusal is not None:
            counts[candidate.refusal.gate]["reached"] += 1
            counts[candidate.refusal.gate]["rejected"] += 1
    return counts


def augment_metrics(
    candidates: Sequence[Candidate], counts: dict[str, dict[str, int]], pairs: Sequence[PreferencePair]
) -> dict[str, float]:
    """`augment/*` (candidates, accepted, per subject and per transfer kind) and
    `gate/<name>/{reached,passed,rejected,pass_share}`; pass_share = passed / reached."""
    from distill.blueprint.plan import TRANSFER_KINDS
    from distill.metrics import subject_keys

    metrics: dict[str, float] = {
        "augment/candidates": float(len(candidates)),
        "augment/accepted": float(len(pairs)),
        "augment/acceptance_rate": len(pairs) / len(candidates) if candidates else 0.0,
    }
    for name, count in counts.items():
        metrics[f"gate/{name}/reached"] = float(count["reached"])
        metrics[f"gate/{name}/passed"] = float(count["passed"])
        metrics[f"gate/{name}/rejected"] = float(count["rejected"])
        if count["reached"]:
            metrics[f"gate/{name}/pass_share"] = count["passed"] / count["reached"]
    by_subject = Counter(pair.subject for pair in pairs)
    for subject, key in subject_keys(c.entry.target.subject for c in candidates).items():
        metrics[f"augment/accepted/subject/{key}"] = float(by_subject.get(subject, 0))
    by_kind = Counter(pair.meta["transfer"] for pair in pairs)
    for kind in TRANSFER_KINDS:
        metrics[f"augment/accepted/transfer/{kind}"] = float(by_kind.get(kind, 0))
    return metrics


AUGMENT_HEADLINE = ("augment/candidates", "augment/accepted", "augment/acceptance_rate", "augment/wall_s")
"""The `augment/*` figures a run shows as metrics; per gate, subject and transfer kind they are tables."""


def gate_rows(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Per gate, in order: reached, passed, rejected, pass_share (passed / reached)."""
    return [
        {"gate": name, **count, "pass_share": count["passed"] / count["reached"] if count["reached"] else None}
        for name, count in counts.items()
    ]


def accepted_rows(candidates: Sequence[Candidate], pairs: Sequence[PreferencePair]) -> list[dict[str, Any]]:
    """Accepted pairs per subject and per transfer kind (`by` says which)."""
    from distill.blueprint.plan import TRANSFER_KINDS

    by_subject = Counter(pair.subject for pair in pairs)
    by_kind = Counter(pair.meta["transfer"] for pair in pairs)
    subjects = dict.fromkeys(c.entry.target.subject for c in candidates)
    return [{"by": "subject", "name": s, "accepted": by_subject.get(s, 0)} for s in subjects] + [
        {"by": "transfer", "name": k, "accepted": by_kind.get(k, 0)} for k in TRANSFER_KINDS
    ]


def _refusal_lines(candidates: Sequence[Candidate], limit: int = 12) -> list[str]:
    refused = [c for c in candidates if c.refusal is not None]
    if not refused:
        return []
    lines = ["", "refused:"]
    for candidate in refused[:limit]:
        reason = candidate.refusal.reason
        reason = reason if len(reason) <= 90 else reason[:87] + "..."
        lines.append(f"  {candidate.id:<18} {candidate.refusal.gate:<15} {reason}")
    if len(refused) > limit:
        lines.append(f"  ... and {len(refused) - limit} more (rejected_candidates.jsonl)")
    return lines


def summary_text(
    *,
    candidates: Sequence[Candidate],
    counts: dict[str, dict[str, int]],
    pairs: Sequence[PreferencePair],
    usage_lines: Sequence[str],
    title: str,
) -> str:
    """One screen: each gate's reached/passed/refused, what was accepted, why the rest was refused."""
    lines = [title, "", f"{'gate':<16}{'reached':>8}{'passed':>8}{'refused':>8}{'pass':>7}"]
    for name, count in counts.items():
        share = f"{count['passed'] / count['reached']:.0%}" if count["reached"] else "-"
        lines.append(f"{name:<16}{count['reached']:>8}{count['passed']:>8}{count['rejected']:>8}{share:>7}")
    rate = len(pairs) / len(candidates) if candidates else 0.0
    lines.append(f"{'accepted':<16}{len(candidates):>8}{len(pairs):>8}{len(candidates) - len(pairs):>8}{rate:>7.0%}")
    lines.append("")
    by_subject = Counter(pair.subject for pair in pairs)
    by_kind = Counter(pair.meta["transfer"] for pair in pairs)
    lines.append("accepted by subject:  " + (", ".join(f"{s} {n}" for s, n in sorted(by_subject.items())) or "-"))
    lines.append("accepted by transfer: " + (", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) or "-"))
    lines += _refusal_lines(candidates)
    lines.append("")
    lines += list(usage_lines)
    return "\n".join(lines)
