"""McNemar exact test and the paired bootstrap against known values."""

from __future__ import annotations

import numpy as np
import pytest

from distill.stats import discordant_counts, mcnemar_exact_p, paired_bootstrap_ci, paired_comparison


def test_discordant_counts():
    base = [True, True, False, False, True]
    new = [True, False, True, True, True]
    assert discordant_counts(base, new) == (2, 1)  # fixed, broken


@pytest.mark.parametrize(
    "fixed, broken, expected",
    [
        (0, 0, 1.0),  # no discordant item: no evidence
        (3, 3, 1.0),
        (5, 0, 0.0625),  # 2 * 0.5**5
        (0, 5, 0.0625),
        (1, 9, 22 / 1024),  # 2 * (1 + 10) / 1024
        (10, 2, 158 / 4096),  # 2 * (1 + 12 + 66) / 4096
    ],
)
def test_mcnemar_exact_by_hand(fixed, broken, expected):
    assert mcnemar_exact_p(fixed, broken) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_exact_equals_scipy_binomtest():
    from scipy.stats import binomtest

    for fixed in range(0, 30, 3):
        for broken in range(0, 30, 4):
            if fixed + broken == 0:
                continue
            expected = binomtest(fixed, fixed + broken, 0.5, alternative="two-sided").pvalue
            assert mcnemar_exact_p(fixed, broken) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # large totals: exact integer arithmetic, no underflow to 0 or overflow
    assert mcnemar_exact_p(600, 400) == pytest.approx(binomtest(600, 1000, 0.5).pvalue, rel=1e-6)


def test_bootstrap_degenerate_cases():
    same = [True, False, True, False]
    assert paired_bootstrap_ci(same, same, n_boot=500) == (0.0, 0.0)
    # every item fixed: every resample has delta exactly +1
    assert paired_bootstrap_ci([False] * 7, [True] * 7, n_boot=500) == (1.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_observed_delta():
    rng = np.random.default_rng(1)
    base = (rng.random(300) < 0.6).tolist()
    new = [b or (r < 0.15) for b, r in zip(base, rng.random(300))]
    a = paired_bootstrap_ci(base, new, n_boot=2000, seed=7)
    b = paired_bootstrap_ci(base, new, n_boot=2000, seed=7)
    c = paired_bootstrap_ci(base, new, n_boot=2000, seed=8)
    assert a == b and a != c
    delta = np.mean(new) - np.mean(base)
    assert a[0] < delta < a[1]


def test_bootstrap_matches_index_resampling_and_normal_theory():
    """The multinomial shortcut has the distribution of resampling item indices."""
    rng = np.random.default_rng(5)
    n = 200
    base = rng.random(n) < 0.55
    new = np.where(rng.random(n) < 0.2, ~base, base)  # 20% of items flip either way
    low, high = paired_bootstrap_ci(base.tolist(), new.tolist(), n_boot=20000, seed=0)

    d = new.astype(float) - base.astype(float)
    idx = np.random.default_rng(123).integers(0, n, size=(20000, n))
    explicit = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    assert low == pytest.approx(explicit[0], abs=0.006)
    assert high == pytest.approx(explicit[1], abs=0.006)
    half_width = 1.96 * d.std() / np.sqrt(n)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.08)


def test_paired_comparison_fields():
    base = [True, True, False, False]
    new = [True, False, True, True]
    out = paired_comparison(base, new, n_boot=100, seed=0)
    assert out["delta_accuracy"] == pytest.approx(0.25)
    assert (out["n_fixed"], out["n_broken"], out["n"]) == (2, 1, 4)
    assert out["mcnemar_p"] == pytest.approx(1.0)
    assert out["delta_ci_low"] <= 0.25 <= out["delta_ci_high"]


def _frame(ids, subjects, gold, pred):
    import pandas as pd

    return pd.DataFrame(
        {"id": ids, "subject": subjects, "gold": gold, "pred": pred, "correct": [g == p for g, p in zip(gold, pred)]}
    )


def test_compare_predictions_by_hand():
    from distill.evaluation import compare_predictions

    ids = ["a", "b", "c", "d", "e", "f"]
    subjects = ["국어", "국어", "국어", "화법·작문", "화법·작문", "화법·작문"]
    gold = [1, 2, 3, 1, 2, 3]
    base = _frame(ids, subjects, gold, [1, 1, 1, 1, 2, 1])  # right: a, d, e
    new = _frame(ids[::-1], subjects[::-1], gold[::-1], [1, 2, 1, 2, 2, 1][::-1])  # right: a, b, e (other order)
    out = compare_predictions(base, new, n_boot=300, seed=0)
    assert out["compare/delta_accuracy"] == 0  # 3 vs 3 right
    assert (out["compare/n_fixed"], out["compare/n_broken"]) == (1, 1)  # b fixed, d broken
    assert out["compare/mcnemar_p"] == 1
    assert out["compare/delta_accuracy/국어"] == pytest.approx(1 / 3)
    assert out["compare/n_fixed/국어"] == 1 and out["compare/n_broken/국어"] == 0
    assert out["compare/delta_accuracy/화법_작문"] == pytest.approx(-1 / 3)
    assert out["compare/mcnemar_p/화법_작문"] == 1
    assert out["compare/delta_ci_low"] <= 0 <= out["compare/delta_ci_high"]


def test_compare_predictions_refuses_different_items():
    from distill.errors import ConfigError
    from distill.evaluation import compare_predictions

    base = _frame(["a", "b", "c"], ["s"] * 3, [1, 2, 3], [1, 2, 3])
    with pytest.raises(ConfigError, match=r"1 only in baseline \(e\.g\. c\).*1 only in this evaluation \(e\.g\. z\)"):
        compare_predictions(base, _frame(["a", "b", "z"], ["s"] * 3, [1, 2, 3], [1, 2, 3]))
    with pytest.raises(ConfigError, match="different gold"):
        compare_predictions(base, _frame(["a", "b", "c"], ["s"] * 3, [1, 2, 4], [1, 2, 3]))


def test_noninferiority_equal_worse_and_margin():
    from distill.stats import noninferiority

    same = [True, False] * 20
    equal = noninferiority(same, same, margin=0.02, n_boot=500)
    assert (equal["delta_ci_low"], equal["delta_ci_high"], equal["non_inferior"]) == (0.0, 0.0, 1.0)
    # 8 of 40 items broken, none fixed: Δ = -0.2, its CI lies far below -0.02
    worse = noninferiority([True] * 40, [False] * 8 + [True] * 32, margin=0.02, n_boot=500)
    assert worse["delta_accuracy"] == pytest.approx(-0.2) and worse["non_inferior"] == 0.0
    assert worse["delta_ci_low"] < -0.02 < 0 and worse["n_broken"] == 8
    # the same data pass a margin wide enough to hold the whole CI
    assert noninferiority([True] * 40, [False] * 8 + [True] * 32, margin=0.9, n_boot=500)["non_inferior"] == 1.0
    # one broken item of 400 is within a 2-point margin
    assert noninferiority([True] * 400, [False] + [True] * 399, margin=0.02, n_boot=500)["non_inferior"] == 1.0
    with pytest.raises(ValueError, match="no items"):
        noninferiority([], [], margin=0.02)
    with pytest.raises(ValueError, match="margin"):
        noninferiority([True], [True], margin=-0.1)
