"""Paired tests for "did the new model answer more items correctly than the base?"

Both models answer the same items, so the comparison is paired. Per item there are four cases;
only the discordant ones carry information:
- fixed  (c): base wrong, new right;
- broken (b): base right, new wrong.

McNemar's exact test: under H0 (no difference) every discordant item is fixed or broken with
probability 1/2, so min(b, c) is Binomial(b + c, 1/2); the two-sided p-value is
min(1, 2 * P(X <= min(b, c))). With no discordant item there is no evidence at all: p = 1.

Paired bootstrap of the accuracy difference: resample items with replacement and recompute
mean(new_correct - base_correct). That statistic depends only on how many resampled items are
fixed, broken or unchanged, so drawing those three counts from a multinomial is exactly the same
distribution as drawing item indices, in O(n_boot) memory instead of O(n_boot * n_items).

Non-inferiority (`noninferiority`, the register gate's guard sets): "the new model is not worse
than the base by more than a margin" holds when the lower bound of that paired CI is above
-margin. A guard asks for evidence of no harm, not for evidence of a gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def discordant_counts(base_correct: Sequence[bool], new_correct: Sequence[bool]) -> tuple[int, int]:
    """(n_fixed, n_broken): items only the new model got right, items only the base got right."""
    if len(base_correct) != len(new_correct):
        raise ValueError(f"{len(base_correct)} base results but {len(new_correct)} new results")
    fixed = sum(1 for b, n in zip(base_correct, new_correct) if not b and n)
    broken = sum(1 for b, n in zip(base_correct, new_correct) if b and not n)
    return fixed, broken


def mcnemar_exact_p(n_fixed: int, n_broken: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    if n_fixed < 0 or n_broken < 0:
        raise ValueError("counts must be non-negative")
    total = n_fixed + n_broken
    if total == 0:
        return 1.0
    smaller = min(n_fixed, n_broken)
    # Exact integer arithmetic, then one division: no underflow for large totals.
    tail = sum(math.comb(total, k) for k in range(smaller + 1))
    return min(1.0, 2 * tail / 2**total)


def paired_bootstrap_ci(
    base_correct: Sequence[bool],
    new_correct: Sequence[bool],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of accuracy(new) - accuracy(base) by resampling items (see module docstring)."""
    import numpy as np

    n = len(base_correct)
    if n == 0:
        return float("nan"), float("nan")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    fixed, broken = discordant_counts(base_correct, new_correct)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [fixed / n, broken / n, (n - fixed - broken) / n], size=n_boot)
    deltas = (counts[:, 0] - counts[:, 1]) / n
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(deltas, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_comparison(
    base_correct: Sequence[bool],
    new_correct: Sequence[bool],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """delta_accuracy, mcnemar_p, delta_ci_low/high, n_fixed, n_broken, n for one set of items."""
    n = len(base_correct)
    fixed, broken = discordant_counts(base_correct, new_correct)
    low, high = paired_bootstrap_ci(base_correct, new_correct, n_boot=n_boot, seed=seed)
    return {
        "delta_accuracy": (fixed - broken) / n if n else float("nan"),
        "mcnemar_p": mcnemar_exact_p(fixed, broken),
        "delta_ci_low": low,
        "delta_ci_high": high,
        "n_fixed": float(fixed),
        "n_broken": float(broken),
        "n": float(n),
    }


def noninferiority(
    base_correct: Sequence[bool],
    new_correct: Sequence[bool],
    *,
    margin: float,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Is the new model no worse than the base by more than `margin` (accuracy, paired)?

    The test of a guard set: non-inferior when the lower bound of the paired `confidence` CI of
    accuracy(new) - accuracy(base) (`paired_bootstrap_ci`, items resampled in pairs) is above
    `-margin`. With the same answers on every item the CI is [0, 0]: non-inferior for any margin
    >= 0. Returns delta_accuracy, delta_ci_low, delta_ci_high, n_fixed, n_broken, n, margin and
    non_inferior (1.0 or 0.0). An empty set is an error: no evidence is not "no worse"."""
    n = len(base_correct)
    if n == 0:
        raise ValueError("no items: non-inferiority needs at least one paired result")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    fixed, broken = discordant_counts(base_correct, new_correct)
    low, high = paired_bootstrap_ci(base_correct, new_correct, n_boot=n_boot, seed=seed, confidence=confidence)
    return {
        "delta_accuracy": (fixed - broken) / n,
        "delta_ci_low": low,
        "delta_ci_high": high,
        "n_fixed": float(fixed),
        "n_broken": float(broken),
        "n": float(n),
        "margin": float(margin),
        "non_inferior": 1.0 if low > -margin else 0.0,
    }
