"""The `train` stage: a LoRA adapter trained on preference pairs (ORPO by default; DPO, SimPO or SFT
by `method`), logged and evaluated in ONE MLflow run.

What one run does, in order (each a step of `run`):
1. prepare: reads and checks the pairs (`distill.pairs`), holds out a dev split (whole seed
   groups, stratified by subject) and subsamples `n_pairs` of the rest (the dev split does not
   move when `n_pairs` does); renders each pair for TRL and drops or truncates over-long pairs
   (`overlong`), counting them (`data/n_overlong`, `data/n_dropped`, `data/n_truncated`); see
   `distill.training` for the *Thinking* decision and over-long pairs;
2. train: a LoRA adapter with the loss `method` names (`distill.preference_loss`: orpo, dpo
   with RPO's NLL weight, simpo, sft; each with its own hyperparameters below) through one
   trainer (`distill.preference_trainer.PreferenceTrainer`: TRL's ORPO machinery with a finite
   odds-ratio term, a prompt-length bound, and, unless `prompt_loss=true`, the NLL term on the
   chosen completion only, as in the ORPO paper: TRL's own NLL also covers the prompt, which
   on long passages drowns the few answer tokens). Every method gets the same rows, the same
   truncation, the same dev/eval measurement and logs the same metric names, so runs of
   different methods compare in one MLflow table (the tag `train/method` and the run name say
   which). DPO's reference is the base itself, the adapter disabled. The backend is the one the
   machine allows, whatever the method:
   - `unsloth`: CUDA and Unsloth importable: Unsloth's loader (4-bit unless `load_in_4bit=false`)
     and its `get_peft_model`;
   - `qlora`: 4-bit NF4 through bitsandbytes (`load_student(load_in_4bit=True)`); TRL then
     runs peft's `prepare_model_for_kbit_training` and wraps the model with the LoRA config;
   - `lora`: plain LoRA, fp32 on CPU (bf16/fp16 on a GPU without bitsandbytes).
   The tag `train/backend` says which ran, `train/backend_notes` why the others did not;
3. log the model: the adapter as a pyfunc model (`distill.adapter_model`) named after the run
   (`run_label`: `orpo λ=0.13 r=8 lr=1.6e-4 pairs=59`, `dpo β=0.1 α=1 r=8 ...`), so that
   `runs:/<run_id>/<that name>` (the tag `train/model_uri`) loads with `load_student(student, adapter=...)` or
   `mlflow.pyfunc.load_model`;
4. score: reloads the saved adapter the way every later stage will (`load_student(student,
   adapter=dir)`) and measures, on that one model: the dev split with the adapter (`dev/*`:
   preference accuracy and mean chosen-minus-rejected log-prob margin on the dev pairs, MCQ
   logit accuracy and macro-F1 on their problems) and, with `score_eval` (the default), the
   eval set (the test split: `eval/*`) and the paired comparison with the base (`compare/*`).
   The base model's own figures, on the dev split and the eval set, are measured once per
   (base, split) and cached on disk (`distill.eval_cache`, shared with `register`); they are
   the metrics of a *base run* in the same experiment, which this run links to (tags
   `distill.base_run.dev`/`.eval`, its description) instead of repeating them. A sweep's trials
   run with `score_eval=false`: they optimise `dev/*` and never look at the test split;
5. log the scores, linked to the logged model and to their dataset (the model's page lists
   what it was trained and evaluated on), the subjects table, and the one-screen summary, which
   is also the run's description, with links to the runs it used (the pairs' producer, the
   base runs, a sweep's parent) and to the model it made.

What a run shows in the MLflow UI (docs/design.md, "MLflow conventions"): about twenty headline
metrics (`compare/*`, `dev/*`, `eval/*`, `train/*` of TRL's figures the ones in
`distill.training.TRAIN_STEP_METRICS`, `train/wall_s`) plus system metrics (`system/*`: CPU,
memory, GPU); params with the values the run used (`n_pairs` = pairs trained, `load_in_4bit` and
`use_unsloth` as decided, `compute_dtype`), paths as `distill.path.*` tags; the training pairs
(context `training`, source the producing run's `runs:/` URI or the user's file, digest
`tracking.rows_digest` of the rows as read), the dev split (`dev`) and the eval set (`eval`).

Under `accelerate launch` every process trains its shard of each batch (DDP); only rank 0 opens
the MLflow run, saves the adapter, evaluates and logs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
from distill.errors import ConfigError
from distill.sweep_runs import TAG_TRIAL as TRIAL_TAG
from distill.training import (
    Backend,
    OverlongReport,
    TrainResult,
    decide_backend,
    dev_curve_callback,
    dev_metrics,
    distributed_rank,
    free_memory,
    handle_overlong,
    load_for_training,
    measure_lengths,
    parse_target_modules,
    preference_rows,
    train_preference,
)

TRI_STATE = ("auto", "true", "false")
OVERLONG_MODES = ("drop", "truncate")
NAME_FIELDS = {"lora_rank": "r", "learning_rate": "lr"}
"""The train parameters a run's name shows (after the method's own, with the pairs trained), as `r=8 lr=1.6e-4`."""
METHOD_FIELDS = {
    "orpo": {"beta": "λ"},
    "dpo": {"dpo_beta": "β", "rpo_alpha": "α"},
    "simpo": {"simpo_beta": "β", "simpo_gamma": "γ", "cpo_alpha": "α"},
    "sft": {},
}
"""Each method's hyperparameters (the fields its loss reads) and the symbol a run's name shows them with."""


@dataclass
class TrainConfig:
    """Train a LoRA adapter on preference pairs (ORPO, DPO, SimPO or SFT); log, evaluate and compare it in MLflow."""

    student: str = field(
        default="tiny-qwen3",
        metadata={
            "help": "Base model: a Hugging Face id, a local directory, tiny-qwen3[@seed] or world-student[@seed] (built locally, no download)."
        },
    )
    pairs: str | None = unset_field(
        "bundled",
        "Preference pairs: a .jsonl file, a folder with pairs.jsonl or a saved HF dataset, or an MLflow URI (runs:/<id>/pairs). bundled: the bundled example pairs.",
    )
    n_pairs: int | None = unset_field(
        "all",
        "Train on this many pairs, drawn per subject in proportion (seeded), after the dev split. all (or 0): all. The run's param is the number trained.",
    )
    method: str = field(
        default="orpo",
        metadata={
            "help": "Training loss: orpo (NLL + λ·odds ratio, no reference), dpo (DPO against the base with the adapter disabled, + rpo_alpha·NLL), simpo (length-normalised margin with target γ, + cpo_alpha·NLL, no reference), sft (NLL of the chosen completion only)."
        },
    )
    beta: float = field(
        default=0.1,
        metadata={
            "help": "ORPO's λ (method=orpo): weight of the odds-ratio term against the NLL of the chosen answer."
        },
    )
    dpo_beta: float = field(
        default=0.1,
        metadata={
            "help": "DPO's β (method=dpo): scale of the summed log-prob ratios to the reference; larger keeps the adapter closer to the base."
        },
    )
    rpo_alpha: float = field(
        default=0.0,
        metadata={
            "help": "method=dpo: weight of the chosen completion's NLL added to DPO (RPO; the paper uses 1.0); 0: plain DPO."
        },
    )
    simpo_beta: float = field(
        default=2.0,
        metadata={"help": "SimPO's β (method=simpo): scale of the average log-prob margin (the paper uses 2.0-2.5)."},
    )
    simpo_gamma: float = field(
        default=0.5,
        metadata={
            "help": "SimPO's γ (method=simpo): target reward margin, in units of β·(average log-prob); TRL's default 0.5."
        },
    )
    cpo_alpha: float = field(
        default=0.0,
        metadata={
            "help": "method=simpo: weight of the chosen completion's NLL added to SimPO (CPO-SimPO); 0: plain SimPO."
        },
    )
    prompt_loss: bool = field(
        default=False,
        metadata={
            "help": "false: the NLL term (ORPO's, SFT's, rpo_alpha's, cpo_alpha's) covers the chosen completion only (ORPO's L_SFT); true: prompt + completion (TRL's default)."
        },
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    lora_dropout: float = field(
        default=0.05,
        metadata={"help": "Dropout on the LoRA input (the base model's own dropout is left as configured)."},
    )
    target_modules: str = field(
        default="all-linear",
        metadata={"help": "Modules that get LoRA: 'all-linear', or a comma list such as q_proj,k_proj,v_proj,o_proj."},
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (AdamW, linear decay)."})
    epochs: float = field(
        default=3.0, metadata={"help": "Passes over the training pairs (ignored when max_steps > 0)."}
    )
    per_device_batch_size: int = field(
        default=4, metadata={"help": "Pairs per device per step (each pair is two sequences: chosen and rejected)."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Steps whose gradients are summed before one optimizer update."}
    )
    max_length: int = field(default=2048, metadata={"help": "Token limit of prompt + completion."})
    max_prompt_length: int = field(
        default=1536, metadata={"help": "Token limit of the prompt alone (must be below max_length)."}
    )
    overlong: str = field(
        default="drop",
        metadata={
            "help": "Pairs over a limit: 'drop' them, or 'truncate' them (prompt keeps its end, completion its start). Counted either way."
        },
    )
    thinking: str = field(
        default="off",
        metadata={
            "help": "Qwen3 think blocks: 'off' (empty think block in the prompt, reasoning in the open) or 'on' (reasoning inside <think>...</think>, answer line after)."
        },
    )
    load_in_4bit: str = field(
        default="auto",
        metadata={
            "help": "Load the base in 4-bit NF4 (bitsandbytes): auto (on with CUDA and bitsandbytes), true, false."
        },
    )
    use_unsloth: str = field(
        default="auto",
        metadata={"help": "Use Unsloth's loader and LoRA: auto (on with CUDA and Unsloth installed), true, false."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the dev split, the subsample, LoRA init, data order and the bootstrap."}
    )
    eval_dataset: str | None = unset_field(
        "bundled", "MCQ items to evaluate base and adapter on (the test split). bundled: the bundled eval sample."
    )
    eval_format: str = field(
        default="auto",
        metadata={
            "help": "Format of eval_dataset: auto, a shipped format (competition, kice, kmmlu, jsonl, csat_qa, haerae) or a format spec file (.yaml)."
        },
    )
    dev_fraction: float = field(
        default=0.15,
        metadata={"help": "Share of the pairs held out as the dev split (whole seed groups); 0 for none."},
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Items (or pairs) per forward pass in evaluation."})
    bootstrap_samples: int = field(
        default=2000, metadata={"help": "Bootstrap resamples for the CI of the accuracy difference."}
    )
    score_eval: bool = field(
        default=True,
        metadata={
            "help": "Also score eval_dataset (the test split): eval/* and compare/* against the base. A sweep's trials run with false: they see the dev split only."
        },
    )
    experiment: str | None = unset_field(
        "auto", "MLflow experiment. auto: distill-train (a parent run's, inside one)."
    )
    output_dir: str = field(
        default="outputs/train",
        metadata={"help": "Local folder for the adapter and run files (one subfolder per run)."},
    )
    logging_steps: int = field(
        default=1, metadata={"help": "Log TRL's training metrics every this many optimizer steps."}
    )
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: run all epochs)."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU), bf16, fp16 or fp32."},
    )
    dev_eval_steps: int = field(
        default=0,
        metadata={
            "help": "Also measure the dev split every this many optimizer steps during training, logged as dev/* at that step, one curve per figure (a sweep prunes on it). 0: only after training."
        },
    )

    def __post_init__(self) -> None:
        from distill.data.prompts import parse_thinking

        for name in ("pairs", "eval_dataset", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and (not value.strip() or value.strip().lower() in ("bundled", "auto")):
                setattr(self, name, None)
        if self.n_pairs is not None and self.n_pairs < 0:
            raise ConfigError(f"n_pairs must be >= 0 (0 or empty: all), got {self.n_pairs}")
        if self.n_pairs == 0:
            self.n_pairs = None
        self.thinking = "on" if parse_thinking(self.thinking) else "off"
        for name in ("load_in_4bit", "use_unsloth"):
            value = str(getattr(self, name)).strip().lower()
            value = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(
                value, value
            )
            if value not in TRI_STATE:
                raise ConfigError(f"{name} must be auto, true or false; got {getattr(self, name)!r}")
            setattr(self, name, value)
        self.overlong = str(self.overlong).strip().lower()
        if self.overlong not in OVERLONG_MODES:
            raise ConfigError(f"overlong must be 'drop' or 'truncate'; got {self.overlong!r}")
        positive = (
            "lora_rank",
            "lora_alpha",
            "per_device_batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "max_prompt_length",
            "eval_batch_size",
            "bootstrap_samples",
            "logging_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length})"
            )
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ConfigError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.beta < 0 or self.learning_rate <= 0:
            raise ConfigError("beta must be >= 0 and learning_rate > 0")
        self.method = str(self.method).strip().lower()
        if self.method not in METHOD_FIELDS:
            raise ConfigError(f"method must be one of {', '.join(METHOD_FIELDS)}; got {self.method!r}")
        for name in ("dpo_beta", "simpo_beta"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("rpo_alpha", "simpo_gamma", "cpo_alpha"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("epochs must be > 0 (or set max_steps)")
        parse_target_modules(self.target_modules)
        if self.dev_eval_steps < 0:
            raise ConfigError(f"dev_eval_steps must be >= 0 (0: only after training), got {self.dev_eval_steps}")

    @property
    def loss_spec(self):
        """The method and its hyperparameters, as `distill.preference_loss.total_loss` takes them."""
        from distill.preference_loss import LossSpec

        return {
            "orpo": LossSpec("orpo", beta=self.beta),
            "dpo": LossSpec("dpo", beta=self.dpo_beta, nll_weight=self.rpo_alpha),
            "simpo": LossSpec("simpo", beta=self.simpo_beta, gamma=self.simpo_gamma, nll_weight=self.cpo_alpha),
            "sft": LossSpec("sft"),
        }[self.method]

    @property
    def method_text(self) -> str:
        """The method with its hyperparameters, as a summary shows it: `DPO β=0.1 α=1`."""
        label = {"orpo": "ORPO", "dpo": "DPO", "simpo": "SimPO", "sft": "SFT on chosen"}[self.method]
        values = (
            f"{symbol}={tracking.short_number(getattr(self, f))}" for f, symbol in METHOD_FIELDS[self.method].items()
        )
        return " ".join([label, *values])

    @property
    def pairs_source(self) -> str:
        """The pairs to read: `pairs`, or the bundled example pairs when unset."""
        from distill.resources import resource_path

        return self.pairs or str(resource_path("example_pairs.jsonl"))

    @property
    def eval_source(self) -> str:
        """The eval items to read: `eval_dataset`, or the bundled eval sample when unset."""
        from distill.resources import resource_path

        return self.eval_dataset or str(resource_path("eval_sample.jsonl"))


@dataclass
class TrainOutputs:
    run_id: str
    model_uri: str
    """`runs:/<run_id>/<model name>`."""
    logged_model_uri: str
    """What MLflow returned for the logged model (`models:/<model id>`)."""
    adapter_dir: Path
    backend: Backend
    n_train: int
    n_dev: int
    overlong: OverlongReport
    steps: int
    final_loss: float
    metrics: dict[str, float]
    """`dev/*`, `base_dev/*` and, when the eval set was scored, `eval/*`, `base/*` and
    `compare/*` (every figure, per subject too; the run logs the headline ones)."""
    wall_s: float
    summary: str
    run_name: str = ""


@dataclass
class TrainData:
    """What `prepare` read and checked, before any run or model exists."""

    pairset: Any
    """`distill.pairs.PairSet`: the pairs as loaded, and where from."""
    dev_pairs: list[Any]
    """The dev split's pairs (`PreferencePair`), whose rows are its dataset digest."""
    rows: list[dict[str, Any]]
    """TRL rows to train on (over-long ones dropped or left for truncation)."""
    dev_rows: list[dict[str, Any]]
    dev_problems: list[Any]
    """The dev pairs' problems (MCQ items) for dev accuracy and macro-F1."""
    overlong: OverlongReport
    eval_items: list[Any]
    """The test split's items; empty when the run does not score it (`score_eval=false`)."""
    student_path: str
    dtype_name: str
    """The compute dtype on the backend's device (`bfloat16`, `float16`, `float32`)."""


