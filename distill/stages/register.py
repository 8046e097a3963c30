"""The `register` stage: the best trained adapter, tested once against its base, registered past a gate.

1. Choose the candidate: a run named by `run_id`; else the best run by `metric` among the
   children of a sweep's parent run (`sweep_run`) or among the finished train runs of an
   experiment. Selection metrics come from training and the dev split; `eval/*`, `base/*` and
   `compare/*` are refused, because the test split must not choose the model it then judges.
2. Score the candidate's adapter on the test split (the eval dataset) and the base model on the
   same items (through the base-evaluation cache training fills, `distill.eval_cache`, so a
   base scored once is never scored again); or reuse an `evaluate` run's predictions of this
   adapter (`predictions_run`, what the pipeline does). Paired comparison: Δ accuracy, exact
   McNemar p, bootstrap CI.
3. The gate (`gate=mcnemar`): accuracy gain > 0 and McNemar p < `alpha`. `gate=none` registers
   regardless. Then the forgetting guards (`guard_sets`: items the training never targeted, such
   as general knowledge or another subject): the candidate and its base are scored on each guard
   set (the base through the same cache), and the candidate passes only if it is non-inferior
   on every one: the lower bound of the paired 95% CI of Δ accuracy (candidate − base) is above
   `-guard_margin` (`distill.stats.noninferiority`). Guards are scored and reported even when the
   main gate refuses. Past the gate and the guards the adapter becomes a new version of `model_name`
   (default `distill-student`) and the alias (default `champion`) moves to it; older versions
   stay. The version carries tags: the test metrics and p-value, the base model, the dataset
   digests, the prompt versions found along the candidate's lineage, the source run.
4. A refusal is a normal outcome, not an error: the run is tagged
   `distill.register.decision=refused` with the reason, the summary says why, and the process
   exits 0, so a pipeline or a scheduled job goes on (and reports) instead of crashing; nothing
   is registered and the alias stays where it was.
5. Reports on the register run: `report/report.md` (the reference study's per-subject table
   and the overall paired test), the base-vs-trained chart on the run's `charts.html` (accuracy
   and macro-F1), plus the usual evaluation and comparison artifacts.

In the MLflow UI the run is named after its candidate (`register <model> ← <candidate's name>`);
its `eval/*` and `compare/*` metrics are linked to the candidate's logged model and the test
split's dataset (the model's page lists the test it passed or failed); the base's figures are the
base run's (`distill.eval_cache`), linked; its description is the summary with links to the
candidate, its sweep, the predictions run, the base run and the new version; the version's
description is the report.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
from distill.errors import ConfigError

GATES = ("mcnemar", "none")
TEST_SPLIT_PREFIXES = ("eval/", "base/", "compare/", "guard/")
_RUN_URI = re.compile(r"runs:/([0-9a-f]{32})/")


@dataclass
class RegisterConfig:
    """Register the best trained adapter as the champion, if it beats its base on the test split."""

    run_id: str | None = unset_field(
        "auto", "The train run to register. auto: the best run by `metric` under sweep_run, or in source_experiment."
    )
    sweep_run: str | None = unset_field("none", "A sweep's parent run id: choose among its trials (child runs).")
    source_experiment: str | None = unset_field(
        "auto",
        "Experiment whose finished train runs are the candidates when neither run_id nor sweep_run is given. auto: distill-train.",
    )
    metric: str = field(
        default="dev/macro_f1",
        metadata={
            "help": "Metric that picks the best candidate (a dev or train metric; eval/*, base/*, compare/* are the test split and are refused)."
        },
    )
    direction: str = field(default="maximize", metadata={"help": "maximize or minimize `metric`."})
    dataset: str | None = unset_field(
        "auto",
        "Test split: items scored once, adapter against base. auto: the candidate's eval_dataset (the bundled eval sample when it used that).",
    )
    format: str = field(
        default="auto",
        metadata={
            "help": "Format of dataset: auto, a shipped format (competition, kice, kmmlu, jsonl, csat_qa, haerae) or a format spec file (.yaml)."
        },
    )
    predictions_run: str | None = unset_field(
        "none",
        "An evaluate run that already scored this adapter on this dataset: use its predictions instead of scoring again.",
    )
    gate: str = field(
        default="mcnemar",
        metadata={
            "help": "mcnemar: register only when accuracy gains (> 0) and McNemar p < alpha; none: register regardless."
        },
    )
    alpha: float = field(default=0.05, metadata={"help": "Significance level of the gate's McNemar test."})
    guard_sets: str | None = unset_field(
        "none",
        "Forgetting guards: path[@format],... (bundled: the eval sample), items the training never targeted. Past the gate the candidate must be non-inferior to the base on each: lower bound of the paired 95-percent CI of Δ accuracy > -guard_margin.",
    )
    guard_margin: float = field(
        default=0.02,
        metadata={"help": "Non-inferiority margin of the guard sets (accuracy, 0.02 = 2 points)."},
    )
    model_name: str = field(default="distill-student", metadata={"help": "Registered model name."})
    alias: str = field(
        default="champion", metadata={"help": "Alias the new version receives (moved from the previous one)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Items per forward pass when scoring."})
    bootstrap_samples: int = field(
        default=2000, metadata={"help": "Bootstrap resamples for the CI of the accuracy difference."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    experiment: str | None = unset_field("auto", "MLflow experiment of the register run. auto: distill-train.")
    output_dir: str = field(
        default="outputs/register",
        metadata={"help": "Local folder for predictions, comparison and report (also logged as artifacts)."},
    )

    def __post_init__(self) -> None:
        from distill.cli import NONE_WORDS

        for name in (
            "run_id",
            "sweep_run",
            "source_experiment",
            "dataset",
            "predictions_run",
            "experiment",
            "guard_sets",
        ):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in NONE_WORDS | {"auto"}:
                setattr(self, name, None)
        self.gate = str(self.gate).strip().lower()
        if self.gate not in GATES:
            raise ConfigError(f"gate must be mcnemar or none, got {self.gate!r}")
        self.direction = str(self.direction).strip().lower()
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"direction must be maximize or minimize, got {self.direction!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.run_id and self.sweep_run:
            raise ConfigError("give run_id or sweep_run, not both")
        if self.metric.startswith(TEST_SPLIT_PREFIXES):
            raise ConfigError(
                f"metric {self.metric!r} is measured on the test split; choose the candidate by a dev metric (e.g. dev/macro_f1)"
            )
        for name in ("batch_size", "bootstrap_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if not self.model_name.strip() or not self.alias.strip():
            raise ConfigError("model_name and alias must not be empty")
        if not 0.0 <= self.guard_margin < 1.0:
            raise ConfigError(f"guard_margin must be in [0, 1), got {self.guard_margin}")
        _ = self.guards  # a malformed list fails here, before anything runs

    @property
    def guards(self) -> list[Any]:
        """The guard sets (`distill.evaluation.NamedSet`), none when `guard_sets` is unset."""
        from distill.evaluation import parse_sets

        return parse_sets(self.guard_sets, field="guard_sets") if self.guard_sets else []


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


@dataclass
class RegisterOutputs:
    run_id: str
    candidate_run_id: str
    registered: bool
    version: str | None
    decision: GateDecision
    comparison: dict[str, float]
    metrics: dict[str, float]
    report_dir: Path
    wall_s: float
    summary: str
    guards: list[GuardResult] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Pure decisions


def gate_decision(comparison: Mapping[str, float], *, gate: str, alpha: float) -> GateDecision:
    """Register or not, and why, from the paired comparison (new minus base)."""
    delta = float(comparison["compare/delta_accuracy"])
    p = float(comparison["compare/mcnemar_p"])
    facts = f"Δ accuracy {delta:+.4f}, McNemar p = {p:.4g}"
    if gate == "none":
        return GateDecision(True, f"gate=none: registered without a test ({facts})")
    if not delta > 0:
        return GateDecision(
            False, f"no accuracy gain over the base model ({facts}); the gate needs Δ > 0 and p < {alpha:g}"
        )
    if not p < alpha:
        return GateDecision(False, f"gain not significant ({facts}); the gate needs p < {alpha:g}")
    return GateDecision(True, f"gain significant ({facts} < {alpha:g})")


@dataclass
class GuardResult:
    """The candidate against its base on one guard set."""

    name: str
    path: str
    figures: dict[str, float]
    """`distill.stats.noninferiority`'s figures, plus accuracy (candidate) and base_accuracy."""
    base_hit: bool
    """True when the base's predictions came from the evaluation cache."""

    @property
    def passed(self) -> bool:
        return bool(self.figures["non_inferior"])

    def describe(self) -> str:
        f = self.figures
        return (
            f"{self.name} ({int(f['n'])} items): accuracy {f['base_accuracy']:.3f} → {f['accuracy']:.3f}, "
            f"Δ {f['delta_accuracy']:+.3f} [{f['delta_ci_low']:+.3f}, {f['delta_ci_high']:+.3f}]"
        )


