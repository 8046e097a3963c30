"""The `augment` stage: hard negatives → blueprint transfers → quality gates → ORPO pairs.

What one run does, in order (each a step below; the candidates, the gates applied to them, the
pairs, metrics and summary are distill/blueprint/candidates.py):
1. prepare: reads the hard negatives and the transfer plan and builds the plan of the run (one
   candidate per seed and target, deterministic for a seed); reads every evaluation set and
   seed set into one n-gram index (decontamination); loads the prompt templates;
2. ask: the teacher writes one blueprint per candidate (structured output, `BlueprintOutput`);
   every paid response goes into the response cache the moment it arrives (one that fails the
   schema too, then repaired by a new request), so a killed run resumes paying again only for
   what was in flight;
3. gate: schema, answers, form, decontamination, alignment (only with `min_alignment` set), then
   an independent re-solve by the verifier, then the duplicate filter (`distill.blueprint.gates`);
   every candidate that reaches the alignment step gets its reasoning-alignment scores
   (`distill.alignment`: chosen steps against the golden path, rejected against the failed path),
   written with its pair (`alignment_golden`, `alignment_failed`) and averaged as `augment/alignment_*`;
4. write: `<output_dir>/pairs/` (HF `save_to_disk` + `pairs.jsonl`, each row a
   `distill.contracts.PreferencePair`) and `<output_dir>/rejected_candidates.jsonl` (each
   refusal with its gate and reason) through a temporary folder that is renamed into place;
5. log: the pairs as a training dataset and as the artifact folder `pairs` (so
   `train -P pairs=runs:/<run_id>/pairs` reads it), the refusals, the prompts' registry
   versions, and the metrics `augment/*` (candidates, accepted per subject and per transfer
   kind), `gate/<name>/{reached,passed,rejected,pass_share}` and `llm/*` (requests, cache
   hits, tokens, cost);
6. prints a one-screen summary, and fails (exit 2, the run FAILED with its reason) when more
   than `max_failure_rate` of a role's requests got no usable answer.
Each batch of LLM calls is a trace in the run's Traces tab (distill/llm/tracing.py).

The embedded default (no parameters) runs offline: the teacher and the verifier are replay
backends answering from `distill/resources/replay/augment.jsonl` (the one recording format of
distill/llm/recording.py; responses for the bundled hard negatives written by the project,
teacher "example-teacher", rebuilt by scripts/build_augment_replay.py), imported into the run's
response cache at the start. Some of them are made to fail a gate, so that a default run shows
every gate at work.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
from distill.errors import ConfigError, InputError

BUNDLED = "bundled"
"""The word that stands for the bundled eval sample in `eval_sets`."""

BLUEPRINT_PROMPT_NAME = "distill-blueprint"
VERIFY_PROMPT_NAME = "distill-verify"
PROMPT_NAMES = {"blueprint": BLUEPRINT_PROMPT_NAME, "verify": VERIFY_PROMPT_NAME}
"""Registry name of each template (mine registers distill-answer and distill-judge)."""

HARD_NEGATIVES_NAME = "hard_negatives.jsonl"
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

    hard_negatives: str | None = unset_field(
        "bundled",
        "Hard negatives (mine's hard_negatives.jsonl): a file or an MLflow artifact URI (runs:/<mine run id>/mine/hard_negatives.jsonl). Unset: the 18 bundled hard negatives.",
    )
    plan: str | None = unset_field(
        "bundled",
        "Transfer plan YAML (targets per subject, pairs per seed, mix of transfer kinds). Unset: the bundled plan for 수능 subjects.",
    )
    pairs_per_seed: int | None = unset_field(
        "plan", "Candidates per hard negative, overriding the plan. Unset: the plan's."
    )
    max_seeds: int | None = unset_field("all", "Use only the first N hard negatives (a quick look). Unset: all.")
    teacher: str = field(
        default="example-teacher",
        metadata={
            "help": "Teacher model that writes the blueprints (e.g. gemini-2.5-flash). example-teacher: the bundled recording, written by the project."
        },
    )
    teacher_backend: str = field(
        default="replay",
        metadata={
            "help": "Teacher backend: gemini, openai, local, replay (answers only from the response cache) or world (the synthetic world's teacher)."
        },
    )
    teacher_mode: str = field(
        default="online",
        metadata={
            "help": "online: one HTTP call per request; batch (gemini, openai): the requests the cache lacks go as provider batch jobs at batch prices (half), resumable after a kill; export (openai): write them as a batch JSONL for `vllm run-batch` and stop (see README, Provider batch mode)."
        },
    )
    verifier_mode: str | None = unset_field(
        "teacher",
        "Verifier requests: online, batch or export, as teacher_mode. Unset: the teacher's mode when "
        "verifier_backend equals teacher_backend, else online.",
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
    verify: bool = field(
        default=True,
        metadata={
            "help": "on/off: verify each new problem by an independent re-solve (fresh prompt, no chosen reasoning shown) that must agree with its gold answer."
        },
    )
    verifier: str | None = unset_field("teacher", "Verifier model. Unset: the teacher model.")
    verifier_backend: str | None = unset_field(
        "teacher", "Verifier backend: gemini, openai, local, replay or world. Unset: the teacher backend."
    )
    verify_samples: int = field(
        default=1, metadata={"help": "Independent re-solves per new problem; every one must reach the gold answer."}
    )
    teacher_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the teacher."})
    teacher_output_limit: int = field(
        default=8192, metadata={"help": "Maximum output tokens of a blueprint response."}
    )
    verifier_temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature of the verifier (sample k uses seed + k)."}
    )
    verifier_output_limit: int = field(
        default=4096, metadata={"help": "Maximum output tokens of a verifier response."}
    )
    eval_sets: list[str] = field(
        default_factory=lambda: [BUNDLED],
        metadata={
            "help": "Evaluation sets no pair may overlap: path[@format],... as evaluate's datasets (without @format: detected); 'bundled' is the bundled eval sample."
        },
    )
    seed_sets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Further seed item files no pair may copy (the hard negatives themselves are always checked): path[@format],..."
        },
    )
    ngram: int = field(
        default=5,
        metadata={
            "help": "Character n-gram size of decontamination and duplicate detection (after removing spaces and punctuation)."
        },
    )
    decontam_threshold: float = field(
        default=0.5,
        metadata={
            "help": "Refuse a new problem whose n-gram overlap with any evaluation or seed item is at least this (0-1)."
        },
    )
    dedup_threshold: float = field(
        default=0.6,
        metadata={"help": "Drop a new problem whose n-gram overlap with one kept before it is at least this (0-1)."},
    )
    min_choices: int = field(default=4, metadata={"help": "Fewest choices a new problem may have."})
    max_choices: int = field(default=5, metadata={"help": "Most choices a new problem may have."})
    min_reasoning_chars: int = field(
        default=40, metadata={"help": "Shortest chosen or rejected reasoning (characters, answer line excluded)."}
    )
    max_reasoning_chars: int = field(
        default=3000, metadata={"help": "Longest chosen or rejected reasoning (characters, answer line excluded)."}
    )
    step_tolerance: int = field(
        default=2, metadata={"help": "How far the chosen reasoning's step count may be from the golden path's."}
    )
    min_alignment: float | None = unset_field(
        "off",
        "Refuse a pair whose chosen steps align with the golden path's below this (0-1: monotone alignment of character-bigram similarities, distill/alignment.py). Unset: no gate; the scores are logged either way.",
    )
    replay_recording: str | None = unset_field(
        "bundled",
        "Recorded responses (JSONL) imported into the cache before a replay run. Unset: the bundled recording; 'off': import nothing.",
    )
    cache_path: str = field(
        default="outputs/augment/cache.sqlite",
        metadata={
            "help": "Response cache (SQLite). Every paid response is stored as it arrives; a rerun (or a killed run resumed) pays again only for the requests in flight when a run was killed (at most concurrency per backend)."
        },
    )
    prices: str | None = unset_field(
        "builtin", "Price table (YAML/JSON, USD per 1M tokens) for the cost estimate. Unset: the built-in table."
    )
    concurrency: int = field(default=16, metadata={"help": "Requests in flight at once (network backends)."})
    max_retries: int = field(
        default=6,
        metadata={
            "help": "Retries of a request after 429/5xx/timeouts/garbled bodies. A permanent error (400/401/403/404, a bad base URL or key) is never retried: the stage stops at it."
        },
    )
    max_failure_rate: float = field(
        default=0.1,
        metadata={
            "help": "Largest share (0-1) of a role's requests that may end with no usable answer (failed after retries, blocked, failing the schema after repairs); above it, for any role, the stage writes its outputs, then fails (exit 2, MLflow run FAILED, tag distill.failure_reason=failure_rate). A rerun fetches only what is missing."
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
            "help": "New requests (the bad answer shown back, with what is wrong) for a blueprint that fails its response schema; the bad answer itself is cached and paid once."
        },
    )
    trace_requests: int = field(
        default=16,
        metadata={
            "help": "Requests per batch traced with their own span in the run's Traces (every batch gets one span); 0: batches only."
        },
    )
    timeout_s: float = field(default=300.0, metadata={"help": "Per-attempt timeout in seconds."})
    backoff_base_s: float = field(
        default=1.0,
        metadata={
            "help": "Retry backoff base: attempt k waits up to base * 2^k (full jitter), at least the server's Retry-After."
        },
    )
    backoff_max_s: float = field(default=60.0, metadata={"help": "Longest wait between retries (seconds)."})
    seed: int = field(default=0, metadata={"help": "Seed of the transfer plan and of the generation requests."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default distill-augment)."})
    output_dir: str = field(
        default="outputs/augment", metadata={"help": "Folder for pairs/, rejected_candidates.jsonl and summary.txt."}
    )

    def __post_init__(self) -> None:
        self._normalise()
        self._check_ranges()
        if not str(self.cache_path or "").strip():
            raise ConfigError("cache_path must name a file (the response cache)")
        self.verifier = self.verifier or self.teacher
        self.verifier_backend = self.verifier_backend or self.teacher_backend
        self.verifier_mode = self.verifier_mode or (
            self.teacher_mode if self.verifier_backend == self.teacher_backend else "online"
        )
        from distill.llm.roles import check_mode, check_role

        for role in ("teacher", "verifier"):
            kind, model = check_role(role, getattr(self, f"{role}_backend"), getattr(self, role))
            setattr(self, f"{role}_backend", kind)
            setattr(self, role, model)
            setattr(self, f"{role}_mode", check_mode(role, kind, getattr(self, f"{role}_mode")))
        if self.batch_timeout_s <= 0 or self.batch_poll_s < 0:
            raise ConfigError(
                f"batch_timeout_s must be positive and batch_poll_s >= 0, got {self.batch_timeout_s}, {self.batch_poll_s}"
            )

    def _normalise(self) -> None:
        """Command-line text to values: empty strings to None, comma lists to lists, on/off to bool."""
        for name in (
            "hard_negatives",
            "plan",
            "verifier",
            "verifier_backend",
            "verifier_mode",
            "replay_recording",
            "prices",
            "experiment",
        ):
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
            if getattr(self, name):
                from distill.evaluation import parse_sets

                parse_sets(",".join(getattr(self, name)), field=name)  # a malformed list fails before any request
        for name in ("pairs_per_seed", "max_seeds"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = int(value) if value.strip() else None
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 (or empty), got {value}")
            setattr(self, name, value)
        if isinstance(self.verify, str):
            from distill.data.prompts import parse_thinking  # on/off, true/false, 1/0

            try:
                self.verify = parse_thinking(self.verify)
            except ConfigError:
                raise ConfigError(f"verify must be on or off, got {self.verify!r}") from None

    def _check_ranges(self) -> None:
        for name in ("max_retries", "circuit_breaker", "max_repairs", "trace_requests"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"max_failure_rate must be within 0..1, got {self.max_failure_rate}")
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
            raise ConfigError(
                f"need 2 <= min_choices <= max_choices <= 10, got {self.min_choices}..{self.max_choices}"
            )
        if not 0 < self.min_reasoning_chars <= self.max_reasoning_chars:
            raise ConfigError("need 0 < min_reasoning_chars <= max_reasoning_chars")
        if self.step_tolerance < 0:
            raise ConfigError(f"step_tolerance must be >= 0, got {self.step_tolerance}")
        if self.min_alignment is not None and not 0.0 <= self.min_alignment <= 1.0:
            raise ConfigError(f"min_alignment must be within 0..1 (or unset), got {self.min_alignment}")

    @property
    def uses_replay(self) -> bool:
        return self.teacher_backend == "replay" or (self.verify and self.verifier_backend == "replay")


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
# Prepare


def resolve_hard_negatives(spec: str | None) -> Path:
    """A local path for the hard negatives: the bundled file, a path, or a downloaded MLflow artifact."""
    if spec is None:
        return Path(_bundled(HARD_NEGATIVES_NAME))
    from distill.pairs import is_mlflow_uri

    if Path(spec).exists() or not is_mlflow_uri(spec):
        return Path(spec)
    import tempfile

    try:
        path = Path(tracking.download_artifacts(artifact_uri=spec, dst_path=tempfile.mkdtemp(prefix="distill-hn-")))
    except Exception as exc:  # mlflow raises several types for a missing run or path
        raise ConfigError(f"hard_negatives: cannot download {spec}: {exc}") from None
    if path.is_dir():
        found = sorted(path.rglob(HARD_NEGATIVES_NAME))
        if len(found) != 1:
            raise InputError(path, f"expected one {HARD_NEGATIVES_NAME} in the downloaded artifact")
        path = found[0]
    return path


def load_reference_items(specs: Sequence[str], field: str = "eval_sets") -> list:
    """Items of every set named in `specs` (path[@format], as evaluate's `datasets`; 'bundled' =
    the bundled eval sample)."""
    from distill.data.loaders import load_items
    from distill.evaluation import parse_sets

    items = []
    for named in parse_sets(",".join(specs), field=field) if specs else []:
        items += load_items(named.path, named.format, allow_duplicate_choices=True)
    return items


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
    templates: dict[str, Any]
    """The blueprint and verify Templates (distill/llm/templates.py)."""
    prompt_version: str

    def candidates(self) -> list:
        from distill.blueprint.candidates import Candidate

        by_seed = {n.id: n for n in self.negatives}
        return [Candidate(entry=e, negative=by_seed[e.seed_id]) for e in self.entries]


def prepare(cfg: AugmentConfig) -> Prepared:
    """Read the hard negatives, the plan, the reference sets and the templates."""
    from distill.blueprint.decontam import build_reference_index
    from distill.blueprint.plan import build_plan, load_plan
    from distill.blueprint.prompt import load_templates
    from distill.contracts import load_hard_negatives

    negatives_path = resolve_hard_negatives(cfg.hard_negatives)
    negatives = load_hard_negatives(negatives_path)
    if cfg.max_seeds is not None:
        negatives = negatives[: cfg.max_seeds]
    plan = load_plan(cfg.plan)
    entries = build_plan(
        [(n.id, n.item.subject) for n in negatives], plan, cfg.seed, pairs_per_seed=cfg.pairs_per_seed
    )
    eval_items = load_reference_items(cfg.eval_sets)
    seed_items = [n.item for n in negatives] + load_reference_items(cfg.seed_sets, "seed_sets")
    templates = load_templates()
    return Prepared(
        negatives_path=negatives_path,
        negatives=negatives,
        entries=entries,
        index=build_reference_index(eval_items, seed_items, cfg.ngram),
        n_eval_items=len(eval_items),
        templates=templates,
        prompt_version=f"blueprint-{templates['blueprint'].version}",
    )


def open_cache(cfg: AugmentConfig):
    """The run's response cache, with the recording imported when a role replays; (cache, rows new)."""
    from distill.llm import ResponseCache
    from distill.llm.recording import import_recording, recording_to_import

    cache = ResponseCache(cfg.cache_path)
    recording = recording_to_import(cfg.replay_recording, "augment") if cfg.uses_replay else None
    try:
        return cache, import_recording(cache, recording) if recording is not None else 0
    except BaseException:
        cache.close()
        raise