@dataclass
class Scores:
    """The trained adapter and its base on the dev split and (with `score_eval`) the eval set."""

    dev: dict[str, float]
    dev_base: Any
    """`distill.eval_cache.CachedDev`: the base on the dev split (from the cache when `hit`)."""
    adapter_eval: Any = None
    """`distill.evaluation.EvalResult` with the adapter (None without `score_eval`)."""
    base_eval: Any = None
    """`distill.eval_cache.CachedEval`: the same items without the adapter."""
    comparison: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        metrics = {f"dev/{k}": v for k, v in self.dev.items()}
        metrics.update({f"base_dev/{k}": v for k, v in self.dev_base.metrics.items()})
        if self.adapter_eval is not None:
            metrics.update(self.adapter_eval.metrics)
            metrics.update({"base/" + k[len("eval/") :]: v for k, v in self.base_eval.result.metrics.items()})
            metrics.update(self.comparison)
        return metrics


@dataclass
class Logged:
    """What the run logged that later steps link to."""

    run_id: str
    experiment_id: str
    name: str
    model_uri: str = ""
    logged_model_uri: str = ""
    model_id: str | None = None
    datasets: dict[str, Any] = field(default_factory=dict)
    """MLflow datasets by context (training, dev, eval), to link metrics to."""
    base_runs: dict[str, str] = field(default_factory=dict)
    """Base run ids by context (dev, eval)."""