def guard_decision(decision: GateDecision, guards: Sequence[GuardResult], *, margin: float) -> GateDecision:
    """The main gate's decision, refused when a guard set shows the candidate worse than its base
    (lower bound of the paired 95% CI of Δ accuracy at or below -margin)."""
    if not decision.passed or not guards:
        return decision
    failed = [g for g in guards if not g.passed]
    if failed:
        named = "; ".join(g.describe() for g in failed)
        return GateDecision(
            False,
            f"forgetting guard failed on {named}: the CI's lower bound must stay above -{margin:g}"
            f" (main gate passed: {decision.reason})",
        )
    held = "; ".join(g.describe() for g in guards)
    return GateDecision(True, f"{decision.reason}; non-inferior (margin {margin:g}) on every guard set: {held}")


def choose_best(candidates: Sequence[tuple[str, float]], direction: str) -> tuple[str, float]:
    """(run id, value) with the best finite value; ties go to the earlier candidate."""
    finite = [(run_id, value) for run_id, value in candidates if value is not None and math.isfinite(value)]
    if not finite:
        raise ConfigError("no candidate run has a finite value of the selection metric")
    sign = -1.0 if direction == "maximize" else 1.0
    return min(finite, key=lambda kv: sign * kv[1])


def referenced_runs(values: Sequence[str]) -> list[str]:
    """Run ids named by `runs:/<id>/...` URIs inside param or tag values."""
    found: list[str] = []
    for value in values:
        for run_id in _RUN_URI.findall(str(value)):
            if run_id not in found:
                found.append(run_id)
    return found