# ---------------------------------------------------------------------------------------------
# Ask and gate


def teacher_params(cfg: AugmentConfig):
    from distill.llm import GenerationParams

    return GenerationParams(
        temperature=cfg.teacher_temperature, max_output_tokens=cfg.teacher_output_limit, seed=cfg.seed
    )


def verifier_params(cfg: AugmentConfig):
    from distill.llm import GenerationParams

    return GenerationParams(
        temperature=cfg.verifier_temperature, max_output_tokens=cfg.verifier_output_limit, seed=cfg.seed
    )


def gather(candidates: Sequence, prepared: Prepared, cfg: AugmentConfig, teacher, verifier) -> None:
    """Ask the teacher for every blueprint, run the gates, ask the verifier for the survivors."""
    from distill.blueprint.candidates import (
        apply_dedup,
        apply_verification,
        blueprint_requests,
        screen,
        verification_requests,
    )

    requests = blueprint_requests(candidates, prepared.templates["blueprint"], teacher_params(cfg))
    for candidate, response in zip(candidates, teacher.generate(requests, role="teacher")):
        candidate.response = response
    screen(candidates, prepared.index, cfg)
    apply_alignment(candidates, cfg.min_alignment)
    if verifier is not None:
        k = cfg.verify_samples
        requests = verification_requests(candidates, prepared.templates["verify"], verifier_params(cfg), k)
        answers = verifier.generate(requests, role="verifier") if requests else []
        alive = [c for c in candidates if c.alive]
        apply_verification(candidates, {c.id: list(answers[i * k : (i + 1) * k]) for i, c in enumerate(alive)})
    apply_dedup(candidates, cfg.dedup_threshold, cfg.ngram)