# --------------------------------------------------------------------------------------------
# The stage


def run(
    cfg: TrainConfig,
    *,
    on_dev_eval=None,
    run_tags: dict[str, str] | None = None,
    name_prefix: str = "train",
    name_fields: tuple[str, ...] = (),
) -> TrainOutputs:
    """Prepare, train, log the model, score, log, summarise (see the module docstring).

    `on_dev_eval(step, metrics)`, when given, is called after each intermediate dev measurement
    (every `cfg.dev_eval_steps` steps; metrics named as in `distill.training.dev_metrics`, without
    prefix); an exception it raises ends the run (its MLflow run is then marked FAILED).
    `run_tags` are set on the MLflow run when it starts (a sweep links trials to its parent with
    them). The run is named `<name_prefix> <run_label>`; `name_fields` adds train parameters to
    the label (a sweep's varied ones)."""
    started = time.perf_counter()
    if run_tags and run_tags.get(TRIAL_TAG) and cfg.score_eval:
        raise ConfigError("a sweep trial scores the dev split only: score_eval must be false")
    backend = decide_backend(cfg.load_in_4bit, cfg.use_unsloth)  # first: Unsloth must precede transformers
    data = prepare(cfg, backend)
    rank, _ = distributed_rank()
    if rank != 0:  # DDP: this process trains its shard of each batch; rank 0 alone logs and evaluates
        train_adapter(cfg, backend, data, Path(cfg.output_dir) / f"rank{rank}", dev_curve=False)
        return None  # type: ignore[return-value]

    tracking.configure(cfg.experiment, "train")
    name = f"{name_prefix} {run_label(cfg, len(data.rows), name_fields)}"
    with tracking.start_run(run_name=name, tags=run_tags, system_metrics=True) as active, tracking.tagging_failure():
        logged = Logged(active.info.run_id, active.info.experiment_id, name)
        run_dir = Path(cfg.output_dir) / logged.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        log_run_inputs(cfg, backend, data, run_dir, logged)
        result = train_adapter(cfg, backend, data, run_dir, on_dev_eval=on_dev_eval)
        log_adapter(cfg, backend, data, result, logged)
        scores = score_adapter(cfg, backend, data, result.adapter_dir)
        log_scores(cfg, backend, data, scores, result, run_dir, logged)
        outputs = finish(cfg, backend, data, result, scores, logged, started, run_tags or {})
    print()
    print(outputs.summary)
    return outputs


