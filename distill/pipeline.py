"""The `pipeline` stage: mine → augment → train → evaluate → register, as child runs of one parent.

Each step is the stage's own `run(cfg)`, started while the pipeline's run is active, so it is
a nested child run in the same experiment (`distill-pipeline` unless configured; under
`mlflow run` the parent is the run `mlflow run` made). Steps hand their outputs on as MLflow
URIs: `runs:/<mine>/mine/hard_negatives.jsonl` → augment, `runs:/<augment>/pairs` → train,
`runs:/<train>/adapter` → evaluate and register, the evaluate run's predictions → register.

Reuse by content hash. A step's hash covers its stage, every parameter that can change its
result (not where files go, caches, concurrency or timeouts), the content (sha256) of every
local file or folder a parameter names, and the distill version (bundled data and code ship
with it). Upstream outputs enter as their URIs, which name the producing run: a reused
upstream keeps its run id, so its consumers keep their hashes. After a step finishes, its run
is tagged with its outputs (`distill.pipeline.output.<name>`) and, last, `distill.step_hash`.
Before a step runs, the pipeline's experiment is searched for a FINISHED run with the same
`distill.step_hash`; if there is one, the step is not run again: a small child run is recorded
instead, named `<step> (reused)`, tagged `distill.reused_from=<that run id>`, carrying a copy of
its metrics, and the outputs are that run's. So a rerun with nothing changed trains nothing,
sends no LLM request and registers nothing twice; a changed parameter recomputes that step and
everything downstream of it; a failed step has no hash, so a rerun resumes there.
`reuse=false` recomputes everything.

The parent ends with the register step's report (`report/report.md`, `report/subjects.html`:
base vs trained per subject, accuracy and macro-F1, and the overall paired test), the headline
metrics, and a summary of which steps ran and which were reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from distill.errors import ConfigError

STEPS = ("mine", "augment", "train", "evaluate", "register")
TAG_STEP = "distill.pipeline.step"
TAG_HASH = "distill.step_hash"
TAG_REUSED = "distill.reused_from"
TAG_PARENT = "distill.pipeline.parent_run"
OUTPUT_TAG = "distill.pipeline.output."
NOT_IN_HASH = {
    "experiment", "output_dir", "cache_path", "concurrency", "timeout_s", "max_retries", "backoff_base_s", "backoff_max_s",
    "prices", "device",
}
"""Config fields that change where or how fast a step runs, never what it produces."""
HASH_VERSION = "1"
CONTENT_HASH_LIMIT = 256 * 1024 * 1024


@dataclass
class PipelineConfig:
    """mine → augment → train → evaluate → register as child runs of one parent; unchanged steps are reused."""

    seeds: str | None = field(default=None, metadata={"help": "Seed items for mine (a file). Empty: the 24 bundled seeds."})
    format: str = field(default="auto", metadata={"help": "Seeds format: auto, competition, kice, kmmlu or jsonl."})
    teacher: str = field(default="example-teacher", metadata={"help": "Teacher of mine and augment (e.g. gemini-2.5-flash). example-teacher: the bundled recording."})
    teacher_backend: str = field(default="replay", metadata={"help": "Teacher backend: gemini, openai, local or replay."})
    student: str = field(default="tiny-qwen3", metadata={"help": "The model trained, evaluated and registered (a Hugging Face id, a local path, or tiny-qwen3)."})
    student_backend: str = field(default="replay", metadata={"help": "How mine asks the student: local, openai, gemini or replay (the bundled recording)."})
    mine_student: str | None = field(default=None, metadata={"help": "Student model name for mine. Empty: example-student under replay, else `student`."})
    max_seeds: int | None = field(default=None, metadata={"help": "Mine only the first N seeds (a quick look). Empty: all."})
    plan: str | None = field(default=None, metadata={"help": "Augment's transfer plan YAML. Empty: the bundled plan."})
    pairs_per_seed: int | None = field(default=None, metadata={"help": "Augment candidates per hard negative (overrides the plan). Empty: the plan's."})
    n_pairs: int | None = field(default=None, metadata={"help": "Train on this many pairs (0 or empty: all)."})
    beta: float = field(default=0.1, metadata={"help": "ORPO's λ."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training pairs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop training after this many optimizer steps (-1: all epochs)."})
    thinking: str = field(default="off", metadata={"help": "Qwen3 think blocks in training and scoring: on or off."})
    eval_dataset: str | None = field(default=None, metadata={"help": "Test split scored by train, evaluate and register (and decontaminated against by augment). Empty: the bundled eval sample."})
    eval_format: str = field(default="auto", metadata={"help": "Format of eval_dataset."})
    gate: str = field(default="mcnemar", metadata={"help": "Register gate: mcnemar (accuracy gain > 0 and McNemar p < alpha) or none."})
    alpha: float = field(default=0.05, metadata={"help": "Significance level of the register gate."})
    model_name: str = field(default="distill-student", metadata={"help": "Registered model name."})
    alias: str = field(default="champion", metadata={"help": "Alias of a newly registered version."})
    overrides: str | None = field(default=None, metadata={"help": "Further stage parameters, comma-separated step.name=value, e.g. 'mine.student_samples=5,train.per_device_batch_size=8'."})
    reuse: bool = field(default=True, metadata={"help": "Reuse a step whose parameters and inputs are unchanged (its earlier run's outputs); false: recompute every step."})
    seed: int = field(default=0, metadata={"help": "Seed of every step."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment of the parent and its steps (default distill-pipeline)."})
    output_dir: str = field(default="outputs/pipeline", metadata={"help": "Local folder; one subfolder per step (LLM response caches live there too)."})

    def __post_init__(self) -> None:
        for name in ("seeds", "mine_student", "plan", "eval_dataset", "overrides", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)
        parse_overrides(self.overrides)  # fail early on a bad override


@dataclass
class StepResult:
    step: str
    run_id: str
    """The child run recorded under this pipeline (the reuse marker, when reused)."""
    source_run_id: str
    """The run whose outputs are used (== run_id unless reused)."""
    reused: bool
    outputs: dict[str, str]
    seconds: float
    step_hash: str


@dataclass
class PipelineOutputs:
    run_id: str
    steps: dict[str, StepResult]
    registered: bool
    version: str | None
    decision: str
    metrics: dict[str, float]
    wall_s: float
    summary: str


# --------------------------------------------------------------------------------------------
# Pure parts: overrides, hashing


def _stage_configs() -> dict[str, type]:
    from distill.blueprint.stage import AugmentConfig
    from distill.evaluation import EvaluateConfig
    from distill.mining import MineConfig
    from distill.registry import RegisterConfig
    from distill.training import TrainConfig

    return {"mine": MineConfig, "augment": AugmentConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "register": RegisterConfig}


def parse_overrides(text: str | None) -> dict[str, dict[str, Any]]:
    """`mine.student_samples=5,train.epochs=1` -> {"mine": {"student_samples": 5}, "train": {"epochs": 1.0}}."""
    from distill.cli import _converter

    out: dict[str, dict[str, Any]] = {}
    if not text:
        return out
    configs = _stage_configs()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part or "." not in part.split("=", 1)[0]:
            raise ConfigError(f"overrides: expected step.name=value, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        step, name = key.split(".", 1)
        if step not in configs:
            raise ConfigError(f"overrides: unknown step {step!r} (steps: {', '.join(STEPS)})")
        hints = typing.get_type_hints(configs[step])
        if name not in hints:
            raise ConfigError(f"overrides: {step} has no parameter {name!r}")
        try:
            out.setdefault(step, {})[name] = _converter(hints[name])(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"overrides: {key}={value!r}: {exc}") from None
    return out


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file digests (sorted).

    A file over CONTENT_HASH_LIMIT bytes (model weights) enters by size and modification time
    instead of its bytes: hashing a 28 GB checkpoint on every run would cost minutes."""
    digest = hashlib.sha256()
    if path.is_file():
        stat = path.stat()
        if stat.st_size > CONTENT_HASH_LIMIT:
            digest.update(f"size={stat.st_size};mtime_ns={stat.st_mtime_ns}".encode("ascii"))
            return digest.hexdigest()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        digest.update(content_digest(file).encode("ascii"))
    return digest.hexdigest()