def apply_alignment(candidates: Sequence, min_alignment: float | None) -> None:
    """Score each surviving candidate's reasoning alignment; with `min_alignment`, gate on it."""
    from distill.alignment import pair_alignment
    from distill.blueprint import gates

    for candidate in candidates:
        if not candidate.alive:
            continue
        output, negative = candidate.output, candidate.negative
        candidate.alignment = pair_alignment(
            [gates.step_text(step.text) for step in output.chosen_steps],
            negative.golden_path,
            gates.without_answer_lines(output.rejected_reasoning),
            negative.failed_path,
        )
        if min_alignment is not None:
            candidate.record(gates.check_alignment(candidate.alignment["alignment_golden"], min_alignment))


# ---------------------------------------------------------------------------------------------
# Write and log


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


def _json_frame(rows: list[dict]):
    """Rows as a frame for a dataset input (list and dict values as JSON text)."""
    import json

    import pandas as pd

    return pd.DataFrame(
        [
            {k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v for k, v in row.items()}
            for row in rows
        ]
    )


def log_datasets(cfg: AugmentConfig, prepared: Prepared, pairs: list[dict]) -> dict[str, str]:
    """The hard negatives as the run's input, found where the user named them (mine's `runs:/`
    URI, their file, or the bundled one), with the digest mine recorded for the same rows; the
    pairs as the run's output, recorded for train (`tracking.record_output`). {what: URI}."""
    from distill.io import read_jsonl

    negatives = [
        {**n.item.to_dict(), "golden_path": n.golden_path, "failed_path": n.failed_path} for n in prepared.negatives
    ]
    source = cfg.hard_negatives or str(prepared.negatives_path)
    tracking.log_dataset(
        _json_frame(negatives),
        name="hard_negatives",
        source=source,
        context="hard_negatives",
        rows=read_jsonl(prepared.negatives_path),
    )
    return {"hard negatives": f"`{source}`", "pairs": f"`{tracking.record_output('pairs', PAIRS_DIR, pairs)}`"}