def run_label(cfg: TrainConfig, n_pairs: int, extra: tuple[str, ...] = ()) -> str:
    """What tells this run from others: the method and its hyperparameters, `r`, `lr` and the
    pairs actually trained (`orpo λ=0.13 r=8 lr=1.6e-4 pairs=59`), and any `extra` train
    parameter as `name=value` (not another method's hyperparameters: they did nothing here)."""
    shown = METHOD_FIELDS[cfg.method] | NAME_FIELDS
    parts = [cfg.method, *(f"{symbol}={tracking.short_number(getattr(cfg, f))}" for f, symbol in shown.items())]
    parts.append(f"pairs={n_pairs}")
    unused = {f for fields in METHOD_FIELDS.values() for f in fields} - set(shown)
    for name in extra:
        if name not in shown and name not in unused and name not in ("n_pairs", "method"):
            parts.append(f"{name}={tracking.short_number(getattr(cfg, name))}")
    return " ".join(parts)


# -- prepare


def prepare(cfg: TrainConfig, backend: Backend) -> TrainData:
    """Pairs, dev split, TRL rows, over-long handling and eval items: everything that can be wrong
    with the input fails here, before a run or a model exists."""
    from transformers import AutoTokenizer

    from distill.data.loaders import load_items
    from distill.models import dtype_name, resolve_model_path
    from distill.pairs import load_pairs, select_pairs
    from distill.training import dev_items

    pairset = load_pairs(cfg.pairs_source)
    train_pairs, dev_pairs = select_pairs(
        pairset.pairs, n_pairs=cfg.n_pairs, dev_fraction=cfg.dev_fraction, seed=cfg.seed
    )
    eval_items = []
    if cfg.score_eval:
        eval_items = load_items(cfg.eval_source, cfg.eval_format, require_answer=True)
        if not eval_items:
            raise ConfigError(f"eval_dataset {cfg.eval_source} has no items")
    student_path = resolve_model_path(cfg.student)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    thinking = cfg.thinking == "on"
    rows = preference_rows(train_pairs, tokenizer, thinking=thinking)
    rows, overlong = handle_overlong(
        rows,
        measure_lengths(rows, tokenizer),
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        mode=cfg.overlong,
    )
    if not rows:
        raise ConfigError(
            f"all {overlong.n_dropped} training pairs are over the limits (longest prompt {overlong.max_prompt_tokens} "
            f"tokens, longest pair {overlong.max_total_tokens}); raise max_length/max_prompt_length or use overlong=truncate"
        )
    return TrainData(
        pairset=pairset,
        dev_pairs=dev_pairs,
        rows=rows,
        dev_rows=preference_rows(dev_pairs, tokenizer, thinking=thinking),
        dev_problems=dev_items(dev_pairs),
        overlong=overlong,
        eval_items=eval_items,
        student_path=student_path,
        dtype_name=dtype_name(backend.device, cfg.dtype),
    )


