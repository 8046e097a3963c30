"""What the mine stage decides, without asking any model: its requests, its attempts, the selection
rule, the judge step, its metrics and its summary. distill/stages/mine.py asks the models and
records the results; the attempt and hard-negative records are `distill.contracts.Attempt` and
`HardNegative` (docs/design.md, "Data flow and contracts").

The selection rule: an item is a hard negative when the teacher is right (the majority of its
answered samples reach the gold choice) and the student's pass rate, correct samples /
answered samples, is at most the threshold. Its golden path is the first correct teacher
reasoning, its failed path the first student reasoning that reached a wrong choice (an
unreadable answer only when no wrong answer was readable). A request that failed after its
retries is no answer: it counts in no rate, and an item without answers is not selected.

The judge step compares two correct reasonings of a selected item (a second correct teacher
sample, else a correct student sample) in an order fixed by a hash of the item id, so position
bias cannot always favour the teacher's own text; the preferred one becomes the golden path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distill.contracts import Attempt, HardNegative, MCQItem

if TYPE_CHECKING:
    from distill.llm import GenerationParams, Request, Response
    from distill.llm.templates import Template
    from distill.stages.mine import MineConfig

ROLES = ("teacher", "student", "judge")
"""The roles of mine's attempts (the judge asks the teacher's backend)."""
JUDGE_CHOICES = {"A": 1, "B": 2, "TIE": 0}
"""How a judge verdict is stored in the attempt's `choice` (None: no verdict could be read)."""
SKIP_REASONS = (
    "teacher failed",
    "teacher wrong",
    "no student answer",
    "student pass rate above threshold",
    "no wrong student answer",
)
_EPSILON = 1e-9


@dataclass
class Decision:
    """Why an item was (not) selected, and the attempts that make its hard negative."""

    item_id: str
    selected: bool
    reason: str
    """"selected" or one of SKIP_REASONS."""
    teacher_pass_rate: float | None
    student_pass_rate: float | None
    golden: Attempt | None = None
    failed: Attempt | None = None
    golden_from: str | None = None
    """`teacher:<k>` or `student:<k>`: the sample the golden path came from."""
    judge_verdict: str | None = None


# --------------------------------------------------------------------------------------------
# Requests and attempts


def generation_params(cfg: MineConfig, role: str) -> GenerationParams:
    from distill.llm import GenerationParams

    temperature = {"teacher": cfg.teacher_temperature, "student": cfg.student_temperature, "judge": 0.0}[role]
    return GenerationParams(
        temperature=float(temperature),
        max_output_tokens=int(cfg.max_output_tokens),
        thinking=cfg.thinking == "on",
        seed=int(cfg.seed),
    )


def answer_requests(items: Sequence[MCQItem], role: str, samples: int, params: GenerationParams) -> list[Request]:
    """`samples` requests per item (sample_index 0..samples-1), in item order."""
    from distill.data.prompts import render_messages
    from distill.llm import Request

    requests = []
    for item in items:
        messages = tuple(render_messages(item))
        for k in range(samples):
            requests.append(Request(messages=messages, params=params, sample_index=k, label=f"{role} {item.id}"))
    return requests


def prompt_hash(messages: Sequence[Mapping[str, str]]) -> str:
    """16 hex digits of sha256 over the messages (the same prompt, the same hash, in any run)."""
    text = json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def attempt(item: MCQItem, role: str, backend: str, model: str, request: Request, response: Response) -> Attempt:
    """One answer as an Attempt: the choice extracted (None when unreadable or failed). A paid
    answer that cannot be used (the provider blocked it) is no answer, not an empty one: its
    `error` says why, so it counts in no accuracy and is not read as a wrong choice."""
    from distill.extraction import extract_answer, strip_think

    error = response.error or (f"no usable answer: {response.unusable}" if response.unusable else None)
    choice = extract_answer(response.text, item.n_choices) if error is None else None
    return Attempt(
        item_id=item.id,
        role=role,
        backend=backend,
        model=model,
        sample_index=int(request.sample_index),
        prompt_hash=prompt_hash(request.messages),
        text=response.text,
        reasoning=strip_think(response.text) if error is None else "",
        choice=choice,
        correct=bool(choice is not None and item.answer is not None and choice == item.answer),
        latency_s=float(response.latency_s),
        input_tokens=int(response.input_tokens),
        output_tokens=int(response.output_tokens),
        error=error,
    )


