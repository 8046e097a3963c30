"""TRL's ORPOTrainer with the two changes distill needs, and the callbacks a training run uses.

Imported only inside `distill.training` (it imports torch, transformers and TRL at the top).

- `SafeORPOTrainer.odds_ratio_loss` uses `distill.orpo_loss.safe_log1mexp`, so the loss and its
  gradients stay finite when the policy is very confident (see that module).
- `SafeORPOTrainer.concatenated_forward` computes the NLL term on the chosen completion only
  (the paper's L_SFT) unless `prompt_loss=True` (TRL's choice: prompt + completion).
- `SafeORPOTrainer.tokenize_row` bounds the prompt at `max_prompt_length` tokens (keeping its
  end: the question, the choices and the assistant header) before the completion is cut to fit
  `max_length`. The pinned TRL has no prompt limit and cuts only the completion, so a long
  passage would leave no room for the answer.
- `NonFiniteLossCallback` stops the run with a DistillError at the first logged non-finite loss
  (the trainer is told not to hide them: `logging_nan_inf_filter=False`).
- `MlflowStepCallback` logs every logged dict to the *active* MLflow run under `train/`, keeping
  TRL's names (`train/loss`, `train/nll_loss`, `train/rewards/accuracies`, ...). transformers'
  own MLflowCallback is off (`report_to="none"`): it opens and ends runs by itself.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback
from trl.experimental.orpo import ORPOTrainer

from distill.errors import DistillError
from distill.orpo_loss import odds_ratio_terms

# The trainer's end-of-training summary keys, renamed so they do not collide with the per-step
# `loss` (`train_loss` is the mean over the whole run).
_SUMMARY_NAMES = {
    "train_loss": "mean_loss",
    "train_runtime": "runtime_s",
    "train_samples_per_second": "samples_per_second",
    "train_steps_per_second": "steps_per_second",
}
_WATCHED = ("loss", "nll_loss", "log_odds_ratio")


def truncate_tokenized_pair(batch: dict[str, list], max_prompt_length: int | None, max_length: int) -> dict[str, list]:
    """Bound one TRL-tokenized row: prompt to its last `max_prompt_length` tokens, then each
    completion to what fits in `max_length`.

    `batch` has TRL's keys (`prompt_input_ids`, `chosen_input_ids`, `chosen_labels`, ...); in a
    completion row the prompt part is the leading run of -100 labels.
    """
    out = dict(batch)
    if max_prompt_length and len(batch["prompt_input_ids"]) > max_prompt_length:
        for key in ("prompt_input_ids", "prompt_attention_mask"):
            out[key] = list(batch[key][-max_prompt_length:])
    for side in ("chosen", "rejected"):
        labels = list(batch[f"{side}_labels"])
        n_prompt = 0
        while n_prompt < len(labels) and labels[n_prompt] == -100:
            n_prompt += 1
        cut = max(0, n_prompt - max_prompt_length) if max_prompt_length else 0
        room = max(0, max_length - (n_prompt - cut))
        for key in ("input_ids", "attention_mask", "labels"):
            values = list(batch[f"{side}_{key}"])
            out[f"{side}_{key}"] = values[cut:n_prompt] + values[n_prompt:][:room]
    return out


class SafeORPOTrainer(ORPOTrainer):
    """ORPOTrainer with a finite odds-ratio term, a prompt-length bound and (unless
    `prompt_loss`) the NLL term on the chosen completion only. Same signature as TRL's plus
    `max_prompt_length` and `prompt_loss`; same logged metric names."""

    def __init__(self, *args: Any, max_prompt_length: int | None = None, prompt_loss: bool = False, **kwargs: Any):
        # tokenize_row runs inside ORPOTrainer.__init__, so the bound must exist before it.
        self.max_prompt_length = max_prompt_length
        self.prompt_loss = prompt_loss
        super().__init__(*args, **kwargs)

    def concatenated_forward(self, model, batch):
        """TRL's forward; unless `prompt_loss`, the NLL term is recomputed over the chosen
        completion's tokens only (the ORPO paper's L_SFT = -log P(y_w | x)). TRL's own NLL
        covers prompt + completion, which on long passages drowns the answer's few tokens."""
        outputs = super().concatenated_forward(model, batch)
        if self.prompt_loss or self.is_encoder_decoder:
            return outputs
        import torch.nn.functional as F
        from trl.experimental.utils import pad_to_length

        chosen_logits = outputs[2]  # (batch, length - 1, vocab): position t predicts token t + 1
        labels = pad_to_length(batch["chosen_labels"], chosen_logits.shape[1] + 1, pad_value=-100)[:, 1:]
        scored = (labels != -100).to(chosen_logits.device)
        if not bool(scored.any()):
            return (*outputs[:4], chosen_logits.sum() * 0.0, *outputs[5:])
        # Only the completion's positions: a (tokens, vocab) slice, not a copy of every position's
        # logits (with a 150k vocabulary and 4k-token prompts that copy is gigabytes).
        nll = F.cross_entropy(chosen_logits[scored].float(), labels.to(chosen_logits.device)[scored])
        return (*outputs[:4], nll, *outputs[5:])

    def tokenize_row(self, feature, model=None) -> dict:
        limit = self.max_length
        self.max_length = 1 << 30  # let TRL tokenize in full; truncate_tokenized_pair cuts it
        try:
            batch = super().tokenize_row(feature, model)
        finally:
            self.max_length = limit
        return truncate_tokenized_pair(batch, self.max_prompt_length, limit)

    def odds_ratio_loss(self, policy_chosen_logps, policy_rejected_logps):
        import torch

        losses, log_odds = odds_ratio_terms(policy_chosen_logps, policy_rejected_logps, self.beta)
        device = self.accelerator.device
        chosen_rewards = self.beta * policy_chosen_logps.float().to(device).detach()
        rejected_rewards = self.beta * policy_rejected_logps.float().to(device).detach()
        ratio = torch.nn.functional.logsigmoid(log_odds)  # logged as log_odds_ratio, as TRL does
        return losses, chosen_rewards, rejected_rewards, torch.mean(ratio), torch.mean(log_odds)


