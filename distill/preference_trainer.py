"""One trainer for every preference method, and the callbacks a training run uses.

Imported only inside `distill.training` (it imports torch, transformers and TRL at the top).

`PreferenceTrainer` is TRL's ORPOTrainer (its tokenization, one concatenated forward of chosen
and rejected, its logging) with the loss chosen by `method` (`distill.preference_loss`: ORPO,
DPO, SimPO, SFT). One trainer rather than TRL's four (DPOTrainer, experimental CPOTrainer for
SimPO, SFTTrainer) so that every method sees the same rows, the same prompt bound and
truncation, the same NLL term and logs the same `train/*` names: TRL's trainers differ in all
four (DPOTrainer has no prompt bound and different metric names, SFTTrainer has no rejected
side at all), and a comparison of methods would then compare data preparation too.

- `PreferenceTrainer.get_batch_loss_metrics`: the method's loss (`preference_loss.total_loss`)
  and the same metrics for every method. DPO's reference log-probs come from the same model
  with its LoRA adapter disabled (`disable_adapter()`, under no_grad), as TRL's DPOTrainer does
  for a PeftModel without `ref_model`: no second copy of the weights.
- ORPO's odds-ratio term is `distill.preference_loss.odds_ratio_terms` (with `safe_log1mexp`), so
  the loss and its gradients stay finite when the policy is very confident (see that module).
- `PreferenceTrainer.concatenated_forward` computes the NLL term on the chosen completion only
  (the paper's L_SFT) unless `prompt_loss=True` (TRL's choice: prompt + completion).
- `PreferenceTrainer.tokenize_row` bounds the prompt at `max_prompt_length` tokens (keeping its
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
from distill.preference_loss import LossSpec, odds_ratio_terms, total_loss

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


class PreferenceTrainer(ORPOTrainer):
    """ORPOTrainer with the loss of `loss_spec` (ORPO by default), a finite odds-ratio term, a
    prompt-length bound and (unless `prompt_loss`) the NLL term on the chosen completion only.
    Same signature as TRL's plus `max_prompt_length`, `prompt_loss` and `loss_spec`; the same
    logged metric names whatever the method."""

    def __init__(
        self,
        *args: Any,
        max_prompt_length: int | None = None,
        prompt_loss: bool = False,
        loss_spec: LossSpec | None = None,
        **kwargs: Any,
    ):
        # tokenize_row runs inside ORPOTrainer.__init__, so the bound must exist before it.
        self.max_prompt_length = max_prompt_length
        self.prompt_loss = prompt_loss
        super().__init__(*args, **kwargs)
        self.loss_spec = loss_spec or LossSpec("orpo", beta=self.beta)
        self.check_reference()

    def check_reference(self) -> None:
        """A method with a reference (DPO) takes it from the model with its adapter disabled."""
        model = self.accelerator.unwrap_model(self.model)
        if self.loss_spec.needs_reference and not hasattr(model, "disable_adapter"):
            raise DistillError("method=dpo takes its reference from the base with the adapter disabled: it needs LoRA")

    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        """The method's loss, and TRL's ORPO metrics (same names) for every method."""
        import torch

        outputs = self.concatenated_forward(model, batch)
        chosen_avg, rejected_avg, chosen_logits, rejected_logits, nll = outputs[:5]
        n_chosen, n_rejected = completion_token_counts(batch)
        ref = {}
        if self.loss_spec.needs_reference:
            ref_chosen, ref_rejected = self.reference_logps(model, batch)
            ref = {"ref_chosen_sum": ref_chosen * n_chosen, "ref_rejected_sum": ref_rejected * n_rejected}
        loss, chosen_rewards, rejected_rewards = total_loss(
            self.loss_spec,
            nll=nll,
            chosen_avg=chosen_avg,
            rejected_avg=rejected_avg,
            chosen_sum=chosen_avg * n_chosen.to(chosen_avg.device),
            rejected_sum=rejected_avg * n_rejected.to(rejected_avg.device),
            **{k: v.to(chosen_avg.device) for k, v in ref.items()},
        )
        if self.aux_loss_enabled:
            loss = loss + self.aux_loss_coef * outputs[5]
        # The odds ratio is measured for every method (a diagnostic with the same meaning everywhere).
        _, log_odds = odds_ratio_terms(chosen_avg.detach(), rejected_avg.detach(), 1.0)
        gather = self.accelerator.gather_for_metrics
        prefix = "eval_" if train_eval == "eval" else ""
        figures = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen_avg.detach(),
            "logps/rejected": rejected_avg.detach(),
            "logits/chosen": chosen_logits.detach().mean(),
            "logits/rejected": rejected_logits.detach().mean(),
            "nll_loss": nll.detach(),
            "log_odds_ratio": torch.nn.functional.logsigmoid(log_odds).mean(),
            "log_odds_chosen": log_odds.mean(),
        }
        return loss, {f"{prefix}{k}": gather(v).float().mean().item() for k, v in figures.items()}

    def reference_logps(self, model, batch):
        """Average completion log-probs under the reference: this model with its adapter disabled."""
        import torch

        base = self.accelerator.unwrap_model(model)  # no DDP wrapper: nothing to synchronise without gradients
        with torch.no_grad(), base.disable_adapter():
            chosen, rejected = ORPOTrainer.concatenated_forward(self, base, batch)[:2]
        return chosen.detach(), rejected.detach()

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


def completion_token_counts(batch) -> tuple[Any, Any]:
    """Scored tokens of each chosen and rejected completion (TRL's labels, shifted as its log-probs are)."""
    return tuple((batch[f"{side}_labels"][:, 1:] != -100).sum(-1) for side in ("chosen", "rejected"))


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
        # train_preference (the GPU benchmark, on a machine without mlflow) keeps the history only.
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