def _hashable(value: Any) -> Any:
    """A parameter value as it enters the hash: local files and folders by their content."""
    if isinstance(value, (list, tuple)):
        return [_hashable(v) for v in value]
    if isinstance(value, str) and value and "://" not in value and ":/" not in value:
        path = Path(value).expanduser()
        try:
            exists = path.exists()
        except OSError:
            exists = False
        if exists:
            return {"content_sha256": content_digest(path)}
    return value


def step_hash(step: str, config: Any) -> str:
    """The content hash of one step (see the module docstring)."""
    from distill import __version__

    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    payload = {
        "hash_version": HASH_VERSION,
        "distill": __version__,
        "step": step,
        "params": {k: _hashable(v) for k, v in sorted(values.items()) if k not in NOT_IN_HASH},
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# The step configs


def step_configs(cfg: PipelineConfig) -> dict[str, Callable[[dict[str, dict[str, str]]], Any]]:
    """For each step, a function of the earlier steps' outputs that builds its stage config."""
    from distill.blueprint.stage import BUNDLED, AugmentConfig
    from distill.evaluation import EvaluateConfig
    from distill.mining import MineConfig
    from distill.registry import RegisterConfig
    from distill.training import TrainConfig

    overrides = parse_overrides(cfg.overrides)
    out = Path(cfg.output_dir)
    mine_student = cfg.mine_student or ("example-student" if cfg.student_backend == "replay" else cfg.student)

    def build(step: str, cls: type, **kwargs: Any) -> Any:
        kwargs.update(overrides.get(step, {}))
        return cls(**kwargs)

    return {
        "mine": lambda _: build(
            "mine", MineConfig, seeds=cfg.seeds, format=cfg.format, teacher=cfg.teacher, teacher_backend=cfg.teacher_backend,
            student=mine_student, student_backend=cfg.student_backend, max_items=cfg.max_seeds, thinking=cfg.thinking,
            seed=cfg.seed, cache_path=str(out / "mine" / "cache.sqlite"), output_dir=str(out / "mine"),
        ),
        "augment": lambda o: build(
            "augment", AugmentConfig, hard_negatives=o["mine"]["hard_negatives"], plan=cfg.plan, pairs_per_seed=cfg.pairs_per_seed,
            teacher=cfg.teacher, teacher_backend=cfg.teacher_backend, eval_sets=[cfg.eval_dataset] if cfg.eval_dataset else [BUNDLED],
            seed=cfg.seed, cache_path=str(out / "augment" / "cache.sqlite"), output_dir=str(out / "augment"),
        ),
        "train": lambda o: build(
            "train", TrainConfig, student=cfg.student, pairs=o["augment"]["pairs"], n_pairs=cfg.n_pairs, beta=cfg.beta,
            lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
            max_steps=cfg.max_steps, thinking=cfg.thinking, eval_dataset=cfg.eval_dataset, eval_format=cfg.eval_format,
            seed=cfg.seed, output_dir=str(out / "train"),
        ),
        "evaluate": lambda o: build(
            "evaluate", EvaluateConfig, model=cfg.student, adapter=o["train"]["adapter"], dataset=cfg.eval_dataset,
            format=cfg.eval_format, thinking=cfg.thinking, seed=cfg.seed, output_dir=str(out / "evaluate"),
        ),
        "register": lambda o: build(
            "register", RegisterConfig, run_id=o["train"]["run_id"], predictions_run=o["evaluate"]["run_id"],
            dataset=cfg.eval_dataset, format=cfg.eval_format, gate=cfg.gate, alpha=cfg.alpha, model_name=cfg.model_name,
            alias=cfg.alias, seed=cfg.seed, output_dir=str(out / "register"),
        ),
    }


def run_step(step: str, config: Any) -> tuple[str, dict[str, str]]:
    """Run one stage; (its run id, its outputs as strings)."""
    if step == "mine":
        from distill.mining import ARTIFACT_DIR, run as mine

        result = mine(config)
        return result.run_id, {"run_id": result.run_id, "hard_negatives": f"runs:/{result.run_id}/{ARTIFACT_DIR}/{Path(result.hard_negatives_path).name}", "n_hard_negatives": str(len(result.hard_negatives))}
    if step == "augment":
        from distill.blueprint.stage import PAIRS_DIR, run as augment

        result = augment(config)
        return result.run_id, {"run_id": result.run_id, "pairs": f"runs:/{result.run_id}/{PAIRS_DIR}", "n_pairs": str(result.accepted)}
    if step == "train":
        from distill.training import run as train

        result = train(config)
        return result.run_id, {"run_id": result.run_id, "adapter": result.model_uri}
    if step == "evaluate":
        from distill.evaluation import run as evaluate

        result = evaluate(config)
        return result.run_id, {"run_id": result.run_id}
    if step == "register":
        from distill.registry import run as register

        result = register(config)
        return result.run_id, {"run_id": result.run_id, "decision": "registered" if result.registered else "refused", "version": result.version or "", "reason": result.decision.reason[:4000]}
    raise ConfigError(f"unknown step {step!r}")


# --------------------------------------------------------------------------------------------
# MLflow edges


def find_reusable(client, experiment_id: str, digest: str):
    """The latest FINISHED run of this experiment that computed a step with this hash."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_HASH}` = '{digest}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None


def _outputs_of(run) -> dict[str, str]:
    return {k[len(OUTPUT_TAG):]: v for k, v in run.data.tags.items() if k.startswith(OUTPUT_TAG)}


def _record_reuse(step: str, source, digest: str, parent_id: str) -> str:
    """A child run that says 'this step was reused from <run>', with the source's metrics."""
    import mlflow

    tags = {
        "distill.stage": step, TAG_STEP: step, TAG_REUSED: source.info.run_id, "distill.reused_step_hash": digest,
        TAG_PARENT: parent_id, "mlflow.note.content": f"Reused: inputs and parameters unchanged since run {source.info.run_id}.",
    }
    tags.update({OUTPUT_TAG + k: v for k, v in _outputs_of(source).items()})
    with mlflow.start_run(run_name=f"{step} (reused)", nested=True, tags=tags) as active:
        metrics = {k: v for k, v in source.data.metrics.items() if isinstance(v, (int, float))}
        if metrics:
            mlflow.log_metrics(metrics)
        return active.info.run_id


def _log_parent_report(register_run_id: str, folder: Path) -> None:
    """The register step's report on the parent run too (artifact folder `report`)."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=register_run_id, artifact_path="report", dst_path=str(folder))
    except Exception as exc:  # the register run has no report (it failed before writing one)
        print(f"pipeline: no report to copy from run {register_run_id}: {exc}")
        return
    mlflow.log_artifacts(local, "report")


# --------------------------------------------------------------------------------------------
# The stage


def run(cfg: PipelineConfig) -> PipelineOutputs:
    """Run (or reuse) every step under one parent run; print which ran and which were reused."""
    started = time.perf_counter()
    import mlflow

    from distill import tracking
    from distill.evaluation import log_config_params
    from distill.io import write_text_atomic

    builders = step_configs(cfg)
    tracking.configure(cfg.experiment, "pipeline")
    client = mlflow.MlflowClient()
    results: dict[str, StepResult] = {}
    outputs: dict[str, dict[str, str]] = {}
    with tracking.start_run(run_name="pipeline") as parent:
        parent_id = parent.info.run_id
        experiment_id = parent.info.experiment_id
        experiment = client.get_experiment(experiment_id).name
        log_config_params(tracking.safe_params(cfg))
        mlflow.set_tags({"distill.stage": "pipeline", "pipeline.steps": " → ".join(STEPS)})
        print(f"pipeline: run {parent_id} in experiment {experiment!r}; steps {' → '.join(STEPS)}")
        for step in STEPS:
            step_started = time.perf_counter()
            config = builders[step](outputs)
            config.experiment = experiment
            digest = step_hash(step, config)
            source = find_reusable(client, experiment_id, digest) if cfg.reuse else None
            if source is not None:
                run_id = _record_reuse(step, source, digest, parent_id)
                step_outputs = _outputs_of(source)
                source_id = source.info.run_id
                print(f"pipeline: {step:<8} reused run {source_id} (step hash {digest[:12]})")
            else:
                print(f"pipeline: {step:<8} running (step hash {digest[:12]})")
                run_id, step_outputs = run_step(step, config)
                for key, value in {TAG_STEP: step, TAG_PARENT: parent_id, **{OUTPUT_TAG + k: v for k, v in step_outputs.items()}}.items():
                    client.set_tag(run_id, key, value)
                client.set_tag(run_id, TAG_HASH, digest)  # last: a hash means the outputs are recorded
                source_id = run_id
            outputs[step] = step_outputs
            seconds = time.perf_counter() - step_started
            results[step] = StepResult(step=step, run_id=run_id, source_run_id=source_id, reused=source is not None, outputs=step_outputs, seconds=seconds, step_hash=digest)
            mlflow.set_tags({f"pipeline.{step}.run": source_id, f"pipeline.{step}.reused": str(source is not None).lower()})
            mlflow.log_metric(f"pipeline/{step}_s", seconds)

        register_source = results["register"].source_run_id
        headline = client.get_run(register_source).data.metrics
        metrics = {k: v for k, v in headline.items() if k in ("eval/accuracy", "eval/macro_f1", "base/accuracy", "base/macro_f1", "eval/n") or (k.startswith("compare/") and k.count("/") == 1)}
        metrics["pipeline/n_reused"] = float(sum(r.reused for r in results.values()))
        metrics["pipeline/n_computed"] = float(sum(not r.reused for r in results.values()))
        wall_s = time.perf_counter() - started
        metrics["pipeline/wall_s"] = wall_s
        mlflow.log_metrics(metrics)
        decision = outputs["register"].get("decision", "")
        version = outputs["register"].get("version") or None
        mlflow.set_tags({"distill.register.decision": decision, "distill.register.version": version or "", "distill.register.reason": outputs["register"].get("reason", "")[:4000]})
        with tempfile.TemporaryDirectory(prefix="distill-report-") as tmp:
            _log_parent_report(register_source, Path(tmp))
        summary = summary_text(results, metrics, decision, version, outputs["register"].get("reason", ""), parent_id, cfg, wall_s)
        summary_path = write_text_atomic(Path(cfg.output_dir) / "summary.txt", summary + "\n")
        mlflow.log_artifact(str(summary_path))

    print()
    print(summary)
    return PipelineOutputs(
        run_id=parent_id, steps=results, registered=decision == "registered", version=version, decision=decision,
        metrics=metrics, wall_s=wall_s, summary=summary,
    )


def summary_text(results: Mapping[str, StepResult], metrics: Mapping[str, float], decision: str, version: str | None, reason: str, parent_id: str, cfg: PipelineConfig, wall_s: float) -> str:
    lines = [f"pipeline  {' → '.join(STEPS)}  ({int(metrics['pipeline/n_computed'])} computed, {int(metrics['pipeline/n_reused'])} reused)"]
    for step, result in results.items():
        how = f"reused run {result.source_run_id}" if result.reused else f"ran as run {result.run_id}"
        detail = {k: v for k, v in result.outputs.items() if k not in ("run_id", "reason")}
        lines.append(f"  {step:<9} {how:<45} {result.seconds:7.1f} s  " + "  ".join(f"{k}={v}" for k, v in detail.items()))
    if "eval/accuracy" in metrics and "base/accuracy" in metrics:
        lines.append(
            f"test      accuracy {metrics['base/accuracy']:.3f} → {metrics['eval/accuracy']:.3f} "
            f"(Δ {metrics.get('compare/delta_accuracy', float('nan')):+.3f}, McNemar p={metrics.get('compare/mcnemar_p', float('nan')):.3g}), "
            f"macro-F1 {metrics.get('base/macro_f1', float('nan')):.3f} → {metrics.get('eval/macro_f1', float('nan')):.3f}"
        )
    if decision == "registered":
        lines.append(f"register  {cfg.model_name} version {version} is now @{cfg.alias}")
    else:
        lines.append(f"register  refused: {reason}")
    lines.append(f"run       {parent_id}  ·  report in the run's report/ folder  ·  {wall_s:.1f} s")
    return "\n".join(lines)