def register_prompts(templates: dict[str, Any]) -> dict[str, str]:
    """Register (when changed) the blueprint and verify templates; {template name: URI}."""
    from distill.prompt_registry import register_template

    return {
        name: register_template(PROMPT_NAMES[name], templates[name], tags={"stage": "augment"})
        for name in PROMPT_NAMES
    }


def run_name(cfg: AugmentConfig, prepared: Prepared) -> str:
    """What tells one augment run from another: the teacher, the verifier, the seeds, the seed."""
    verifier = f"verify={cfg.verifier or cfg.teacher}" if cfg.verify else "verify=off"
    return f"augment {cfg.teacher} {verifier} seeds={len(prepared.negatives)} seed={cfg.seed}"


def log_start(cfg: AugmentConfig, prepared: Prepared) -> dict[str, str]:
    """Params, the resolved config, tags and the prompt versions; {template name: URI}."""
    from distill.prompt_registry import log_prompt_versions

    tracking.log_config_params(cfg, max_seeds=len(prepared.negatives))  # the hard negatives actually used
    tracking.log_config(cfg)
    tracking.set_tags(
        {
            "distill.stage": "augment",
            "distill.teacher": cfg.teacher,
            "distill.teacher_backend": cfg.teacher_backend,
            "distill.verifier": cfg.verifier if cfg.verify else "off",
            "distill.verifier_backend": cfg.verifier_backend if cfg.verify else "off",
            "distill.prompt_version": prepared.prompt_version,
            "augment.gate.pass_share": "passed / reached: of the candidates that got to a gate, the share it let through",
        }
    )
    prompt_uris = register_prompts(prepared.templates)
    log_prompt_versions(prompt_uris.values())
    return prompt_uris


