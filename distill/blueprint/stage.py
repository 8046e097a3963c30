"""The `augment` stage: hard negatives → blueprint transfers → quality gates → ORPO pairs.

What one run does, in order:
1. reads the hard negatives and the transfer plan, and builds the plan of the run (one
   candidate per seed and target, deterministic for a seed);
2. reads every evaluation set and seed set into one n-gram index (decontamination);
3. asks the teacher for one blueprint per candidate (structured output, `BlueprintOutput`);
   every response goes into the response cache the moment it arrives, so a killed run
   resumes without paying twice;
4. puts each candidate through the gates (`distill.blueprint.gates`): schema, answers, form,
   decontamination, then an independent re-solve by the verifier, then the duplicate filter;
5. writes `<output_dir>/pairs/` (HF `save_to_disk` + `pairs.jsonl`) and
   `<output_dir>/rejected_candidates.jsonl` (each refusal with its gate and reason) through a
   temporary folder that is renamed into place;
6. logs it all to MLflow: the pairs as a training dataset (`log_input(context="training")`)
   and as the artifact folder `pairs` (so `train -P pairs=runs:/<run_id>/pairs` reads it),
   the refusals, the prompts' registry versions, and the metrics `augment/*` (candidates,
   accepted per subject and per transfer kind), `gate/<name>/{reached,passed,rejected,pass_share}`
   and `llm/*` (requests, cache hits, tokens, cost);
7. prints a one-screen summary.

The embedded default (no parameters) runs offline: the teacher and the verifier are replay
backends answering from `distill/resources/replay/augment.jsonl`, responses recorded for the
bundled hard negatives and written by the project (teacher name "example-teacher"), imported
into the run's response cache at the start. Some of them are made to fail a gate, so that a
default run shows every gate at work.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from distill.errors import ConfigError, InputError

BUNDLED = "bundled"
"""The word that stands for the bundled eval sample in `eval_sets`."""

RECORDED_BACKEND = "recording"
"""The backend name under which the bundled recording is keyed (the same word as mine's): its
responses were written by the project, not fetched from any API. Replay backends here look a
request up under it first."""

BLUEPRINT_PROMPT_NAME = "distill-blueprint"
VERIFY_PROMPT_NAME = "distill-verify"
PROMPT_NAMES = {"blueprint": BLUEPRINT_PROMPT_NAME, "verify": VERIFY_PROMPT_NAME}
"""Registry name of each template (mine registers distill-answer and distill-judge)."""

EXAMPLE_TEACHER = "example-teacher"
"""The teacher (and verifier) of the bundled recording; it exists nowhere else."""
RECORDING_NAME = "replay/augment.jsonl"
HARD_NEGATIVES_NAME = "hard_negatives.jsonl"
PAIR_SOURCE = "distill-augment"
PAIRS_DIR = "pairs"
PAIRS_FILE = "pairs.jsonl"
REJECTED_FILE = "rejected_candidates.jsonl"
SUMMARY_FILE = "summary.txt"


def _bundled(name: str) -> str:
    from distill.resources import resource_path

    return str(resource_path(name))


@dataclass
class AugmentConfig:
    """Turn hard negatives into verified, decontaminated ORPO pairs by blueprint transfer."""

    hard_negatives: str | None = field(default=None, metadata={"help": "Hard negatives (mine's hard_negatives.jsonl): a file or an MLflow artifact URI (runs:/<mine run id>/mine/hard_negatives.jsonl). Empty: the 18 bundled hard negatives."})
    plan: str | None = field(default=None, metadata={"help": "Transfer plan YAML (targets per subject, pairs per seed, mix of transfer kinds). Empty: the bundled plan for 수능 subjects."})
    pairs_per_seed: int | None = field(default=None, metadata={"help": "Candidates per hard negative, overriding the plan. Empty: the plan's."})
    max_seeds: int | None = field(default=None, metadata={"help": "Use only the first N hard negatives (a quick look). Empty: all."})
    teacher: str = field(default="example-teacher", metadata={"help": "Teacher model that writes the blueprints (e.g. gemini-2.5-flash). example-teacher: the bundled recording, written by the project."})
    teacher_backend: str = field(default="replay", metadata={"help": "Teacher backend: gemini, openai, local or replay (answers only from the response cache)."})
    verify: bool = field(default=True, metadata={"help": "on/off: verify each new problem by an independent re-solve (fresh prompt, no chosen reasoning shown) that must agree with its gold answer."})
    verifier: str | None = field(default=None, metadata={"help": "Verifier model. Empty: the teacher model."})
    verifier_backend: str | None = field(default=None, metadata={"help": "Verifier backend: gemini, openai, local or replay. Empty: the teacher backend."})
    verify_samples: int = field(default=1, metadata={"help": "Independent re-solves per new problem; every one must reach the gold answer."})
    teacher_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the teacher."})
    teacher_output_limit: int = field(default=8192, metadata={"help": "Maximum output tokens of a blueprint response."})
    verifier_temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the verifier (sample k uses seed + k)."})
    verifier_output_limit: int = field(default=4096, metadata={"help": "Maximum output tokens of a verifier response."})
    eval_sets: list[str] = field(default_factory=lambda: [BUNDLED], metadata={"help": "Evaluation sets no pair may overlap, comma-separated files (format detected from the extension); 'bundled' is the bundled eval sample."})
    seed_sets: list[str] = field(default_factory=list, metadata={"help": "Further seed item files no pair may copy (the hard negatives themselves are always checked), comma-separated."})
    ngram: int = field(default=5, metadata={"help": "Character n-gram size of decontamination and duplicate detection (after removing spaces and punctuation)."})
    decontam_threshold: float = field(default=0.5, metadata={"help": "Refuse a new problem whose n-gram overlap with any evaluation or seed item is at least this (0-1)."})
    dedup_threshold: float = field(default=0.6, metadata={"help": "Drop a new problem whose n-gram overlap with one kept before it is at least this (0-1)."})
    min_choices: int = field(default=4, metadata={"help": "Fewest choices a new problem may have."})
    max_choices: int = field(default=5, metadata={"help": "Most choices a new problem may have."})
    min_reasoning_chars: int = field(default=40, metadata={"help": "Shortest chosen or rejected reasoning (characters, answer line excluded)."})
    max_reasoning_chars: int = field(default=3000, metadata={"help": "Longest chosen or rejected reasoning (characters, answer line excluded)."})
    step_tolerance: int = field(default=2, metadata={"help": "How far the chosen reasoning's step count may be from the golden path's."})
    replay_recording: str | None = field(default=None, metadata={"help": "Recorded responses (JSONL) imported into the cache before a replay run. Empty: the bundled recording; 'none': import nothing."})
    cache_path: str = field(default="outputs/augment/cache.sqlite", metadata={"help": "Response cache (SQLite). Every response is stored as it arrives; a rerun (or a killed run resumed) pays for nothing twice."})
    prices: str | None = field(default=None, metadata={"help": "Price table (YAML/JSON, USD per 1M tokens) for the cost estimate. Empty: the built-in table."})
    concurrency: int = field(default=16, metadata={"help": "Requests in flight at once (network backends)."})
    max_retries: int = field(default=6, metadata={"help": "Retries of a request after 429/5xx/timeouts/malformed answers."})
    timeout_s: float = field(default=300.0, metadata={"help": "Per-attempt timeout in seconds."})
    backoff_base_s: float = field(default=1.0, metadata={"help": "Retry backoff base: attempt k waits up to base * 2^k (full jitter), at least the server's Retry-After."})
    backoff_max_s: float = field(default=60.0, metadata={"help": "Longest wait between retries (seconds)."})
    seed: int = field(default=0, metadata={"help": "Seed of the transfer plan and of the generation requests."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default distill-augment)."})
    output_dir: str = field(default="outputs/augment", metadata={"help": "Folder for pairs/, rejected_candidates.jsonl and summary.txt."})

    def __post_init__(self) -> None:
        for name in ("hard_negatives", "plan", "verifier", "verifier_backend", "replay_recording", "prices", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)
        for name in ("eval_sets", "seed_sets"):
            value = getattr(self, name)
            if value is None:
                value = []
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",")]
            setattr(self, name, [str(part).strip() for part in value if str(part).strip()])
        for name in ("pairs_per_seed", "max_seeds"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = int(value) if value.strip() else None
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 (or empty), got {value}")
            setattr(self, name, value)
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0 or self.concurrency < 1:
            raise ConfigError("timeout_s must be positive and concurrency at least 1")
        if self.verify_samples < 1:
            raise ConfigError(f"verify_samples must be at least 1, got {self.verify_samples}")
        if self.ngram < 2:
            raise ConfigError(f"ngram must be at least 2, got {self.ngram}")
        for name in ("decontam_threshold", "dedup_threshold"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if not 2 <= self.min_choices <= self.max_choices <= 10:
            raise ConfigError(f"need 2 <= min_choices <= max_choices <= 10, got {self.min_choices}..{self.max_choices}")
        if not 0 < self.min_reasoning_chars <= self.max_reasoning_chars:
            raise ConfigError("need 0 < min_reasoning_chars <= max_reasoning_chars")
        if self.step_tolerance < 0:
            raise ConfigError(f"step_tolerance must be >= 0, got {self.step_tolerance}")
        if isinstance(self.verify, str):
            from distill.data.prompts import parse_thinking  # on/off, true/false, 1/0

            try:
                self.verify = parse_thinking(self.verify)
            except ConfigError:
                raise ConfigError(f"verify must be on or off, got {self.verify!r}") from None
        if not str(self.cache_path or "").strip():
            raise ConfigError("cache_path must name a file (the response cache)")
        self.verifier = self.verifier or self.teacher
        self.verifier_backend = self.verifier_backend or self.teacher_backend
        from distill.llm import BACKENDS

        for role in ("teacher", "verifier"):
            kind = str(getattr(self, f"{role}_backend")).strip().lower()
            if kind not in BACKENDS:
                raise ConfigError(f"{role}_backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
            setattr(self, f"{role}_backend", kind)
            model = str(getattr(self, role)).strip()
            if not model:
                raise ConfigError(f"{role} needs a model name")
            if kind != "replay" and model == EXAMPLE_TEACHER:
                raise ConfigError(
                    f"{role} {model!r} exists only in the bundled recording (replay backend); "
                    f"name a real model with -P {role}=... to use the {kind} backend"
                )
            setattr(self, role, model)

    @property
    def uses_replay(self) -> bool:
        return self.teacher_backend == "replay" or (self.verify and self.verifier_backend == "replay")


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


@dataclass
class AugmentOutputs:
    run_id: str
    output_dir: Path
    pairs_dir: Path
    pairs_path: Path
    rejected_path: Path
    candidates: int
    accepted: int
    gate_counts: dict[str, dict[str, int]]
    metrics: dict[str, float]
    wall_s: float
    prompts: dict[str, str] = field(default_factory=dict)
    """{template name: prompts:/<registry name>/<version>} used by the run."""


# ---------------------------------------------------------------------------------------------
# Inputs


def resolve_hard_negatives(spec: str | None) -> Path:
    """A local path for the hard negatives: the bundled file, a path, or a downloaded MLflow artifact."""
    if spec is None:
        return Path(_bundled(HARD_NEGATIVES_NAME))
    from distill.pairs import is_mlflow_uri

    if not Path(spec).exists() and is_mlflow_uri(spec):
        import tempfile

        import mlflow

        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=tempfile.mkdtemp(prefix="distill-hn-"))
        except Exception as exc:  # mlflow raises several types for a missing run or path
            raise ConfigError(f"hard_negatives: cannot download {spec}: {exc}") from None
        path = Path(local)
        if path.is_dir():
            found = sorted(path.rglob(HARD_NEGATIVES_NAME))
            if len(found) != 1:
                raise InputError(path, f"expected one {HARD_NEGATIVES_NAME} in the downloaded artifact")
            path = found[0]
        return path
    return Path(spec)


def load_reference_items(specs: Sequence[str]) -> list:
    """Items of every set named in `specs` ('bundled' = the bundled eval sample)."""
    from distill.data.loaders import load_items

    items = []
    for spec in specs:
        path = _bundled("eval_sample.jsonl") if spec == BUNDLED else spec
        items += load_items(path, "auto", allow_duplicate_choices=True)
    return items


def import_recording(cache, path: str | os.PathLike) -> int:
    """Put every recorded response of a recording (JSONL) into the cache; return how many were new."""
    from distill.llm.base import Response, canonical_json
    from distill.io import read_jsonl

    added = 0
    for row, data in enumerate(read_jsonl(path), start=1):
        try:
            key = data["key"]
            payload = data["response"]
        except KeyError as exc:
            raise InputError(path, "missing field", row=row, field=str(exc.args[0])) from None
        if key in cache:
            continue
        response = Response.from_cache_json(json.dumps(payload, ensure_ascii=False), key)
        added += bool(cache.put(key, response, request=canonical_json(data.get("request") or {})))
    return added


@dataclass
class Prepared:
    """Everything a run needs before it asks any model anything."""

    negatives_path: Path
    negatives: list
    """HardNegative, in file order (first `max_seeds`)."""
    entries: list
    """PlanEntry, one per candidate, in plan order."""
    index: Any
    """NgramIndex over every evaluation and seed item."""
    n_eval_items: int
    templates: dict[str, str]
    prompt_version: str

    def candidates(self) -> list[Candidate]:
        by_seed = {n.id: n for n in self.negatives}
        return [Candidate(entry=e, negative=by_seed[e.seed_id]) for e in self.entries]


def prepare(cfg: AugmentConfig) -> Prepared:
    """Read the hard negatives, the plan, the reference sets and the templates."""
    from distill.blueprint.decontam import build_reference_index
    from distill.blueprint.plan import build_plan, load_plan
    from distill.blueprint.prompt import TEMPLATE_NAMES, load_template, template_version
    from distill.blueprint.schema import load_hard_negatives

    negatives_path = resolve_hard_negatives(cfg.hard_negatives)
    negatives = load_hard_negatives(negatives_path)
    if cfg.max_seeds is not None:
        negatives = negatives[: cfg.max_seeds]
    plan = load_plan(cfg.plan)
    entries = build_plan([(n.id, n.item.subject) for n in negatives], plan, cfg.seed, pairs_per_seed=cfg.pairs_per_seed)
    eval_items = load_reference_items(cfg.eval_sets)
    seed_items = [n.item for n in negatives] + load_reference_items(cfg.seed_sets)
    templates = {name: load_template(name) for name in TEMPLATE_NAMES}
    return Prepared(
        negatives_path=negatives_path,
        negatives=negatives,
        entries=entries,
        index=build_reference_index(eval_items, seed_items, cfg.ngram),
        n_eval_items=len(eval_items),
        templates=templates,
        prompt_version=f"blueprint-{template_version(templates['blueprint'])}",
    )


def teacher_params(cfg: AugmentConfig):
    from distill.llm import GenerationParams

    return GenerationParams(temperature=cfg.teacher_temperature, max_output_tokens=cfg.teacher_output_limit, seed=cfg.seed)


def verifier_params(cfg: AugmentConfig):
    from distill.llm import GenerationParams

    return GenerationParams(temperature=cfg.verifier_temperature, max_output_tokens=cfg.verifier_output_limit, seed=cfg.seed)


def blueprint_requests(prepared: Prepared, candidates: Sequence[Candidate], cfg: AugmentConfig) -> list:
    from distill.blueprint.prompt import blueprint_request

    params = teacher_params(cfg)
    return [blueprint_request(c.negative, c.entry, prepared.templates["blueprint"], params) for c in candidates]


def verification_requests(prepared: Prepared, candidates: Sequence[Candidate], cfg: AugmentConfig) -> list:
    """`verify_samples` requests per candidate still alive, in candidate order."""
    from distill.blueprint.prompt import verify_request

    params = verifier_params(cfg)
    return [
        verify_request(c.problem, prepared.templates["verify"], params, sample_index=k, label=f"verify {c.id}")
        for c in candidates if c.alive for k in range(cfg.verify_samples)
    ]


# ---------------------------------------------------------------------------------------------
# Pure steps


def new_problem(entry, output) -> Any:
    """The transferred problem as a canonical MCQ item (id = the candidate's id)."""
    from distill.data.schema import MCQItem

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


def screen(candidates: Sequence[Candidate], index, cfg: AugmentConfig) -> None:
    """The cheap gates, in order: schema, answers, form, decontamination."""
    from distill.blueprint import gates
    from distill.blueprint.decontam import item_text

    for candidate in candidates:
        response = candidate.response
        payload = None
        error = None
        if response is not None:
            error = response.error
            payload = response.parsed if response.parsed is not None else _answer_part(response.text)
        result, output = gates.check_schema(payload, error=error, min_choices=cfg.min_choices, max_choices=cfg.max_choices)
        candidate.output = output
        if not candidate.record(result):
            continue
        candidate.problem = new_problem(candidate.entry, output)
        if not candidate.record(gates.check_answers(output)):
            continue
        if not candidate.record(
            gates.check_form(
                output, candidate.negative.golden_steps, min_chars=cfg.min_reasoning_chars,
                max_chars=cfg.max_reasoning_chars, step_tolerance=cfg.step_tolerance,
            )
        ):
            continue
        candidate.record(gates.check_decontamination(index.best_match(item_text(candidate.problem)), cfg.decontam_threshold))


def _answer_part(text: str | None) -> str | None:
    """The JSON a response carries, without a think block before it."""
    if text is None:
        return None
    from distill.extraction import strip_think

    return strip_think(text)


def apply_verification(candidates: Sequence[Candidate], responses_by_candidate: dict[str, list]) -> None:
    from distill.blueprint import gates
    from distill.extraction import extract_answer

    for candidate in candidates:
        if not candidate.alive:
            continue
        responses = responses_by_candidate[candidate.id]
        errors = [r.error for r in responses]
        answers = [None if r.error else extract_answer(r.text, candidate.problem.n_choices) for r in responses]
        candidate.verifier_answers = answers
        candidate.record(gates.check_verification(answers, candidate.problem.answer, errors))


def apply_dedup(candidates: Sequence[Candidate], threshold: float, n: int) -> None:
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


def pair_row(candidate: Candidate, *, prompt_version: str, teacher: str, verifier: str | None) -> dict[str, Any]:
    """One preference pair in the contract of distill.pairs (DESIGN.md), plus a little lineage."""
    from distill.blueprint.gates import chosen_reasoning, final_text, without_answer_lines
    from distill.data.prompts import render_messages

    output, problem, entry = candidate.output, candidate.problem, candidate.entry
    row: dict[str, Any] = {
        "id": candidate.id,
        "seed_id": entry.seed_id,
        "problem": problem.to_dict(),
        "prompt": render_messages(problem),
        "chosen": final_text(chosen_reasoning(output), problem.answer),
        "rejected": final_text(without_answer_lines(output.rejected_reasoning), output.rejected_choice),
        "gold": problem.answer,
        "rejected_choice": output.rejected_choice,
        "subject": problem.subject,
        "transfer": entry.target.kind,
        "logic_structure": output.logic_structure.strip(),
        "error_type": output.error_type.strip(),
        "prompt_version": prompt_version,
        "target_topic": entry.target.topic,
        "seed_subject": candidate.negative.item.subject,
        "golden_steps": [step.golden_step for step in output.chosen_steps],
        "teacher": teacher,
        "verifier": verifier or "",
    }
    return row


def rejected_row(candidate: Candidate) -> dict[str, Any]:
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


def run_metrics(candidates: Sequence[Candidate], counts: dict[str, dict[str, int]], accepted: Sequence[dict]) -> dict[str, float]:
    """`augment/*` (candidates, accepted, per subject and per transfer kind) and
    `gate/<name>/{reached,passed,rejected,pass_share}`; pass_share = passed / reached."""
    from distill.blueprint.plan import TRANSFER_KINDS
    from distill.metrics import subject_keys

    metrics: dict[str, float] = {
        "augment/candidates": float(len(candidates)),
        "augment/accepted": float(len(accepted)),
        "augment/acceptance_rate": len(accepted) / len(candidates) if candidates else 0.0,
    }
    for name, count in counts.items():
        metrics[f"gate/{name}/reached"] = float(count["reached"])
        metrics[f"gate/{name}/passed"] = float(count["passed"])
        metrics[f"gate/{name}/rejected"] = float(count["rejected"])
        if count["reached"]:
            metrics[f"gate/{name}/pass_share"] = count["passed"] / count["reached"]
    by_subject = Counter(row["subject"] for row in accepted)
    for subject, key in subject_keys(c.entry.target.subject for c in candidates).items():
        metrics[f"augment/accepted/subject/{key}"] = float(by_subject.get(subject, 0))
    by_kind = Counter(row["transfer"] for row in accepted)
    for kind in TRANSFER_KINDS:
        metrics[f"augment/accepted/transfer/{kind}"] = float(by_kind.get(kind, 0))
    return metrics


# ---------------------------------------------------------------------------------------------
# Files


def _clean_stale(output_dir: Path) -> None:
    """Remove what a killed run may have left (temporary folders and set-aside old outputs)."""
    if not output_dir.is_dir():
        return
    for path in output_dir.iterdir():
        if path.name.startswith((".augment-tmp-", ".old-")):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def write_outputs(output_dir: Path, pairs: list[dict], rejected: list[dict], summary: str) -> None:
    """Write everything into a temporary folder, then rename each piece into place."""
    import tempfile

    from datasets import Dataset, disable_progress_bars, enable_progress_bars

    from distill.io import write_jsonl

    output_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=".augment-tmp-", dir=output_dir))
    try:
        pairs_dir = staging / PAIRS_DIR
        disable_progress_bars()
        try:
            Dataset.from_list(pairs).save_to_disk(str(pairs_dir))
        finally:
            enable_progress_bars()
        write_jsonl(pairs_dir / PAIRS_FILE, pairs)
        write_jsonl(staging / REJECTED_FILE, rejected)
        (staging / SUMMARY_FILE).write_text(summary + "\n", encoding="utf-8")
        for name in (PAIRS_DIR, REJECTED_FILE, SUMMARY_FILE):
            target = output_dir / name
            if target.is_dir():
                aside = output_dir / f".old-{name}-{os.getpid()}"
                os.replace(target, aside)
                os.replace(staging / name, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Summary


def summary_text(
    *, candidates: Sequence[Candidate], counts: dict[str, dict[str, int]], pairs: Sequence[dict],
    usage_lines: Sequence[str], title: str,
) -> str:
    lines = [title, ""]
    lines.append(f"{'gate':<16}{'reached':>8}{'passed':>8}{'refused':>8}{'pass':>7}")
    for name, count in counts.items():
        share = f"{count['passed'] / count['reached']:.0%}" if count["reached"] else "-"
        lines.append(f"{name:<16}{count['reached']:>8}{count['passed']:>8}{count['rejected']:>8}{share:>7}")
    rate = len(pairs) / len(candidates) if candidates else 0.0
    lines.append(f"{'accepted':<16}{len(candidates):>8}{len(pairs):>8}{len(candidates) - len(pairs):>8}{rate:>7.0%}")
    lines.append("")
    by_subject = Counter(row["subject"] for row in pairs)
    by_kind = Counter(row["transfer"] for row in pairs)
    lines.append("accepted by subject:  " + (", ".join(f"{s} {n}" for s, n in sorted(by_subject.items())) or "-"))
    lines.append("accepted by transfer: " + (", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) or "-"))
    refused = [c for c in candidates if c.refusal is not None]
    if refused:
        lines.append("")
        lines.append("refused:")
        for candidate in refused[:12]:
            reason = candidate.refusal.reason
            reason = reason if len(reason) <= 90 else reason[:87] + "..."
            lines.append(f"  {candidate.id:<18} {candidate.refusal.gate:<15} {reason}")
        if len(refused) > 12:
            lines.append(f"  ... and {len(refused) - 12} more (rejected_candidates.jsonl)")
    lines.append("")
    lines += list(usage_lines)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The stage


def _make_role_backend(kind: str, model: str, cfg: AugmentConfig, cache):
    from distill.llm import make_backend
    from distill.llm.replay import RECORDING_BACKENDS

    return make_backend(
        kind, model, cache=cache, concurrency=cfg.concurrency, max_retries=cfg.max_retries,
        timeout_s=cfg.timeout_s, backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s,
        prices=cfg.prices, seed=cfg.seed,
        recorded_by=(RECORDED_BACKEND, *RECORDING_BACKENDS) if kind == "replay" else None,
    )


def _log_inputs(pairs_path: Path, pairs: list[dict], negatives_path: Path, negatives) -> None:
    import hashlib
    import warnings

    import mlflow
    import pandas as pd

    def frame(rows: list[dict]) -> "pd.DataFrame":
        return pd.DataFrame(
            [{k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v for k, v in row.items()} for row in rows]
        )

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        seeds = [{**n.item.to_dict(), "golden_path": n.golden_path, "failed_path": n.failed_path} for n in negatives]
        digest = hashlib.sha256(negatives_path.read_bytes()).hexdigest()[:16]
        mlflow.log_input(
            mlflow.data.from_pandas(frame(seeds), source=str(negatives_path.resolve()), name="hard_negatives", digest=digest),
            context="seeds",
        )
        if pairs:
            digest = hashlib.sha256(pairs_path.read_bytes()).hexdigest()[:16]
            mlflow.log_input(
                mlflow.data.from_pandas(frame(pairs), source=str(pairs_path.resolve()), name="augment-pairs", digest=digest),
                context="training",
            )


def register_prompts(templates: dict[str, str]) -> dict[str, str]:
    """Register (when changed) the blueprint and verify templates; {template name: URI}."""
    from distill.prompt_registry import ensure_prompt

    return {
        name: ensure_prompt(
            PROMPT_NAMES[name], templates[name],
            tags={"stage": "augment", "file": f"distill/resources/prompts/{name}.txt"},
        )
        for name in PROMPT_NAMES
    }


def usage_line(usage) -> str:
    line = usage.summary()
    if usage.cache_hits:
        line += f"; cached tokens in/out {usage.cached_input_tokens}/{usage.cached_output_tokens}"
    return line


def usage_metrics(usages: dict[str, Any]) -> dict[str, float]:
    """`llm/<role>/*` per role and `llm/*` summed over the roles (tokens, requests, cost)."""
    import dataclasses

    metrics: dict[str, float] = {}
    for role, usage in usages.items():
        metrics.update({k: float(v) for k, v in usage.as_dict(f"llm/{role}/").items()})
    if usages:
        for name in dataclasses.asdict(next(iter(usages.values()))):
            metrics[f"llm/{name}"] = float(sum(getattr(u, name) for u in usages.values()))
    return metrics


def gather(candidates: Sequence[Candidate], prepared: Prepared, cfg: AugmentConfig, teacher, verifier) -> None:
    """Ask the teacher for every blueprint, run the gates, ask the verifier for the survivors."""
    for candidate, response in zip(candidates, teacher.generate(blueprint_requests(prepared, candidates, cfg))):
        candidate.response = response
    screen(candidates, prepared.index, cfg)
    if verifier is not None:
        requests = verification_requests(prepared, candidates, cfg)
        answers = verifier.generate(requests) if requests else []
        alive = [c for c in candidates if c.alive]
        k = cfg.verify_samples
        apply_verification(candidates, {c.id: list(answers[i * k:(i + 1) * k]) for i, c in enumerate(alive)})
    apply_dedup(candidates, cfg.dedup_threshold, cfg.ngram)


def run(cfg: AugmentConfig) -> AugmentOutputs:
    """Plan, generate, gate, write and log one augmentation run; print a one-screen summary."""
    from distill import tracking
    from distill.blueprint import gates as gate_module
    from distill.llm import ResponseCache
    from distill.prompt_registry import log_prompt_versions

    from distill.pairs import is_mlflow_uri

    started = time.perf_counter()
    # Bad input fails before a run is opened, unless the input itself lives in MLflow.
    from_mlflow = cfg.hard_negatives is not None and not Path(cfg.hard_negatives).exists() and is_mlflow_uri(cfg.hard_negatives)
    if from_mlflow:
        tracking.configure(cfg.experiment, "augment")
    prepared = prepare(cfg)
    if not from_mlflow:
        tracking.configure(cfg.experiment, "augment")
    negatives, entries, templates = prepared.negatives, prepared.entries, prepared.templates
    prompt_version = prepared.prompt_version

    import mlflow

    cache = ResponseCache(cfg.cache_path)
    imported = 0
    if cfg.uses_replay and (cfg.replay_recording or "").lower() != "none":
        imported = import_recording(cache, cfg.replay_recording or _bundled(RECORDING_NAME))
    teacher = verifier = None
    output_dir = Path(cfg.output_dir)
    gate_names = [g for g in gate_module.GATES if cfg.verify or g != "verification"]
    try:
        teacher = _make_role_backend(cfg.teacher_backend, cfg.teacher, cfg, cache)
        verifier = _make_role_backend(cfg.verifier_backend, cfg.verifier, cfg, cache) if cfg.verify else None  # type: ignore[arg-type]
        with tracking.start_run(run_name=f"augment {cfg.teacher}") as active:
            run_id = active.info.run_id
            tracking.log_params(tracking.safe_params(cfg))
            mlflow.set_tags({
                "distill.stage": "augment", "distill.teacher": cfg.teacher, "distill.teacher_backend": cfg.teacher_backend,
                "distill.verifier": cfg.verifier if cfg.verify else "off",
                "distill.verifier_backend": cfg.verifier_backend if cfg.verify else "off",
                "distill.prompt_version": prompt_version,
                "augment.gate.pass_share": "passed / reached: of the candidates that got to a gate, the share it let through",
            })
            prompt_uris = register_prompts(templates)
            log_prompt_versions(prompt_uris.values())

            candidates = prepared.candidates()
            gather(candidates, prepared, cfg, teacher, verifier)

            accepted = [c for c in candidates if c.alive]
            pairs = [pair_row(c, prompt_version=prompt_version, teacher=cfg.teacher, verifier=cfg.verifier if cfg.verify else None) for c in accepted]
            rejected = [rejected_row(c) for c in candidates if not c.alive]
            counts = gate_counts(candidates, gate_names)
            metrics = run_metrics(candidates, counts, pairs)
            usages = {"teacher": teacher.usage} | ({"verifier": verifier.usage} if verifier is not None else {})
            metrics.update(usage_metrics(usages))
            metrics["augment/recording_imported"] = float(imported)
            usage_lines = [f"{role:<8} {getattr(cfg, f'{role}_backend')}:{getattr(cfg, role)}: {usage_line(usage)}" for role, usage in usages.items()]
            if imported:
                usage_lines.append(f"imported {imported} recorded responses into {cache.path}")

            verifier_words = f"{cfg.verifier_backend}:{cfg.verifier}" if cfg.verify else "off"
            title = (
                f"augment  {len(negatives)} hard negatives -> {len(candidates)} candidates -> {len(pairs)} pairs"
                f"  (teacher {cfg.teacher_backend}:{cfg.teacher}, verifier {verifier_words}, seed {cfg.seed})"
            )
            summary = summary_text(candidates=candidates, counts=counts, pairs=pairs, usage_lines=usage_lines, title=title)
            write_outputs(output_dir, pairs, rejected, summary)
            pairs_dir = output_dir / PAIRS_DIR

            wall_s = time.perf_counter() - started
            metrics["augment/wall_s"] = wall_s
            mlflow.log_metrics(metrics)
            _log_inputs(pairs_dir / PAIRS_FILE, pairs, prepared.negatives_path, negatives)
            mlflow.log_artifacts(str(pairs_dir), PAIRS_DIR)
            mlflow.log_artifact(str(output_dir / REJECTED_FILE))
            mlflow.log_artifact(str(output_dir / SUMMARY_FILE))
            mlflow.log_dict(
                [{"id": e.candidate_id, "seed_id": e.seed_id, "transfer": e.target.kind, "subject": e.target.subject, "topic": e.target.topic} for e in entries],
                "plan.json",
            )
    finally:
        for backend in (teacher, verifier):
            if backend is not None:
                backend.close()
        cache.close()

    print()
    print(summary)
    print(f"wrote {pairs_dir} ({len(pairs)} pairs: HF dataset + {PAIRS_FILE}) and {output_dir / REJECTED_FILE} ({len(rejected)} refused)")
    print(f"run {run_id}  ·  train with -P pairs=runs:/{run_id}/{PAIRS_DIR}  ·  prompts {', '.join(prompt_uris.values())}  ·  {wall_s:.1f} s")
    return AugmentOutputs(
        run_id=run_id, output_dir=output_dir, pairs_dir=pairs_dir, pairs_path=pairs_dir / PAIRS_FILE,
        rejected_path=output_dir / REJECTED_FILE, candidates=len(candidates), accepted=len(pairs),
        gate_counts=counts, metrics=metrics, wall_s=wall_s, prompts=prompt_uris,
    )
