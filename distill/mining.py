"""The `mine` stage: find hard negatives, items the teacher gets right and the student gets wrong.

For each seed item the teacher answers `teacher_samples` times and the student
`student_samples` times (sampled, so its pass rate means something). An item is a hard negative
when the teacher is right (the majority of its answered samples reach the gold choice) and the
student's pass rate, correct samples / answered samples, is at most `pass_rate_threshold`
(default 0.34: at most 1 of 3 samples right). Its `golden_path` is the first correct teacher
reasoning, its `failed_path` the first student reasoning that reached a wrong choice (an
unreadable answer only when no wrong answer was readable).

Optional judge step (`judge=on`): when an item has two correct reasonings (a second correct
teacher sample, else a correct student sample), the teacher compares them with its own judge
prompt (distill/resources/prompts/judge.txt) and the preferred one becomes the golden path.
The two are shown in an order fixed by a hash of the item id, so position bias cannot always
favour the teacher's own text; the verdict is parsed strictly (A, B or TIE; anything else keeps
the teacher's reasoning).

Attempt rows (attempts.parquet; DESIGN.md schema plus `error`):
`item_id, role, backend, model, sample_index, prompt_hash, text, reasoning, choice, correct,
latency_s, input_tokens, output_tokens, error`. `reasoning` is the visible answer (think blocks
removed), `choice` the extracted answer or null (unreadable, or the request failed), `error`
the message of a request that still failed after retries (such a row is no answer: it counts
in no accuracy, and the item is not selected). Judge rows: `choice` 1 = A preferred, 2 = B,
0 = TIE, null = unreadable verdict (so null means "no answer could be read" for every role);
`correct` is false.

Everything a run needs goes through the response cache (`cache_path`); the embedded default
answers from a recording bundled with the package (distill/resources/replay/mine.jsonl,
written by the project for the 24 bundled seeds, rebuilt by scripts/build_mine_replay.py),
imported into the cache at the start of a run that uses the replay backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from distill.data.schema import MCQItem
from distill.errors import ConfigError, InputError

ROLES = ("teacher", "student", "judge")
ANSWER_PROMPT_NAME = "distill-answer"
JUDGE_PROMPT_NAME = "distill-judge"
RECORDING_BACKEND = "recording"
"""The backend name under which the bundled recording's responses are keyed: they were
written by the project, not fetched from any real backend."""
EXAMPLE_MODELS = ("example-teacher", "example-student")
ATTEMPT_COLUMNS = [
    "item_id", "role", "backend", "model", "sample_index", "prompt_hash", "text", "reasoning",
    "choice", "correct", "latency_s", "input_tokens", "output_tokens", "error",
]
JUDGE_CHOICES = {"A": 1, "B": 2, "TIE": 0}
"""How a judge verdict is stored in the attempt row's `choice` column."""
ATTEMPTS_FILE = "attempts.parquet"
HARD_NEGATIVES_FILE = "hard_negatives.jsonl"
ARTIFACT_DIR = "mine"
_EPSILON = 1e-9


def bundled_recording() -> Path:
    from distill.resources import resource_path

    return resource_path("replay/mine.jsonl")


def prompt_template_path(name: str) -> Path:
    from distill.resources import resource_path

    return resource_path(f"prompts/{name}.txt")