# -- compute


def dev_measure(cfg: TrainConfig, data: TrainData, tokenizer: Any):
    """`measure(model) -> metrics` of the dev split (`distill.training.dev_metrics`, no prefix)."""
    return partial(
        dev_metrics,
        tokenizer=tokenizer,
        rows=data.dev_rows,
        items=data.dev_problems,
        thinking=cfg.thinking,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        batch_size=cfg.eval_batch_size,
    )


def train_adapter(
    cfg: TrainConfig, backend: Backend, data: TrainData, work_dir: Path, *, on_dev_eval=None, dev_curve: bool = True
) -> TrainResult:
    """Load the student for training, train with `cfg.method`, save the adapter under `work_dir`; free the model.

    With `dev_curve` and `cfg.dev_eval_steps`, the dev split is also measured during training."""
    model, tokenizer, peft_config = load_for_training(cfg, backend, data.student_path)
    callbacks = []
    if dev_curve and cfg.dev_eval_steps and data.dev_rows:
        callbacks.append(dev_curve_callback(dev_measure(cfg, data, tokenizer), cfg.dev_eval_steps, on_dev_eval))
    result = train_preference(cfg, backend, model, tokenizer, peft_config, data.rows, work_dir, callbacks=callbacks)
    del model, tokenizer
    free_memory()
    return result