def judge_attempt(
    item: MCQItem, backend: str, model: str, request: Request, response: Response, verdict: str | None
) -> Attempt:
    """A judge verdict (A, B, TIE or None, as `extraction.parse_judge_verdict` read it) as an
    Attempt: `choice` 1 = A preferred, 2 = B, 0 = TIE, None = unreadable; `correct` is false."""
    answer = attempt(item, "judge", backend, model, request, response)
    return dataclasses.replace(answer, choice=JUDGE_CHOICES.get(verdict or ""), correct=False)


# --------------------------------------------------------------------------------------------
# The selection rule


def pass_rate(attempts: Sequence[Attempt]) -> float | None:
    """Correct / answered samples (failed requests are no answer); None when none answered.
    An unreadable answer is an answer, and a wrong one."""
    answered = [a for a in attempts if not a.error]
    if not answered:
        return None
    return sum(1 for a in answered if a.correct) / len(answered)


def decide(item: MCQItem, teacher: Sequence[Attempt], student: Sequence[Attempt], threshold: float) -> Decision:
    """The selection rule: teacher right (majority of answered samples) and student pass rate
    <= threshold, with a wrong student answer to serve as the failed path."""
    teacher_rate = pass_rate(teacher)
    student_rate = pass_rate(student)
    base = dict(item_id=item.id, teacher_pass_rate=teacher_rate, student_pass_rate=student_rate)
    if teacher_rate is None:
        return Decision(selected=False, reason="teacher failed", **base)
    if teacher_rate <= 0.5:
        return Decision(selected=False, reason="teacher wrong", **base)
    if student_rate is None:
        return Decision(selected=False, reason="no student answer", **base)
    if student_rate > threshold + _EPSILON:
        return Decision(selected=False, reason="student pass rate above threshold", **base)
    ordered = sorted(student, key=lambda a: a.sample_index)
    wrong = [a for a in ordered if not a.error and not a.correct]
    failed = next((a for a in wrong if a.choice is not None), wrong[0] if wrong else None)
    if failed is None:
        return Decision(selected=False, reason="no wrong student answer", **base)
    golden = min((a for a in teacher if a.correct), key=lambda a: a.sample_index)
    return Decision(
        selected=True,
        reason="selected",
        golden=golden,
        failed=failed,
        golden_from=f"teacher:{golden.sample_index}",
        **base,
    )


def hard_negative(
    item: MCQItem, decision: Decision, student: Sequence[Attempt], error_type: str | None
) -> HardNegative:
    """The selected item with its golden and failed paths, pass rate and choices."""
    assert decision.selected and decision.golden is not None and decision.failed is not None
    golden = decision.golden
    return HardNegative(
        item=item,
        golden_path=golden.reasoning,
        failed_path=decision.failed.reasoning,
        student_choice=decision.failed.choice,
        error_type=error_type or "",
        student_pass_rate=decision.student_pass_rate,
        teacher_choice=golden.choice if golden.role == "teacher" else item.answer,
        student_choices=tuple(a.choice for a in sorted(student, key=lambda a: a.sample_index) if not a.error),
        golden_from=decision.golden_from or "",
        judge_verdict=decision.judge_verdict,
    )


def read_error_types(path: str | None) -> dict[str, str]:
    """{item id: error type} from a JSONL with `id` and `error_type` per seed (none without a path)."""
    if not path:
        return {}
    from distill.errors import InputError
    from distill.io import iter_jsonl

    labels: dict[str, str] = {}
    for row_number, row in iter_jsonl(path):
        if "id" not in row:
            raise InputError(path, "missing required field", row=row_number, field="id")
        if row.get("error_type"):
            labels[str(row["id"])] = str(row["error_type"])
    return labels


# --------------------------------------------------------------------------------------------
# The judge step


def judge_candidates(
    decision: Decision, teacher: Sequence[Attempt], student: Sequence[Attempt]
) -> tuple[Attempt, Attempt] | None:
    """The two correct reasonings to compare: the golden teacher sample and the next correct
    teacher sample, else the first correct student sample; None when there is no second one."""
    if not decision.selected or decision.golden is None:
        return None
    golden = decision.golden
    others = sorted((a for a in teacher if a.correct and a is not golden), key=lambda a: a.sample_index)
    others += sorted((a for a in student if a.correct), key=lambda a: a.sample_index)
    if not others:
        return None
    return golden, others[0]


def judge_order_swapped(item_id: str) -> bool:
    """Whether the golden candidate is shown second (as B): fixed per item by a hash, so the
    order is reproducible and the teacher's own text is not always first."""
    return hashlib.sha256(item_id.encode("utf-8")).digest()[0] % 2 == 1


