"""ORPO's odds-ratio term, kept finite when the policy is very confident.

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
