"""The `train` stage: ORPO with LoRA on preference pairs; adapter logged and evaluated in ONE MLflow run.

What one run does, in order:
1. reads and checks the pairs (`distill.pairs`), holds out a dev split (whole seed groups,
   stratified by subject) and subsamples `n_pairs` of the rest (the dev split does not move
   when `n_pairs` does);
2. renders each pair for TRL: `prompt` is the chat-template text, `chosen`/`rejected` the
   completion text ending with the eos token (see *Thinking* below); measures token lengths
   and drops or truncates over-long pairs (`overlong`), counting them (`data/n_overlong`,
   `data/n_dropped`, `data/n_truncated`);
3. trains a LoRA adapter with TRL's ORPO (`distill.orpo_trainer.SafeORPOTrainer`: a finite
   odds-ratio term, a prompt-length bound, and, unless `prompt_loss=true`, the NLL term on the
   chosen completion only, as in the ORPO paper: TRL's own NLL also covers the prompt, which
   on long passages drowns the few answer tokens), on the backend the machine allows:
   - `unsloth`: CUDA and Unsloth importable: Unsloth's loader (4-bit unless `load_in_4bit=false`)
     and its `get_peft_model`;
   - `qlora`: 4-bit NF4 through bitsandbytes (`load_student(load_in_4bit=True)`); TRL then
     runs peft's `prepare_model_for_kbit_training` and wraps the model with the LoRA config;
   - `lora`: plain LoRA, fp32 on CPU (bf16/fp16 on a GPU without bitsandbytes).
   The tag `train/backend` says which ran, `train/backend_notes` why the others did not;
4. reloads the saved adapter the way every later stage will (`load_student(student,
   adapter=dir)`) and measures, on that one model: dev metrics with the adapter (`dev/*`) and
   without it (`base_dev/*`): preference accuracy and mean chosen-minus-rejected log-prob
   margin on the dev pairs, MCQ logit accuracy and macro-F1 on their problems; then the eval
   set with the adapter (`eval/*`) and without (`base/*`, cached on disk across runs) and the
   paired comparison (`compare/*`). A sweep optimises `dev/*`, never the eval set;
5. logs the adapter as a pyfunc model (`distill.adapter_model`), name `adapter`, so that
   `runs:/<run_id>/adapter` loads with `load_student(student, adapter=...)` or
   `mlflow.pyfunc.load_model`.

Thinking (Qwen3 think blocks), decided on purpose:
- `off` (default): the prompt is rendered with `enable_thinking=False`, so it ends with the
  empty `<think>\\n\\n</think>\\n\\n` the template writes; chosen and rejected are the reasoning
  followed by the answer line, as plain text. The model learns to reason in the open after an
  empty think block, which is what logit scoring (thinking off) conditions on.
- `on`: the prompt is left open after `<|im_start|>assistant\\n`; the reasoning part of each
  completion (everything before the final `정답: N` line) goes inside `<think>\\n...\\n</think>`
  and the answer line follows after a blank line, as Qwen3 writes it.
Any `<think>`/`</think>` already inside a pair's text is removed first, so both modes start
from the same plain reasoning.

Over-long pairs are measured in tokens of the student's tokenizer: the prompt against
`max_prompt_length`, prompt + the longer completion against `max_length`. `drop` (default)
leaves them out: a truncated completion loses its final `정답:` line, which is the very
signal ORPO is meant to learn. `truncate` keeps them, with the prompt cut to its last
`max_prompt_length` tokens and the completion cut to fit `max_length`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from distill.errors import ConfigError

TRI_STATE = ("auto", "true", "false")
OVERLONG_MODES = ("drop", "truncate")
UNSLOTH_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""What `all-linear` means for Unsloth, whose get_peft_model wants explicit names."""
EVAL_CACHE_VERSION = "1"
"""Bump when base-model scoring changes in a way the cache key does not show."""