# --------------------------------------------------------------------------------------------
# MLflow edges


def _candidates(client, cfg: RegisterConfig) -> tuple[list[Any], str]:
    """(finished candidate runs with an adapter, where they came from)."""
    if cfg.run_id:
        try:
            return [client.get_run(cfg.run_id)], f"run {cfg.run_id}"
        except Exception:
            raise ConfigError(f"run_id {cfg.run_id!r} is not a run in the tracking store") from None
    if cfg.sweep_run:
        try:
            parent = client.get_run(cfg.sweep_run)
        except Exception:
            raise ConfigError(f"sweep_run {cfg.sweep_run!r} is not a run in the tracking store") from None
        runs = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{cfg.sweep_run}' AND attributes.status = 'FINISHED'",
            max_results=5000,
        )
        return runs, f"trials of sweep run {cfg.sweep_run}"
    name = cfg.source_experiment or "distill-train"
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ConfigError(f"experiment {name!r} does not exist; train first, or name run_id or sweep_run")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`distill.stage` = 'train' AND attributes.status = 'FINISHED'",
        max_results=5000,
    )
    return runs, f"train runs of experiment {name!r}"


def _pick_candidate(client, cfg: RegisterConfig):
    runs, source = _candidates(client, cfg)
    usable = [r for r in runs if r.data.tags.get("train/model_uri")]
    if not usable:
        raise ConfigError(f"no finished train run with an adapter among the {source}")
    if cfg.run_id:
        run = usable[0]
        return run, source, run.data.metrics.get(cfg.metric)
    scored = [(r.info.run_id, r.data.metrics.get(cfg.metric)) for r in sorted(usable, key=lambda r: r.info.start_time)]
    if all(value is None for _, value in scored):
        raise ConfigError(f"none of the {source} has the metric {cfg.metric!r}")
    best_id, value = choose_best(scored, cfg.direction)
    return (
        next(r for r in usable if r.info.run_id == best_id),
        f"best of {len(usable)} {source} by {cfg.metric}",
        value,
    )


def lineage_prompts(client, run, depth: int = 4) -> list[str]:
    """Prompt versions (`prompts` tags) of a run and of the runs its params/tags point to."""
    seen: set[str] = set()
    prompts: list[str] = []

    def visit(current, level: int) -> None:
        if current.info.run_id in seen:
            return
        seen.add(current.info.run_id)
        for uri in str(current.data.tags.get("prompts", "")).split(","):
            if uri.strip() and uri.strip() not in prompts:
                prompts.append(uri.strip())
        if level >= depth:
            return
        values = list(current.data.params.values()) + list(current.data.tags.values())
        for run_id in referenced_runs(values):
            try:
                visit(client.get_run(run_id), level + 1)
            except Exception:
                continue

    visit(run, 0)
    return sorted(prompts)


def dataset_tags(run) -> dict[str, str]:
    """`dataset.<context>.<name>` = digest for each dataset the run logged with log_input."""
    tags: dict[str, str] = {}
    for dataset_input in getattr(run.inputs, "dataset_inputs", None) or []:
        context = next((t.value for t in dataset_input.tags if t.key == "mlflow.data.context"), "input")
        dataset = dataset_input.dataset
        tags[f"dataset.{context}.{dataset.name}"[:250]] = dataset.digest
    return tags


def _check_predictions_run(client, predictions_run: str, *, adapter_uris: Sequence[str], student: str) -> None:
    try:
        run = client.get_run(predictions_run)
    except Exception:
        raise ConfigError(f"predictions_run {predictions_run!r} is not a run in the tracking store") from None
    params = run.data.params
    if params.get("adapter") not in adapter_uris:
        raise ConfigError(
            f"predictions_run {predictions_run} scored adapter {params.get('adapter')!r}, not the candidate's ({adapter_uris[0]})"
        )
    if params.get("model") not in (student, None):
        raise ConfigError(
            f"predictions_run {predictions_run} scored model {params.get('model')!r}, not the candidate's base {student!r}"
        )
    if params.get("scoring", "logits") != "logits":
        # The base (and every guard) is logit-scored: a generated answer compared with a logit
        # score would measure the scoring mode, not the adapter.
        raise ConfigError(
            f"predictions_run {predictions_run} scored by {params['scoring']!r}; the register gate compares "
            "logit-scored predictions (evaluate -P scoring=logits), or leave predictions_run unset to score here"
        )


