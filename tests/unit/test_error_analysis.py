"""Error analysis on small hand-made prediction tables (expected figures counted by hand).

The `analyze` stage that finds these tables in logged runs is tested in tests/stages/test_analyze.py."""

from __future__ import annotations

import pandas as pd
import pytest

from distill.charts import RUN_PAGE, page_sections
from distill.contracts import normalise_predictions
from distill.error_analysis import (
    NONE_LABEL,
    OVERALL,
    analyse,
    confusion_matrices,
    confusion_matrix,
    error_metrics,
    item_changes,
    log_error_analysis,
    position_bias,
    position_bias_test,
    summary_text,
)
from distill.errors import ConfigError, InputError


def table(rows, **extra_columns):
    """rows: (id, subject, gold, pred[, n_choices]); pred None is a parse failure."""
    records = []
    for row in rows:
        item_id, subject, gold, pred, *rest = row
        n_choices = rest[0] if rest else 4
        records.append(
            {
                "id": item_id,
                "subject": subject,
                "gold": gold,
                "pred": pred,
                "n_choices": n_choices,
                "correct": pred == gold,
            }
        )
    frame = pd.DataFrame(records)
    for name, values in extra_columns.items():
        frame[name] = values
    return frame


BASE = table(
    [
        ("q1", "문법", 1, 1),
        ("q2", "문법", 2, 1),
        ("q3", "문법", 3, None),
        ("q4", "독서", 4, 4),
        ("q5", "독서", 1, 2),
        ("q6", "독서", 2, 2),
    ]
)
NEW = table(
    [
        ("q1", "문법", 1, 2),  # broken
        ("q2", "문법", 2, 2),  # fixed
        ("q3", "문법", 3, 3),  # fixed (was unparsed)
        ("q4", "독서", 4, 4),  # same, right
        ("q5", "독서", 1, None),  # same, wrong
        ("q6", "독서", 2, 2),  # same, right
    ]
)


def test_confusion_matrix_counts_gold_by_pred_with_none_column():
    clean = normalise_predictions(BASE)
    matrix = confusion_matrix(clean)
    assert list(matrix.index) == ["1", "2", "3", "4"]
    assert list(matrix.columns) == ["1", "2", "3", "4", NONE_LABEL]
    expected = {("1", "1"): 1, ("2", "1"): 1, ("3", NONE_LABEL): 1, ("4", "4"): 1, ("1", "2"): 1, ("2", "2"): 1}
    for gold in matrix.index:
        for pred in matrix.columns:
            assert matrix.loc[gold, pred] == expected.get((gold, pred), 0), (gold, pred)
    assert matrix.to_numpy().sum() == len(BASE)


def test_confusion_matrices_per_subject_share_one_width():
    clean = normalise_predictions(BASE)
    matrices = confusion_matrices(clean)
    assert set(matrices) == {OVERALL, "문법", "독서"}
    grammar = matrices["문법"]
    assert grammar.loc["2", "1"] == 1 and grammar.loc["3", NONE_LABEL] == 1 and grammar.to_numpy().sum() == 3
    assert matrices["독서"].loc["1", "2"] == 1 and matrices["독서"].to_numpy().sum() == 3
    assert all(list(m.columns) == ["1", "2", "3", "4", NONE_LABEL] for m in matrices.values())


def test_normalise_treats_nan_and_out_of_range_as_parse_failures():
    frame = table([("a", "s", 1, float("nan")), ("b", "s", 2, 7, 5), ("c", "s", 3, 3.0)])
    clean = normalise_predictions(frame)
    assert clean["pred"].isna().tolist() == [True, True, False]
    assert clean["correct"].tolist() == [False, False, True]
    matrix = confusion_matrix(clean)
    assert matrix[NONE_LABEL].sum() == 2
    assert list(matrix.columns) == ["1", "2", "3", "4", "5", NONE_LABEL]  # widest item has 5 choices


