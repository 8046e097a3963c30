"""The `pipeline` stage: mine → augment → train → evaluate → register, as child runs of one parent.

Each step is the stage's own `run(cfg)`, started while the pipeline's run is active, so it is
a nested child run in the same experiment (`distill-pipeline` unless configured; under
`mlflow run` the parent is the run `mlflow run` made). Steps hand their outputs on as MLflow
URIs: `runs:/<mine>/mine/hard_negatives.jsonl` → augment, `runs:/<augment>/pairs` → train,
`runs:/<train>/adapter` → evaluate and register, the evaluate run's predictions → register.
The steps and their config classes come from the stage registry (`distill.stages`).

Step configs. Each step's config is its stage's own config dataclass; a value comes, lowest first:
1. the stage's default;
2. the pipeline's values: those several steps share (student, teacher, thinking, eval_dataset,
   seed, ...) and the stage fields the pipeline exposes (beta, learning_rate, gate, ...: each
   derived from the stage's field, so the same default and help), each sent to the field(s)
   its metadata names (`routes`; an unset one leaves the stage's default); the earlier steps'
   outputs (WIRING); where the step writes (`output_dir/<step>`, its response cache there);
3. the step's section of a `--config` file (`train: {beta: 0.2}`, `mine: {student_samples: 5}`):
   any field of that stage, checked against its dataclass;
4. `overrides` (`train.beta=0.2,mine.student_samples=5`).
The experiment is always the pipeline's.

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

The parent ends with the register step's report (`report/report.md`, the chart on `charts.html`:
base vs trained per subject, accuracy and macro-F1, and the overall paired test), the headline
metrics, and a summary of which steps ran and which were reused, which is also its description,
with a link to every step's run and to the registered version.

The test split is scored by evaluate (and, through its predictions, judged by register), not by
train: the pipeline runs train with `score_eval=false` (PIPELINE_SETS; `train.score_eval=true`
in overrides or the train section turns it back on).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
from distill.errors import ConfigError
from distill.stages import PIPELINE_STEPS as STEPS
from distill.stages import STAGES

TAG_STEP = "distill.pipeline.step"
TAG_HASH = "distill.step_hash"
TAG_REUSED = "distill.reused_from"
TAG_PARENT = "distill.pipeline.parent_run"
OUTPUT_TAG = "distill.pipeline.output."
NOT_IN_HASH = {
    "experiment",
    "output_dir",
    "cache_path",
    "concurrency",
    "timeout_s",
    "max_retries",
    "backoff_base_s",
    "backoff_max_s",
    "prices",
    "device",
}
"""Config fields that change where or how fast a step runs, never what it produces."""
HASH_VERSION = "1"
CONTENT_HASH_LIMIT = 256 * 1024 * 1024
ROUTES = "routes"
"""Field metadata: the stage fields (`step.name`) a pipeline field's value goes to."""
WIRING: dict[str, str] = {
    "augment.hard_negatives": "mine.hard_negatives",
    "train.pairs": "augment.pairs",
    "evaluate.adapter": "train.adapter",
    "register.run_id": "train.run_id",
    "register.predictions_run": "evaluate.run_id",
}
"""How the steps are chained: stage field ← an earlier step's output (see `handoff`)."""
HEADLINE = ("eval/accuracy", "eval/macro_f1", "eval/n")
"""The register run's metrics copied onto the parent (with its `compare/*`; the base's figures
are the base run's, which the register run links to)."""
PIPELINE_SETS: dict[str, Any] = {"train.score_eval": False}
"""Stage values the pipeline itself sets (above the pipeline's fields, below a step's section and
overrides): the test split is evaluate's and register's, not train's."""


def _stage_fields(step: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(STAGES[step].config_class())}


def stage_field(target: str) -> Any:
    """A pipeline field that is one stage's field (`train.beta`): that field's default and help,
    taken from the stage's dataclass (never typed twice), and routed there."""
    step, name = target.split(".", 1)
    source = _stage_fields(step)[name]
    metadata = {**source.metadata, "help": source.metadata.get("help", ""), ROUTES: (target,)}
    if source.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field(default_factory=source.default_factory, metadata=metadata)  # type: ignore[misc]
    return field(default=source.default, metadata=metadata)