# --------------------------------------------------------------------------------------------
# The stage


@dataclass
class Candidate:
    """The train run to register, and how its adapter was trained and scored."""

    run: Any
    selection: str
    """How it was chosen (a run named, or the best of which runs by which metric)."""
    selection_value: float | None
    student: str
    model_uri: str
    """`runs:/<id>/adapter`."""
    register_uri: str
    """What to register: the logged model URI when the run recorded one."""
    thinking: str
    dtype: str
    load_in_4bit: bool

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


@dataclass
class TestScores:
    """The candidate and its base on the test split, and the paired comparison."""

    adapter: Any
    """`distill.evaluation.EvalResult` of the adapter."""
    base: Any
    """`distill.eval_cache.CachedEval` of the base model."""
    scored_now: bool
    """False when the adapter's predictions came from `predictions_run`."""
    comparison: dict[str, float]

    @property
    def metrics(self) -> dict[str, float]:
        """Every figure (per subject too): the adapter's `eval/*`, the base's as `base/*`, and
        `compare/*`. The run logs the headline ones and links to the base run for the base's."""
        base = {"base/" + k[len("eval/") :]: v for k, v in self.base.result.metrics.items()}
        return {**self.adapter.metrics, **base, **self.comparison}


def run(cfg: RegisterConfig) -> RegisterOutputs:
    """Choose, test, gate, register (or refuse), report."""
    started = time.perf_counter()
    tracking.configure(cfg.experiment, "register")
    client = tracking.client()
    candidate = choose_candidate(client, cfg)
    dataset, items = load_test_split(cfg, candidate)
    guard_items = load_guard_sets(cfg)  # a bad guard file fails before any run or model
    if cfg.predictions_run:
        _check_predictions_run(
            client,
            cfg.predictions_run,
            adapter_uris=(candidate.model_uri, candidate.register_uri),
            student=candidate.student,
        )
    name = f"register {cfg.model_name} ← {candidate.run.info.run_name}"
    with tracking.start_run(run_name=name) as active, tracking.tagging_failure():
        run_id = active.info.run_id
        out_dir = Path(cfg.output_dir) / run_id
        test_set = log_run_inputs(cfg, candidate, dataset, items)
        load, release = adapter_loader(candidate)
        scores = score_test_split(cfg, candidate, items, load=load)
        guards = score_guards(cfg, candidate, guard_items, load=load)
        release()
        base_run_id = log_scores(cfg, candidate, scores, out_dir, test_set, dataset)
        log_guards(cfg, guards, guard_items)
        decision = guard_decision(
            gate_decision(scores.comparison, gate=cfg.gate, alpha=cfg.alpha), guards, margin=cfg.guard_margin
        )
        version, previous = None, None
        if decision.passed:
            version, previous = register_version(
                client, cfg, candidate, decision, scores, run_id, dataset, items, guards=guards
            )
        else:
            tracking.set_tags({"distill.register.decision": "refused"})
        tracking.set_tags({"distill.register.reason": decision.reason[:5000]})
        log_report(cfg, candidate, scores, dataset, version, decision, out_dir, guards=guards)
        if version:
            describe_version(client, cfg, version, out_dir / "report")
        wall_s = time.perf_counter() - started
        tracking.log_metrics({"register/wall_s": wall_s})
        summary = summary_text(
            cfg,
            candidate,
            scores,
            decision,
            version,
            previous,
            run_id=run_id,
            dataset=dataset,
            wall_s=wall_s,
            guards=guards,
        )
        log_outcome(summary, decision, version, candidate, scores, out_dir, guards=guards)
        tracking.describe_run(summary, description_links(cfg, candidate, base_run_id, version))
    print()
    print(summary)
    return RegisterOutputs(
        run_id=run_id,
        candidate_run_id=candidate.run_id,
        registered=version is not None,
        version=version,
        decision=decision,
        comparison=scores.comparison,
        metrics=scores.metrics,
        report_dir=out_dir / "report",
        wall_s=wall_s,
        summary=summary,
        guards=guards,
    )