def test_normalise_recomputes_correct_from_pred_and_gold():
    frame = table([("a", "s", 1, 2)])
    frame["correct"] = True  # a stale flag must not survive
    assert normalise_predictions(frame)["correct"].tolist() == [False]


def test_normalise_rejects_missing_columns_and_duplicate_ids():
    with pytest.raises(InputError, match="lacks column"):
        normalise_predictions(BASE.drop(columns=["pred"]), source="preds.parquet")
    with pytest.raises(InputError, match="more than once"):
        normalise_predictions(pd.concat([BASE, BASE.iloc[:1]]))
    with pytest.raises(InputError, match="no gold"):
        normalise_predictions(table([("a", "s", None, 1)]))


def test_item_changes_lists_fixed_and_broken_with_subject_counts():
    changes = item_changes(normalise_predictions(BASE), normalise_predictions(NEW))
    assert changes.fixed["id"].tolist() == ["q2", "q3"]
    assert changes.broken["id"].tolist() == ["q1"]
    assert changes.fixed["base_pred"].isna().tolist() == [False, True]
    assert changes.broken[["base_pred", "new_pred"]].iloc[0].tolist() == [1, 2]
    by_subject = changes.by_subject.set_index("subject")
    assert by_subject.loc["문법", ["n", "fixed", "broken", "net"]].tolist() == [3, 2, 1, 1]
    assert by_subject.loc["독서", ["n", "fixed", "broken", "net"]].tolist() == [3, 0, 0, 0]
    assert by_subject.loc[OVERALL, ["n", "fixed", "broken", "net"]].tolist() == [6, 2, 1, 1]
    assert changes.n_paired == 6 and changes.n_only_base == 0 and changes.n_only_new == 0
    assert "base_reasoning" not in changes.fixed.columns


def test_item_changes_carries_both_reasonings_when_text_exists():
    base = BASE.assign(reasoning=[f"base thinks {i}" for i in range(6)])
    new = NEW.assign(text=[f"new writes {i}" for i in range(6)])
    changes = item_changes(normalise_predictions(base), normalise_predictions(new))
    fixed = changes.fixed.set_index("id")
    assert fixed.loc["q2", "base_reasoning"] == "base thinks 1"
    assert fixed.loc["q2", "new_reasoning"] == "new writes 1"
    assert changes.broken.set_index("id").loc["q1", "new_reasoning"] == "new writes 0"


def test_item_changes_pairs_on_id_and_counts_unpaired_items():
    new = pd.concat([NEW.iloc[1:], table([("q9", "문법", 1, 1)])], ignore_index=True)
    changes = item_changes(normalise_predictions(BASE), normalise_predictions(new))
    assert changes.n_paired == 5 and changes.n_only_base == 1 and changes.n_only_new == 1
    assert changes.broken.empty  # q1, the only broken item, is not in the new table
    assert changes.fixed["id"].tolist() == ["q2", "q3"]


def test_item_changes_rejects_disagreeing_gold():
    new = NEW.copy()
    new.loc[0, "gold"] = 3
    with pytest.raises(InputError, match="q1"):
        item_changes(normalise_predictions(BASE), normalise_predictions(new))


def test_position_bias_shares_against_gold():
    frame = table([("a", "s", 1, 1), ("b", "s", 2, 1), ("c", "s", 3, 1), ("d", "s", 4, None)])
    bias = position_bias(normalise_predictions(frame)).set_index("position")
    assert bias.index.tolist() == ["1", "2", "3", "4", NONE_LABEL]
    assert bias["n_gold"].tolist() == [1, 1, 1, 1, 0]
    assert bias["n_pred"].tolist() == [3, 0, 0, 0, 1]
    assert bias.loc["1", "pred_share"] == pytest.approx(0.75)
    assert bias.loc["1", "excess"] == pytest.approx(0.5)
    assert bias["pred_share"].sum() == pytest.approx(1.0)
    assert bias["gold_share"].sum() == pytest.approx(1.0)