@dataclass
class TrainConfig:
    """Train a LoRA adapter with ORPO on preference pairs; log, evaluate and compare it in MLflow."""

    student: str = field(default="tiny-qwen3", metadata={"help": "Base model: a Hugging Face id, a local directory, or tiny-qwen3[@seed] (built locally, no download)."})
    pairs: str | None = field(default=None, metadata={"help": "Preference pairs: a .jsonl file, a folder with pairs.jsonl or a saved HF dataset, or an MLflow URI (runs:/<id>/pairs). Empty: the bundled example pairs."})
    n_pairs: int | None = field(default=None, metadata={"help": "Train on this many pairs, drawn per subject in proportion (seeded), after the dev split. Empty or 0: all."})
    beta: float = field(default=0.1, metadata={"help": "ORPO's λ: weight of the odds-ratio term against the NLL of the chosen answer."})
    prompt_loss: bool = field(default=False, metadata={"help": "false: ORPO's NLL term covers the chosen completion only (the paper's L_SFT); true: prompt + completion (TRL's default)."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input (the base model's own dropout is left as configured)."})
    target_modules: str = field(default="all-linear", metadata={"help": "Modules that get LoRA: 'all-linear', or a comma list such as q_proj,k_proj,v_proj,o_proj."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (AdamW, linear decay)."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training pairs (ignored when max_steps > 0)."})
    per_device_batch_size: int = field(default=4, metadata={"help": "Pairs per device per step (each pair is two sequences: chosen and rejected)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps whose gradients are summed before one optimizer update."})
    max_length: int = field(default=2048, metadata={"help": "Token limit of prompt + completion."})
    max_prompt_length: int = field(default=1536, metadata={"help": "Token limit of the prompt alone (must be below max_length)."})
    overlong: str = field(default="drop", metadata={"help": "Pairs over a limit: 'drop' them, or 'truncate' them (prompt keeps its end, completion its start). Counted either way."})
    thinking: str = field(default="off", metadata={"help": "Qwen3 think blocks: 'off' (empty think block in the prompt, reasoning in the open) or 'on' (reasoning inside <think>...</think>, answer line after)."})
    load_in_4bit: str = field(default="auto", metadata={"help": "Load the base in 4-bit NF4 (bitsandbytes): auto (on with CUDA and bitsandbytes), true, false."})
    use_unsloth: str = field(default="auto", metadata={"help": "Use Unsloth's loader and LoRA: auto (on with CUDA and Unsloth installed), true, false."})
    seed: int = field(default=0, metadata={"help": "Seed of the dev split, the subsample, LoRA init, data order and the bootstrap."})
    eval_dataset: str | None = field(default=None, metadata={"help": "MCQ items to evaluate base and adapter on. Empty: the bundled eval sample."})
    eval_format: str = field(default="auto", metadata={"help": "Format of eval_dataset: auto, competition, kice, kmmlu or jsonl."})
    dev_fraction: float = field(default=0.15, metadata={"help": "Share of the pairs held out as the dev split (whole seed groups); 0 for none."})
    eval_batch_size: int = field(default=8, metadata={"help": "Items (or pairs) per forward pass in evaluation."})
    bootstrap_samples: int = field(default=2000, metadata={"help": "Bootstrap resamples for the CI of the accuracy difference."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default distill-train)."})
    output_dir: str = field(default="outputs/train", metadata={"help": "Local folder for the adapter and run files (one subfolder per run)."})
    logging_steps: int = field(default=1, metadata={"help": "Log TRL's training metrics every this many optimizer steps."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: run all epochs)."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU), bf16, fp16 or fp32."})
    dev_eval_steps: int = field(default=0, metadata={"help": "Also measure the dev split every this many optimizer steps during training, logged as dev_curve/* at that step (a sweep prunes on it). 0: only after training."})

    def __post_init__(self) -> None:
        from distill.data.prompts import parse_thinking
        from distill.resources import resource_path

        for name in ("pairs", "eval_dataset", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)
        if self.pairs is None:
            self.pairs = str(resource_path("example_pairs.jsonl"))
        if self.eval_dataset is None:
            self.eval_dataset = str(resource_path("eval_sample.jsonl"))
        if self.n_pairs is not None and self.n_pairs < 0:
            raise ConfigError(f"n_pairs must be >= 0 (0 or empty: all), got {self.n_pairs}")
        if self.n_pairs == 0:
            self.n_pairs = None
        self.thinking = "on" if parse_thinking(self.thinking) else "off"
        for name in ("load_in_4bit", "use_unsloth"):
            value = str(getattr(self, name)).strip().lower()
            value = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(value, value)
            if value not in TRI_STATE:
                raise ConfigError(f"{name} must be auto, true or false; got {getattr(self, name)!r}")
            setattr(self, name, value)
        self.overlong = str(self.overlong).strip().lower()
        if self.overlong not in OVERLONG_MODES:
            raise ConfigError(f"overlong must be 'drop' or 'truncate'; got {self.overlong!r}")
        positive = ("lora_rank", "lora_alpha", "per_device_batch_size", "gradient_accumulation_steps", "max_length", "max_prompt_length", "eval_batch_size", "bootstrap_samples", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length})")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ConfigError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.beta < 0 or self.learning_rate <= 0:
            raise ConfigError("beta must be >= 0 and learning_rate > 0")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("epochs must be > 0 (or set max_steps)")
        parse_target_modules(self.target_modules)
        if self.dev_eval_steps < 0:
            raise ConfigError(f"dev_eval_steps must be >= 0 (0: only after training), got {self.dev_eval_steps}")


@dataclass(frozen=True)
class Backend:
    """Which training path runs, and why the others do not."""

    name: str
    """`unsloth`, `qlora` or `lora`."""
    device: str
    load_in_4bit: bool
    use_unsloth: bool
    notes: tuple[str, ...]


@dataclass
class OverlongReport:
    n_overlong: int = 0
    n_dropped: int = 0
    n_truncated: int = 0
    max_prompt_tokens: int = 0
    max_total_tokens: int = 0
    ids: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    adapter_dir: Path
    global_step: int
    final_loss: float
    history: list[dict[str, float]]
    runtime_s: float


@dataclass
class TrainOutputs:
    run_id: str
    model_uri: str
    """`runs:/<run_id>/adapter`."""
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
    wall_s: float
    summary: str


# --------------------------------------------------------------------------------------------
# Pure helpers


def parse_target_modules(text: str) -> str | list[str]:
    """`all-linear` as is; otherwise a comma list of module names."""
    value = str(text or "").strip()
    if value.lower() == "all-linear":
        return "all-linear"
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise ConfigError("target_modules is empty: give 'all-linear' or a comma list such as q_proj,v_proj")
    return names


def resolve_backend(
    load_in_4bit: str, use_unsloth: str, *, cuda: bool, has_bitsandbytes: bool, has_unsloth: bool
) -> Backend:
    """Decide the training path from the two tri-state settings and what the machine has."""
    notes: list[str] = []
    if use_unsloth == "true":
        if not cuda:
            raise ConfigError("use_unsloth=true needs a CUDA GPU (Unsloth cannot even be imported without one)")
        if not has_unsloth:
            raise ConfigError("use_unsloth=true but Unsloth is not installed (pip install '.[gpu]' on a GPU machine)")
        unsloth = True
    elif use_unsloth == "auto":
        unsloth = cuda and has_unsloth
        if not cuda:
            notes.append("unsloth off: no CUDA GPU")
        elif not has_unsloth:
            notes.append("unsloth off: not installed")
    else:
        unsloth = False
        notes.append("unsloth off: use_unsloth=false")

    if load_in_4bit == "true":
        if not has_bitsandbytes:
            raise ConfigError("load_in_4bit=true needs bitsandbytes (pip install bitsandbytes)")
        four_bit = True
        if not cuda:
            notes.append("4-bit on CPU: bitsandbytes' CPU path (slow; for tests and small models)")
    elif load_in_4bit == "auto":
        four_bit = cuda and (has_bitsandbytes or unsloth)
        if not cuda:
            notes.append("4-bit off: no CUDA GPU")
        elif not four_bit:
            notes.append("4-bit off: bitsandbytes not installed")
    else:
        four_bit = False
        notes.append("4-bit off: load_in_4bit=false")

    name = "unsloth" if unsloth else "qlora" if four_bit else "lora"
    return Backend(name=name, device="cuda" if cuda else "cpu", load_in_4bit=four_bit, use_unsloth=unsloth, notes=tuple(notes))


_THINK_TAG = re.compile(r"</?think>")


def completion_text(text: str, *, thinking: bool, eos_token: str) -> str:
    """A pair's chosen/rejected as the completion TRL scores (see the module's *Thinking*)."""
    from distill.pairs import split_reasoning

    plain = _THINK_TAG.sub("", text).strip()
    if thinking:
        reasoning, answer_line = split_reasoning(plain)
        return f"<think>\n{reasoning}\n</think>\n\n{answer_line}{eos_token}"
    return plain + eos_token


def preference_rows(pairs: Sequence[Any], tokenizer: Any, *, thinking: bool) -> list[dict[str, Any]]:
    """TRL's prompt/chosen/rejected text for each pair (plus id and subject)."""
    from distill.data.prompts import apply_chat_template

    eos = tokenizer.eos_token
    if not eos:
        raise ConfigError("the student's tokenizer has no eos token; ORPO completions must end with one")
    rows = []
    for pair in pairs:
        rows.append(
            {
                "id": pair.id,
                "subject": pair.subject,
                "prompt": apply_chat_template(tokenizer, [dict(m) for m in pair.messages], thinking=thinking),
                "chosen": completion_text(pair.chosen, thinking=thinking, eos_token=eos),
                "rejected": completion_text(pair.rejected, thinking=thinking, eos_token=eos),
            }
        )
    return rows


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_completion_tokens(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(context ids, completion ids) as TRL forms them: `prompt + completion` tokenized as one
    string, cut where the prompt's own tokens stop matching (a merge across the boundary moves
    the cut one token left)."""
    prompt_ids = _encode(tokenizer, prompt)
    full = _encode(tokenizer, prompt + completion)
    cut = 0
    while cut < min(len(prompt_ids), len(full)) and prompt_ids[cut] == full[cut]:
        cut += 1
    return full[:cut], full[cut:]


def measure_lengths(rows: Sequence[dict[str, Any]], tokenizer: Any) -> list[tuple[int, int]]:
    """(prompt tokens, prompt + longer completion tokens) per row."""
    lengths = []
    for row in rows:
        prompt_len = len(_encode(tokenizer, row["prompt"]))
        total = max(
            sum(map(len, split_completion_tokens(tokenizer, row["prompt"], row[side]))) for side in ("chosen", "rejected")
        )
        lengths.append((prompt_len, total))
    return lengths


def handle_overlong(
    rows: Sequence[dict[str, Any]],
    lengths: Sequence[tuple[int, int]],
    *,
    max_length: int,
    max_prompt_length: int,
    mode: str,
) -> tuple[list[dict[str, Any]], OverlongReport]:
    """Rows to train on, and what was over a limit (dropped or left for truncation)."""
    report = OverlongReport(
        max_prompt_tokens=max((p for p, _ in lengths), default=0),
        max_total_tokens=max((t for _, t in lengths), default=0),
    )
    kept = []
    for row, (prompt_len, total) in zip(rows, lengths):
        if prompt_len > max_prompt_length or total > max_length:
            report.n_overlong += 1
            report.ids.append(str(row["id"]))
            if mode == "drop":
                report.n_dropped += 1
                continue
            report.n_truncated += 1
        kept.append(row)
    return kept, report


def preference_metrics(chosen_logps: Sequence[float], rejected_logps: Sequence[float]) -> dict[str, float]:
    """Preference accuracy (chosen more likely than rejected) and mean margin, per-token average log-probs."""
    if not chosen_logps:
        return {}
    margins = [c - r for c, r in zip(chosen_logps, rejected_logps)]
    return {
        "reward_accuracy": sum(1 for m in margins if m > 0) / len(margins),
        "margin": sum(margins) / len(margins),
        "chosen_logp": sum(chosen_logps) / len(chosen_logps),
        "rejected_logp": sum(rejected_logps) / len(rejected_logps),
    }


def dev_items(pairs: Sequence[Any]) -> list[Any]:
    """The dev pairs' problems, once each, with the pair's gold as the answer."""
    seen: set[str] = set()
    items = []
    for pair in pairs:
        problem = pair.problem
        if problem is None or problem.id in seen:
            continue
        seen.add(problem.id)
        items.append(problem if problem.answer is not None else dataclasses.replace(problem, answer=pair.gold))
    return items


def eval_cache_key(*, student: str, student_path: str, items_digest: str, thinking: str, load_in_4bit: bool, dtype: str) -> str:
    """Hash of everything that decides the base model's eval predictions."""
    from distill.data import prompts

    config_text = ""
    config_file = Path(student_path) / "config.json"
    if config_file.is_file():
        config_text = config_file.read_text(encoding="utf-8")
    payload = {
        "version": EVAL_CACHE_VERSION,
        "student": student,
        "student_path": student_path,
        "model_config_sha": hashlib.sha256(config_text.encode("utf-8")).hexdigest(),
        "items": items_digest,
        "scoring": "logits",
        "thinking": thinking,
        "load_in_4bit": bool(load_in_4bit),
        "dtype": dtype,
        "prompts": hashlib.sha256(
            (prompts.SYSTEM_PROMPT + prompts.ANSWER_INSTRUCTION_DIRECT + prompts.ANSWER_PREFIX).encode("utf-8")
        ).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:24]


# --------------------------------------------------------------------------------------------
# Model work (torch inside)


def completion_logps(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    side: str,
    max_length: int,
    max_prompt_length: int,
    batch_size: int = 8,
) -> list[float]:
    """Average per-token log-prob of each row's `side` completion given its prompt (ORPO's
    `logps`), with the same truncation as training."""
    import torch

    sequences: list[tuple[list[int], list[int]]] = []
    for row in rows:
        context, completion = split_completion_tokens(tokenizer, row["prompt"], row[side])
        context = context[-max_prompt_length:]
        completion = completion[: max(1, max_length - len(context))]
        sequences.append((context, completion))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start:start + batch_size]
                width = max(len(c) + len(x) for c, x in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, (context, completion) in enumerate(batch):
                    seq = context + completion
                    ids[i, : len(seq)] = torch.tensor(seq)
                    mask[i, : len(seq)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
                for i, (context, completion) in enumerate(batch):
                    start_pos = len(context)
                    # token t is predicted at position t - 1
                    row_logits = logits[i, start_pos - 1 : start_pos - 1 + len(completion)].float()
                    logprobs = torch.log_softmax(row_logits, dim=-1)
                    targets = torch.tensor(completion, device=logprobs.device)
                    results.append(float(logprobs.gather(1, targets[:, None]).mean()))
    finally:
        if was_training:
            model.train()
    return results


def dev_metrics(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], items: Sequence[Any], cfg: TrainConfig) -> dict[str, float]:
    """Preference metrics on the dev pairs and MCQ metrics on their problems (no prefix)."""
    from distill.evaluation import evaluate_items

    metrics: dict[str, float] = {"n_pairs": float(len(rows))}
    if rows:
        kwargs = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, batch_size=cfg.eval_batch_size)
        chosen = completion_logps(model, tokenizer, rows, side="chosen", **kwargs)
        rejected = completion_logps(model, tokenizer, rows, side="rejected", **kwargs)
        metrics.update(preference_metrics(chosen, rejected))
    if items:
        result = evaluate_items(model, tokenizer, items, thinking=cfg.thinking, batch_size=cfg.eval_batch_size, progress=False)
        metrics["accuracy"] = result.metrics["eval/accuracy"]
        metrics["macro_f1"] = result.metrics["eval/macro_f1"]
        metrics["n_items"] = float(len(items))
    return metrics


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch`/torchrun, (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def decide_backend(cfg: TrainConfig) -> Backend:
    """`resolve_backend` on this machine; imports Unsloth (first, before transformers) when chosen."""
    import torch

    cuda = torch.cuda.is_available()
    _, world_size = distributed_rank()
    use_unsloth = cfg.use_unsloth
    if world_size > 1 and use_unsloth == "auto":
        use_unsloth = "false"  # Unsloth's open-source release trains on one GPU only
    backend = resolve_backend(
        cfg.load_in_4bit, use_unsloth, cuda=cuda, has_bitsandbytes=_has_module("bitsandbytes"), has_unsloth=cuda and _has_module("unsloth")
    )
    if world_size > 1:
        # Each process trains on its own GPU (LOCAL_RANK); the Trainer wraps the model in DDP.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}" if cuda else "cpu"
        notes = backend.notes + (f"distributed: {world_size} processes",)
        if cfg.use_unsloth == "auto":
            notes = tuple(n for n in notes if not n.startswith("unsloth")) + ("unsloth off: several processes",)
        backend = dataclasses.replace(backend, device=device, notes=notes)
    if backend.use_unsloth:
        try:
            import unsloth  # noqa: F401  (patches transformers/TRL; must come before them)
        except Exception as exc:
            if cfg.use_unsloth == "true":
                raise ConfigError(f"use_unsloth=true but Unsloth failed to import: {exc}") from None
            fallback = resolve_backend(cfg.load_in_4bit, "false", cuda=cuda, has_bitsandbytes=_has_module("bitsandbytes"), has_unsloth=False)
            notes = tuple(n for n in fallback.notes if not n.startswith("unsloth")) + (f"unsloth off: import failed ({type(exc).__name__})",)
            return dataclasses.replace(fallback, notes=notes)
    return backend


def load_for_training(cfg: TrainConfig, backend: Backend, student_path: str):
    """(model, tokenizer, peft_config): a PeftModel already (Unsloth, peft_config None) or the base
    model and a LoraConfig for TRL to apply (after prepare_model_for_kbit_training when 4-bit)."""
    target = parse_target_modules(cfg.target_modules)
    if backend.use_unsloth:
        from unsloth import FastLanguageModel  # GPU only; imported here and nowhere else

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=student_path, max_seq_length=cfg.max_length, dtype=None, load_in_4bit=backend.load_in_4bit
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=UNSLOTH_ALL_LINEAR if target == "all-linear" else target,
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=cfg.seed,
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer, None

    from peft import LoraConfig

    from distill.models import load_student

    model, tokenizer = load_student(
        cfg.student, device=backend.device, dtype=cfg.dtype, load_in_4bit=backend.load_in_4bit, for_training=True
    )
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return model, tokenizer, lora


def train_orpo(
    cfg: TrainConfig,
    backend: Backend,
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    rows: Sequence[dict[str, Any]],
    work_dir: Path,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Run ORPO on `rows` and save the adapter into `work_dir/adapter`."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO lives in trl.experimental on purpose
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import ProgressCallback
    from trl.experimental.orpo import ORPOConfig

    from distill.orpo_trainer import MlflowStepCallback, NonFiniteLossCallback, QuietProgressCallback, SafeORPOTrainer

    from distill.models import pick_dtype

    cuda = backend.device == "cuda"
    dtype = pick_dtype(backend.device, cfg.dtype)  # the compute dtype the model was loaded with
    args = ORPOConfig(
        output_dir=str(work_dir / "trainer"),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        beta=cfg.beta,
        max_length=cfg.max_length,
        disable_dropout=False,  # True would also zero the LoRA dropout asked for
        remove_unused_columns=False,
        logging_nan_inf_filter=False,  # a NaN must reach NonFiniteLossCallback, not be averaged away
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        gradient_checkpointing=cuda,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows])
    step_logger = MlflowStepCallback()
    trainer = SafeORPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[step_logger, NonFiniteLossCallback(), *callbacks],
        max_prompt_length=cfg.max_prompt_length,
        prompt_loss=cfg.prompt_loss,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgressCallback())
    started = time.perf_counter()
    output = trainer.train()
    runtime = time.perf_counter() - started
    adapter_dir = work_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    losses = [h["train/loss"] for h in step_logger.history if "train/loss" in h]
    final_loss = losses[-1] if losses else float(output.training_loss)
    result = TrainResult(adapter_dir=adapter_dir, global_step=int(trainer.state.global_step), final_loss=final_loss, history=step_logger.history, runtime_s=runtime)
    del trainer
    return result


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def base_eval_cached(model: Any, tokenizer: Any, items: Sequence[Any], *, key: str, cfg: TrainConfig):
    """(EvalResult, cache hit?, cache file) of the base model: the adapter disabled on `model`."""
    import pandas as pd

    from distill.evaluation import evaluate_items, result_from_predictions
    from distill.io import atomic_path
    from distill.paths import distill_home

    path = distill_home() / "eval_cache" / f"{key}.parquet"
    if path.is_file():
        return result_from_predictions(pd.read_parquet(path)), True, path
    with model.disable_adapter():
        result = evaluate_items(model, tokenizer, items, thinking=cfg.thinking, batch_size=cfg.eval_batch_size, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        result.predictions.to_parquet(tmp, index=False)
    return result, False, path


# --------------------------------------------------------------------------------------------
# MLflow edges


def _log_training_data(rows, dev_rows, pairset, folder: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        # MLflow warns that a local path "can be interpreted in multiple ways" (all of them local).
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        _log_training_data_inputs(rows, dev_rows, pairset, folder)


def _log_training_data_inputs(rows, dev_rows, pairset, folder: Path) -> None:
    import mlflow
    import pandas as pd

    from distill.io import write_jsonl

    frame = pd.DataFrame([{k: row[k] for k in ("id", "subject", "prompt", "chosen", "rejected")} for row in rows])
    source = pairset.source if not Path(pairset.source).exists() else str(Path(pairset.path).resolve())
    try:
        dataset = mlflow.data.from_pandas(frame, source=source, name=f"pairs-train:{Path(str(pairset.path)).stem}")
    except Exception:  # a source string MLflow cannot resolve (some URI schemes): keep the path
        dataset = mlflow.data.from_pandas(frame, source=str(pairset.path), name=f"pairs-train:{Path(str(pairset.path)).stem}")
    mlflow.log_input(dataset, context="training")
    if dev_rows:
        dev_frame = pd.DataFrame([{k: row[k] for k in ("id", "subject", "prompt", "chosen", "rejected")} for row in dev_rows])
        mlflow.log_input(mlflow.data.from_pandas(dev_frame, source=str(pairset.path), name="pairs-dev"), context="dev")
    if Path(pairset.path).is_file():
        mlflow.log_artifact(str(pairset.path), "pairs")
    else:
        mlflow.log_artifacts(str(pairset.path), "pairs")
    write_jsonl(folder / "train_rows.jsonl", rows)
    write_jsonl(folder / "dev_rows.jsonl", dev_rows)
    mlflow.log_artifact(str(folder / "train_rows.jsonl"), "data")
    mlflow.log_artifact(str(folder / "dev_rows.jsonl"), "data")


def _log_eval_items(items, cfg: TrainConfig) -> None:
    import warnings

    import mlflow
    import pandas as pd

    from distill.data.loaders import items_digest

    frame = pd.DataFrame(
        [
            {"id": i.id, "subject": i.subject, "paragraph": i.paragraph, "question": i.question, "question_plus": i.question_plus,
             "choices": json.dumps(list(i.choices), ensure_ascii=False), "answer": i.answer, "source": i.source}
            for i in items
        ]
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_pandas(frame, source=str(cfg.eval_dataset), targets="answer", name=Path(str(cfg.eval_dataset)).stem, digest=items_digest(items)[:20])
    mlflow.log_input(dataset, context="eval")


def _log_adapter_model(adapter_dir: Path, model_config: dict[str, Any]):
    import importlib.metadata as md

    import mlflow

    from distill import __version__
    from distill.adapter_model import ARTIFACT_KEY, AdapterModel

    def pinned(package: str) -> str:
        try:
            return f"{package}=={md.version(package)}"
        except md.PackageNotFoundError:
            return package

    requirements = [f"distill=={__version__}"] + [pinned(p) for p in ("torch", "transformers", "peft", "mlflow", "pandas", "tokenizers", "safetensors")]
    if model_config.get("base_load_in_4bit"):
        requirements.append(pinned("bitsandbytes"))
    metadata = dict(model_config)
    return mlflow.pyfunc.log_model(
        name="adapter",
        python_model=AdapterModel(),
        artifacts={ARTIFACT_KEY: str(adapter_dir)},
        model_config=model_config,
        metadata={"distill": metadata},
        pip_requirements=requirements,
    )


# --------------------------------------------------------------------------------------------
# The stage


def dev_curve_callback(tokenizer: Any, dev_rows: Sequence[dict[str, Any]], dev_problems: Sequence[Any], cfg: TrainConfig, on_dev_eval=None):
    """A TrainerCallback that measures the dev split on the model being trained every
    `cfg.dev_eval_steps` optimizer steps: logs `dev_curve/<name>` at that step (not `dev/*`,
    whose final values are logged at step 0 and would no longer be the latest) and calls
    `on_dev_eval(step, metrics)`; an exception it raises (a sweep's `optuna.TrialPruned`)
    stops training and leaves `run`."""
    from transformers import TrainerCallback

    class DevCurveCallback(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            import mlflow

            step = int(state.global_step)
            if not cfg.dev_eval_steps or step % cfg.dev_eval_steps:
                return
            metrics = dev_metrics(model, tokenizer, dev_rows, dev_problems, cfg)
            if mlflow.active_run() is not None:
                mlflow.log_metrics({f"dev_curve/{k}": v for k, v in metrics.items()}, step=step)
            if on_dev_eval is not None:
                on_dev_eval(step, metrics)

    return DevCurveCallback()


def run(cfg: TrainConfig, *, on_dev_eval=None, run_tags: dict[str, str] | None = None) -> TrainOutputs:
    """Train, log, evaluate, compare, summarise (see the module docstring).

    `on_dev_eval(step, metrics)`, when given, is called after each intermediate dev measurement
    (every `cfg.dev_eval_steps` steps; metrics named as in `dev_metrics`, without prefix); an
    exception it raises ends the run (its MLflow run is then marked FAILED). `run_tags` are set
    on the MLflow run when it starts (a sweep links trials to its parent with them)."""
    started = time.perf_counter()
    backend = decide_backend(cfg)  # first: Unsloth must be imported before transformers

    import mlflow
    from transformers import AutoTokenizer

    from distill import tracking
    from distill.data.loaders import items_digest, load_items
    from distill.evaluation import compare_predictions, evaluate_items, log_comparison, log_eval_result, summary_text
    from distill.models import load_student, pick_dtype, resolve_model_path
    from distill.pairs import load_pairs, select_pairs
    from distill.tiny_qwen3 import parse_tiny_name

    # Everything that can be wrong with the input fails here, before a run or a model exists.
    pairset = load_pairs(cfg.pairs)
    train_pairs, dev_pairs = select_pairs(pairset.pairs, n_pairs=cfg.n_pairs, dev_fraction=cfg.dev_fraction, seed=cfg.seed)
    eval_items = load_items(cfg.eval_dataset, cfg.eval_format, require_answer=True)
    if not eval_items:
        raise ConfigError(f"eval_dataset {cfg.eval_dataset} has no items")
    student_path = resolve_model_path(cfg.student)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    thinking = cfg.thinking == "on"
    rows = preference_rows(train_pairs, tokenizer, thinking=thinking)
    dev_rows = preference_rows(dev_pairs, tokenizer, thinking=thinking)
    rows, overlong = handle_overlong(rows, measure_lengths(rows, tokenizer), max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, mode=cfg.overlong)
    if not rows:
        raise ConfigError(
            f"all {overlong.n_dropped} training pairs are over the limits (longest prompt {overlong.max_prompt_tokens} "
            f"tokens, longest pair {overlong.max_total_tokens}); raise max_length/max_prompt_length or use overlong=truncate"
        )
    dev_problems = dev_items(dev_pairs)
    dtype_name = str(pick_dtype(backend.device, cfg.dtype)).replace("torch.", "")

    rank, world_size = distributed_rank()
    if rank != 0:
        # Under `accelerate launch` every process trains its shard of each batch (DDP), but only
        # rank 0 opens the MLflow run, saves the adapter, evaluates and logs.
        model, train_tokenizer, peft_config = load_for_training(cfg, backend, student_path)
        train_orpo(cfg, backend, model, train_tokenizer, peft_config, rows, Path(cfg.output_dir) / f"rank{rank}")
        del model
        free_memory()
        return None  # type: ignore[return-value]

    tracking.configure(cfg.experiment, "train")
    with tracking.start_run(run_name=f"train {Path(cfg.student).name} orpo", tags=run_tags) as active:
        run_id = active.info.run_id
        run_dir = Path(cfg.output_dir) / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        params = tracking.safe_params(cfg)
        params.update(
            {
                "student_path": student_path,
                "pairs_path": str(pairset.path),
                "backend": backend.name,
                "load_in_4bit_resolved": backend.load_in_4bit,
                "use_unsloth_resolved": backend.use_unsloth,
                "dtype_resolved": dtype_name,
                "n_train_pairs": len(rows),
                "n_dev_pairs": len(dev_rows),
            }
        )
        tracking.log_params(params)
        mlflow.set_tags(
            {
                "distill.stage": "train",
                "distill.student": cfg.student,
                "train/backend": backend.name,
                "train/backend_notes": "; ".join(backend.notes) or "-",
                "train/device": backend.device,
                "train/thinking": cfg.thinking,
                "dev.reward_accuracy.definition": "share of dev pairs whose chosen has a higher per-token average log-prob than rejected",
                "dev.margin.definition": "mean over dev pairs of (chosen - rejected) per-token average log-prob",
                "dev.accuracy.average": "micro (over the dev pairs' problems)",
            }
        )
        mlflow.log_metrics(
            {
                "data/n_pairs_loaded": len(pairset.pairs),
                "data/n_train": len(rows),
                "data/n_dev": len(dev_rows),
                "data/n_overlong": overlong.n_overlong,
                "data/n_dropped": overlong.n_dropped,
                "data/n_truncated": overlong.n_truncated,
                "data/max_prompt_tokens": overlong.max_prompt_tokens,
                "data/max_total_tokens": overlong.max_total_tokens,
            }
        )
        _log_training_data(rows, dev_rows, pairset, run_dir / "data")
        _log_eval_items(eval_items, cfg)
        print(f"train: backend {backend.name} ({'; '.join(backend.notes) or 'all features on'}); {len(rows)} pairs, {len(dev_rows)} dev")

        model, train_tokenizer, peft_config = load_for_training(cfg, backend, student_path)
        extra_callbacks = [dev_curve_callback(train_tokenizer, dev_rows, dev_problems, cfg, on_dev_eval)] if cfg.dev_eval_steps and dev_rows else []
        result = train_orpo(cfg, backend, model, train_tokenizer, peft_config, rows, run_dir, callbacks=extra_callbacks)
        del model, train_tokenizer
        free_memory()

        # Reload the saved adapter exactly as later stages will, and measure everything on it.
        model, tokenizer = load_student(cfg.student, adapter=str(result.adapter_dir), device=backend.device, dtype=cfg.dtype, load_in_4bit=backend.load_in_4bit)
        dev = dev_metrics(model, tokenizer, dev_rows, dev_problems, cfg)
        with model.disable_adapter():
            dev_base = dev_metrics(model, tokenizer, dev_rows, dev_problems, cfg)
        metrics: dict[str, float] = {f"dev/{k}": v for k, v in dev.items()}
        metrics.update({f"base_dev/{k}": v for k, v in dev_base.items()})
        mlflow.log_metrics(metrics)

        adapter_eval = evaluate_items(model, tokenizer, eval_items, thinking=cfg.thinking, batch_size=cfg.eval_batch_size, progress=True)
        key = eval_cache_key(student=cfg.student, student_path=student_path, items_digest=items_digest(eval_items), thinking=cfg.thinking, load_in_4bit=backend.load_in_4bit, dtype=dtype_name)
        base_eval, cache_hit, cache_file = base_eval_cached(model, tokenizer, eval_items, key=key, cfg=cfg)
        log_eval_result(adapter_eval, prefix="eval", artifact_dir="evaluation", local_dir=run_dir / "evaluation")
        log_eval_result(base_eval, prefix="base", artifact_dir="evaluation_base", local_dir=run_dir / "evaluation_base")
        mlflow.set_tags({"base.cache": "hit" if cache_hit else "miss", "base.cache_file": str(cache_file)})
        comparison = compare_predictions(base_eval.predictions, adapter_eval.predictions, n_boot=cfg.bootstrap_samples, seed=cfg.seed)
        log_comparison(comparison, base_eval.predictions, adapter_eval.predictions, base_label="base", new_label="adapter", n_boot=cfg.bootstrap_samples, seed=cfg.seed, local_dir=run_dir / "comparison")
        metrics.update(adapter_eval.metrics)
        metrics.update({"base/" + k[len("eval/"):]: v for k, v in base_eval.metrics.items()})
        metrics.update(comparison)

        tiny_seed = parse_tiny_name(cfg.student)
        # pyfunc also logs model_config as run params: these names must not clash with the config's.
        model_config = {
            "base_model": cfg.student,
            "base_model_path": student_path,
            "base_model_seed": tiny_seed,
            "base_load_in_4bit": backend.load_in_4bit,
            "base_dtype": cfg.dtype,
            "scoring_thinking": cfg.thinking,
            "scoring_batch_size": cfg.eval_batch_size,
            "train_backend": backend.name,
        }
        (result.adapter_dir / "distill_adapter.json").write_text(json.dumps(model_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        info = _log_adapter_model(result.adapter_dir, model_config)
        model_uri = f"runs:/{run_id}/adapter"
        mlflow.set_tags({"train/model_uri": model_uri, "train/logged_model_uri": info.model_uri})
        mlflow.log_metrics({"train/steps": result.global_step, "train/final_loss": result.final_loss, "train/wall_s": time.perf_counter() - started})
        wall_s = time.perf_counter() - started
        summary = summary_lines(
            cfg=cfg, backend=backend, n_loaded=len(pairset.pairs), n_train=len(rows), n_dev=len(dev_rows), overlong=overlong,
            result=result, dev=dev, dev_base=dev_base, adapter_eval=adapter_eval, base_eval=base_eval, comparison=comparison,
            cache_hit=cache_hit, run_id=run_id, model_uri=model_uri, wall_s=wall_s,
        )
        summary += "\n\n" + summary_text(adapter_eval, comparison, title="eval set, adapter vs base (per subject)", base_result=base_eval)
        from distill.io import write_text_atomic

        write_text_atomic(run_dir / "summary.txt", summary + "\n")
        mlflow.log_artifact(str(run_dir / "summary.txt"))
        del model
        free_memory()

    print()
    print(summary)
    return TrainOutputs(
        run_id=run_id, model_uri=model_uri, logged_model_uri=info.model_uri, adapter_dir=result.adapter_dir, backend=backend,
        n_train=len(rows), n_dev=len(dev_rows), overlong=overlong, steps=result.global_step, final_loss=result.final_loss,
        metrics=metrics, wall_s=wall_s, summary=summary,
    )


def summary_lines(*, cfg, backend, n_loaded, n_train, n_dev, overlong, result, dev, dev_base, adapter_eval, base_eval, comparison, cache_hit, run_id, model_uri, wall_s) -> str:
    """The closing screen of a train run."""

    def fmt(value: Any, spec: str = ".3f") -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    a, b = adapter_eval.metrics, base_eval.metrics
    lines = [
        f"train  {cfg.student} + LoRA r={cfg.lora_rank} α={cfg.lora_alpha}, ORPO λ={cfg.beta}, thinking {cfg.thinking}",
        f"backend  {backend.name} on {backend.device}" + (f"  ({'; '.join(backend.notes)})" if backend.notes else ""),
        f"pairs    {n_loaded} loaded → {n_train} train, {n_dev} dev; over-long {overlong.n_overlong} "
        f"({overlong.n_dropped} dropped, {overlong.n_truncated} truncated; longest {overlong.max_total_tokens} tokens)",
        f"steps    {result.global_step} in {result.runtime_s:.1f} s; final loss {fmt(result.final_loss)}",
    ]
    if n_dev:
        lines.append(
            f"dev      reward acc {fmt(dev_base.get('reward_accuracy'))} → {fmt(dev.get('reward_accuracy'))}, "
            f"margin {fmt(dev_base.get('margin'), '+.3f')} → {fmt(dev.get('margin'), '+.3f')}, "
            f"MCQ acc {fmt(dev_base.get('accuracy'))} → {fmt(dev.get('accuracy'))}, "
            f"macro-F1 {fmt(dev_base.get('macro_f1'))} → {fmt(dev.get('macro_f1'))}  (base → adapter)"
        )
    lines.append(
        f"eval     {Path(str(cfg.eval_dataset)).name} ({int(a['eval/n'])} items): accuracy {fmt(b['eval/accuracy'])} → "
        f"{fmt(a['eval/accuracy'])}, Δ {fmt(comparison['compare/delta_accuracy'], '+.3f')} "
        f"[{fmt(comparison['compare/delta_ci_low'], '+.3f')}, {fmt(comparison['compare/delta_ci_high'], '+.3f')}], "
        f"McNemar p={fmt(comparison['compare/mcnemar_p'], '.3g')}  (base {'from cache' if cache_hit else 'scored now'})"
    )
    lines.append(f"run      {run_id}  ·  model {model_uri}  ·  {wall_s:.1f} s")
    return "\n".join(lines)