def summarise(cfg: AugmentConfig, prepared: Prepared, candidates, counts, pairs, usages: dict, imported: int) -> str:
    from distill.blueprint.candidates import summary_text
    from distill.llm.roles import usage_summary

    usage_lines = [
        f"{role:<8} {getattr(cfg, f'{role}_backend')}:{getattr(cfg, role)}: {usage_summary(usage)}"
        for role, usage in usages.items()
    ]
    if imported:
        usage_lines.append(f"imported {imported} recorded responses into {Path(cfg.cache_path)}")
    verifier = f"{cfg.verifier_backend}:{cfg.verifier}" if cfg.verify else "off"
    title = (
        f"augment  {len(prepared.negatives)} hard negatives -> {len(candidates)} candidates -> {len(pairs)} pairs"
        f"  (teacher {cfg.teacher_backend}:{cfg.teacher}, verifier {verifier}, seed {cfg.seed})"
    )
    return summary_text(candidates=candidates, counts=counts, pairs=pairs, usage_lines=usage_lines, title=title)


def record(cfg: AugmentConfig, prepared: Prepared, candidates: Sequence, usages: dict, imported: int, started: float):
    """Write the outputs, log metrics, artifacts and datasets; (pairs, rejected, counts, metrics, summary)."""
    import pandas as pd

    from distill.alignment import ALIGNMENT_METRICS, alignment_metrics
    from distill.blueprint import gates
    from distill.blueprint.candidates import (
        AUGMENT_HEADLINE,
        accepted_rows,
        augment_metrics,
        gate_counts,
        gate_rows,
        plan_rows,
        preference_pair,
        rejected_row,
    )
    from distill.llm.roles import usage_headline, usage_metrics, usage_table

    verifier = cfg.verifier if cfg.verify else None
    pairs = [
        preference_pair(c, prompt_version=prepared.prompt_version, teacher=cfg.teacher, verifier=verifier)
        for c in candidates
        if c.alive
    ]
    rejected = [rejected_row(c) for c in candidates if not c.alive]
    counts = gate_counts(candidates, gates.active_gates(verify=cfg.verify, alignment=cfg.min_alignment is not None))
    metrics = augment_metrics(candidates, counts, pairs) | usage_metrics(usages)
    metrics["augment/recording_imported"] = float(imported)
    metrics |= alignment_metrics(pairs)
    summary = summarise(cfg, prepared, candidates, counts, pairs, usages, imported)
    output_dir = Path(cfg.output_dir)
    rows = [pair.to_dict() for pair in pairs]
    write_outputs(output_dir, rows, rejected, summary)
    metrics["augment/wall_s"] = time.perf_counter() - started
    # A short list of metrics to compare runs by; per gate, subject, transfer kind and role: tables.
    tracking.log_metrics(
        {k: metrics[k] for k in (*AUGMENT_HEADLINE, *ALIGNMENT_METRICS) if k in metrics} | usage_headline(usages)
    )
    tracking.log_table(pd.DataFrame(gate_rows(counts)), "augment/gates.json")
    tracking.log_table(pd.DataFrame(accepted_rows(candidates, pairs)), "augment/accepted.json")
    tracking.log_table(pd.DataFrame(usage_table(usages)), "augment/llm_usage.json")
    links = log_datasets(cfg, prepared, rows)
    tracking.describe_run(summary, links)
    tracking.log_artifacts(output_dir / PAIRS_DIR, PAIRS_DIR)
    tracking.log_artifact(output_dir / REJECTED_FILE)
    tracking.log_artifact(output_dir / SUMMARY_FILE)
    tracking.log_dict(plan_rows(prepared.entries), "plan.json")
    return pairs, rejected, counts, metrics, summary