def test_position_bias_test_separates_biased_from_matching_predictions():
    golds = [1, 2, 3, 4] * 25
    always_one = normalise_predictions(table([(f"q{i}", "s", g, 1) for i, g in enumerate(golds)]))
    shifted = normalise_predictions(table([(f"q{i}", "s", g, g % 4 + 1) for i, g in enumerate(golds)]))
    biased = position_bias_test(always_one)
    matching = position_bias_test(shifted)  # every answer wrong, but spread exactly like gold
    assert biased["p"] < 1e-6 and biased["dof"] == 3
    assert matching["chi2"] == pytest.approx(0.0) and matching["p"] == pytest.approx(1.0)


def test_error_metrics_names_and_counts():
    analysis = analyse(BASE, NEW, base_label="base", new_label="trained")
    metrics = error_metrics(analysis)
    assert metrics["errors/n_fixed"] == 2 and metrics["errors/n_broken"] == 1 and metrics["errors/n_paired"] == 6
    assert metrics["errors/base/parse_failures"] == 1 and metrics["errors/trained/parse_failures"] == 1
    # base predicts 1 twice where gold has 1 twice; 2 twice against gold 2 twice: max excess 0
    assert metrics["errors/base/max_position_excess"] == pytest.approx(0.0)
    # trained predicts 2 three times against gold 2 twice: excess 1/6
    assert metrics["errors/trained/max_position_excess"] == pytest.approx(1 / 6)


def test_summary_text_names_accuracy_changes_and_frequent_errors():
    text = summary_text(analyse(BASE, NEW, new_label="trained"))
    assert "base: 6 items, accuracy 0.500, 1 unparsed" in text
    assert "trained: 6 items, accuracy 0.667, 1 unparsed" in text
    assert "paired items 6: fixed 2, broken 1, net +1" in text
    assert "gold 3→none: 1" in text


def test_log_error_analysis_needs_an_active_run(mlflow_store):
    with pytest.raises(ConfigError, match="active MLflow run"):
        log_error_analysis(BASE, NEW)


def test_log_error_analysis_logs_tables_chart_and_metrics(mlflow_store, tmp_path):
    import mlflow

    _fresh_experiment()
    with mlflow.start_run() as active:
        log_error_analysis(
            BASE.assign(reasoning=["r"] * 6),
            NEW.assign(reasoning=["s"] * 6),
            new_label="trained",
            local_dir=tmp_path / "errors",
        )
    run_id = active.info.run_id
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(run_id, "errors")}
    assert {
        "errors/confusion.json",
        "errors/position_bias.json",
        "errors/fixed.json",
        "errors/broken.json",
        "errors/changes_by_subject.json",
        "errors/fixed.parquet",
        "errors/broken.parquet",
    } == names
    # load_table reads the label "3" back as a number: compare as text
    confusion = mlflow.load_table("errors/confusion.json", run_ids=[run_id]).astype({"gold": str, "pred": str})
    base_grammar = confusion[(confusion["model"] == "base") & (confusion["subject"] == "문법")]
    assert base_grammar.set_index(["gold", "pred"]).loc[("3", NONE_LABEL), "count"] == 1
    fixed = mlflow.load_table("errors/fixed.json", run_ids=[run_id])
    assert sorted(fixed["id"]) == ["q2", "q3"] and set(fixed["new_reasoning"]) == {"s"}
    metrics = client.get_run(run_id).data.metrics
    assert metrics["errors/n_fixed"] == 2 and metrics["errors/n_broken"] == 1
    # The charts are on the run's one chart page (plotly.js once), not in an HTML file of their own.
    page = client.download_artifacts(run_id, RUN_PAGE, str(tmp_path / "dl"))
    text = open(page, encoding="utf-8").read()
    assert list(page_sections(text)) == ["errors/confusion", "errors/position_bias", "errors/changes"]
    assert text.count("Plotly.newPlot") == 3 and text.count("* plotly.js v") == 1


def _fresh_experiment():
    """Runs started by hand go to an experiment of this store (the fluent API remembers the
    experiment id of an earlier test's store otherwise)."""
    import mlflow

    mlflow.set_experiment("error-analysis-test")