def judge_request(
    item: MCQItem, template: Template, first: Attempt, second: Attempt, params: GenerationParams
) -> Request:
    """The judge request for two candidates, in the order shown (A = first)."""
    from distill.data.prompts import item_variables
    from distill.llm import Request

    variables = item_variables(item) | {
        "gold": str(item.answer),
        "reasoning_a": first.reasoning.strip(),
        "reasoning_b": second.reasoning.strip(),
    }
    return Request(messages=tuple(template.fill(variables)), params=params, label=f"judge {item.id}")


def apply_verdict(
    decision: Decision, candidates: tuple[Attempt, Attempt], swapped: bool, verdict: str | None
) -> Decision:
    """The preferred candidate becomes the golden path; TIE or no verdict keeps the golden one."""
    golden, other = candidates
    preferred = golden
    if verdict in ("A", "B"):
        shown_first = other if swapped else golden
        shown_second = golden if swapped else other
        preferred = shown_first if verdict == "A" else shown_second
    return dataclasses.replace(
        decision,
        golden=preferred,
        judge_verdict=verdict or "unparsed",
        golden_from=f"{preferred.role}:{preferred.sample_index}",
    )


# --------------------------------------------------------------------------------------------
# Metrics and summary


def _accuracy(attempts: list[Attempt]) -> float:
    answered = [a for a in attempts if not a.error]
    return sum(a.correct for a in answered) / len(answered) if answered else float("nan")


def mine_metrics(
    items: Sequence[MCQItem], attempts: Sequence[Attempt], decisions: Sequence[Decision]
) -> dict[str, float]:
    """`mine/*` metrics: accuracy over answered samples (an unreadable answer is wrong),
    overall and per subject; hard negatives per subject; parse failures and failed requests."""
    from distill.metrics import subject_keys

    subject_of = {item.id: item.subject for item in items}
    keys = subject_keys(subject_of.values())
    metrics: dict[str, float] = {"mine/items": float(len(items))}
    for role in ("teacher", "student"):
        of_role = [a for a in attempts if a.role == role]
        metrics[f"mine/{role}_accuracy"] = _accuracy(of_role)
        for subject, key in keys.items():
            metrics[f"mine/{role}_accuracy/{key}"] = _accuracy(
                [a for a in of_role if subject_of[a.item_id] == subject]
            )
    for role in ROLES:
        of_role = [a for a in attempts if a.role == role]
        answered = [a for a in of_role if not a.error]
        unread = [a for a in answered if a.choice is None]
        metrics[f"mine/{role}_answers"] = float(len(answered))
        metrics[f"mine/{role}_request_failures"] = float(len(of_role) - len(answered))
        metrics[f"mine/parse_failure_rate/{role}"] = len(unread) / len(answered) if answered else float("nan")
    selected = [d for d in decisions if d.selected]
    metrics["mine/hard_negatives"] = float(len(selected))
    metrics["mine/selection_rate"] = len(selected) / len(items) if items else float("nan")
    for subject, key in keys.items():
        metrics[f"mine/hard_negatives/{key}"] = float(sum(1 for d in selected if subject_of[d.item_id] == subject))
        metrics[f"mine/items/{key}"] = float(sum(1 for item in items if item.subject == subject))
    for reason in SKIP_REASONS:
        metrics[f"mine/skipped/{reason.replace(' ', '_')}"] = float(sum(1 for d in decisions if d.reason == reason))
    metrics["mine/judged"] = float(sum(1 for d in decisions if d.judge_verdict is not None))
    metrics["mine/golden_from_student"] = float(
        sum(1 for d in selected if (d.golden_from or "").startswith("student"))
    )
    return metrics


MINE_HEADLINE = (
    "mine/items",
    "mine/teacher_accuracy",
    "mine/student_accuracy",
    "mine/hard_negatives",
    "mine/selection_rate",
    "mine/judged",
    "mine/wall_s",
)
"""The `mine/*` figures a run shows as metrics; per subject they are the `subject_rows` table."""


