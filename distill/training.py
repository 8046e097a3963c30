"""The training library behind the `train` stage: backend choice, TRL rows, ORPO, dev metrics.

- Backend: `resolve_backend` decides `unsloth`, `qlora` or `lora` from the two tri-state settings
  and what the machine has (pure); `decide_backend` asks the machine and imports Unsloth first
  when it is chosen (it patches transformers and TRL, so it must come before them).
- Rows: `preference_rows` renders each pair as TRL's prompt/chosen/rejected text: `prompt` is
  the chat-template text, `chosen`/`rejected` the completion text ending with the eos token (see
  *Thinking*); `measure_lengths` and `handle_overlong` count, drop or keep the pairs over the
  token limits (see *Over-long pairs*).
- Training: `load_for_training` (a PeftModel from Unsloth, or the base model and a LoraConfig
  for TRL) and `train_preference` (the config's `method`, ORPO, DPO, SimPO or SFT, through
  `distill.preference_trainer.PreferenceTrainer`; the adapter is saved to `work_dir/adapter`).
- Dev metrics: `completion_logps` (ORPO's per-token average log-prob, with training's
  truncation), `preference_metrics`, `dev_metrics` (preference and MCQ metrics of the dev split),
  `dev_curve_callback` (the same, during training, every N steps).

What reaches MLflow as metrics is bounded (a run's headline set, docs/design.md "MLflow
conventions"): of TRL's per-step figures the ones in TRAIN_STEP_METRICS (every one stays in the
run's `train_history.json`), of the dev figures the ones in `distill.eval_cache.DEV_METRICS`.

`train_preference` and `load_for_training` read many training settings, so they take the stage's
`TrainConfig` (imported for typing only); everything else takes explicit arguments.

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
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.errors import ConfigError

if TYPE_CHECKING:
    from distill.stages.train import TrainConfig

UNSLOTH_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""What `all-linear` means for Unsloth, whose get_peft_model wants explicit names."""
TRAIN_STEP_METRICS = (
    "loss",
    "nll_loss",
    "log_odds_ratio",
    "rewards/accuracies",
    "rewards/margins",
    "learning_rate",
    "grad_norm",
)
"""TRL's per-step figures logged as `train/*` metrics, the same for every method: the loss, the
chosen NLL and the odds ratio (measured whatever the loss), how often and by how much chosen
beats rejected by the method's own reward, and the optimizer's state. The others (log-probs,
logits, epoch, throughput) are in the run's `train_history.json`."""


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


