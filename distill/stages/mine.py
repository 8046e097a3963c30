"""The `mine` stage: find hard negatives, items the teacher gets right and the student gets wrong.

For each seed item the teacher answers `teacher_samples` times and the student
`student_samples` times (sampled, so its pass rate means something). An item is a hard negative
when the teacher is right and the student's pass rate is at most `pass_rate_threshold`
(default 0.34: at most 1 of 3 samples right). The rule, the judge step (`judge=on`: the teacher
compares two correct reasonings with its own prompt, distill/resources/prompts/judge.txt), the
metrics and the summary are distill/mining.py; this module asks the models and records what
came back:

    load seeds → open the cache (import the recording) → start the run, log params and config
    → register the prompts → ask teacher and student → decide → judge → write the attempts and
    hard negatives through the contracts (distill/contracts.py) → log metrics, artifacts and
    datasets → print the summary.

Attempts (attempts.parquet, `distill.contracts.Attempt`): `item_id, role, backend, model,
sample_index, prompt_hash, text, reasoning, choice, correct, latency_s, input_tokens,
output_tokens, error`. `reasoning` is the visible answer (think blocks removed), `choice` the
extracted answer or null (unreadable, or the request failed), `error` the message of a request
that still failed after retries (no answer: it counts in no accuracy). Judge attempts: `choice`
1 = A preferred, 2 = B, 0 = TIE, null = unreadable verdict; `correct` is false.

Everything a run needs goes through the response cache (`cache_path`); the embedded default
answers from the recording bundled with the package (distill/resources/replay/mine.jsonl, in
the one recording format of distill/llm/recording.py, written by the project for the 24 bundled
seeds and rebuilt by scripts/build_mine_replay.py), imported into the cache at the start of a
run that uses the replay backend.

Failing loudly and paying once (the taxonomy is distill/llm/errors.py): every paid answer is
cached, the unusable ones too; a permanent error or a tripped circuit breaker stops the run; a
role with more than `max_failure_rate` of its requests unanswered fails it once the outputs
are written; a rerun on the same cache marks runs a killed process left RUNNING as KILLED.
Each batch of LLM calls is a trace in the run's Traces tab (distill/llm/tracing.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
from distill.contracts import Attempt, HardNegative, MCQItem
from distill.errors import ConfigError, InputError
from distill.mining import Decision

ANSWER_PROMPT_NAME = "distill-answer"
JUDGE_PROMPT_NAME = "distill-judge"
ATTEMPTS_FILE = "attempts.parquet"
HARD_NEGATIVES_FILE = "hard_negatives.jsonl"
SUMMARY_FILE = "summary.txt"
ARTIFACT_DIR = "mine"
"""Tags of the dataset inputs that are the run's own outputs."""