def subject_rows(items: Sequence[MCQItem], metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per subject: items, teacher and student accuracy, hard negatives (from `mine_metrics`)."""
    from distill.metrics import subject_keys

    return [
        {
            "subject": subject,
            "items": int(metrics[f"mine/items/{key}"]),
            "teacher_accuracy": metrics[f"mine/teacher_accuracy/{key}"],
            "student_accuracy": metrics[f"mine/student_accuracy/{key}"],
            "hard_negatives": int(metrics[f"mine/hard_negatives/{key}"]),
        }
        for subject, key in subject_keys(item.subject for item in items).items()
    ]


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, *, left: bool) -> str:
    space = " " * max(0, width - _display_width(text))
    return text + space if left else space + text


def accuracy_table(items: Sequence[MCQItem], metrics: Mapping[str, float]) -> list[str]:
    """Per subject: items, teacher and student accuracy, hard negatives; then the overall line."""
    from distill.metrics import subject_keys

    header = ["subject", "items", "teacher acc", "student acc", "hard neg."]
    lines = [
        [
            subject,
            str(int(metrics[f"mine/items/{key}"])),
            f"{metrics[f'mine/teacher_accuracy/{key}']:.3f}",
            f"{metrics[f'mine/student_accuracy/{key}']:.3f}",
            str(int(metrics[f"mine/hard_negatives/{key}"])),
        ]
        for subject, key in subject_keys(item.subject for item in items).items()
    ]
    total = [
        "overall (over samples)",
        str(len(items)),
        f"{metrics['mine/teacher_accuracy']:.3f}",
        f"{metrics['mine/student_accuracy']:.3f}",
        str(int(metrics["mine/hard_negatives"])),
    ]
    widths = [max(_display_width(row[i]) for row in [header, total] + lines) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(_pad(cell, widths[i], left=i == 0) for i, cell in enumerate(row)).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return [fmt(header), rule, *[fmt(r) for r in lines], rule, fmt(total)]


def _counted(values: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return ", ".join(f"{value} {count}" for value, count in sorted(counts.items()))


def outcome_lines(cfg: MineConfig, decisions: Sequence[Decision], metrics: Mapping[str, float]) -> list[str]:
    """Why items were skipped, parse failures, failed requests and the judge's work."""
    skipped = _counted([d.reason for d in decisions if not d.selected]) or "none"
    parse_failures = ", ".join(
        f"{role} {int(round(metrics[f'mine/parse_failure_rate/{role}'] * metrics[f'mine/{role}_answers']))}"
        f"/{int(metrics[f'mine/{role}_answers'])}"
        for role in ROLES
        if metrics[f"mine/{role}_answers"] > 0
    )
    failed = {role: int(metrics[f"mine/{role}_request_failures"]) for role in ROLES}
    lines = [
        f"selected: teacher right and student pass rate <= {cfg.pass_rate_threshold:g}  ·  not selected: {skipped}",
        f"parse failures: {parse_failures}",
        f"requests with no usable answer (failed after {cfg.max_retries} retries, or blocked): "
        f"teacher {failed['teacher']}, "
        f"student {failed['student']}, judge {failed['judge']}"
        + ("  (rerun to retry the failed ones; every paid answer is cached)" if sum(failed.values()) else ""),
    ]
    if cfg.judge == "on":
        verdicts = _counted([d.judge_verdict for d in decisions if d.judge_verdict is not None]) or "none"
        lines.append(
            f"judge: {int(metrics['mine/judged'])} items compared ({verdicts}), "
            f"golden path from a student sample on {int(metrics['mine/golden_from_student'])}"
        )
    else:
        lines.append("judge: off (judge=on lets the teacher pick the better of two correct reasonings)")
    return lines


def summary_text(
    cfg: MineConfig,
    items: Sequence[MCQItem],
    decisions: Sequence[Decision],
    metrics: Mapping[str, float],
    usage_lines: Sequence[str],
) -> str:
    """One screen: per-subject accuracy and hard negatives, why items were skipped, LLM usage."""
    title = (
        f"mine  teacher {cfg.teacher} ({cfg.teacher_backend}, {cfg.teacher_samples} sample(s))  ·  "
        f"student {cfg.student} ({cfg.student_backend}, {cfg.student_samples} samples)  ·  {len(items)} seeds"
    )
    return "\n".join([title, *accuracy_table(items, metrics), *outcome_lines(cfg, decisions, metrics), *usage_lines])


def hard_negatives_frame(negatives: Sequence[HardNegative]):
    """Hard negatives as a frame for the dataset input (list columns as JSON text)."""
    import pandas as pd

    frame = pd.DataFrame([negative.to_dict() for negative in negatives])
    if len(frame):
        for column in ("choices", "student_choices"):
            frame[column] = [json.dumps(v, ensure_ascii=False) for v in frame[column]]
    return frame


def items_frame(items: Sequence[MCQItem]):
    """Seed items as a frame for the dataset input (choices as JSON text)."""
    import pandas as pd

    columns = ("id", "subject", "paragraph", "question", "question_plus", "choices", "answer", "source")
    return pd.DataFrame(
        [
            {
                name: json.dumps(list(item.choices), ensure_ascii=False) if name == "choices" else getattr(item, name)
                for name in columns
            }
            for item in items
        ]
    )