# --------------------------------------------------------------------------------------------
# Backend


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
    return Backend(
        name=name, device="cuda" if cuda else "cpu", load_in_4bit=four_bit, use_unsloth=unsloth, notes=tuple(notes)
    )


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch`/torchrun, (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def decide_backend(load_in_4bit: str, use_unsloth: str) -> Backend:
    """`resolve_backend` on this machine; imports Unsloth (first, before transformers) when chosen.

    `load_in_4bit` and `use_unsloth` are the config's tri-state words (auto, true, false)."""
    import torch

    cuda = torch.cuda.is_available()
    _, world_size = distributed_rank()
    asked_unsloth = use_unsloth
    if world_size > 1 and use_unsloth == "auto":
        use_unsloth = "false"  # Unsloth's open-source release trains on one GPU only
    backend = resolve_backend(
        load_in_4bit,
        use_unsloth,
        cuda=cuda,
        has_bitsandbytes=_has_module("bitsandbytes"),
        has_unsloth=cuda and _has_module("unsloth"),
    )
    if world_size > 1:
        # Each process trains on its own GPU (LOCAL_RANK); the Trainer wraps the model in DDP.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}" if cuda else "cpu"
        notes = backend.notes + (f"distributed: {world_size} processes",)
        if asked_unsloth == "auto":
            notes = tuple(n for n in notes if not n.startswith("unsloth")) + ("unsloth off: several processes",)
        backend = dataclasses.replace(backend, device=device, notes=notes)
    if backend.use_unsloth:
        try:
            import unsloth  # noqa: F401  (patches transformers/TRL; must come before them)
        except Exception as exc:
            if asked_unsloth == "true":
                raise ConfigError(f"use_unsloth=true but Unsloth failed to import: {exc}") from None
            fallback = resolve_backend(
                load_in_4bit, "false", cuda=cuda, has_bitsandbytes=_has_module("bitsandbytes"), has_unsloth=False
            )
            notes = tuple(n for n in fallback.notes if not n.startswith("unsloth")) + (
                f"unsloth off: import failed ({type(exc).__name__})",
            )
            return dataclasses.replace(fallback, notes=notes)
    return backend


# --------------------------------------------------------------------------------------------
# Rows for TRL and over-long pairs


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
            sum(map(len, split_completion_tokens(tokenizer, row["prompt"], row[side])))
            for side in ("chosen", "rejected")
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
    """Rows to train on, and what was over a limit (dropped, or left for truncation: mode `truncate`)."""
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


# --------------------------------------------------------------------------------------------
# Dev metrics


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
                batch = sequences[start : start + batch_size]
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


def dev_metrics(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    items: Sequence[Any],
    *,
    thinking: bool | str,
    max_length: int,
    max_prompt_length: int,
    batch_size: int,
) -> dict[str, float]:
    """Preference metrics on the dev pairs and MCQ metrics on their problems (no prefix).

    `max_length`/`max_prompt_length` truncate as training does; `batch_size` is per forward pass."""
    from distill.evaluation import evaluate_items

    metrics: dict[str, float] = {"n_pairs": float(len(rows))}
    if rows:
        kwargs = dict(max_length=max_length, max_prompt_length=max_prompt_length, batch_size=batch_size)
        chosen = completion_logps(model, tokenizer, rows, side="chosen", **kwargs)
        rejected = completion_logps(model, tokenizer, rows, side="rejected", **kwargs)
        metrics.update(preference_metrics(chosen, rejected))
    if items:
        result = evaluate_items(model, tokenizer, items, thinking=thinking, batch_size=batch_size, progress=False)
        metrics["accuracy"] = result.metrics["eval/accuracy"]
        metrics["macro_f1"] = result.metrics["eval/macro_f1"]
        metrics["n_items"] = float(len(items))
    return metrics


def dev_curve_callback(measure: Callable[[Any], dict[str, float]], every: int, on_dev_eval=None):
    """A TrainerCallback that calls `measure(model)` on the model being trained every `every`
    optimizer steps: logs the headline dev figures as `dev/<name>` at that step on the active run
    (the train stage logs the final ones at the last step, so they stay the latest and the
    curve is one chart per figure) and calls `on_dev_eval(step, metrics)`; an exception it
    raises (a sweep's `optuna.TrialPruned`) stops training."""
    from transformers import TrainerCallback

    from distill import tracking
    from distill.eval_cache import DEV_METRICS

    class DevCurveCallback(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = int(state.global_step)
            if not every or step % every:
                return
            metrics = measure(model)
            if tracking.active_run_id() is not None:
                tracking.log_metrics({f"dev/{k}": v for k, v in metrics.items() if k in DEV_METRICS}, step=step)
            if on_dev_eval is not None:
                on_dev_eval(step, metrics)

    return DevCurveCallback()


# --------------------------------------------------------------------------------------------
# Training (torch, peft, TRL inside)


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


def train_preference(
    cfg: TrainConfig,
    backend: Backend,
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    rows: Sequence[dict[str, Any]],
    work_dir: Path,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train `rows` with `cfg.method` (`cfg.loss_spec`) and save the adapter into `work_dir/adapter`."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO lives in trl.experimental on purpose
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import ProgressCallback
    from trl.experimental.orpo import ORPOConfig

    from distill.models import pick_dtype
    from distill.preference_trainer import (
        MlflowStepCallback,
        NonFiniteLossCallback,
        PreferenceTrainer,
        QuietProgressCallback,
    )

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
    step_logger = MlflowStepCallback(keep=TRAIN_STEP_METRICS)
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[step_logger, NonFiniteLossCallback(), *callbacks],
        max_prompt_length=cfg.max_prompt_length,
        prompt_loss=cfg.prompt_loss,
        loss_spec=cfg.loss_spec,
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
    result = TrainResult(
        adapter_dir=adapter_dir,
        global_step=int(trainer.state.global_step),
        final_loss=final_loss,
        history=step_logger.history,
        runtime_s=runtime,
    )
    del trainer
    return result


def free_memory() -> None:
    """Collect garbage and hand cached GPU memory back, between loading one model and the next."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