def score_adapter(cfg: TrainConfig, backend: Backend, data: TrainData, adapter_dir: Path) -> Scores:
    """Reload the saved adapter exactly as later stages will, and measure everything on that one
    model: the dev split with the adapter, and without it through the base cache; with
    `score_eval`, the eval set with it, the base on the eval set (adapter disabled, through the
    cache shared with register) and the paired comparison."""
    from distill.eval_cache import cached_base_dev, cached_base_eval
    from distill.evaluation import compare_predictions, evaluate_items
    from distill.models import load_student

    model, tokenizer = load_student(
        cfg.student,
        adapter=str(adapter_dir),
        device=backend.device,
        dtype=cfg.dtype,
        load_in_4bit=backend.load_in_4bit,
    )
    measure = dev_measure(cfg, data, tokenizer)
    dev = measure(model)

    def measure_base(model=model, measure=measure) -> dict[str, float]:  # bound now, freed below
        with model.disable_adapter():
            return measure(model)

    model_key = dict(
        student=cfg.student,
        student_path=data.student_path,
        thinking=cfg.thinking,
        load_in_4bit=backend.load_in_4bit,
        dtype=data.dtype_name,
    )
    dev_base = cached_base_dev(
        measure_base,
        rows_digest=dev_digest(data),
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        **model_key,
    )
    scores = Scores(dev, dev_base)
    if cfg.score_eval:
        scores.adapter_eval = evaluate_items(
            model, tokenizer, data.eval_items, thinking=cfg.thinking, batch_size=cfg.eval_batch_size, progress=True
        )
        scores.base_eval = cached_base_eval(
            data.eval_items,
            load=lambda loaded=(model, tokenizer): loaded,  # the model in hand; bound now, freed below
            batch_size=cfg.eval_batch_size,
            **model_key,
        )
    del model, tokenizer, measure, measure_base
    free_memory()
    if cfg.score_eval:
        scores.comparison = compare_predictions(
            scores.base_eval.result.predictions,
            scores.adapter_eval.predictions,
            n_boot=cfg.bootstrap_samples,
            seed=cfg.seed,
        )
    return scores


DEV_ROWS = "data/dev_rows.jsonl"
"""The dev split as the run writes it (TRL rows): the source of its `dev` dataset input."""


def dev_digest(data: TrainData) -> str:
    """The dev split's dataset digest: `rows_digest` of its rows, as written to DEV_ROWS."""
    return tracking.rows_digest(data.dev_rows)


# -- log


def log_run_inputs(cfg: TrainConfig, backend: Backend, data: TrainData, run_dir: Path, logged: Logged) -> None:
    """Params (the config with the values this run used), config.yaml, tags, datasets."""
    tracking.log_config_params(
        cfg,
        n_pairs=len(data.rows),
        n_dev_pairs=len(data.dev_rows),
        load_in_4bit=backend.load_in_4bit,
        use_unsloth=backend.use_unsloth,
        compute_dtype=data.dtype_name,
    )
    tracking.log_config(cfg)
    overlong = data.overlong
    tracking.set_tags(
        {
            "distill.stage": "train",
            "distill.student": cfg.student,
            "distill.path.student": data.student_path,
            "train/method": cfg.method,
            "train/backend": backend.name,
            "train/backend_notes": "; ".join(backend.notes) or "-",
            "train/device": backend.device,
            "train/thinking": cfg.thinking,
            "data.n_pairs_loaded": len(data.pairset.pairs),
            "data.n_requested": cfg.n_pairs or "all",
            "data.overlong": f"{overlong.n_overlong} over the limits: {overlong.n_dropped} dropped, "
            f"{overlong.n_truncated} truncated; longest prompt {overlong.max_prompt_tokens}, "
            f"longest pair {overlong.max_total_tokens} tokens",
            "dev.reward_accuracy.definition": "share of dev pairs whose chosen has a higher per-token average log-prob than rejected",
            "dev.margin.definition": "mean over dev pairs of (chosen - rejected) per-token average log-prob",
            "dev.accuracy.average": "micro (over the dev pairs' problems)",
        }
    )
    log_training_data(data, run_dir / "data", logged)
    if cfg.score_eval:
        from distill.evaluation import log_items_dataset

        source = cfg.eval_source
        logged.datasets["eval"] = log_items_dataset(data.eval_items, source=source, name=Path(source).stem)
    notes = "; ".join(backend.notes) or "all features on"
    print(f"train: backend {backend.name} ({notes}); {len(data.rows)} pairs, {len(data.dev_rows)} dev")