def run(cfg: AugmentConfig) -> AugmentOutputs:
    """Plan, generate, gate, write and log one augmentation run; print a one-screen summary.

    Fails (StageFailed, the MLflow run FAILED with `distill.failure_reason`) at a permanent
    error, a tripped circuit breaker, or, after writing the outputs, when more than
    `max_failure_rate` of the requests got no usable answer."""
    from distill.llm.roles import BackendSettings, enforce_failure_rate, resume_from_cache, role_backend
    from distill.pairs import is_mlflow_uri

    started = time.perf_counter()
    # Bad input fails before a run is opened, unless the input itself lives in MLflow.
    spec = cfg.hard_negatives
    from_mlflow = spec is not None and not Path(spec).exists() and is_mlflow_uri(spec)
    if from_mlflow:
        tracking.configure(cfg.experiment, "augment")
    prepared = prepare(cfg)
    if not from_mlflow:
        tracking.configure(cfg.experiment, "augment")
    cache, imported = open_cache(cfg)
    backends: dict[str, Any] = {}
    try:
        settings = BackendSettings.of(cfg)
        for role in ("teacher", "verifier") if cfg.verify else ("teacher",):
            kind, model = getattr(cfg, f"{role}_backend"), getattr(cfg, role)
            mode = getattr(cfg, f"{role}_mode")
            backends[role] = role_backend(kind, model, cache=cache, settings=settings, role=role, mode=mode)
        with tracking.start_run(run_name=run_name(cfg, prepared)) as active, tracking.tagging_failure():
            for line in resume_from_cache(cfg.cache_path):
                print(line)
            prompt_uris = log_start(cfg, prepared)
            candidates = prepared.candidates()
            gather(candidates, prepared, cfg, backends["teacher"], backends.get("verifier"))
            usages = {role: backend.usage for role, backend in backends.items()}
            pairs, rejected, counts, metrics, summary = record(cfg, prepared, candidates, usages, imported, started)
            run_id, output_dir = active.info.run_id, Path(cfg.output_dir)
            print_summary(summary, run_id, output_dir, len(pairs), len(rejected), prompt_uris, metrics)
            tracking.flush_traces()  # the Traces tab is complete when the run ends
            enforce_failure_rate(usages, cfg.max_failure_rate)
    finally:
        for backend in backends.values():
            backend.close()
        cache.close()

    pairs_dir = output_dir / PAIRS_DIR
    return AugmentOutputs(
        run_id=run_id,
        output_dir=output_dir,
        pairs_dir=pairs_dir,
        pairs_path=pairs_dir / PAIRS_FILE,
        rejected_path=output_dir / REJECTED_FILE,
        candidates=len(candidates),
        accepted=len(pairs),
        gate_counts=counts,
        metrics=metrics,
        wall_s=metrics["augment/wall_s"],
        prompts=prompt_uris,
    )


def print_summary(summary: str, run_id: str, output_dir: Path, pairs: int, refused: int, prompt_uris, metrics) -> None:
    """The one screen a run ends with: the summary, what was written, how to train on it."""
    pairs_dir = output_dir / PAIRS_DIR
    print()
    print(summary)
    print(
        f"wrote {pairs_dir} ({pairs} pairs: HF dataset + {PAIRS_FILE}) and {output_dir / REJECTED_FILE} ({refused} refused)"
    )
    print(
        f"run {run_id}  ·  train with -P pairs=runs:/{run_id}/{PAIRS_DIR}  ·  prompts {', '.join(prompt_uris.values())}  ·  {metrics['augment/wall_s']:.1f} s"
    )