def choose_candidate(client, cfg: RegisterConfig) -> Candidate:
    """The candidate train run and what its params say about its adapter."""
    run_, selection, value = _pick_candidate(client, cfg)
    params, tags = run_.data.params, run_.data.tags
    student = tags.get("distill.student") or params.get("student")
    if not student:
        raise ConfigError(f"run {run_.info.run_id} has no 'student' param: is it a distill train run?")
    model_uri = tags["train/model_uri"]
    # What the run used: `load_in_4bit` as decided (`resolved.` under mlflow run; runs logged
    # before that convention have `load_in_4bit_resolved`).
    load_in_4bit = params.get("load_in_4bit_resolved") or tracking.run_param(run_, "load_in_4bit", "false")
    return Candidate(
        run=run_,
        selection=selection,
        selection_value=value,
        student=student,
        model_uri=model_uri,
        register_uri=tags.get("train/logged_model_uri") or model_uri,
        thinking=tracking.run_param(run_, "thinking", "off"),
        dtype=tracking.run_param(run_, "dtype", "auto"),
        load_in_4bit=str(load_in_4bit).lower() == "true",
    )


def load_test_split(cfg: RegisterConfig, candidate: Candidate) -> tuple[str, list[Any]]:
    """(dataset path, items): `dataset`, else the candidate's eval_dataset (its full path is the
    tag `distill.path.eval_dataset`), else the bundled sample."""
    from distill.data.loaders import load_items
    from distill.resources import resource_path

    recorded = candidate.run.data.tags.get(tracking.PATH_TAG + "eval_dataset")
    if recorded is None:
        param = tracking.run_param(candidate.run, "eval_dataset")
        recorded = None if param in (None, "", "bundled", "auto", "none") else param
    dataset = cfg.dataset or recorded or str(resource_path("eval_sample.jsonl"))
    if not cfg.dataset and not Path(dataset).is_file():
        raise ConfigError(
            f"the candidate's eval_dataset {dataset!r} is not on this machine; name the test split with -P dataset=..."
        )
    items = load_items(dataset, cfg.format, require_answer=True)
    if not items:
        raise ConfigError(f"dataset {dataset} has no items")
    return dataset, items


def log_run_inputs(cfg: RegisterConfig, candidate: Candidate, dataset: str, items: list[Any]):
    """Params, config.yaml, tags, the selection metric, the test split as a dataset input (returned)."""
    from distill.evaluation import log_items_dataset

    tracking.log_config_params(cfg, candidate_run=candidate.run_id, test_dataset=dataset)
    tracking.log_config(cfg)
    tracking.set_tags(
        {
            "distill.stage": "register",
            "distill.register.candidate_run": candidate.run_id,
            "distill.register.selection": candidate.selection,
            "distill.register.gate": cfg.gate,
            "distill.register.alpha": str(cfg.alpha),
            "distill.student": candidate.student,
        }
    )
    if candidate.selection_value is not None:
        tracking.log_metrics({f"candidate/{cfg.metric}": float(candidate.selection_value)})
    return log_items_dataset(items, source=dataset, name=Path(dataset).stem, context="eval")


def adapter_loader(candidate: Candidate):
    """(load, release): `load()` returns the candidate's (model, tokenizer), loaded at most once
    (the base is the same model with the adapter off); `release()` frees it."""
    from distill.models import load_student, pick_device
    from distill.training import free_memory

    device = pick_device(None)
    loaded: list[tuple[Any, Any]] = []

    def load() -> tuple[Any, Any]:
        if not loaded:
            loaded.append(
                load_student(
                    candidate.student,
                    adapter=candidate.model_uri,
                    device=device,
                    dtype=candidate.dtype,
                    load_in_4bit=candidate.load_in_4bit,
                )
            )
        return loaded[0]

    def release() -> None:
        loaded.clear()
        free_memory()

    return load, release


def _cached_base(cfg: RegisterConfig, candidate: Candidate, items: list[Any], load):
    from distill.eval_cache import cached_base_eval
    from distill.models import dtype_name, pick_device, resolve_model_path

    return cached_base_eval(
        items,
        load=load,
        student=candidate.student,
        student_path=resolve_model_path(candidate.student),
        thinking=candidate.thinking,
        load_in_4bit=candidate.load_in_4bit,
        dtype=dtype_name(pick_device(None), candidate.dtype),
        batch_size=cfg.batch_size,
    )


def score_test_split(cfg: RegisterConfig, candidate: Candidate, items: list[Any], *, load=None) -> TestScores:
    """The adapter on the test split (scored now, or `predictions_run`'s predictions), the base
    through the evaluation cache training filled (scored only on a miss), and their comparison.
    `load`: an `adapter_loader`'s; without one the model is loaded here and freed afterwards."""
    from distill.evaluation import (
        check_same_items,
        compare_predictions,
        evaluate_items,
        load_run_predictions,
        result_from_predictions,
    )

    release = None
    if load is None:
        load, release = adapter_loader(candidate)
    if cfg.predictions_run:
        predictions = load_run_predictions(cfg.predictions_run, role="predictions_run")
        check_same_items(
            [i.id for i in items],
            list(map(str, predictions["id"])),
            base_name="the test split",
            new_name=f"predictions_run {cfg.predictions_run}",
        )
        adapter = result_from_predictions(predictions)
    else:
        model, tokenizer = load()
        adapter = evaluate_items(model, tokenizer, items, thinking=candidate.thinking, batch_size=cfg.batch_size)
        del model, tokenizer
    base = _cached_base(cfg, candidate, items, load)
    if release is not None:
        release()
    comparison = compare_predictions(
        base.result.predictions, adapter.predictions, n_boot=cfg.bootstrap_samples, seed=cfg.seed
    )
    return TestScores(adapter=adapter, base=base, scored_now=not cfg.predictions_run, comparison=comparison)


