"""The evaluation library on predictions tables: what is written is read back through the
prediction-row contract (`distill.contracts`) with the same metrics, unanswered items included."""

from __future__ import annotations

import pandas as pd
import pytest

from distill.evaluation import compare_predictions, read_predictions, result_from_predictions
from distill.reports import OVERALL, subject_rows


def _generated(rows):
    """rows: (id, subject, gold, pred or None), as generate mode writes them (pred None: unread)."""
    return pd.DataFrame(
        [
            {"id": i, "subject": s, "gold": g, "pred": p, "correct": p == g, "n_choices": 4, "parsed": p is not None}
            for i, s, g, p in rows
        ]
    )


def test_predictions_read_back_through_the_contract_give_the_same_metrics(tmp_path):
    written = _generated([("a", "x", 1, 1), ("b", "x", 2, None), ("c", "y", 3, 3), ("d", "y", 4, 1)])
    path = tmp_path / "predictions.parquet"
    written.to_parquet(path, index=False)
    read = read_predictions(path)
    assert read["pred"].isna().tolist() == [False, True, False, False]  # pd.NA, not a guessed choice
    before, after = result_from_predictions(written), result_from_predictions(read)
    assert after.metrics == pytest.approx(before.metrics, nan_ok=True)
    assert after.metrics["eval/accuracy"] == pytest.approx(0.5)

    base = read_predictions(path)
    new = _generated([("a", "x", 1, 1), ("b", "x", 2, 2), ("c", "y", 3, None), ("d", "y", 4, 4)])
    comparison = compare_predictions(base, new, n_boot=50)
    assert comparison["compare/n_fixed"] == 2 and comparison["compare/n_broken"] == 1
    overall = {row["subject"]: row for row in subject_rows(base, new)}[OVERALL]
    assert (overall["base_correct"], overall["new_correct"]) == (2, 3)


def test_only_overall_figures_are_metrics_and_subjects_are_one_table():
    from distill.evaluation import headline_metrics, subject_frame

    base = _generated([("a", "x", 1, 1), ("b", "x", 2, 1), ("c", "y", 3, 3), ("d", "y", 4, 1)])
    new = _generated([("a", "x", 1, 1), ("b", "x", 2, 2), ("c", "y", 3, 1), ("d", "y", 4, 4)])
    result = result_from_predictions(new)
    comparison = compare_predictions(base, new, n_boot=50)
    headline = headline_metrics({**result.metrics, **comparison})
    assert "eval/accuracy" in headline and "compare/delta_accuracy" in headline
    assert not [k for k in headline if k.count("/") > 1], "nothing per subject"
    assert "compare/n" not in headline and "eval/parse_failure_rate" not in headline
    assert "eval/parse_failure_rate" in headline_metrics(result.metrics, scoring="generate")
    table = subject_frame(result, comparison, result_from_predictions(base))
    assert table["subject"].tolist() == ["x", "y"]
    x, y = table.to_dict("records")
    assert (x["accuracy"], x["base_accuracy"], x["delta_accuracy"], x["n_fixed"]) == (1.0, 0.5, 0.5, 1)
    assert (y["accuracy"], y["base_accuracy"], y["n_fixed"], y["n_broken"]) == (0.5, 0.5, 1, 1)
    assert {"macro_f1", "mcnemar_p", "delta_ci_low", "delta_ci_high", "n"} <= set(table.columns)