@dataclass
class MineConfig:
    """Run a teacher and a student over seed items and keep the hard negatives."""

    seeds: str | None = field(default=None, metadata={"help": "Seed items (a file). Empty: the 24 bundled seeds (distill/resources/seeds.jsonl)."})
    format: str = field(default="auto", metadata={"help": "Seeds format: auto, competition, kice, kmmlu or jsonl."})
    subject_map: str | None = field(default=None, metadata={"help": "Optional file mapping item ids or categories to subjects."})
    teacher: str = field(default="example-teacher", metadata={"help": "Teacher model id (e.g. gemini-2.5-flash). example-teacher exists only in the bundled recording."})
    teacher_backend: str = field(default="replay", metadata={"help": "Teacher backend: gemini, openai, local or replay (answers only from the cache)."})
    student: str = field(default="example-student", metadata={"help": "Student model id or local path (e.g. Qwen/Qwen3-14B, tiny-qwen3). example-student exists only in the bundled recording."})
    student_backend: str = field(default="replay", metadata={"help": "Student backend: local, openai, gemini or replay."})
    student_samples: int = field(default=3, metadata={"help": "Student answers per item (sampled at student_temperature); the pass rate is correct / answered."})
    teacher_samples: int = field(default=1, metadata={"help": "Teacher answers per item; the teacher is right on an item when most of its answered samples are."})
    student_temperature: float = field(default=0.7, metadata={"help": "Student sampling temperature (above 0, or every sample is the same)."})
    teacher_temperature: float = field(default=0.0, metadata={"help": "Teacher sampling temperature (raise it with teacher_samples > 1)."})
    max_output_tokens: int = field(default=2048, metadata={"help": "Answer length limit for teacher, student and judge (reasoning tokens included)."})
    thinking: str = field(default="off", metadata={"help": "Model reasoning mode for all roles: on (think block returned) or off."})
    pass_rate_threshold: float = field(default=0.34, metadata={"help": "Select an item when the teacher is right and the student pass rate is <= this (0.34: at most 1 of 3 samples right)."})
    judge: str = field(default="off", metadata={"help": "on: when an item has two correct reasonings, the teacher judges which is better (A/B/TIE) and the preferred one becomes golden_path."})
    concurrency: int = field(default=16, metadata={"help": "Requests in flight per network backend."})
    timeout_s: float = field(default=300.0, metadata={"help": "Per-request timeout (network backends); a timeout is retried."})
    max_retries: int = field(default=6, metadata={"help": "Retries per request on 429/5xx/timeouts/bad bodies; after that the request is a failure row."})
    backoff_base_s: float = field(default=1.0, metadata={"help": "Retry backoff base: attempt k waits up to base * 2^k (full jitter), at least the server's Retry-After."})
    backoff_max_s: float = field(default=60.0, metadata={"help": "Longest wait between retries."})
    cache_path: str = field(default="outputs/mine/cache.sqlite", metadata={"help": "Response cache (SQLite). Every response is stored as it arrives; a rerun pays for nothing twice."})
    recording: str | None = field(default=None, metadata={"help": "JSONL recording imported into the cache when a role uses the replay backend. Empty: the bundled one."})
    error_types: str | None = field(default=None, metadata={"help": "Optional JSONL with id and error_type per seed (a label of the student's mistake), copied into hard negatives. Empty: the bundled labels when seeds are the bundled ones."})
    prices: str | None = field(default=None, metadata={"help": "Price table (YAML/JSON, USD per 1M input/output tokens per model) for llm/cost_usd. Empty: built-in list prices."})
    student_batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (local student)."})
    device: str = field(default="auto", metadata={"help": "Local student: cuda, cpu, mps, or auto."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default distill-mine)."})
    output_dir: str = field(default="outputs/mine", metadata={"help": "Where attempts.parquet, hard_negatives.jsonl and summary.txt are written (also logged as artifacts)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed; sample k of a prompt uses seed + k."})
    max_items: int | None = field(default=None, metadata={"help": "Mine only the first N seeds; empty for all."})

    def __post_init__(self) -> None:
        from distill.data.prompts import parse_thinking
        from distill.llm import BACKENDS

        for name in ("seeds", "subject_map", "recording", "error_types", "prices", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)
        if isinstance(self.max_items, str):
            self.max_items = int(self.max_items) if self.max_items.strip() else None
        self.thinking = "on" if parse_thinking(self.thinking) else "off"
        self.judge = "on" if parse_thinking(self.judge) else "off"
        for role in ("teacher", "student"):
            kind = str(getattr(self, f"{role}_backend")).strip().lower()
            if kind not in BACKENDS:
                raise ConfigError(f"{role}_backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
            setattr(self, f"{role}_backend", kind)
            model = str(getattr(self, role)).strip()
            if not model:
                raise ConfigError(f"{role} needs a model name")
            if kind != "replay" and model in EXAMPLE_MODELS:
                raise ConfigError(
                    f"{role} {model!r} exists only in the bundled recording (replay backend); "
                    f"name a real model with -P {role}=... to use the {kind} backend"
                )
        for name in ("student_samples", "teacher_samples", "max_output_tokens", "concurrency", "student_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s}")
        if not 0.0 <= self.pass_rate_threshold <= 1.0:
            raise ConfigError(f"pass_rate_threshold must be within 0..1, got {self.pass_rate_threshold}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"max_items must be at least 1 (or empty for all), got {self.max_items}")

    @property
    def uses_replay(self) -> bool:
        return "replay" in (self.teacher_backend, self.student_backend)

    def seeds_path(self) -> str:
        if self.seeds:
            return self.seeds
        from distill.resources import resource_path

        return str(resource_path("seeds.jsonl"))

    def error_types_path(self) -> str | None:
        if self.error_types:
            return self.error_types
        if self.seeds is None:
            from distill.resources import resource_path

            return str(resource_path("seed_notes.jsonl"))
        return None


@dataclass
class Decision:
    """Why an item was (not) selected, and the rows that make its hard negative."""

    item_id: str
    selected: bool
    reason: str
    """selected | teacher failed | teacher wrong | no student answer | student pass rate above threshold | no wrong student answer"""
    teacher_pass_rate: float | None
    student_pass_rate: float | None
    golden: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    golden_from: str | None = None
    """`teacher:<k>` or `student:<k>`: the sample the golden path came from."""
    judge_verdict: str | None = None


@dataclass
class MineResult:
    attempts: Any
    """pandas DataFrame, ATTEMPT_COLUMNS."""
    hard_negatives: list[dict[str, Any]]
    decisions: list[Decision]


@dataclass
class MineOutputs:
    run_id: str
    attempts: Any
    hard_negatives: list[dict[str, Any]]
    decisions: list[Decision]
    metrics: dict[str, float]
    usage: dict[str, dict[str, float]]
    prompts: dict[str, str]
    output_dir: Path
    attempts_path: Path
    hard_negatives_path: Path
    wall_s: float


# --------------------------------------------------------------------------------------------
# Pure functions: requests, attempt rows, selection, judge


def generation_params(cfg: MineConfig, role: str):
    from distill.llm import GenerationParams

    temperature = {"teacher": cfg.teacher_temperature, "student": cfg.student_temperature, "judge": 0.0}[role]
    return GenerationParams(
        temperature=float(temperature),
        max_output_tokens=int(cfg.max_output_tokens),
        thinking=cfg.thinking == "on",
        seed=int(cfg.seed),
    )


def answer_requests(items: Sequence[MCQItem], role: str, samples: int, params) -> list:
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
    text = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def attempt_row(item: MCQItem, role: str, backend: str, model: str, request, response) -> dict[str, Any]:
    """One answer as an attempt row: the choice extracted (None when unreadable or failed)."""
    from distill.extraction import extract_answer, strip_think

    choice = extract_answer(response.text, item.n_choices) if response.ok else None
    return {
        "item_id": item.id,
        "role": role,
        "backend": backend,
        "model": model,
        "sample_index": int(request.sample_index),
        "prompt_hash": prompt_hash(request.messages),
        "text": response.text,
        "reasoning": strip_think(response.text) if response.ok else "",
        "choice": choice,
        "correct": bool(choice is not None and item.answer is not None and choice == item.answer),
        "latency_s": float(response.latency_s),
        "input_tokens": int(response.input_tokens),
        "output_tokens": int(response.output_tokens),
        "error": response.error,
    }


def pass_rate(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Correct / answered samples (failed requests are no answer); None when none answered.
    An unreadable answer is an answer, and a wrong one."""
    answered = [r for r in rows if not r.get("error")]
    if not answered:
        return None
    return sum(1 for r in answered if r["correct"]) / len(answered)


def decide(item: MCQItem, teacher_rows: Sequence[dict], student_rows: Sequence[dict], threshold: float) -> Decision:
    """The selection rule: teacher right (majority of answered samples) and student pass rate
    <= threshold, with a wrong student answer to serve as the failed path."""
    teacher_rate = pass_rate(teacher_rows)
    student_rate = pass_rate(student_rows)
    base = dict(item_id=item.id, teacher_pass_rate=teacher_rate, student_pass_rate=student_rate)
    if teacher_rate is None:
        return Decision(selected=False, reason="teacher failed", **base)
    if teacher_rate <= 0.5:
        return Decision(selected=False, reason="teacher wrong", **base)
    if student_rate is None:
        return Decision(selected=False, reason="no student answer", **base)
    if student_rate > threshold + _EPSILON:
        return Decision(selected=False, reason="student pass rate above threshold", **base)
    ordered = sorted(student_rows, key=lambda r: r["sample_index"])
    wrong = [r for r in ordered if not r.get("error") and not r["correct"]]
    failed = next((r for r in wrong if r["choice"] is not None), wrong[0] if wrong else None)
    if failed is None:
        return Decision(selected=False, reason="no wrong student answer", **base)
    golden = min((r for r in teacher_rows if r["correct"]), key=lambda r: r["sample_index"])
    return Decision(
        selected=True, reason="selected", golden=golden, failed=failed,
        golden_from=f"teacher:{golden['sample_index']}", **base,
    )


def judge_candidates(decision: Decision, teacher_rows: Sequence[dict], student_rows: Sequence[dict]) -> tuple[dict, dict] | None:
    """The two correct reasonings to compare: the golden teacher sample and the next correct
    teacher sample, else the first correct student sample; None when there is no second one."""
    if not decision.selected or decision.golden is None:
        return None
    golden = decision.golden
    others = sorted((r for r in teacher_rows if r["correct"] and r is not golden), key=lambda r: r["sample_index"])
    others += sorted((r for r in student_rows if r["correct"]), key=lambda r: r["sample_index"])
    if not others:
        return None
    return golden, others[0]


def judge_order_swapped(item_id: str) -> bool:
    """Whether the golden candidate is shown second (as B): fixed per item by a hash, so the
    order is reproducible and the teacher's own text is not always first."""
    return hashlib.sha256(item_id.encode("utf-8")).digest()[0] % 2 == 1


def item_variables(item: MCQItem) -> dict[str, str]:
    """The answer template's variables for an item (as `render_user_prompt` lays them out)."""
    return {
        "paragraph": item.paragraph.strip(),
        "question": item.question.strip(),
        "question_plus": item.question_plus.strip(),
        "choices": "\n".join(f"{label}. {text.strip()}" for label, text in enumerate(item.choices, 1)),
    }


def judge_request(item: MCQItem, template: list[dict[str, str]], first: dict, second: dict, params):
    """The judge request for two candidate rows, in the order shown (A = first)."""
    from distill.llm import Request
    from distill.prompt_registry import fill_chat_template

    variables = item_variables(item) | {
        "gold": str(item.answer),
        "reasoning_a": first["reasoning"].strip(),
        "reasoning_b": second["reasoning"].strip(),
    }
    return Request(messages=tuple(fill_chat_template(template, variables)), params=params, label=f"judge {item.id}")


def apply_verdict(decision: Decision, candidates: tuple[dict, dict], swapped: bool, verdict: str | None) -> Decision:
    """The preferred candidate becomes the golden path; TIE or no verdict keeps the golden one."""
    golden, other = candidates
    preferred = golden
    if verdict in ("A", "B"):
        shown_first = other if swapped else golden
        shown_second = golden if swapped else other
        preferred = shown_first if verdict == "A" else shown_second
    return dataclasses.replace(
        decision, golden=preferred, judge_verdict=verdict or "unparsed",
        golden_from=f"{preferred['role']}:{preferred['sample_index']}",
    )


def hard_negative_record(item: MCQItem, decision: Decision, student_rows: Sequence[dict], error_type: str | None) -> dict[str, Any]:
    """The item plus golden_path, failed_path, pass rate and choices (DESIGN.md, Hard negative)."""
    assert decision.selected and decision.golden is not None and decision.failed is not None
    record = item.to_dict()
    record.update(
        golden_path=decision.golden["reasoning"],
        failed_path=decision.failed["reasoning"],
        student_pass_rate=decision.student_pass_rate,
        teacher_choice=decision.golden["choice"] if decision.golden["role"] == "teacher" else item.answer,
        student_choice=decision.failed["choice"],
        student_choices=[r["choice"] for r in sorted(student_rows, key=lambda r: r["sample_index"]) if not r.get("error")],
        error_type=error_type,
        golden_from=decision.golden_from,
        judge_verdict=decision.judge_verdict,
    )
    return record


def attempts_frame(rows: Iterable[dict[str, Any]]):
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=ATTEMPT_COLUMNS)
    frame["choice"] = frame["choice"].astype("Int64")
    frame["correct"] = frame["correct"].astype(bool)
    frame["sample_index"] = frame["sample_index"].astype("int64")
    frame["input_tokens"] = frame["input_tokens"].astype("int64")
    frame["output_tokens"] = frame["output_tokens"].astype("int64")
    frame["latency_s"] = frame["latency_s"].astype("float64")
    frame["error"] = frame["error"].astype(object).where(frame["error"].notna(), None)
    return frame


def mine_metrics(items: Sequence[MCQItem], rows: Sequence[dict], decisions: Sequence[Decision], threshold: float) -> dict[str, float]:
    """`mine/*` metrics: accuracy over answered samples (an unreadable answer is wrong),
    overall and per subject; hard negatives per subject; parse failures and failed requests."""
    from distill.metrics import subject_keys

    subject_of = {item.id: item.subject for item in items}
    keys = subject_keys(subject_of.values())
    metrics: dict[str, float] = {"mine/items": float(len(items))}

    def accuracy(selected: list[dict]) -> float:
        answered = [r for r in selected if not r.get("error")]
        return sum(r["correct"] for r in answered) / len(answered) if answered else float("nan")

    for role in ("teacher", "student"):
        role_rows = [r for r in rows if r["role"] == role]
        metrics[f"mine/{role}_accuracy"] = accuracy(role_rows)
        for subject, key in keys.items():
            metrics[f"mine/{role}_accuracy/{key}"] = accuracy([r for r in role_rows if subject_of[r["item_id"]] == subject])
    for role in ROLES:
        role_rows = [r for r in rows if r["role"] == role]
        answered = [r for r in role_rows if not r.get("error")]
        unread = [r for r in answered if r["choice"] is None]
        metrics[f"mine/{role}_answers"] = float(len(answered))
        metrics[f"mine/{role}_request_failures"] = float(len(role_rows) - len(answered))
        metrics[f"mine/parse_failure_rate/{role}"] = len(unread) / len(answered) if answered else float("nan")
    selected = [d for d in decisions if d.selected]
    metrics["mine/hard_negatives"] = float(len(selected))
    metrics["mine/selection_rate"] = len(selected) / len(items) if items else float("nan")
    for subject, key in keys.items():
        metrics[f"mine/hard_negatives/{key}"] = float(sum(1 for d in selected if subject_of[d.item_id] == subject))
        metrics[f"mine/items/{key}"] = float(sum(1 for item in items if item.subject == subject))
    for reason in ("teacher failed", "teacher wrong", "no student answer", "student pass rate above threshold", "no wrong student answer"):
        metrics[f"mine/skipped/{reason.replace(' ', '_')}"] = float(sum(1 for d in decisions if d.reason == reason))
    metrics["mine/judged"] = float(sum(1 for d in decisions if d.judge_verdict is not None))
    metrics["mine/golden_from_student"] = float(sum(1 for d in selected if (d.golden_from or "").startswith("student")))
    return metrics


# --------------------------------------------------------------------------------------------
# Edges: recording, backends, the collection loop


def read_error_types(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    from distill.io import read_jsonl

    labels: dict[str, str] = {}
    for row_number, row in enumerate(read_jsonl(path), start=1):
        if "id" not in row:
            raise InputError(path, "missing required field", row=row_number, field="id")
        if row.get("error_type"):
            labels[str(row["id"])] = str(row["error_type"])
    return labels


def import_recording(cache, path: str | Path) -> int:
    """Put every response of a JSONL recording into the cache (existing keys are kept);
    return how many were new. Rows: `{key, backend, model, role, item_id, sample_index,
    response: {text, input_tokens, output_tokens, latency_s, finish_reason}}`."""
    from distill.io import read_jsonl
    from distill.llm import Response

    added = 0
    for row_number, row in enumerate(read_jsonl(path), start=1):
        for name in ("key", "backend", "model", "response"):
            if name not in row:
                raise InputError(path, "missing required field", row=row_number, field=name)
        answer = row["response"]
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise InputError(path, "response must be an object with a text", row=row_number, field="response")
        response = Response(
            text=answer["text"],
            input_tokens=int(answer.get("input_tokens") or 0),
            output_tokens=int(answer.get("output_tokens") or 0),
            latency_s=float(answer.get("latency_s") or 0.0),
            backend=str(row["backend"]),
            model=str(row["model"]),
            finish_reason=answer.get("finish_reason"),
        )
        description = json.dumps({k: row.get(k) for k in ("backend", "model", "role", "item_id", "sample_index")}, ensure_ascii=False, sort_keys=True)
        added += bool(cache.put(str(row["key"]), response, request=description))
    return added


def make_role_backend(cfg: MineConfig, role: str, cache):
    """The teacher's or the student's backend, sharing one response cache."""
    from distill.llm import make_backend
    from distill.llm.replay import RECORDING_BACKENDS

    kind = getattr(cfg, f"{role}_backend")
    return make_backend(
        kind,
        getattr(cfg, role),
        cache=cache,
        concurrency=cfg.concurrency,
        max_retries=cfg.max_retries,
        timeout_s=cfg.timeout_s,
        backoff_base_s=cfg.backoff_base_s,
        backoff_max_s=cfg.backoff_max_s,
        prices=cfg.prices,
        seed=cfg.seed,
        device=None if cfg.device == "auto" else cfg.device,
        batch_size=cfg.student_batch_size,
        recorded_by=(RECORDING_BACKEND,) + tuple(RECORDING_BACKENDS),
    )


def _gather(teacher, teacher_requests, student, student_requests):
    from distill.llm.base import run_sync

    async def both():
        # Teacher (network) and student (often a local model in a worker thread) overlap.
        return await asyncio.gather(
            teacher.generate_many(teacher_requests), student.generate_many(student_requests)
        )

    return run_sync(both)


def collect(
    cfg: MineConfig,
    items: Sequence[MCQItem],
    teacher,
    student,
    *,
    error_types: Mapping[str, str] | None = None,
    judge_template: list[dict[str, str]] | None = None,
) -> MineResult:
    """Ask, read the answers, select, judge: everything but MLflow and files."""
    from distill.extraction import parse_judge_verdict, strip_think

    error_types = error_types or {}
    teacher_requests = answer_requests(items, "teacher", cfg.teacher_samples, generation_params(cfg, "teacher"))
    student_requests = answer_requests(items, "student", cfg.student_samples, generation_params(cfg, "student"))
    teacher_responses, student_responses = _gather(teacher, teacher_requests, student, student_requests)

    rows_by_item: dict[str, dict[str, list[dict]]] = {item.id: {"teacher": [], "student": [], "judge": []} for item in items}
    by_id = {item.id: item for item in items}
    for role, backend, requests, responses in (
        ("teacher", teacher, teacher_requests, teacher_responses),
        ("student", student, student_requests, student_responses),
    ):
        samples = cfg.teacher_samples if role == "teacher" else cfg.student_samples
        for index, (request, response) in enumerate(zip(requests, responses)):
            item = items[index // samples]
            rows_by_item[item.id][role].append(attempt_row(item, role, backend.name, backend.model, request, response))

    decisions = {
        item.id: decide(item, rows_by_item[item.id]["teacher"], rows_by_item[item.id]["student"], cfg.pass_rate_threshold)
        for item in items
    }

    if cfg.judge == "on":
        if judge_template is None:
            from distill.prompt_registry import read_chat_template

            judge_template = read_chat_template(prompt_template_path("judge"))
        pending = []
        for item in items:
            candidates = judge_candidates(decisions[item.id], rows_by_item[item.id]["teacher"], rows_by_item[item.id]["student"])
            if candidates is None:
                continue
            swapped = judge_order_swapped(item.id)
            first, second = (candidates[1], candidates[0]) if swapped else candidates
            pending.append((item, candidates, swapped, judge_request(item, judge_template, first, second, generation_params(cfg, "judge"))))
        if pending:
            from distill.llm.base import run_sync

            verdict_responses = run_sync(lambda: teacher.generate_many([p[3] for p in pending]))
            for (item, candidates, swapped, request), response in zip(pending, verdict_responses):
                verdict = parse_judge_verdict(response.text) if response.ok else None
                row = attempt_row(item, "judge", teacher.name, teacher.model, request, response)
                row.update(choice=JUDGE_CHOICES.get(verdict or ""), correct=False, reasoning=strip_think(response.text) if response.ok else "")
                rows_by_item[item.id]["judge"].append(row)
                if response.ok:
                    decisions[item.id] = apply_verdict(decisions[item.id], candidates, swapped, verdict)

    rows: list[dict] = []
    hard_negatives: list[dict] = []
    for item in items:
        for role in ROLES:
            rows += sorted(rows_by_item[item.id][role], key=lambda r: r["sample_index"])
        decision = decisions[item.id]
        if decision.selected:
            hard_negatives.append(hard_negative_record(by_id[item.id], decision, rows_by_item[item.id]["student"], error_types.get(item.id)))
    return MineResult(attempts=attempts_frame(rows), hard_negatives=hard_negatives, decisions=[decisions[item.id] for item in items])


# --------------------------------------------------------------------------------------------
# Files, MLflow, summary


def write_outputs(result: MineResult, output_dir: Path) -> tuple[Path, Path]:
    from distill.io import atomic_path, write_jsonl

    output_dir.mkdir(parents=True, exist_ok=True)
    attempts_path = output_dir / ATTEMPTS_FILE
    with atomic_path(attempts_path) as tmp:
        result.attempts.to_parquet(tmp, index=False)
    hard_negatives_path = write_jsonl(output_dir / HARD_NEGATIVES_FILE, result.hard_negatives)
    return attempts_path, hard_negatives_path


def _items_frame(items: Sequence[MCQItem]):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "id": item.id, "subject": item.subject, "paragraph": item.paragraph, "question": item.question,
                "question_plus": item.question_plus, "choices": json.dumps(list(item.choices), ensure_ascii=False),
                "answer": item.answer, "source": item.source,
            }
            for item in items
        ]
    )


def _log_datasets(items: Sequence[MCQItem], seeds_path: str, result: MineResult, attempts_path: Path, hard_negatives_path: Path) -> None:
    import warnings

    import mlflow
    import pandas as pd

    from distill.data.loaders import items_digest

    def digest_of(frame) -> str:
        return hashlib.sha256(frame.to_json(orient="records", force_ascii=False).encode("utf-8")).hexdigest()[:16]

    hard = pd.DataFrame(result.hard_negatives)
    if len(hard):
        for column in ("choices", "student_choices"):
            hard[column] = [json.dumps(v, ensure_ascii=False) for v in hard[column]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        seeds = mlflow.data.from_pandas(
            _items_frame(items), source=str(Path(seeds_path).resolve()), targets="answer",
            name=Path(seeds_path).stem, digest=items_digest(items)[:16],
        )
        mlflow.log_input(seeds, context="seeds")
        outputs = [
            (hard, hard_negatives_path, "hard_negatives"),
            (result.attempts.astype({"choice": "float64"}), attempts_path, "attempts"),
        ]
        for frame, path, context in outputs:
            dataset = mlflow.data.from_pandas(frame, source=str(path.resolve()), name=path.stem, digest=digest_of(frame))
            mlflow.log_input(dataset, context=context, tags={"distill.direction": "output"})


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, *, left: bool) -> str:
    space = " " * max(0, width - _display_width(text))
    return text + space if left else space + text


def summary_text(cfg: MineConfig, items: Sequence[MCQItem], result: MineResult, metrics: Mapping[str, float], usage: Mapping[str, Any]) -> str:
    """One screen: per-subject accuracy and hard negatives, why items were skipped, LLM usage."""
    from distill.metrics import subject_keys

    keys = subject_keys(item.subject for item in items)
    header = ["subject", "items", "teacher acc", "student acc", "hard neg."]
    lines = []
    for subject, key in keys.items():
        lines.append([
            subject, str(int(metrics[f"mine/items/{key}"])), f"{metrics[f'mine/teacher_accuracy/{key}']:.3f}",
            f"{metrics[f'mine/student_accuracy/{key}']:.3f}", str(int(metrics[f"mine/hard_negatives/{key}"])),
        ])
    total = ["overall (over samples)", str(len(items)), f"{metrics['mine/teacher_accuracy']:.3f}", f"{metrics['mine/student_accuracy']:.3f}", str(int(metrics["mine/hard_negatives"]))]
    widths = [max(_display_width(row[i]) for row in [header, total] + lines) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(_pad(cell, widths[i], left=i == 0) for i, cell in enumerate(row)).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [
        f"mine  teacher {cfg.teacher} ({cfg.teacher_backend}, {cfg.teacher_samples} sample(s))  ·  "
        f"student {cfg.student} ({cfg.student_backend}, {cfg.student_samples} samples)  ·  {len(items)} seeds",
        fmt(header), rule, *[fmt(r) for r in lines], rule, fmt(total),
    ]
    reasons: dict[str, int] = {}
    for decision in result.decisions:
        if not decision.selected:
            reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
    skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) or "none"
    out.append(f"selected: teacher right and student pass rate <= {cfg.pass_rate_threshold:g}  ·  not selected: {skipped}")
    out.append(
        "parse failures: " + ", ".join(
            f"{role} {int(round(metrics[f'mine/parse_failure_rate/{role}'] * metrics[f'mine/{role}_answers']))}/{int(metrics[f'mine/{role}_answers'])}"
            for role in ROLES if metrics[f"mine/{role}_answers"] > 0
        )
    )
    failures = int(metrics["mine/teacher_request_failures"] + metrics["mine/student_request_failures"] + metrics["mine/judge_request_failures"])
    out.append(
        f"failed requests (no answer after {cfg.max_retries} retries): teacher {int(metrics['mine/teacher_request_failures'])}, "
        f"student {int(metrics['mine/student_request_failures'])}, judge {int(metrics['mine/judge_request_failures'])}"
        + ("  (rerun to retry them; everything else is cached)" if failures else "")
    )
    if cfg.judge == "on":
        verdicts: dict[str, int] = {}
        for decision in result.decisions:
            if decision.judge_verdict is not None:
                verdicts[decision.judge_verdict] = verdicts.get(decision.judge_verdict, 0) + 1
        out.append(f"judge: {int(metrics['mine/judged'])} items compared ({', '.join(f'{k} {v}' for k, v in sorted(verdicts.items())) or 'none'}), "
                   f"golden path from a student sample on {int(metrics['mine/golden_from_student'])}")
    else:
        out.append("judge: off (judge=on lets the teacher pick the better of two correct reasonings)")
    for role in ("teacher", "student"):
        out.append(f"{role}: {usage[role].summary()}")
    return "\n".join(out)


def load_seed_items(cfg: MineConfig) -> list[MCQItem]:
    from distill.data.loaders import load_items

    path = cfg.seeds_path()
    items = load_items(path, cfg.format, cfg.subject_map, require_answer=True)
    if cfg.max_items is not None:
        items = items[: cfg.max_items]
    if not items:
        raise InputError(path, "no seed items")
    return items


def register_prompts() -> tuple[dict[str, str], list[dict[str, str]]]:
    """Register (when changed) the answer and judge templates; return their URIs and the judge template."""
    from distill.prompt_registry import ensure_prompt, read_chat_template

    answer = read_chat_template(prompt_template_path("answer"))
    judge = read_chat_template(prompt_template_path("judge"))
    uris = {
        ANSWER_PROMPT_NAME: ensure_prompt(ANSWER_PROMPT_NAME, answer, tags={"stage": "mine", "file": "distill/resources/prompts/answer.txt", "empty_blocks": "left out"}),
        JUDGE_PROMPT_NAME: ensure_prompt(JUDGE_PROMPT_NAME, judge, tags={"stage": "mine", "file": "distill/resources/prompts/judge.txt", "verdict": "last line 판정: A|B|TIE"}),
    }
    return uris, judge


def run(cfg: MineConfig) -> MineOutputs:
    """Load seeds, ask teacher and student, select hard negatives, log everything, print a summary."""
    from distill import tracking
    from distill.io import write_text_atomic
    from distill.llm import ResponseCache
    from distill.prompt_registry import log_prompt_versions

    started = time.perf_counter()
    items = load_seed_items(cfg)  # bad input fails before MLflow is even imported
    error_types = read_error_types(cfg.error_types_path())
    tracking.configure(cfg.experiment, "mine")
    output_dir = Path(cfg.output_dir)
    cache = ResponseCache(cfg.cache_path)
    imported = 0
    if cfg.uses_replay:
        recording = cfg.recording or str(bundled_recording())
        imported = import_recording(cache, recording)
    teacher = make_role_backend(cfg, "teacher", cache)
    student = make_role_backend(cfg, "student", cache)
    import mlflow

    try:
        with tracking.start_run(run_name=f"mine {cfg.teacher} vs {Path(cfg.student).name}") as active:
            run_id = active.info.run_id
            tracking.log_params(tracking.safe_params(cfg))
            mlflow.set_tags({
                "distill.stage": "mine", "distill.teacher": cfg.teacher, "distill.teacher_backend": cfg.teacher_backend,
                "distill.student": cfg.student, "distill.student_backend": cfg.student_backend,
                "mine.accuracy.average": "micro, over answered samples (an unreadable answer is wrong)",
                "mine.selection_rule": f"teacher right on most samples and student pass rate <= {cfg.pass_rate_threshold:g}",
            })
            prompt_uris, judge_template = register_prompts()
            log_prompt_versions(prompt_uris.values())

            result = collect(cfg, items, teacher, student, error_types=error_types, judge_template=judge_template)

            attempts_path, hard_negatives_path = write_outputs(result, output_dir)
            metrics = mine_metrics(items, result.attempts.to_dict("records"), result.decisions, cfg.pass_rate_threshold)
            usage = {"teacher": teacher.usage, "student": student.usage}
            for role, counters in usage.items():
                metrics.update(counters.as_dict(f"llm/{role}/"))
            for name in dataclasses.asdict(teacher.usage):
                metrics[f"llm/{name}"] = float(getattr(teacher.usage, name) + getattr(student.usage, name))
            metrics["mine/recording_imported"] = float(imported)
            wall_s = time.perf_counter() - started
            metrics["mine/wall_s"] = wall_s
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            summary = summary_text(cfg, items, result, metrics, usage)
            summary_path = write_text_atomic(output_dir / "summary.txt", summary + "\n")
            for path in (attempts_path, hard_negatives_path, summary_path):
                mlflow.log_artifact(str(path), ARTIFACT_DIR)
            _log_datasets(items, cfg.seeds_path(), result, attempts_path, hard_negatives_path)
    finally:
        teacher.close()
        student.close()
        cache.close()

    print()
    print(summary)
    print(f"wrote {hard_negatives_path} ({len(result.hard_negatives)} hard negatives) and {attempts_path} ({len(result.attempts)} attempts)")
    print(f"run {run_id}  ·  prompts {', '.join(prompt_uris.values())}  ·  {wall_s:.1f} s")
    return MineOutputs(
        run_id=run_id, attempts=result.attempts, hard_negatives=result.hard_negatives, decisions=result.decisions,
        metrics=metrics, usage={role: counters.as_dict() for role, counters in usage.items()}, prompts=prompt_uris,
        output_dir=output_dir, attempts_path=attempts_path, hard_negatives_path=hard_negatives_path, wall_s=wall_s,
    )
