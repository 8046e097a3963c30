"""The `analyze` stage on runs logged the way the evaluate and train stages log predictions.

The analysis itself (confusion, fixed/broken, position bias) is tested on hand-made tables in
tests/unit/test_error_analysis.py; here: finding the tables in runs, where the analysis goes.
"""

from __future__ import annotations

import pandas as pd
import pytest

from distill.error_analysis import OVERALL
from distill.errors import ConfigError
from distill.stages.analyze import AnalyzeConfig, run, split_base_and_main


def table(rows):
    """rows: (id, subject, gold, pred), four choices each; logit scoring always answers."""
    records = [{"id": i, "subject": s, "gold": g, "pred": p, "n_choices": 4, "correct": p == g} for i, s, g, p in rows]
    return pd.DataFrame(records)


BASE = table(
    [
        ("q1", "문법", 1, 1),
        ("q2", "문법", 2, 1),
        ("q3", "문법", 3, 1),
        ("q4", "독서", 4, 4),
        ("q5", "독서", 1, 2),
        ("q6", "독서", 2, 2),
    ]
)
NEW = table(
    [
        ("q1", "문법", 1, 2),
        ("q2", "문법", 2, 2),
        ("q3", "문법", 3, 3),
        ("q4", "독서", 4, 4),
        ("q5", "독서", 1, 1),
        ("q6", "독서", 2, 2),
    ]
)
# Base is right on q1 q4 q6; new on q2 q3 q4 q5 q6.
FIXED = ["q2", "q3", "q5"]
BROKEN = ["q1"]


def _fresh_experiment():
    """Runs started by hand go to an experiment of this store (the fluent API remembers the
    experiment id of an earlier test's store otherwise)."""
    import mlflow

    mlflow.set_experiment("error-analysis-test")


def _evaluate_like_run(df, artifact_dir="evaluation"):
    """A run that logged predictions exactly as the evaluate stage does."""
    import mlflow

    _fresh_experiment()
    from distill.stages.evaluate import log_eval_result, result_from_predictions

    with mlflow.start_run() as active:
        log_eval_result(result_from_predictions(df), artifact_dir=artifact_dir)
    return active.info.run_id


def test_split_base_and_main():
    assert split_base_and_main(["evaluation/predictions.parquet"]) == (None, "evaluation/predictions.parquet")
    # the train stage's layout: the adapter under evaluation/, the base model under evaluation_base/
    assert split_base_and_main(["evaluation/predictions.parquet", "evaluation_base/predictions.parquet"]) == (
        "evaluation_base/predictions.parquet",
        "evaluation/predictions.parquet",
    )
    assert split_base_and_main(["a/predictions.parquet", "b/predictions.parquet"]) == (None, None)


def test_analyze_against_a_baseline_run_logs_a_new_run(mlflow_store, capsys):
    import mlflow
    import yaml

    base_run = _evaluate_like_run(BASE)
    new_run = _evaluate_like_run(NEW)
    out = run(AnalyzeConfig(run_id=new_run, baseline_run=base_run))
    assert out.run_id not in (base_run, new_run)
    assert out.analysis.changes.fixed["id"].tolist() == FIXED
    assert out.analysis.changes.broken["id"].tolist() == BROKEN
    client = mlflow.MlflowClient()
    logged = client.get_run(out.run_id)
    assert logged.data.metrics["errors/n_fixed"] == 3 and logged.data.metrics["errors/n_broken"] == 1
    assert logged.data.tags["analyze.baseline_run"] == base_run and logged.data.tags["distill.stage"] == "analyze"
    assert logged.data.params["run_id"] == new_run
    config = yaml.safe_load(open(client.download_artifacts(out.run_id, "config.yaml"), encoding="utf-8"))
    assert config["run_id"] == new_run and config["baseline_run"] == base_run
    assert "fixed 3, broken 1" in capsys.readouterr().out


def test_analyze_a_train_like_run_with_base_predictions_inside_logs_into_it(mlflow_store):
    import mlflow

    from distill.stages.evaluate import log_eval_result, result_from_predictions

    _fresh_experiment()
    with mlflow.start_run() as active:
        mlflow.log_param("learning_rate", "1e-4")
        log_eval_result(result_from_predictions(NEW))
        log_eval_result(result_from_predictions(BASE), prefix="base", artifact_dir="evaluation_base")
    out = run(AnalyzeConfig(run_id=active.info.run_id, log_to_run=True))
    assert out.run_id == active.info.run_id
    assert [m.label.split(" ")[0] for m in out.analysis.models] == ["base", "trained"]
    assert out.analysis.changes.fixed["id"].tolist() == FIXED
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(active.info.run_id, "errors")}
    assert "errors/analyze_config.yaml" in names
    assert "charts.html" in {a.path for a in client.list_artifacts(active.info.run_id)}
    # The analysed run keeps its own params, config.yaml and stage tag.
    logged = client.get_run(active.info.run_id)
    assert dict(logged.data.params) == {"learning_rate": "1e-4"}
    assert "distill.stage" not in logged.data.tags
    assert "config.yaml" not in {a.path for a in client.list_artifacts(active.info.run_id)}


def test_analyze_a_train_run_against_the_base_run_it_links_to(mlflow_store):
    """A train or register run does not repeat the base model's evaluation: it links to the base
    run (`distill.base_run.eval`), whose predictions are the baseline."""
    import mlflow

    from distill.stages.evaluate import log_eval_result, result_from_predictions

    _fresh_experiment()
    with mlflow.start_run(run_name="base tiny-qwen3 · items") as base:
        log_eval_result(result_from_predictions(BASE))
    with mlflow.start_run(run_name="train") as trained:
        log_eval_result(result_from_predictions(NEW))
        mlflow.set_tag("distill.base_run.eval", base.info.run_id)
    out = run(AnalyzeConfig(run_id=trained.info.run_id))
    assert [m.label.split(" ")[0] for m in out.analysis.models] == ["base", "trained"]
    assert out.analysis.changes.fixed["id"].tolist() == FIXED
    assert out.analysis.changes.broken["id"].tolist() == BROKEN
    logged = mlflow.MlflowClient().get_run(out.run_id)
    assert logged.info.run_name == "analyze train"
    assert f"/runs/{trained.info.run_id})" in logged.data.tags["mlflow.note.content"]
    assert "" not in logged.data.params.values()


def test_analyze_a_single_evaluate_run_has_no_fixed_or_broken(mlflow_store):
    out = run(AnalyzeConfig(run_id=_evaluate_like_run(BASE)))
    assert out.analysis.changes is None and len(out.analysis.models) == 1
    assert out.analysis.models[0].matrices[OVERALL].loc["3", "1"] == 1


def test_analyze_names_what_is_missing(mlflow_store):
    import mlflow

    with pytest.raises(ConfigError, match="not a run"):
        run(AnalyzeConfig(run_id="0" * 32))
    _fresh_experiment()
    with mlflow.start_run() as empty:
        pass
    with pytest.raises(ConfigError, match="predictions_artifact"):
        run(AnalyzeConfig(run_id=empty.info.run_id))
    with pytest.raises(ConfigError, match="has no artifact nowhere.parquet"):
        run(AnalyzeConfig(run_id=empty.info.run_id, predictions_artifact="nowhere.parquet"))


def test_analyze_needs_a_run_id():
    with pytest.raises(ConfigError, match="--run_id"):
        AnalyzeConfig(run_id="  ")
