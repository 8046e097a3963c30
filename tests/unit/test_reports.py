"""Reports: the per-subject before/after table, its markdown, the plotly chart."""

from __future__ import annotations

import pandas as pd
import pytest

from distill.errors import ConfigError
from distill.evaluation import compare_predictions
from distill.reports import OVERALL, comparison_figure, markdown_report, subject_rows, write_report
from distill.stats import mcnemar_exact_p


def _frame(rows):
    """rows: (id, subject, gold, pred)."""
    return pd.DataFrame(
        [{"id": i, "subject": s, "gold": g, "pred": p, "correct": g == p, "n_choices": 5} for i, s, g, p in rows]
    )


# 한국사: base 1/3 right, trained 3/3 (2 fixed). 경제: base 2/2, trained 1/2 (1 broken).
BASE = _frame(
    [("a", "한국사", 1, 1), ("b", "한국사", 2, 3), ("c", "한국사", 3, 1), ("d", "경제", 4, 4), ("e", "경제", 5, 5)]
)
NEW = _frame(
    [("a", "한국사", 1, 1), ("b", "한국사", 2, 2), ("c", "한국사", 3, 3), ("d", "경제", 4, 4), ("e", "경제", 5, 1)]
)


def test_subject_rows_count_items_per_subject_and_overall():
    rows = {r["subject"]: r for r in subject_rows(BASE, NEW)}
    assert list(rows) == ["경제", "한국사", OVERALL]
    assert (
        rows["한국사"]["n"],
        rows["한국사"]["base_correct"],
        rows["한국사"]["new_correct"],
        rows["한국사"]["delta"],
    ) == (3, 1, 3, 2)
    assert (rows["경제"]["n"], rows["경제"]["base_correct"], rows["경제"]["new_correct"], rows["경제"]["delta"]) == (
        2,
        2,
        1,
        -1,
    )
    assert (
        rows[OVERALL]["n"],
        rows[OVERALL]["base_correct"],
        rows[OVERALL]["new_correct"],
        rows[OVERALL]["delta"],
    ) == (5, 3, 4, 1)
    assert rows["한국사"]["base_accuracy"] == pytest.approx(1 / 3) and rows["한국사"]["new_accuracy"] == 1.0
    # 한국사 trained: every label 1, 2, 3 right → F1 1; base predicted 1, 3, 1 for gold 1, 2, 3.
    assert rows["한국사"]["new_macro_f1"] == 1.0
    assert rows["한국사"]["base_macro_f1"] == pytest.approx((2 / 3 + 0 + 0) / 3)


def test_markdown_has_the_reference_columns_and_the_paired_test():
    comparison = compare_predictions(BASE, NEW, n_boot=200, seed=0)
    rows = subject_rows(BASE, NEW)
    text = markdown_report(rows, comparison, base_label="base", new_label="trained", title="t", alpha=0.05)
    lines = text.splitlines()
    assert (
        "| subject | n | base correct | trained correct | Δ | accuracy base → trained | macro-F1 base → trained |"
        in lines
    )
    assert "| 한국사 | 3 | 1 | 3 | +2 | 33.3% → 100.0% | 0.222 → 1.000 |" in lines
    assert "| 경제 | 2 | 2 | 1 | -1 | 100.0% → 50.0% | 1.000 → 0.333 |" in lines
    assert "| **overall** | 5 | 3 | 4 | +1 | 60.0% → 80.0% |" in next(line for line in lines if "**overall**" in line)
    test_line = next(line for line in lines if line.startswith("Overall:"))
    assert "3 → 4 of 5 correct" in test_line
    assert f"McNemar p = {mcnemar_exact_p(2, 1):.3g}" in test_line
    assert "(2 fixed, 1 broken)" in test_line and "not significant at α = 0.05" in test_line


def test_report_files_and_chart(tmp_path):
    comparison = compare_predictions(BASE, NEW, n_boot=200, seed=0)
    paths = write_report(tmp_path / "r", BASE, NEW, comparison, base_label="base", new_label="trained")
    assert paths["markdown"].read_text(encoding="utf-8").count("\n| ") >= 4
    html = paths["chart"].read_text(encoding="utf-8")
    assert "macro-F1" in html and "Plotly.newPlot" in html
    table = pd.read_csv(paths["table"])
    assert table["subject"].tolist() == ["경제", "한국사", OVERALL]
    assert table["delta"].tolist() == [-1, 2, 1]


def test_chart_shows_base_and_trained_per_subject():
    rows = subject_rows(BASE, NEW)
    fig = comparison_figure(rows, base_label="base", new_label="trained")
    traces = [(t.name, list(t.x), list(t.y)) for t in fig.data]
    assert [name for name, _, _ in traces] == ["base", "trained", "base", "trained"]  # accuracy panel, then macro-F1
    labels = traces[0][1]
    assert labels == ["경제 (n=2)", "한국사 (n=3)", "(overall) (n=5)"]
    assert traces[0][2] == pytest.approx([1.0, 1 / 3, 0.6]) and traces[1][2] == pytest.approx([0.5, 1.0, 0.8])
    assert traces[3][2][1] == 1.0


def test_different_items_are_refused():
    with pytest.raises(ConfigError, match="same items"):
        subject_rows(BASE, NEW.iloc[:4])


def test_logged_report_puts_its_chart_on_the_run_page(mlflow_store, tmp_path):
    import mlflow

    from distill.charts import RUN_PAGE, page_sections
    from distill.reports import log_report

    comparison = compare_predictions(BASE, NEW, n_boot=200, seed=0)
    mlflow.set_experiment("reports-test")
    with mlflow.start_run() as run:
        paths = log_report(tmp_path / "r", BASE, NEW, comparison, title="tiny: base vs trained")
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} == {
        "report/report.md",
        "report/subjects.csv",
    }
    assert set(paths) == {"markdown", "table"} and not (tmp_path / "r" / "subjects.html").exists()
    page = open(client.download_artifacts(run.info.run_id, RUN_PAGE, str(tmp_path / "dl")), encoding="utf-8").read()
    section = page_sections(page)["report/subjects"]
    assert "tiny: base vs trained" in section and "macro-F1" in section and "Plotly.newPlot" in section
