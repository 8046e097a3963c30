"""The run's chart page: every figure a run logs on one page, plotly.js embedded once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from distill import charts

# The first line of plotly.js' own banner: one occurrence per embedded copy of the library.
PLOTLY_BANNER = "* plotly.js v"


def _frame(rows):
    """rows: (id, subject, gold, pred)."""
    return pd.DataFrame(
        [
            {"id": i, "subject": s, "gold": g, "pred": p, "correct": g == p, "n_choices": 4, "score_1": 0.0}
            for i, s, g, p in rows
        ]
    )


BASE = _frame([("a", "한국사", 1, 1), ("b", "한국사", 2, 3), ("c", "경제", 3, 1), ("d", "경제", 4, 4)])
NEW = _frame([("a", "한국사", 1, 1), ("b", "한국사", 2, 2), ("c", "경제", 3, 3), ("d", "경제", 4, 1)])


def _bar(value: float):
    import plotly.graph_objects as go

    return go.Figure(go.Bar(x=["x"], y=[value]))


def _run_html(client, run_id: str, dst: Path) -> dict[str, str]:
    """Every .html artifact of the run, anywhere in its tree: {artifact path: text}."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(dst)))
    return {str(p.relative_to(local)): p.read_text(encoding="utf-8") for p in local.rglob("*.html")}


def test_a_figure_logged_again_replaces_its_section():
    import plotly.graph_objects as go

    first = charts.figure_section(_bar(1), "evaluation/subject_metrics", "eval <per subject>")
    second = charts.figure_section(go.Figure(go.Bar(x=["</script><!-- /distill-figure -->"], y=[2])), "b", "b")
    page = charts.run_page({"evaluation/subject_metrics": first, "b": second}, title="t")
    assert page.count(PLOTLY_BANNER) == 1
    sections = charts.page_sections(page)
    assert list(sections) == ["evaluation/subject_metrics", "b"]  # the hostile label stays inside its section
    assert sections["b"] == second and "eval &lt;per subject&gt;" in sections["evaluation/subject_metrics"]
    with pytest.raises(ValueError, match="figure key"):
        charts.figure_section(_bar(1), "bad key -->", "t")


def test_log_figure_needs_an_active_run(mlflow_store):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        charts.log_figure(_bar(1), "a", title="a")


def test_the_run_page_keeps_every_figure_across_processes(mlflow_store, tmp_path, monkeypatch):
    import mlflow

    mlflow.set_experiment("charts-test")
    with mlflow.start_run() as run:
        charts.log_figure(_bar(1), "one", title="first")
        charts.log_figure(_bar(2), "two", title="second")
        charts.log_figure(_bar(3), "one", title="first, again")  # replaced in place, not appended
    # Another process (say `analyze --log_to_run`) knows nothing of this run's page yet.
    monkeypatch.setattr(charts, "_page_cache", {})
    with mlflow.start_run(run_id=run.info.run_id):
        charts.log_figure(_bar(4), "errors/confusion", title="third")
    pages = _run_html(mlflow.MlflowClient(), run.info.run_id, tmp_path / "dl")
    assert list(pages) == [charts.RUN_PAGE]
    page = pages[charts.RUN_PAGE]
    assert list(charts.page_sections(page)) == ["one", "two", "errors/confusion"]
    assert "first, again" in page and ">first<" not in page
    assert page.count("Plotly.newPlot") == 3
    assert page.count(PLOTLY_BANNER) == 1


def test_a_runs_chart_artifacts_carry_plotly_js_at_most_once(mlflow_store, tmp_path):
    """What a train or register run logs (its evaluation, the comparison with the base, the
    report, the error analysis): every chart on one page, plotly.js in it once."""
    import mlflow

    from distill.error_analysis import log_error_analysis
    from distill.evaluation import compare_predictions, log_adapter_vs_base, result_from_predictions
    from distill.reports import log_report

    mlflow.set_experiment("charts-test")
    comparison = compare_predictions(BASE, NEW, n_boot=50, seed=0)
    with mlflow.start_run() as run:
        log_adapter_vs_base(
            result_from_predictions(NEW),
            result_from_predictions(BASE),
            comparison,
            new_label="adapter",
            base_cached=False,
            base_cache_file=tmp_path / "cache.parquet",
            n_boot=50,
            seed=0,
            out_dir=tmp_path / "run",
        )
        log_report(tmp_path / "report", BASE, NEW, comparison)
        log_error_analysis(BASE, NEW, new_label="adapter", local_dir=tmp_path / "errors")
    client = mlflow.MlflowClient()
    pages = _run_html(client, run.info.run_id, tmp_path / "dl")
    assert sum(text.count(PLOTLY_BANNER) for text in pages.values()) == 1
    assert list(pages) == [charts.RUN_PAGE]
    assert list(charts.page_sections(pages[charts.RUN_PAGE])) == [
        "evaluation/subject_metrics",  # the base's own chart is on its base run, not repeated here
        "comparison/comparison",
        "report/subjects",
        "errors/confusion",
        "errors/position_bias",
        "errors/changes",
    ]
    assert pages[charts.RUN_PAGE].count("Plotly.newPlot") == 6
    # The data files stay where they were; no HTML is written beside them.
    assert not list((tmp_path / "run").rglob("*.html")) and not list((tmp_path / "report").rglob("*.html"))
    assert {"report/report.md", "report/subjects.csv"} == {
        a.path for a in client.list_artifacts(run.info.run_id, "report")
    }