class NonFiniteLossCallback(TrainerCallback):
    """Stop at the first logged non-finite loss, with a message a user can act on."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in _WATCHED:
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise DistillError(
                    f"training loss became non-finite ({key}={value}) at step {state.global_step}: "
                    "lower learning_rate, or check the pairs for empty or over-long completions"
                )


class MlflowStepCallback(TrainerCallback):
    """Log the trainer's metrics to the active MLflow run, under `train/`, at the global step."""

    def __init__(self, keep: tuple[str, ...] | None = None) -> None:
        self.history: list[dict[str, float]] = []
        self.keep = keep
        """Names (without `train/`) sent to MLflow; None: all. The history keeps every one."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Only a stage's `run` opens an MLflow run (and imports mlflow); library use of
        # train_orpo (the GPU benchmark, on a machine without mlflow) keeps the history only.
        mlflow = sys.modules.get("mlflow")
        metrics: dict[str, float] = {}
        for key, value in (logs or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = _SUMMARY_NAMES.get(key, key)
            metrics[f"train/{name}"] = float(value)
        if metrics:
            self.history.append({"step": state.global_step, **metrics})
            if mlflow is not None and mlflow.active_run() is not None:
                shown = {k: v for k, v in metrics.items() if self.keep is None or k[len("train/") :] in self.keep}
                if shown:
                    mlflow.log_metrics(shown, step=state.global_step)


class QuietProgressCallback(ProgressCallback):
    """transformers' progress bar, showing the latest loss on the bar instead of printing
    every logged dict on its own line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {
                k: f"{logs[k]:.3g}" for k in ("loss", "rewards/accuracies") if isinstance(logs.get(k), (int, float))
            }
            if shown:
                self.training_bar.set_postfix(shown, refresh=False)