def shared_field(default: Any, help: str, routes: tuple[str, ...], unset: str | None = None) -> Any:
    """A pipeline field several steps share; `routes` names the stage fields (`step.name`) it sets;
    `unset` names its unset value (`distill.cli.unset_field`)."""
    if unset is not None:
        return unset_field(unset, help, default, **{ROUTES: routes})
    return field(default=default, metadata={"help": help, ROUTES: routes})


@dataclass
class _PipelineFields:
    """mine → augment → train → evaluate → register as child runs of one parent; unchanged steps are reused."""

    seeds: str | None = stage_field("mine.seeds")
    format: str = stage_field("mine.format")
    teacher: str = shared_field(
        "example-teacher",
        "Teacher of mine and augment (e.g. gemini-2.5-flash). example-teacher: the bundled recording.",
        ("mine.teacher", "augment.teacher"),
    )
    teacher_backend: str = shared_field(
        "replay",
        "Teacher backend: gemini, openai, local, replay or world (the synthetic world's teacher).",
        ("mine.teacher_backend", "augment.teacher_backend"),
    )
    student: str = shared_field(
        "tiny-qwen3",
        "The model trained, evaluated and registered (a Hugging Face id, a local path, tiny-qwen3 or world-student).",
        ("train.student", "evaluate.model"),
    )
    student_backend: str = stage_field("mine.student_backend")
    mine_student: str | None = shared_field(
        None,
        "Student model name for mine. auto: example-student under replay, else `student`.",
        ("mine.student",),
        unset="auto",
    )
    max_seeds: int | None = stage_field("mine.max_items")
    plan: str | None = stage_field("augment.plan")
    pairs_per_seed: int | None = stage_field("augment.pairs_per_seed")
    n_pairs: int | None = stage_field("train.n_pairs")
    method: str = stage_field("train.method")
    beta: float = stage_field("train.beta")
    lora_rank: int = stage_field("train.lora_rank")
    lora_alpha: int = stage_field("train.lora_alpha")
    learning_rate: float = stage_field("train.learning_rate")
    epochs: float = stage_field("train.epochs")
    max_steps: int = stage_field("train.max_steps")
    thinking: str = shared_field(
        "off",
        "Qwen3 think blocks in training and scoring: on or off.",
        ("mine.thinking", "train.thinking", "evaluate.thinking"),
    )
    eval_dataset: str | None = shared_field(
        None,
        "Test split scored by evaluate and judged by register (and decontaminated against by augment). bundled: the bundled eval sample.",
        ("augment.eval_sets", "train.eval_dataset", "evaluate.dataset", "register.dataset"),
        unset="bundled",
    )
    eval_format: str = shared_field(
        "auto", "Format of eval_dataset.", ("train.eval_format", "evaluate.format", "register.format")
    )
    gate: str = stage_field("register.gate")
    alpha: float = stage_field("register.alpha")
    guard_sets: str | None = stage_field("register.guard_sets")
    guard_margin: float = stage_field("register.guard_margin")
    model_name: str = stage_field("register.model_name")
    alias: str = stage_field("register.alias")
    overrides: str | None = unset_field(
        "none",
        "Further stage parameters, comma-separated step.name=value, e.g. 'mine.student_samples=5,train.per_device_batch_size=8'. "
        "Lowest first: stage default < pipeline parameters < the step's section of --config (train: {beta: 0.2}) < overrides.",
    )
    reuse: bool = field(
        default=True,
        metadata={
            "help": "Reuse a step whose parameters and inputs are unchanged (its earlier run's outputs); false: recompute every step."
        },
    )
    seed: int = shared_field(0, "Seed of every step.", tuple(f"{step}.seed" for step in STEPS))
    experiment: str | None = unset_field(
        "auto", "MLflow experiment of the parent and its steps. auto: distill-pipeline."
    )
    output_dir: str = field(
        default="outputs/pipeline",
        metadata={"help": "Local folder; one subfolder per step (LLM response caches live there too)."},
    )

    def __post_init__(self) -> None:
        from distill.cli import blank_to_none, values_from_mapping

        for name in ("seeds", "mine_student", "plan", "eval_dataset", "overrides", "experiment"):
            setattr(self, name, blank_to_none(getattr(self, name)))
        for f in dataclasses.fields(self):  # a field's unset word (`unset_field`) means None too
            value, word = getattr(self, f.name), f.metadata.get("unset")
            if word and isinstance(value, str) and value.strip().lower() == word:
                setattr(self, f.name, None)
        for step in STEPS:
            section = getattr(self, step) or {}
            if not isinstance(section, Mapping):
                raise ConfigError(
                    f"pipeline section {step!r}: expected a mapping of {step} parameters, got {section!r}"
                )
            cls = STAGES[step].config_class()
            setattr(self, step, values_from_mapping(cls, section, f"pipeline section {step!r}"))
        parse_overrides(self.overrides)  # fail early on a bad override