def log_training_data(data: TrainData, folder: Path, logged: Logged) -> None:
    """The pairs read (context training, with the digest their producer recorded) and the dev
    split (context dev) as dataset inputs; the TRL rows as artifacts, and a copy of the pairs
    when they are the user's file (a `runs:/` source is already its producer's artifact).

    The dev split is made here, from the pairs: its rows are this run's artifact DEV_ROWS
    (recorded as the output `dev`), which is its dataset's source. Runs that hold out the same
    split show the same digest; MLflow keeps one record per dataset name and digest in an
    experiment, so they show the source of the first run that logged it, the same content."""
    import pandas as pd

    from distill.io import write_jsonl

    columns = ("id", "subject", "prompt", "chosen", "rejected")
    pairset = data.pairset
    frame = pd.DataFrame([{k: row[k] for k in columns} for row in data.rows])
    logged.datasets["training"] = tracking.log_dataset(
        frame, name="pairs", source=pairset.lineage_source, context="training", digest=pairset.digest
    )
    for file_name, rows in (("train_rows.jsonl", data.rows), ("dev_rows.jsonl", data.dev_rows)):
        tracking.log_artifact(write_jsonl(folder / file_name, rows), "data")
    if data.dev_rows:
        source = tracking.record_output("dev", DEV_ROWS, data.dev_rows)
        dev_frame = pd.DataFrame([{k: row[k] for k in columns} for row in data.dev_rows])
        logged.datasets["dev"] = tracking.log_dataset(
            dev_frame, name="pairs-dev", source=source, context="dev", digest=dev_digest(data)
        )
    if tracking.run_of_uri(pairset.lineage_source) is None:
        if Path(pairset.path).is_file():
            tracking.log_artifact(pairset.path, "pairs")
        else:
            tracking.log_artifacts(pairset.path, "pairs")