def load_guard_sets(cfg: RegisterConfig) -> list[tuple[Any, list[Any]]]:
    """[(NamedSet, items)] of `guard_sets`, each item with a gold answer."""
    from distill.data.loaders import load_items

    guards = []
    for named in cfg.guards:
        items = load_items(named.path, named.format, require_answer=True)
        if not items:
            raise ConfigError(f"guard set {named.path} has no items")
        guards.append((named, items))
    return guards


def score_guards(
    cfg: RegisterConfig, candidate: Candidate, guard_items: list[tuple[Any, list[Any]]], *, load
) -> list[GuardResult]:
    """The candidate (scored now) and its base (through the cache) on each guard set, and the
    paired non-inferiority figures."""
    from distill.evaluation import evaluate_items
    from distill.stats import noninferiority

    guards = []
    for named, items in guard_items:
        model, tokenizer = load()
        adapter = evaluate_items(model, tokenizer, items, thinking=candidate.thinking, batch_size=cfg.batch_size)
        del model, tokenizer
        base = _cached_base(cfg, candidate, items, load)
        new_df = adapter.predictions.astype({"id": str})
        merged = new_df[["id", "correct"]].merge(
            base.result.predictions.astype({"id": str})[["id", "correct"]], on="id", suffixes=("", "_base")
        )
        base_correct = merged["correct_base"].astype(bool).tolist()
        new_correct = merged["correct"].astype(bool).tolist()
        figures = noninferiority(
            base_correct, new_correct, margin=cfg.guard_margin, n_boot=cfg.bootstrap_samples, seed=cfg.seed
        )
        figures["accuracy"] = sum(new_correct) / len(new_correct)
        figures["base_accuracy"] = sum(base_correct) / len(base_correct)
        guards.append(GuardResult(name=named.name, path=named.path, figures=figures, base_hit=base.hit))
    return guards


def log_guards(cfg: RegisterConfig, guards: list[GuardResult], guard_items: list[tuple[Any, list[Any]]]) -> None:
    """Each guard's figures as `guard/<name>/...` metrics, its items as a dataset input (context
    `guard`), and guards.json."""
    from distill.evaluation import log_items_dataset

    if not guards:
        return
    for guard, (named, items) in zip(guards, guard_items):
        dataset = log_items_dataset(items, source=named.path, name=named.name, context="guard")
        # The margin is the run's `guard_margin` parameter, the same for every guard: not a metric.
        figures = {k: v for k, v in guard.figures.items() if k != "margin"}
        tracking.log_metrics({f"guard/{guard.name}/{k}": v for k, v in figures.items()}, dataset=dataset)
    tracking.set_tags(
        {
            "distill.register.guard_margin": str(cfg.guard_margin),
            "distill.register.guards": ",".join(f"{g.name}:{'pass' if g.passed else 'fail'}" for g in guards)[:5000],
        }
    )
    tracking.log_dict(
        {
            "margin": cfg.guard_margin,
            "guards": [
                {"name": g.name, "path": g.path, "passed": g.passed, "base_cached": g.base_hit, **g.figures}
                for g in guards
            ],
        },
        "guards.json",
    )


def log_scores(
    cfg: RegisterConfig, candidate: Candidate, scores: TestScores, out_dir: Path, test_set: Any, dataset: str
) -> str | None:
    """The candidate's evaluation and the comparison (linked to its logged model and the test
    split), where each side's predictions came from, and the base run (its id)."""
    from distill.eval_cache import base_run
    from distill.evaluation import log_adapter_vs_base

    log_adapter_vs_base(
        scores.adapter,
        scores.base.result,
        scores.comparison,
        new_label="candidate",
        base_cached=scores.base.hit,
        base_cache_file=scores.base.path,
        n_boot=cfg.bootstrap_samples,
        seed=cfg.seed,
        out_dir=out_dir,
        model_id=tracking.logged_model_id(candidate.register_uri),
        dataset=test_set,
    )
    base = scores.base.result
    base_run_id = base_run(
        scores.base.path.stem,
        student=candidate.student,
        split=Path(dataset).name,
        context="eval",
        metrics={k.split("/", 1)[1]: v for k, v in base.headline.items()},
        params={"thinking": candidate.thinking, "load_in_4bit": candidate.load_in_4bit},
        dataset=test_set,
        result=base,
    )
    tags = {"eval.scored": "now" if scores.scored_now else f"predictions_run {cfg.predictions_run}"}
    if base_run_id:
        tags[tracking.BASE_RUN_TAG + "eval"] = base_run_id
    tracking.set_tags(tags)
    return base_run_id