@dataclass
class MineConfig:
    """Run a teacher and a student over seed items and keep the hard negatives."""

    seeds: str | None = unset_field(
        "bundled", "Seed items (a file). Unset: the 24 bundled seeds (distill/resources/seeds.jsonl)."
    )
    format: str = field(
        default="auto",
        metadata={
            "help": "Seeds format: auto, a shipped format (competition, kice, kmmlu, jsonl, csat_qa, haerae) or a format spec file (.yaml)."
        },
    )
    subject_map: str | None = unset_field("none", "Optional file mapping item ids or categories to subjects.")
    teacher: str = field(
        default="example-teacher",
        metadata={
            "help": "Teacher model id (e.g. gemini-2.5-flash). example-teacher exists only in the bundled recording."
        },
    )
    teacher_backend: str = field(
        default="replay",
        metadata={
            "help": "Teacher backend: gemini, openai, local, replay (answers only from the cache) or world (the synthetic world's teacher)."
        },
    )
    student: str = field(
        default="example-student",
        metadata={
            "help": "Student model id or local path (e.g. Qwen/Qwen3-14B, tiny-qwen3). example-student exists only in the bundled recording."
        },
    )
    student_backend: str = field(
        default="replay", metadata={"help": "Student backend: local, openai, gemini or replay."}
    )
    teacher_mode: str = field(
        default="online",
        metadata={
            "help": "online: one HTTP call per request; batch (gemini, openai): the requests the cache lacks go as provider batch jobs at batch prices (half), resumable after a kill; export (openai): write them as a batch JSONL for `vllm run-batch` and stop (see README, Provider batch mode). The judge uses the teacher's mode."
        },
    )
    student_mode: str = field(
        default="online", metadata={"help": "Student requests: online, batch or export, as teacher_mode."}
    )
    batch_timeout_s: float = field(
        default=86400.0,
        metadata={
            "help": "Batch mode: stop waiting for the provider's jobs after this many seconds (the stage fails, reason batch_timeout); a rerun re-attaches to the stored jobs and sends nothing twice."
        },
    )
    batch_poll_s: float = field(
        default=30.0, metadata={"help": "Batch mode: first wait between polls of a job (then x1.5, up to 10 minutes)."}
    )
    batch_dir: str = field(
        default="outputs/batch",
        metadata={"help": "Export mode: where the batch JSONL files for `vllm run-batch` are written."},
    )
    student_samples: int = field(
        default=3,
        metadata={
            "help": "Student answers per item (sampled at student_temperature); the pass rate is correct / answered."
        },
    )
    teacher_samples: int = field(
        default=1,
        metadata={
            "help": "Teacher answers per item; the teacher is right on an item when most of its answered samples are."
        },
    )
    student_temperature: float = field(
        default=0.7, metadata={"help": "Student sampling temperature (above 0, or every sample is the same)."}
    )
    teacher_temperature: float = field(
        default=0.0, metadata={"help": "Teacher sampling temperature (raise it with teacher_samples > 1)."}
    )
    max_output_tokens: int = field(
        default=2048,
        metadata={"help": "Answer length limit for teacher, student and judge (reasoning tokens included)."},
    )
    thinking: str = field(
        default="off", metadata={"help": "Model reasoning mode for all roles: on (think block returned) or off."}
    )
    pass_rate_threshold: float = field(
        default=0.34,
        metadata={
            "help": "Select an item when the teacher is right and the student pass rate is <= this (0.34: at most 1 of 3 samples right)."
        },
    )
    judge: str = field(
        default="off",
        metadata={
            "help": "on: when an item has two correct reasonings, the teacher judges which is better (A/B/TIE) and the preferred one becomes golden_path."
        },
    )
    concurrency: int = field(default=16, metadata={"help": "Requests in flight per network backend."})
    timeout_s: float = field(
        default=300.0, metadata={"help": "Per-request timeout (network backends); a timeout is retried."}
    )
    max_retries: int = field(
        default=6,
        metadata={
            "help": "Retries per request on 429/5xx/timeouts/garbled bodies; after that the request is a failure row. A permanent error (400/401/403/404, a bad base URL or key) is never retried: the stage stops at it."
        },
    )
    max_failure_rate: float = field(
        default=0.1,
        metadata={
            "help": "Largest share (0-1) of a role's requests that may end with no usable answer (failed after retries, blocked, unusable); above it, for any role, the stage writes its outputs, then fails (exit 2, MLflow run FAILED, tag distill.failure_reason=failure_rate). A rerun fetches only what is missing."
        },
    )
    circuit_breaker: int = field(
        default=8,
        metadata={
            "help": "Stop a backend when its first N requests all end the same way without a usable answer (after their retries); 0: never."
        },
    )
    max_repairs: int = field(
        default=1,
        metadata={
            "help": "New requests (the bad answer shown back) for an answer that fails its response schema; the bad answer itself is cached and paid once."
        },
    )
    trace_requests: int = field(
        default=16,
        metadata={
            "help": "Requests per batch traced with their own span in the run's Traces (every batch gets one span); 0: batches only."
        },
    )
    backoff_base_s: float = field(
        default=1.0,
        metadata={
            "help": "Retry backoff base: attempt k waits up to base * 2^k (full jitter), at least the server's Retry-After."
        },
    )
    backoff_max_s: float = field(default=60.0, metadata={"help": "Longest wait between retries."})
    cache_path: str = field(
        default="outputs/mine/cache.sqlite",
        metadata={
            "help": "Response cache (SQLite). Every paid response is stored as it arrives; a rerun pays again only for the requests in flight when a run was killed (at most concurrency per backend)."
        },
    )
    recording: str | None = unset_field(
        "bundled",
        "Recorded responses (JSONL) imported into the cache when a role uses the replay backend. Unset: the bundled recording; 'off': import nothing.",
    )
    error_types: str | None = unset_field(
        "bundled",
        "Optional JSONL with id and error_type per seed (a label of the student's mistake), copied into hard negatives. Unset: the bundled labels when seeds are the bundled ones.",
    )
    prices: str | None = unset_field(
        "builtin",
        "Price table (YAML/JSON, USD per 1M input/output tokens per model) for llm/cost_usd. Unset: built-in list prices.",
    )
    student_batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (local student)."})
    device: str = field(default="auto", metadata={"help": "Local student: cuda, cpu, mps, or auto."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default distill-mine)."})
    output_dir: str = field(
        default="outputs/mine",
        metadata={
            "help": "Where attempts.parquet, hard_negatives.jsonl and summary.txt are written (also logged as artifacts)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed; sample k of a prompt uses seed + k."})
    max_items: int | None = unset_field("all", "Mine only the first N seeds; unset: all.")

    def __post_init__(self) -> None:
        from distill.data.prompts import parse_thinking
        from distill.llm.roles import check_mode, check_role

        for name in ("seeds", "subject_map", "recording", "error_types", "prices", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)
        if isinstance(self.max_items, str):
            self.max_items = int(self.max_items) if self.max_items.strip() else None
        self.thinking = "on" if parse_thinking(self.thinking) else "off"
        self.judge = "on" if parse_thinking(self.judge) else "off"
        for role in ("teacher", "student"):
            kind, model = check_role(role, getattr(self, f"{role}_backend"), getattr(self, role))
            setattr(self, f"{role}_backend", kind)
            setattr(self, role, model)
            setattr(self, f"{role}_mode", check_mode(role, kind, getattr(self, f"{role}_mode")))
        if self.batch_timeout_s <= 0 or self.batch_poll_s < 0:
            raise ConfigError(
                f"batch_timeout_s must be positive and batch_poll_s >= 0, got {self.batch_timeout_s}, {self.batch_poll_s}"
            )
        for name in ("student_samples", "teacher_samples", "max_output_tokens", "concurrency", "student_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_retries", "circuit_breaker", "max_repairs", "trace_requests"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"max_failure_rate must be within 0..1, got {self.max_failure_rate}")
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
class MineResult:
    """What `collect` found: every attempt (item order, then role, then sample), the hard
    negatives selected, and the decision on every item."""

    attempts: list[Attempt]
    hard_negatives: list[HardNegative]
    decisions: list[Decision]


@dataclass
class MineOutputs:
    run_id: str
    attempts: Any
    """pandas DataFrame, `distill.contracts.ATTEMPT_COLUMNS`."""
    hard_negatives: list[HardNegative]
    decisions: list[Decision]
    metrics: dict[str, float]
    usage: dict[str, dict[str, float]]
    prompts: dict[str, str]
    output_dir: Path
    attempts_path: Path
    hard_negatives_path: Path
    wall_s: float


# --------------------------------------------------------------------------------------------
# Steps


def load_seed_items(cfg: MineConfig) -> list[MCQItem]:
    from distill.data.loaders import load_items

    path = cfg.seeds_path()
    items = load_items(path, cfg.format, cfg.subject_map, require_answer=True)
    if cfg.max_items is not None:
        items = items[: cfg.max_items]
    if not items:
        raise InputError(path, "no seed items")
    return items


def open_cache(cfg: MineConfig):
    """The run's response cache, with the recording imported when a role replays; (cache, rows new)."""
    from distill.llm import ResponseCache
    from distill.llm.recording import import_recording, recording_to_import

    cache = ResponseCache(cfg.cache_path)
    recording = recording_to_import(cfg.recording, "mine") if cfg.uses_replay else None
    try:
        return cache, import_recording(cache, recording) if recording is not None else 0
    except BaseException:
        cache.close()
        raise


def run_name(cfg: MineConfig, items: Sequence[MCQItem]) -> str:
    """What tells one mine run from another: the two models, how many seeds, how many samples."""
    return (
        f"mine {cfg.teacher} vs {Path(cfg.student).name} seeds={len(items)} "
        f"k={cfg.student_samples}/{cfg.teacher_samples}"
    )


def log_start(cfg: MineConfig, items: Sequence[MCQItem]) -> None:
    tracking.log_config_params(cfg, max_items=len(items))  # the seeds actually mined
    tracking.log_config(cfg)
    tracking.set_tags(
        {
            "distill.stage": "mine",
            "distill.teacher": cfg.teacher,
            "distill.teacher_backend": cfg.teacher_backend,
            "distill.student": cfg.student,
            "distill.student_backend": cfg.student_backend,
            "mine.accuracy.average": "micro, over answered samples (an unreadable answer is wrong)",
            "mine.selection_rule": f"teacher right on most samples and student pass rate <= {cfg.pass_rate_threshold:g}",
        }
    )


def register_prompts():
    """Register (when changed) the answer and judge templates; their URIs, and the judge template."""
    from distill.data.prompts import answer_template
    from distill.llm.templates import load_template
    from distill.prompt_registry import register_template

    judge = load_template("judge")
    uris = {
        ANSWER_PROMPT_NAME: register_template(
            ANSWER_PROMPT_NAME, answer_template(), tags={"stage": "mine", "empty_blocks": "left out"}
        ),
        JUDGE_PROMPT_NAME: register_template(
            JUDGE_PROMPT_NAME, judge, tags={"stage": "mine", "verdict": "last line 판정: A|B|TIE"}
        ),
    }
    return uris, judge


def _gather(teacher, teacher_requests, student, student_requests):
    from distill.llm.base import run_sync

    async def both():
        # Teacher (network) and student (often a local model in a worker thread) overlap.
        return await asyncio.gather(teacher.generate_many(teacher_requests), student.generate_many(student_requests))

    return run_sync(both)


def ask(cfg: MineConfig, items: Sequence[MCQItem], teacher, student) -> dict[str, dict[str, list[Attempt]]]:
    """Every teacher and student answer as an Attempt, by item id and role."""
    from distill.mining import ROLES, answer_requests, attempt, generation_params

    samples = {"teacher": cfg.teacher_samples, "student": cfg.student_samples}
    requests = {role: answer_requests(items, role, samples[role], generation_params(cfg, role)) for role in samples}
    responses = dict(zip(samples, _gather(teacher, requests["teacher"], student, requests["student"])))
    attempts: dict[str, dict[str, list[Attempt]]] = {item.id: {role: [] for role in ROLES} for item in items}
    for role, backend in (("teacher", teacher), ("student", student)):
        for index, (request, response) in enumerate(zip(requests[role], responses[role])):
            item = items[index // samples[role]]
            attempts[item.id][role].append(attempt(item, role, backend.name, backend.model, request, response))
    return attempts


def judge(cfg: MineConfig, items: Sequence[MCQItem], teacher, attempts, decisions: dict[str, Decision], template):
    """Let the teacher compare two correct reasonings of each selected item that has them; the
    verdicts become judge attempts and move the golden path (`mining.apply_verdict`)."""
    from distill.extraction import parse_judge_verdict
    from distill.llm.base import run_sync
    from distill.mining import (
        apply_verdict,
        generation_params,
        judge_attempt,
        judge_candidates,
        judge_order_swapped,
        judge_request,
    )

    pending = []
    for item in items:
        candidates = judge_candidates(decisions[item.id], attempts[item.id]["teacher"], attempts[item.id]["student"])
        if candidates is None:
            continue
        swapped = judge_order_swapped(item.id)
        first, second = (candidates[1], candidates[0]) if swapped else candidates
        request = judge_request(item, template, first, second, generation_params(cfg, "judge"))
        pending.append((item, candidates, swapped, request))
    if not pending:
        return
    responses = run_sync(lambda: teacher.generate_many([request for *_, request in pending], role="judge"))
    for (item, candidates, swapped, request), response in zip(pending, responses):
        verdict = parse_judge_verdict(response.text) if response.usable else None
        attempts[item.id]["judge"].append(judge_attempt(item, teacher.name, teacher.model, request, response, verdict))
        if response.usable:
            decisions[item.id] = apply_verdict(decisions[item.id], candidates, swapped, verdict)


def collect(
    cfg: MineConfig,
    items: Sequence[MCQItem],
    teacher,
    student,
    *,
    error_types: Mapping[str, str] | None = None,
    judge_template=None,
) -> MineResult:
    """Ask, read the answers, select, judge: everything but MLflow and files."""
    from distill.llm.templates import load_template
    from distill.mining import ROLES, decide, hard_negative

    attempts = ask(cfg, items, teacher, student)
    decisions = {
        item.id: decide(item, attempts[item.id]["teacher"], attempts[item.id]["student"], cfg.pass_rate_threshold)
        for item in items
    }
    if cfg.judge == "on":
        judge(cfg, items, teacher, attempts, decisions, judge_template or load_template("judge"))
    error_types = error_types or {}
    return MineResult(
        attempts=[
            a
            for item in items
            for role in ROLES
            for a in sorted(attempts[item.id][role], key=lambda a: a.sample_index)
        ],
        hard_negatives=[
            hard_negative(item, decisions[item.id], attempts[item.id]["student"], error_types.get(item.id))
            for item in items
            if decisions[item.id].selected
        ],
        decisions=[decisions[item.id] for item in items],
    )


def write_outputs(result: MineResult, output_dir: Path):
    """attempts.parquet and hard_negatives.jsonl through the contracts; (frame, attempts path, hard negatives path)."""
    from distill.contracts import attempts_frame, write_hard_negatives
    from distill.io import atomic_path

    output_dir.mkdir(parents=True, exist_ok=True)
    frame = attempts_frame(result.attempts)
    attempts_path = output_dir / ATTEMPTS_FILE
    with atomic_path(attempts_path) as tmp:
        frame.to_parquet(tmp, index=False)
    return frame, attempts_path, write_hard_negatives(output_dir / HARD_NEGATIVES_FILE, result.hard_negatives)


def log_datasets(cfg: MineConfig, items: Sequence[MCQItem], result: MineResult, paths) -> dict[str, str]:
    """The seeds as the run's input (the user's file, or the bundled one); the hard negatives and
    the attempts as its outputs, recorded for the runs that read them (`tracking.record_output`).
    {output kind: runs:/ URI}."""
    from distill.mining import items_frame

    attempts_path, hard_negatives_path = paths
    seeds = Path(cfg.seeds_path())
    tracking.log_dataset(
        items_frame(items),
        name=seeds.stem,
        source=str(seeds),
        context="seeds",
        rows=[item.to_dict() for item in items],
        targets="answer",
    )
    return {
        "hard negatives": tracking.record_output(
            "hard_negatives",
            f"{ARTIFACT_DIR}/{hard_negatives_path.name}",
            (negative.to_dict() for negative in result.hard_negatives),
        ),
        "attempts": tracking.record_output(
            "attempts", f"{ARTIFACT_DIR}/{attempts_path.name}", (a.to_dict() for a in result.attempts)
        ),
    }


def record(cfg: MineConfig, items, result: MineResult, usages: Mapping[str, Any], imported: int, started: float):
    """Write the outputs, log metrics, artifacts and datasets; (frame, paths, metrics, summary)."""
    import pandas as pd

    from distill.io import write_text_atomic
    from distill.llm.roles import usage_headline, usage_metrics, usage_summary, usage_table
    from distill.mining import MINE_HEADLINE, mine_metrics, subject_rows, summary_text

    output_dir = Path(cfg.output_dir)
    frame, *paths = write_outputs(result, output_dir)
    metrics = mine_metrics(items, result.attempts, result.decisions) | usage_metrics(usages)
    metrics["mine/recording_imported"] = float(imported)
    metrics["mine/wall_s"] = time.perf_counter() - started
    # A short list of metrics to compare runs by; per subject and per role they are tables.
    tracking.log_metrics({k: metrics[k] for k in MINE_HEADLINE if k in metrics} | usage_headline(usages))
    tracking.log_table(pd.DataFrame(subject_rows(items, metrics)), f"{ARTIFACT_DIR}/subjects.json")
    tracking.log_table(pd.DataFrame(usage_table(usages)), f"{ARTIFACT_DIR}/llm_usage.json")
    usage_lines = [f"{role}: {usage_summary(usage)}" for role, usage in usages.items()]
    summary = summary_text(cfg, items, result.decisions, metrics, usage_lines)
    summary_path = write_text_atomic(output_dir / SUMMARY_FILE, summary + "\n")
    for path in (*paths, summary_path):
        tracking.log_artifact(path, ARTIFACT_DIR)
    outputs = log_datasets(cfg, items, result, paths)
    links = {"seeds": f"`{cfg.seeds_path()}`", **{what: f"`{uri}`" for what, uri in outputs.items()}}
    tracking.describe_run(summary, links)
    return frame, paths, metrics, summary


def run(cfg: MineConfig) -> MineOutputs:
    """Load seeds, ask teacher and student, select hard negatives, log everything, print a summary.

    Fails (StageFailed, the MLflow run FAILED with `distill.failure_reason`) at a permanent
    error, a tripped circuit breaker, or, after writing the outputs, when more than
    `max_failure_rate` of the requests got no usable answer."""
    from distill.llm.roles import BackendSettings, enforce_failure_rate, resume_from_cache, role_backend
    from distill.mining import read_error_types
    from distill.prompt_registry import log_prompt_versions

    started = time.perf_counter()
    items = load_seed_items(cfg)  # bad input fails before MLflow is even imported
    error_types = read_error_types(cfg.error_types_path())
    tracking.configure(cfg.experiment, "mine")
    cache, imported = open_cache(cfg)
    backends: list[Any] = []
    try:
        settings = BackendSettings.of(cfg)
        for role in ("teacher", "student"):
            kind, model = getattr(cfg, f"{role}_backend"), getattr(cfg, role)
            mode = getattr(cfg, f"{role}_mode")
            backends.append(role_backend(kind, model, cache=cache, settings=settings, role=role, mode=mode))
        teacher, student = backends
        with (
            tracking.start_run(run_name=run_name(cfg, items)) as active,
            tracking.tagging_failure(),
        ):
            for line in resume_from_cache(cfg.cache_path):
                print(line)
            log_start(cfg, items)
            prompts, judge_template = register_prompts()
            log_prompt_versions(prompts.values())
            result = collect(cfg, items, teacher, student, error_types=error_types, judge_template=judge_template)
            usages = {"teacher": teacher.usage, "student": student.usage}
            frame, (attempts_path, hard_negatives_path), metrics, summary = record(
                cfg, items, result, usages, imported, started
            )
            print()
            print(summary)
            print(
                f"wrote {hard_negatives_path} ({len(result.hard_negatives)} hard negatives) and {attempts_path} ({len(frame)} attempts)"
            )
            print(
                f"run {active.info.run_id}  ·  prompts {', '.join(prompts.values())}  ·  {metrics['mine/wall_s']:.1f} s"
            )
            tracking.flush_traces()  # the Traces tab is complete when the run ends
            enforce_failure_rate(usages, cfg.max_failure_rate)
    finally:
        for backend in backends:
            backend.close()
        cache.close()

    return MineOutputs(
        run_id=active.info.run_id,
        attempts=frame,
        hard_negatives=result.hard_negatives,
        decisions=result.decisions,
        metrics=metrics,
        usage={role: usage.as_dict() for role, usage in usages.items()},
        prompts=prompts,
        output_dir=Path(cfg.output_dir),
        attempts_path=attempts_path,
        hard_negatives_path=hard_negatives_path,
        wall_s=metrics["mine/wall_s"],
    )