def log_adapter(cfg: TrainConfig, backend: Backend, data: TrainData, result: TrainResult, logged: Logged) -> None:
    """The adapter as a pyfunc model named after the run, recording how to load its base (also
    written next to the adapter as distill_adapter.json); its URIs and id go on `logged`."""
    from distill.adapter_model import log_adapter_model, logged_model_name
    from distill.tiny_qwen3 import parse_tiny_name

    model_config = {
        "base_model": cfg.student,
        "base_model_seed": parse_tiny_name(cfg.student),
        "base_load_in_4bit": backend.load_in_4bit,
        "base_dtype": cfg.dtype,
        "scoring_thinking": cfg.thinking,
        "scoring_batch_size": cfg.eval_batch_size,
        "train_backend": backend.name,
    }
    (result.adapter_dir / "distill_adapter.json").write_text(
        json.dumps(model_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    example = data.eval_items[:2] or [p.problem for p in data.dev_pairs if p.problem is not None][:2] or None
    info = log_adapter_model(
        result.adapter_dir,
        model_config,
        logged.name,
        input_example=example,
        tags={"distill.run_name": logged.name, "distill.source_run": logged.run_id},
    )
    logged.model_uri = tracking.artifact_uri(logged.run_id, logged_model_name(logged.name))
    logged.logged_model_uri = info.model_uri
    logged.model_id = info.model_id
    tracking.set_tags({"train/model_uri": logged.model_uri, "train/logged_model_uri": info.model_uri})


def log_scores(
    cfg: TrainConfig,
    backend: Backend,
    data: TrainData,
    scores: Scores,
    result: TrainResult,
    run_dir: Path,
    logged: Logged,
) -> None:
    """Dev metrics (at the last step, after any dev curve), the eval set against the base, the
    base runs they are measured against (linked, not repeated), the full step history."""
    from distill.eval_cache import DEV_METRICS, base_run
    from distill.evaluation import log_adapter_vs_base

    tracking.log_metrics(
        {f"dev/{k}": v for k, v in scores.dev.items() if k in DEV_METRICS},
        step=result.global_step,
        model_id=logged.model_id,
        dataset=logged.datasets.get("dev"),
    )
    settings = {"thinking": cfg.thinking, "compute_dtype": data.dtype_name, "load_in_4bit": backend.load_in_4bit}
    if data.dev_rows:
        logged.base_runs["dev"] = base_run(
            scores.dev_base.key,
            student=cfg.student,
            split=f"dev split of {Path(data.pairset.lineage_source).name} (seed {cfg.seed})",
            context="dev",
            metrics={k: v for k, v in scores.dev_base.metrics.items() if k in DEV_METRICS},
            params=settings,
            dataset=logged.datasets.get("dev"),
        )
    if cfg.score_eval:
        log_adapter_vs_base(
            scores.adapter_eval,
            scores.base_eval.result,
            scores.comparison,
            new_label="adapter",
            base_cached=scores.base_eval.hit,
            base_cache_file=scores.base_eval.path,
            n_boot=cfg.bootstrap_samples,
            seed=cfg.seed,
            out_dir=run_dir,
            model_id=logged.model_id,
            dataset=logged.datasets.get("eval"),
        )
        base = scores.base_eval.result
        logged.base_runs["eval"] = base_run(
            scores.base_eval.path.stem,
            student=cfg.student,
            split=Path(cfg.eval_source).name,
            context="eval",
            metrics={k.split("/", 1)[1]: v for k, v in base.headline.items()},
            params=settings,
            dataset=logged.datasets.get("eval"),
            result=base,
        )
    tracking.set_tags({tracking.BASE_RUN_TAG + k: v for k, v in logged.base_runs.items() if v})
    tracking.log_dict(result.history, "train_history.json")


def finish(
    cfg: TrainConfig,
    backend: Backend,
    data: TrainData,
    result: TrainResult,
    scores: Scores,
    logged: Logged,
    started: float,
    run_tags: dict[str, str],
) -> TrainOutputs:
    """Wall time, the summary (printed by `run`, logged as summary.txt and as the run's
    description with its links), the outputs."""
    from distill.evaluation import summary_text
    from distill.io import write_text_atomic

    wall_s = time.perf_counter() - started
    # Linked to the model and the training set: the model's page then lists what it was trained on.
    tracking.log_metrics({"train/wall_s": wall_s}, model_id=logged.model_id, dataset=logged.datasets.get("training"))
    summary = summary_lines(cfg, backend, data, result, scores, logged=logged, wall_s=wall_s)
    if scores.adapter_eval is not None:
        summary += "\n\n" + summary_text(
            scores.adapter_eval,
            scores.comparison,
            title="eval set, adapter vs base (per subject)",
            base_result=scores.base_eval.result,
        )
    summary_file = write_text_atomic(Path(cfg.output_dir) / logged.run_id / "summary.txt", summary + "\n")
    tracking.log_artifact(summary_file)
    tracking.describe_run(summary, description_links(data, logged, run_tags))
    return TrainOutputs(
        run_id=logged.run_id,
        model_uri=logged.model_uri,
        logged_model_uri=logged.logged_model_uri,
        adapter_dir=result.adapter_dir,
        backend=backend,
        n_train=len(data.rows),
        n_dev=len(data.dev_rows),
        overlong=data.overlong,
        steps=result.global_step,
        final_loss=result.final_loss,
        metrics=scores.metrics,
        wall_s=wall_s,
        summary=summary,
        run_name=logged.name,
    )


def description_links(data: TrainData, logged: Logged, run_tags: dict[str, str]) -> dict[str, str]:
    """The runs a train run used and the model it made, as markdown links."""
    from distill.sweep_runs import TAG_PARENT

    links: dict[str, str] = {}
    producer = tracking.run_of_uri(data.pairset.source)
    if producer:
        links["pairs from"] = tracking.run_link(producer)
    for context, run_id in logged.base_runs.items():
        if run_id:
            links[f"base model on the {context} split"] = tracking.run_link(run_id)
    if run_tags.get(TAG_PARENT):
        links["sweep"] = tracking.run_link(run_tags[TAG_PARENT])
    if logged.model_id:
        links["model"] = tracking.model_link(logged.model_id, logged.name, logged.experiment_id)
    return links


def summary_lines(
    cfg: TrainConfig,
    backend: Backend,
    data: TrainData,
    result: TrainResult,
    scores: Scores,
    *,
    logged: Logged,
    wall_s: float,
) -> str:
    """The closing screen of a train run."""

    def fmt(value: Any, spec: str = ".3f") -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    dev, dev_base, overlong = scores.dev, scores.dev_base.metrics, data.overlong
    lines = [
        f"train  {cfg.student} + LoRA r={cfg.lora_rank} α={cfg.lora_alpha}, {cfg.method_text}, thinking {cfg.thinking}",
        f"backend  {backend.name} on {backend.device}" + (f"  ({'; '.join(backend.notes)})" if backend.notes else ""),
        f"pairs    {len(data.pairset.pairs)} loaded → {len(data.rows)} train, {len(data.dev_rows)} dev; over-long {overlong.n_overlong} "
        f"({overlong.n_dropped} dropped, {overlong.n_truncated} truncated; longest {overlong.max_total_tokens} tokens)",
        f"steps    {result.global_step} in {result.runtime_s:.1f} s; final loss {fmt(result.final_loss)}",
    ]
    if data.dev_rows:
        lines.append(
            f"dev      reward acc {fmt(dev_base.get('reward_accuracy'))} → {fmt(dev.get('reward_accuracy'))}, "
            f"margin {fmt(dev_base.get('margin'), '+.3f')} → {fmt(dev.get('margin'), '+.3f')}, "
            f"MCQ acc {fmt(dev_base.get('accuracy'))} → {fmt(dev.get('accuracy'))}, "
            f"macro-F1 {fmt(dev_base.get('macro_f1'))} → {fmt(dev.get('macro_f1'))}  (base → adapter)"
        )
    if scores.adapter_eval is not None:
        a, b, c = scores.adapter_eval.metrics, scores.base_eval.result.metrics, scores.comparison
        lines.append(
            f"eval     {Path(cfg.eval_source).name} ({int(a['eval/n'])} items): accuracy {fmt(b['eval/accuracy'])} → "
            f"{fmt(a['eval/accuracy'])}, Δ {fmt(c['compare/delta_accuracy'], '+.3f')} "
            f"[{fmt(c['compare/delta_ci_low'], '+.3f')}, {fmt(c['compare/delta_ci_high'], '+.3f')}], "
            f"McNemar p={fmt(c['compare/mcnemar_p'], '.3g')}  (base {'from cache' if scores.base_eval.hit else 'scored now'})"
        )
    else:
        lines.append("eval     not scored here (score_eval=false): the test split is for evaluate and register")
    lines.append(f"run      {logged.run_id}  ·  {logged.name}  ·  model {logged.model_uri}  ·  {wall_s:.1f} s")
    return "\n".join(lines)