def register_version(
    client,
    cfg: RegisterConfig,
    candidate: Candidate,
    decision: GateDecision,
    scores: TestScores,
    run_id: str,
    dataset: str,
    items: list[Any],
    *,
    guards: Sequence[GuardResult] = (),
) -> tuple[str, str | None]:
    """(new version, previous champion's version or None): register, move the alias, describe it."""
    try:
        previous = client.get_model_version_by_alias(cfg.model_name, cfg.alias).version
    except Exception:
        previous = None
    tags = version_tags(client, cfg, candidate, decision, scores, run_id, dataset, items)
    for guard in guards:
        for name in ("delta_accuracy", "delta_ci_low", "accuracy", "base_accuracy", "n"):
            tags[f"guard.{guard.name}.{name}"[:250]] = f"{guard.figures[name]:.6g}"
    if guards:
        tags["guard_margin"] = str(cfg.guard_margin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        registered = tracking.register_model(candidate.register_uri, cfg.model_name, tags=tags)
    version = str(registered.version)
    client.set_registered_model_alias(cfg.model_name, cfg.alias, version)
    client.update_model_version(
        cfg.model_name,
        version,
        description=f"Adapter of run {candidate.run_id} on {candidate.student}. Test split {Path(dataset).name} "
        f"({len(items)} items): {decision.reason}.",
    )  # replaced by the report once it is written (`describe_version`)
    tracking.set_tags(
        {
            "distill.register.decision": "registered",
            "distill.register.version": version,
            "distill.register.model": f"models:/{cfg.model_name}/{version}",
            "distill.register.previous_champion": previous or "",
        }
    )
    return version, previous


def version_tags(
    client,
    cfg: RegisterConfig,
    candidate: Candidate,
    decision: GateDecision,
    scores: TestScores,
    run_id: str,
    dataset: str,
    items: list[Any],
) -> dict[str, str]:
    """The new version's tags: lineage, gate, test metrics and p-value, dataset digests, prompts."""
    from distill.evaluation import dataset_digest

    metrics, comparison, run_tags = scores.metrics, scores.comparison, candidate.run.data.tags
    tags = {
        "distill.source_run": candidate.run_id,
        "distill.register_run": run_id,
        "distill.selection": candidate.selection,
        "base_model": candidate.student,  # as the user named it: never a cache folder
        "adapter": candidate.model_uri,
        "gate": cfg.gate,
        "alpha": str(cfg.alpha),
        "gate.reason": decision.reason[:5000],
        "test_dataset": dataset,
        "test_dataset.digest": dataset_digest(items),
        "prompts": ",".join(lineage_prompts(client, candidate.run)) or "-",
    }
    for name in ("eval/accuracy", "eval/macro_f1", "eval/n", "base/accuracy", "base/macro_f1"):
        tags[name.replace("/", ".")] = f"{metrics[name]:.6g}"
    for name in ("delta_accuracy", "mcnemar_p", "delta_ci_low", "delta_ci_high", "n_fixed", "n_broken"):
        tags[f"compare.{name}"] = f"{comparison['compare/' + name]:.6g}"
    if candidate.selection_value is not None:
        tags[f"selection.{cfg.metric}".replace("/", ".")] = f"{candidate.selection_value:.6g}"
    if run_tags.get("distill.sweep.parent_run"):
        tags["distill.sweep_run"] = run_tags["distill.sweep.parent_run"]
    tags.update(dataset_tags(candidate.run))
    return tags


def describe_version(client, cfg: RegisterConfig, version: str, report_dir: Path) -> None:
    """The registered version's description: its report (report.md), which holds the per-subject
    table and the paired test; left as it is when the report is missing."""
    report = report_dir / "report.md"
    if report.is_file():
        client.update_model_version(
            cfg.model_name, version, description=tracking.redact(report.read_text(encoding="utf-8"))[:60000]
        )


def description_links(
    cfg: RegisterConfig, candidate: Candidate, base_run_id: str | None, version: str | None
) -> dict[str, str]:
    """The runs a register run used and the version it made, as markdown links."""
    links = {"candidate": tracking.run_link(candidate.run_id)}
    sweep = candidate.run.data.tags.get("distill.sweep.parent_run")
    if sweep:
        links["sweep"] = tracking.run_link(sweep)
    if cfg.predictions_run:
        links["predictions from"] = tracking.run_link(cfg.predictions_run)
    if base_run_id:
        links["base model on the test split"] = tracking.run_link(base_run_id)
    if version:
        links["registered"] = tracking.version_link(cfg.model_name, version)
    return links


def log_report(
    cfg: RegisterConfig,
    candidate: Candidate,
    scores: TestScores,
    dataset: str,
    version: str | None,
    decision: GateDecision,
    out_dir: Path,
    *,
    guards: Sequence[GuardResult] = (),
) -> None:
    """report/report.md, subjects.csv and the chart on charts.html: base vs trained per subject,
    the guard sets, and the outcome."""
    from distill.reports import log_report as log_subject_report

    title = f"{candidate.student}: base vs trained adapter (run {candidate.run_id[:8]}) on {Path(dataset).name}"
    outcome_note = (
        f"Registered as {cfg.model_name} version {version}, alias {cfg.alias}."
        if version
        else f"Not registered: {decision.reason}."
    )
    log_subject_report(
        out_dir / "report",
        scores.base.result.predictions,
        scores.adapter.predictions,
        scores.comparison,
        base_label="base",
        new_label="trained",
        title=title,
        alpha=cfg.alpha if cfg.gate != "none" else None,
        notes=["", *guard_notes(guards, cfg.guard_margin), outcome_note],
    )


def guard_notes(guards: Sequence[GuardResult], margin: float) -> list[str]:
    """The report's guard-set table (markdown lines), empty without guards."""
    if not guards:
        return []
    lines = [
        f"Forgetting guards (non-inferior when the paired 95% CI's lower bound of Δ accuracy > -{margin:g}):",
        "",
        "| guard set | n | base accuracy | trained accuracy | Δ | 95% CI | non-inferior |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in guards:
        f = g.figures
        lines.append(
            f"| {g.name} | {int(f['n'])} | {f['base_accuracy']:.3f} | {f['accuracy']:.3f} | {f['delta_accuracy']:+.3f} "
            f"| [{f['delta_ci_low']:+.3f}, {f['delta_ci_high']:+.3f}] | {'yes' if g.passed else 'NO'} |"
        )
    return [*lines, ""]


def log_outcome(
    summary: str,
    decision: GateDecision,
    version: str | None,
    candidate: Candidate,
    scores: TestScores,
    out_dir: Path,
    *,
    guards: Sequence[GuardResult] = (),
) -> None:
    """summary.txt and decision.json on the run."""
    from distill.io import write_text_atomic

    tracking.log_artifact(write_text_atomic(out_dir / "summary.txt", summary + "\n"))
    tracking.log_dict(
        {
            "decision": "registered" if version else "refused",
            "reason": decision.reason,
            "version": version,
            "candidate_run": candidate.run_id,
            "comparison": scores.comparison,
            "guards": {g.name: {"passed": g.passed, **g.figures} for g in guards},
        },
        "decision.json",
    )


def summary_text(
    cfg: RegisterConfig,
    candidate: Candidate,
    scores: TestScores,
    decision: GateDecision,
    version: str | None,
    previous: str | None,
    *,
    run_id: str,
    dataset: str,
    wall_s: float,
    guards: Sequence[GuardResult] = (),
) -> str:
    """The closing screen of a register run."""
    from distill.reports import subject_rows

    overall = subject_rows(scores.base.result.predictions, scores.adapter.predictions)[-1]
    comparison = scores.comparison
    value = f" ({cfg.metric}={candidate.selection_value:.4f})" if candidate.selection_value is not None else ""
    lines = [
        f"register  candidate run {candidate.run_id}: {candidate.selection}{value}",
        f"test      {Path(dataset).name}, {overall['n']} items: {overall['base_correct']} → {overall['new_correct']} correct "
        f"(accuracy {overall['base_accuracy']:.3f} → {overall['new_accuracy']:.3f}, macro-F1 {overall['base_macro_f1']:.3f} → {overall['new_macro_f1']:.3f}); "
        f"Δ {comparison['compare/delta_accuracy']:+.3f} [{comparison['compare/delta_ci_low']:+.3f}, {comparison['compare/delta_ci_high']:+.3f}], "
        f"McNemar p={comparison['compare/mcnemar_p']:.3g}  (base {'from cache' if scores.base.hit else 'scored now'})",
    ]
    for guard in guards:
        verdict = "non-inferior" if guard.passed else f"WORSE (lower bound ≤ -{cfg.guard_margin:g})"
        lines.append(
            f"guard     {guard.describe()}: {verdict}  (base {'from cache' if guard.base_hit else 'scored now'})"
        )
    if version:
        moved = f" (moved from version {previous})" if previous else ""
        lines.append(
            f"decision  REGISTERED {cfg.model_name} version {version}, alias {cfg.alias}{moved}: {decision.reason}"
        )
    else:
        lines.append(f"decision  REFUSED, nothing registered: {decision.reason}")
    lines.append(f"run       {run_id}  ·  report in report/report.md  ·  {wall_s:.1f} s")
    return "\n".join(lines)