def _section_field(step: str) -> Any:
    return field(
        default_factory=dict,
        metadata={
            "cli": False,
            "help": f"Parameters of the {step} step (any field of its config), from a --config file only: "
            f"`{step}: {{name: value}}`. They beat the pipeline's own parameters; `overrides` beat them.",
        },
    )


# One section per step, named after it: the step list is the registry's, never written here.
PipelineConfig = dataclasses.make_dataclass(
    "PipelineConfig",
    [(step, dict[str, Any], _section_field(step)) for step in STEPS],
    bases=(_PipelineFields,),
    namespace={"__doc__": _PipelineFields.__doc__, "__module__": __name__},
)


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
    config: Any = None
    """The stage config the step ran (or would have run) with."""


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
# Pure parts: overrides, step configs, hashing


def parse_overrides(text: str | None) -> dict[str, dict[str, Any]]:
    """`mine.student_samples=5,train.epochs=1` -> {"mine": {"student_samples": 5}, "train": {"epochs": 1.0}}."""
    from distill.cli import field_converter

    out: dict[str, dict[str, Any]] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part or "." not in part.split("=", 1)[0]:
            raise ConfigError(f"overrides: expected step.name=value, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        step, name = key.split(".", 1)
        if step not in STEPS:
            raise ConfigError(f"overrides: unknown step {step!r} (steps: {', '.join(STEPS)})")
        hints = typing.get_type_hints(STAGES[step].config_class())
        if name not in hints:
            raise ConfigError(f"overrides: {step} has no parameter {name!r}")
        try:
            out.setdefault(step, {})[name] = field_converter(STAGES[step].config_class(), name)(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"overrides: {key}={value!r}: {exc}") from None
    return out


def step_config(cfg: Any, step: str, upstream: Mapping[str, Mapping[str, str]] | None = None) -> Any:
    """The stage config of `step`: stage default < pipeline values < the step's section < overrides.

    `upstream` holds the earlier steps' outputs (`handoff`); a step not in it leaves the fields
    it would feed at the stage's default (to look at a config without running anything)."""
    cls = STAGES[step].config_class()
    values = _routed(cfg, step, cls)
    values.update({k.split(".", 1)[1]: v for k, v in PIPELINE_SETS.items() if k.split(".", 1)[0] == step})
    values.update(_wired(step, upstream or {}))
    values.update(_placed(cfg, step))
    values.update(getattr(cfg, step))
    values.update(parse_overrides(cfg.overrides).get(step, {}))
    if step == "register" and "predictions_run" in values and step_config(cfg, "evaluate").scoring != "logits":
        # The gate compares logit scores (the base, the guards): evaluate's generated answers are
        # no like-for-like candidate, so register scores the adapter itself.
        values.pop("predictions_run")
    return cls(**values)


def _pipeline_values(cfg: Any) -> dict[str, Any]:
    """The pipeline's field values, with those that depend on others resolved."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if values["mine_student"] is None:
        # The bundled recording answers as example-student; any real backend asks the model trained.
        values["mine_student"] = "example-student" if cfg.student_backend == "replay" else cfg.student
    return values


def _routed(cfg: Any, step: str, cls: type) -> dict[str, Any]:
    """The pipeline values routed to `step` (an unset value leaves the stage's default)."""
    hints = typing.get_type_hints(cls)
    values = _pipeline_values(cfg)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        for target in f.metadata.get(ROUTES, ()):
            target_step, name = target.split(".", 1)
            value = values[f.name]
            if target_step != step or value is None:
                continue
            if f.name == "eval_dataset" and name == "eval_sets" and cfg.eval_format not in (None, "auto"):
                # augment reads its eval sets as `path[@format]`: the test split's format goes along.
                value = f"{value}@{cfg.eval_format}"
            if typing.get_origin(hints[name]) is list and not isinstance(value, list):
                value = [value]  # one eval set where the stage takes several
            out[name] = value
    return out


def _wired(step: str, upstream: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The earlier steps' outputs this step reads (WIRING)."""
    out: dict[str, str] = {}
    for target, source in WIRING.items():
        target_step, name = target.split(".", 1)
        source_step, output = source.split(".", 1)
        if target_step == step and source_step in upstream:
            out[name] = upstream[source_step][output]
    return out


def _placed(cfg: Any, step: str) -> dict[str, str]:
    """Where the step writes: `output_dir/<step>`, and its response cache there when its stage keeps one.

    (evaluate's optional cache stays per run: the pipeline never set it.)"""
    folder = Path(cfg.output_dir) / step
    out = {"output_dir": str(folder)}
    from distill.cli import field_default

    cache = _stage_fields(step).get("cache_path")
    if cache is not None and field_default(cache) is not None:
        out["cache_path"] = str(folder / "cache.sqlite")
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
        if _exists(value):
            return {"content_sha256": content_digest(Path(value).expanduser())}
        # A list of sets, `path[@format],...` (guard_sets, seed_sets): each file by its content.
        parts = [part.strip() for part in value.split(",")]
        files = [part.rsplit("@", 1) for part in parts]
        if any(_exists(f[0]) for f in files):
            return [
                {"content_sha256": content_digest(Path(f[0]).expanduser()), "format": f[1] if len(f) > 1 else None}
                if _exists(f[0])
                else part
                for part, f in zip(parts, files)
            ]
    return value


def _exists(text: str) -> bool:
    try:
        return bool(text) and Path(text).expanduser().exists()
    except OSError:
        return False


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
# What each step hands on: `_<step>_outputs(result)`, found by the step's name


def handoff(step: str, result: Any) -> dict[str, str]:
    """A finished step's run id and outputs, as text (the tags on its run, the next steps' inputs)."""
    describe = globals().get(f"_{step}_outputs")
    if describe is None:
        raise ConfigError(f"the pipeline does not know what step {step!r} hands on (no _{step}_outputs)")
    return {"run_id": result.run_id, **describe(result)}


def _mine_outputs(result: Any) -> dict[str, str]:
    from distill.stages.mine import ARTIFACT_DIR

    return {
        "hard_negatives": f"runs:/{result.run_id}/{ARTIFACT_DIR}/{Path(result.hard_negatives_path).name}",
        "n_hard_negatives": str(len(result.hard_negatives)),
    }


def _augment_outputs(result: Any) -> dict[str, str]:
    from distill.stages.augment import PAIRS_DIR

    return {"pairs": f"runs:/{result.run_id}/{PAIRS_DIR}", "n_pairs": str(result.accepted)}


def _train_outputs(result: Any) -> dict[str, str]:
    return {"adapter": result.model_uri}


def _evaluate_outputs(result: Any) -> dict[str, str]:
    return {}  # its run id: register reads the predictions from that run


def _register_outputs(result: Any) -> dict[str, str]:
    return {
        "decision": "registered" if result.registered else "refused",
        "version": result.version or "",
        "reason": result.decision.reason[:4000],
    }


# --------------------------------------------------------------------------------------------
# MLflow edges


def find_reusable(client, experiment_id: str, digest: str):
    """The latest FINISHED run of this experiment that computed a step with this hash."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_HASH}` = '{digest}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _outputs_of(run) -> dict[str, str]:
    return {k[len(OUTPUT_TAG) :]: v for k, v in run.data.tags.items() if k.startswith(OUTPUT_TAG)}


def _record_reuse(step: str, source, digest: str, parent_id: str) -> str:
    """A child run that says 'this step was reused from <run>' (linked), with the source's
    headline metrics (not its system metrics: this run did not compute anything)."""
    tags = {
        "distill.stage": step,
        TAG_STEP: step,
        TAG_REUSED: source.info.run_id,
        "distill.reused_step_hash": digest,
        TAG_PARENT: parent_id,
    }
    tags.update({OUTPUT_TAG + k: v for k, v in _outputs_of(source).items()})
    with tracking.start_run(run_name=f"{step} (reused: {source.info.run_name})", nested=True, tags=tags) as active:
        tracking.log_metrics(
            {
                k: v
                for k, v in source.data.metrics.items()
                if isinstance(v, (int, float)) and not k.startswith("system/")
            }
        )
        tracking.describe_run(
            f"Reused: inputs and parameters unchanged since run {source.info.run_id}; its outputs are used.",
            {"reused from": tracking.run_link(source.info.run_id, source.info.run_name, source.info.experiment_id)},
        )
        return active.info.run_id


def _run_and_tag(step: str, config: Any, digest: str, parent_id: str) -> tuple[str, dict[str, str]]:
    """Run the stage; tag its run with the step, the parent, the outputs and, last, the hash."""
    result = STAGES[step].run(config)
    outputs = handoff(step, result)
    client = tracking.client()
    tags = {TAG_STEP: step, TAG_PARENT: parent_id, **{OUTPUT_TAG + k: v for k, v in outputs.items()}}
    for key, value in tags.items():
        client.set_tag(result.run_id, key, value)
    client.set_tag(result.run_id, TAG_HASH, digest)  # last: a hash means the outputs are recorded
    return result.run_id, outputs


def _log_parent_report(register_run_id: str) -> None:
    """The register step's report on the parent run too (artifact folder `report`)."""
    with tempfile.TemporaryDirectory(prefix="distill-report-") as tmp:
        local = tracking.find_artifact(register_run_id, "report", dst_path=tmp)
        if local is None:  # the register run has no report (it failed before writing one)
            print(f"pipeline: no report to copy from run {register_run_id}")
            return
        tracking.log_artifacts(local, "report")


# --------------------------------------------------------------------------------------------
# The stage


def run(cfg: PipelineConfig) -> PipelineOutputs:
    """Run (or reuse) every step under one parent run; print which ran and which were reused."""
    from distill.io import write_text_atomic

    started = time.perf_counter()
    tracking.configure(cfg.experiment, "pipeline")
    results: dict[str, StepResult] = {}
    name = f"pipeline {Path(cfg.student).name} ← {cfg.teacher}"
    with tracking.start_run(run_name=name) as parent, tracking.tagging_failure():
        parent_id = parent.info.run_id
        experiment = tracking.client().get_experiment(parent.info.experiment_id).name
        _log_pipeline(cfg, parent_id, experiment)
        for step in STEPS:
            upstream = {name: result.outputs for name, result in results.items()}
            results[step] = _do_step(cfg, step, upstream, parent=parent.info, experiment=experiment)
        metrics = _headline_metrics(results, started)
        register = results["register"]
        _log_decision(register)
        summary = summary_text(results, metrics, parent_id, metrics["pipeline/wall_s"])
        tracking.log_artifact(write_text_atomic(Path(cfg.output_dir) / "summary.txt", summary + "\n"))
        tracking.describe_run(summary, description_links(results))
    print()
    print(summary)
    return PipelineOutputs(
        run_id=parent_id,
        steps=results,
        registered=register.outputs.get("decision") == "registered",
        version=register.outputs.get("version") or None,
        decision=register.outputs.get("decision", ""),
        metrics=metrics,
        wall_s=metrics["pipeline/wall_s"],
        summary=summary,
    )


def _log_pipeline(cfg: PipelineConfig, parent_id: str, experiment: str) -> None:
    """The pipeline's params (a section's values as `<step>.<name>`), config and tags on the parent."""
    params, tags = tracking.config_params(cfg)  # the step sections are mappings: left out here
    for step in STEPS:
        section_params, section_tags = tracking.config_params(
            {f"{step}.{k}": v for k, v in getattr(cfg, step).items()}
        )
        params.update(section_params)
        tags.update(section_tags)
    tracking.log_params(params)
    tracking.set_tags(tags)
    tracking.log_config(cfg)
    tracking.set_tags({"distill.stage": "pipeline", "pipeline.steps": " → ".join(STEPS)})
    print(f"pipeline: run {parent_id} in experiment {experiment!r}; steps {' → '.join(STEPS)}")


def _do_step(
    cfg: PipelineConfig, step: str, upstream: dict[str, dict[str, str]], *, parent: Any, experiment: str
) -> StepResult:
    """Reuse the step's earlier run when its hash matches one (and reuse is on), else run it.

    `parent` is the parent run's info (its id and experiment id)."""
    started = time.perf_counter()
    parent_id = parent.run_id
    config = step_config(cfg, step, upstream)
    config.experiment = experiment
    digest = step_hash(step, config)
    source = find_reusable(tracking.client(), parent.experiment_id, digest) if cfg.reuse else None
    if source is not None:
        run_id, source_id = _record_reuse(step, source, digest, parent_id), source.info.run_id
        outputs = _outputs_of(source)
        print(f"pipeline: {step:<8} reused run {source_id} (step hash {digest[:12]})")
    else:
        print(f"pipeline: {step:<8} running (step hash {digest[:12]})")
        run_id, outputs = _run_and_tag(step, config, digest, parent_id)
        source_id = run_id
    seconds = time.perf_counter() - started
    tracking.set_tags({f"pipeline.{step}.run": source_id, f"pipeline.{step}.reused": str(source is not None).lower()})
    tracking.log_metrics({f"pipeline/{step}_s": seconds})
    return StepResult(
        step=step,
        run_id=run_id,
        source_run_id=source_id,
        reused=source is not None,
        outputs=outputs,
        seconds=seconds,
        step_hash=digest,
        config=config,
    )


def _headline_metrics(results: Mapping[str, StepResult], started: float) -> dict[str, float]:
    """The register run's headline metrics and the pipeline's counts, logged on the parent."""
    measured = tracking.client().get_run(results["register"].source_run_id).data.metrics
    metrics = {k: v for k, v in measured.items() if k in HEADLINE or (k.startswith("compare/") and k.count("/") == 1)}
    metrics["pipeline/n_reused"] = float(sum(r.reused for r in results.values()))
    metrics["pipeline/n_computed"] = float(sum(not r.reused for r in results.values()))
    metrics["pipeline/wall_s"] = time.perf_counter() - started
    tracking.log_metrics(metrics)
    return metrics


def _log_decision(register: StepResult) -> None:
    """The register decision as the parent's tags, and its report as the parent's artifacts."""
    tracking.set_tags(
        {
            "distill.register.decision": register.outputs.get("decision", ""),
            "distill.register.version": register.outputs.get("version") or "",
            "distill.register.reason": register.outputs.get("reason", "")[:4000],
        }
    )
    _log_parent_report(register.source_run_id)


def description_links(results: Mapping[str, StepResult]) -> dict[str, str]:
    """The parent's links: each step's run (the reused one's source), the registered version."""
    links = {}
    for step, result in results.items():
        label = f"{step} (reused)" if result.reused else step
        links[label] = tracking.run_link(result.source_run_id)
    register = results.get("register")
    if register is not None and register.outputs.get("decision") == "registered":
        links["registered"] = tracking.version_link(register.config.model_name, register.outputs.get("version", ""))
    return links


def summary_text(
    results: Mapping[str, StepResult], metrics: Mapping[str, float], parent_id: str, wall_s: float
) -> str:
    """Which steps ran and which were reused, the test-split comparison, the register decision."""
    lines = [
        f"pipeline  {' → '.join(STEPS)}  ({int(metrics['pipeline/n_computed'])} computed, {int(metrics['pipeline/n_reused'])} reused)"
    ]
    for step, result in results.items():
        how = f"reused run {result.source_run_id}" if result.reused else f"ran as run {result.run_id}"
        detail = {k: v for k, v in result.outputs.items() if k not in ("run_id", "reason")}
        lines.append(
            f"  {step:<9} {how:<45} {result.seconds:7.1f} s  " + "  ".join(f"{k}={v}" for k, v in detail.items())
        )
    if "eval/accuracy" in metrics and "compare/delta_accuracy" in metrics:
        base_accuracy = metrics["eval/accuracy"] - metrics["compare/delta_accuracy"]  # same items: base = new - Δ
        lines.append(
            f"test      accuracy {base_accuracy:.3f} → {metrics['eval/accuracy']:.3f} "
            f"(Δ {metrics.get('compare/delta_accuracy', float('nan')):+.3f}, McNemar p={metrics.get('compare/mcnemar_p', float('nan')):.3g}), "
            f"macro-F1 of the adapter {metrics.get('eval/macro_f1', float('nan')):.3f}"
        )
    train = results.get("train")
    if train is not None:
        lines.append(f"method    {train.config.method_text}")
    register = results["register"]
    if register.outputs.get("decision") == "registered":
        config = register.config
        lines.append(f"register  {config.model_name} version {register.outputs.get('version')} is now @{config.alias}")
    else:
        lines.append(f"register  refused: {register.outputs.get('reason', '')}")
    lines.append(f"run       {parent_id}  ·  report in the run's report/ folder  ·  {wall_s:.1f} s")
    return "\n".join(lines)
