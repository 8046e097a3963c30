"""The preference losses `train` offers (`method`): ORPO, DPO (with RPO's NLL term), SimPO, SFT.

All four are computed from the same per-pair quantities, produced by one forward pass of chosen
and rejected (`distill.preference_trainer.PreferenceTrainer`): the average and the summed
per-token log-probability of each completion under the policy, and the NLL of the chosen
completion (`nll`, per-token mean; chosen completion only unless `prompt_loss`). `total_loss`
combines them per method; `LossSpec` holds a method's hyperparameters.

- orpo  (Hong et al. 2024): nll - mean(λ · logsigmoid(log_odds)), log_odds the odds ratio of the
        *average* log-probs below; rewards λ · avg logp (TRL's). No reference model.
- dpo   (Rafailov et al. 2023; RPO, Pang et al. 2024, adds the NLL): mean(-logsigmoid(β · ((c - c_ref)
        - (r - r_ref)))) + rpo_alpha · nll, c/r the *summed* log-probs; the reference is the base
        model, i.e. the same weights with the LoRA adapter disabled (no second copy in memory);
        rewards β · (logp - logp_ref).
- simpo (Meng et al. 2024; CPO-SimPO adds the NLL): mean(-logsigmoid(β · (c - r) - γ)) + cpo_alpha · nll,
        c/r the *average* log-probs (length-normalised), γ the target reward margin; no reference;
        rewards β · avg logp. The same as TRL's CPOTrainer with loss_type="simpo".
- sft   : nll only (the rejected completion is forwarded but only measured: the same train/*
        figures are logged for every method); rewards avg logp.

ORPO's odds-ratio term, kept finite when the policy is very confident:

ORPO (Hong et al. 2024, eq. 4 and 7) compares the odds of the chosen and rejected completions:

    log_odds = (lp_c - lp_r) - (log(1 - exp(lp_c)) - log(1 - exp(lp_r)))
    loss_or  = -beta * log(sigmoid(log_odds))

where lp is the *average* per-token log-probability of a completion. When the policy is very
confident, lp rounds to 0 (or to -1e-9) in float32 and `log(1 - exp(lp))` is log(0) = -inf:
the pinned TRL (1.15) computes it with `torch.where(x < -ln2, log1p(-exp(x)), log(-expm1(x)))`,
which gives an infinite value at lp = 0, and NaN gradients for lp close to 0 because the branch
`torch.where` discards still evaluates log1p(-1) = -inf and its gradient (inf * 0 = NaN) leaks
through. Short completions (one label token and eos) reach that regime within a few steps.

`safe_log1mexp` fixes both: lp is clamped to at most -eps (a completion is never treated as more
likely than 1 - eps per token, eps = 1e-5), and each branch of the `where` only ever sees inputs
on which it is finite, so neither value nor gradient can be inf or NaN. Past the clamp the term
has zero gradient; the `lp_c - lp_r` part keeps its gradient. Nothing changes for lp < -eps
other than rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LOG1MEXP_EPS = 1e-5
"""Largest per-token probability the odds term may assume is 1 - LOG1MEXP_EPS."""

_LN_HALF = -math.log(2.0)


def safe_log1mexp(x: Any, eps: float = LOG1MEXP_EPS) -> Any:
    """log(1 - exp(x)) for x <= 0, finite in value and gradient everywhere (x clamped to <= -eps)."""
    import torch

    x = x.float().clamp(max=-eps)
    far = x < _LN_HALF
    # Feed each branch a harmless stand-in where the other branch is chosen, so that neither
    # computes an inf whose gradient `where` would turn into NaN.
    x_far = torch.where(far, x, torch.full_like(x, -1.0))
    x_near = torch.where(far, torch.full_like(x, -0.5), x)
    return torch.where(far, torch.log1p(-torch.exp(x_far)), torch.log(-torch.expm1(x_near)))


def odds_ratio_terms(chosen_logps: Any, rejected_logps: Any, beta: float, eps: float = LOG1MEXP_EPS):
    """(losses, log_odds): per-example ORPO odds-ratio loss (to be *added*) and the log odds ratio.

    `losses = beta * logsigmoid(log_odds)` with TRL's sign convention: TRL's total loss is
    `nll - losses.mean()`, so a larger log odds ratio lowers the loss.
    """
    import torch.nn.functional as F

    chosen = chosen_logps.float()
    rejected = rejected_logps.float()
    log_odds = (chosen - rejected) - (safe_log1mexp(chosen, eps) - safe_log1mexp(rejected, eps))
    return beta * F.logsigmoid(log_odds), log_odds


METHODS = ("orpo", "dpo", "simpo", "sft")
"""The preference losses `train -P method=...` offers."""


@dataclass(frozen=True)
class LossSpec:
    """One method and its hyperparameters, as `total_loss` uses them."""

    method: str
    beta: float = 0.0
    """ORPO's λ, DPO's β, SimPO's β (unused by SFT)."""
    nll_weight: float = 1.0
    """Weight of the chosen completion's NLL: 1 for ORPO and SFT, rpo_alpha for DPO, cpo_alpha for SimPO."""
    gamma: float = 0.0
    """SimPO's target reward margin γ."""

    @property
    def needs_reference(self) -> bool:
        """DPO compares with the reference (the base: adapter disabled); the others do not."""
        return self.method == "dpo"


def total_loss(
    spec: LossSpec,
    *,
    nll: Any,
    chosen_avg: Any,
    rejected_avg: Any,
    chosen_sum: Any = None,
    rejected_sum: Any = None,
    ref_chosen_sum: Any = None,
    ref_rejected_sum: Any = None,
) -> tuple[Any, Any, Any]:
    """(loss, chosen_rewards, rejected_rewards) of one batch under `spec` (see the module's list).

    The rewards are each method's own implicit reward per pair, detached: they are what
    `rewards/*` report, so `rewards/accuracies` is the share of pairs the method itself ranks right."""
    import torch.nn.functional as F

    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    if spec.method == "orpo":
        losses, _ = odds_ratio_terms(chosen_avg, rejected_avg, spec.beta)
        loss = spec.nll_weight * nll - losses.mean()
        chosen, rejected = spec.beta * chosen_avg, spec.beta * rejected_avg
    elif spec.method == "dpo":
        if ref_chosen_sum is None or ref_rejected_sum is None:
            raise ValueError("dpo needs the reference model's summed log-probs")
        chosen = spec.beta * (chosen_sum.float() - ref_chosen_sum.float())
        rejected = spec.beta * (rejected_sum.float() - ref_rejected_sum.float())
        loss = -F.logsigmoid(chosen - rejected).mean() + spec.nll_weight * nll
    elif spec.method == "simpo":
        chosen, rejected = spec.beta * chosen_avg, spec.beta * rejected_avg
        loss = -F.logsigmoid(chosen - rejected - spec.gamma).mean() + spec.nll_weight * nll
    elif spec.method == "sft":
        loss = nll
        chosen, rejected = chosen_avg, rejected_avg
    else:
        raise ValueError(f"unknown method {spec.method!r}; expected one of {', '.join(METHODS)}")
    return loss, chosen.detach(), rejected.detach()
