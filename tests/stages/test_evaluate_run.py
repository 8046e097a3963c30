"""The evaluate stage end to end in a real (temporary) MLflow store, read back with MlflowClient."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import ConfigError, InputError
from distill.stages.evaluate import EvaluateConfig, run

REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 30


def _items(cfg: EvaluateConfig):
    from distill.data.loaders import load_items

    return load_items(cfg.dataset_source, cfg.format, require_answer=True)[: cfg.max_items]


def _artifact_files(client, run_id: str, path: str) -> set[str]:
    return {Path(info.path).name for info in client.list_artifacts(run_id, path)}


def _table(run_id: str, path: str) -> list[dict]:
    """An MLflow table artifact as rows."""
    import mlflow

    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def test_evaluate_run_then_compare_with_it(mlflow_store, capsys):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from distill.metrics import subject_keys
    from distill.tracking import rows_digest

    cfg = EvaluateConfig(max_items=N_ITEMS, bootstrap_samples=200, device="cpu")
    assert cfg.dataset is None and Path(cfg.dataset_source).name == "eval_sample.jsonl"  # the bundled default
    items = _items(cfg)
    assert len(items) == N_ITEMS
    keys = subject_keys(item.subject for item in items)
    assert len(keys) >= 2, "the sample should span several subjects"

    first = run(cfg)
    printed = capsys.readouterr().out
    assert "overall (micro, over items)" in printed and "mean of subjects (macro)" in printed

    client = MlflowClient()
    logged = client.get_run(first.run_id)
    assert client.get_experiment(logged.info.experiment_id).name == "distill-eval"
    assert logged.data.params["model"] == "tiny-qwen3"
    assert logged.data.params["max_items"] == str(N_ITEMS)
    # Unset values are named, never '': the adapter is none, the items the bundled sample.
    assert (logged.data.params["adapter"], logged.data.params["dataset"]) == ("none", "bundled")
    assert logged.info.run_name == f"evaluate tiny-qwen3 · eval_sample[:{N_ITEMS}] · logits"
    assert "overall (micro, over items)" in logged.data.tags["mlflow.note.content"]

    metrics = logged.data.metrics
    predictions = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="evaluation/predictions.parquet")
    )
    assert predictions["id"].tolist() == [item.id for item in items]
    assert predictions["gold"].tolist() == [item.answer for item in items]
    assert (predictions["correct"] == (predictions["pred"] == predictions["gold"])).all()
    assert predictions["pred"].between(1, predictions["n_choices"]).all()
    assert {"score_1", "score_4"} <= set(predictions.columns)

    # metric names exactly as DESIGN.md, values consistent with the logged predictions; only
    # overall figures are metrics (no parse failures to count when scoring logits)
    assert metrics["eval/accuracy"] == pytest.approx(predictions["correct"].mean())
    assert 0 <= metrics["eval/macro_f1"] <= 1
    assert "eval/parse_failure_rate" not in metrics
    assert all(name.count("/") == 1 for name in metrics), sorted(metrics)
    # per subject: one table, one row per subject
    subjects = {row["subject"]: row for row in _table(first.run_id, "subjects.json")}
    assert set(subjects) == set(keys)
    per_subject_accuracy = []
    for subject in keys:
        rows = predictions[predictions["subject"] == subject]
        assert subjects[subject]["n"] == len(rows)
        assert subjects[subject]["accuracy"] == pytest.approx(rows["correct"].mean())
        assert 0 <= subjects[subject]["macro_f1"] <= 1
        per_subject_accuracy.append(rows["correct"].mean())
    assert metrics["eval/accuracy_subject_macro"] == pytest.approx(sum(per_subject_accuracy) / len(keys))

    tags = logged.data.tags
    assert tags["eval.accuracy.average"].startswith("micro")
    assert tags["eval.accuracy_subject_macro.average"].startswith("macro")
    assert tags["eval.scoring"] == "logits"

    assert {
        "predictions.json",
        "predictions.parquet",
        "summary.txt",
        "items.jsonl",
    } <= _artifact_files(client, first.run_id, "evaluation")
    assert {"config.yaml", "charts.html", "subjects.json"} <= {
        info.path for info in client.list_artifacts(first.run_id)
    }
    table = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="evaluation/predictions.json")
        ).read_text()
    )
    assert table["columns"][:6] == ["id", "subject", "gold", "pred", "correct", "n_choices"]
    assert len(table["data"]) == N_ITEMS
    html = Path(mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="charts.html")).read_text()
    assert "plotly" in html.lower()
    assert all(json.dumps(subject)[1:-1] in html for subject in keys)  # plotly writes JSON-escaped text

    inputs = logged.inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.digest == rows_digest(item.to_dict() for item in items)
    assert json.loads(inputs[0].dataset.source)["uri"] == cfg.dataset_source
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "eval"
    assert json.loads(inputs[0].dataset.profile)["num_rows"] == N_ITEMS

    # the same model against itself: nothing fixed, nothing broken, delta 0, p = 1
    second = run(EvaluateConfig(max_items=N_ITEMS, bootstrap_samples=200, device="cpu", baseline_run=first.run_id))
    compared = client.get_run(second.run_id).data
    assert compared.metrics["compare/delta_accuracy"] == 0
    assert compared.metrics["compare/mcnemar_p"] == 1
    assert compared.metrics["compare/n_fixed"] == 0 and compared.metrics["compare/n_broken"] == 0
    assert compared.metrics["compare/delta_ci_low"] == 0 and compared.metrics["compare/delta_ci_high"] == 0
    for row in _table(second.run_id, "subjects.json"):  # the comparison per subject, in the same table
        assert (row["delta_accuracy"], row["mcnemar_p"], row["base_accuracy"]) == (0, 1, row["accuracy"])
    assert not any(name.startswith("compare/") and name.count("/") > 1 for name in compared.metrics)
    assert compared.tags["compare.baseline_run"] == first.run_id
    assert f"#/experiments/{logged.info.experiment_id}/runs/{first.run_id}" in compared.tags["mlflow.note.content"]
    assert {"item_changes.json", "comparison.json"} <= _artifact_files(client, second.run_id, "comparison")
    assert "compared with run" in capsys.readouterr().out

    # a baseline on other items is refused before any model is loaded
    with pytest.raises(ConfigError, match="same items"):
        run(EvaluateConfig(max_items=N_ITEMS - 5, device="cpu", baseline_run=first.run_id))
    with pytest.raises(ConfigError, match="not a run"):
        run(EvaluateConfig(max_items=3, device="cpu", baseline_run="0" * 32))


def test_config_rejects_unknown_scoring_and_reads_empty_as_none():
    with pytest.raises(ConfigError, match="'logits' or 'generate'"):
        EvaluateConfig(scoring="vibes")
    with pytest.raises(ConfigError):
        EvaluateConfig(thinking="maybe")
    for blank, every in (("", ""), ("none", "all")):  # MLproject's old empty values, and the named ones
        cfg = EvaluateConfig(
            adapter=blank, baseline_run=blank, experiment=blank, subject_map=blank, dataset=blank, max_items=every
        )  # type: ignore[arg-type]
        assert (cfg.adapter, cfg.baseline_run, cfg.experiment, cfg.subject_map, cfg.max_items) == (None,) * 5
        assert cfg.dataset is None and Path(cfg.dataset_source).is_file()


def test_items_without_gold_are_an_input_error():
    from distill.contracts import MCQItem
    from distill.evaluation import evaluate_items

    item = MCQItem(id="x1", paragraph="", question="질문?", choices=("가", "나"), answer=None, source="nogold.jsonl")
    with pytest.raises(InputError, match="x1"):
        evaluate_items(None, None, [item])


def test_entry_point_takes_mlproject_style_empty_parameters(mlflow_store, tmp_path):
    """The arguments MLproject passes (empty optional values) through the entry point's parser,
    then a tiny run; and a bad value gives one line and exit code 2 from the real script."""
    from distill.cli import parse_config

    argv = [
        "--model",
        "tiny-qwen3",
        "--adapter",
        "",
        "--dataset",
        "",
        "--format",
        "auto",
        "--subject_map",
        "",
        "--batch_size",
        "4",
        "--scoring",
        "logits",
        "--thinking",
        "off",
        "--baseline_run",
        "",
        "--bootstrap_samples",
        "100",
        "--seed",
        "0",
        "--experiment",
        "",
        "--output_dir",
        str(tmp_path / "out"),
        "--max_items",
        "6",
        "--device",
        "cpu",
        "--dtype",
        "auto",
    ]
    cfg = parse_config(EvaluateConfig, argv)
    assert (cfg.adapter, cfg.baseline_run, cfg.max_items, cfg.batch_size) == (None, None, 6, 4)
    out = run(cfg)
    assert len(out.result.predictions) == 6
    assert list((tmp_path / "out").glob("*/evaluation/predictions.parquet"))

    script = "-m", "distill", "evaluate"
    bad = subprocess.run([sys.executable, *script, "--scoring", "vibes"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "scoring must be" in bad.stderr


def test_run_joins_the_run_that_mlflow_run_created(mlflow_store, monkeypatch):
    """`mlflow run` creates the run, logs the MLproject parameters as given (named defaults, or
    `''` from an older MLproject) and exports MLFLOW_RUN_ID: the stage must log into that run
    without changing a param, nor logging one again that means the same (3 and 3.0, '' and none)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment_id = client.create_experiment("project-run")
    created = client.create_run(experiment_id)
    for key, value in {
        "model": "tiny-qwen3",
        "adapter": "''",
        "dataset": "bundled",
        "max_items": "4",
        "batch_size": "8.0",
        "bootstrap_samples": "100",
    }.items():
        client.log_param(created.info.run_id, key, value)
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)

    out = run(EvaluateConfig(adapter="", dataset="bundled", max_items=4, bootstrap_samples=200, device="cpu"))  # type: ignore[arg-type]
    assert out.run_id == created.info.run_id
    logged = client.get_run(out.run_id).data
    assert logged.params["dataset"] == "bundled" and logged.params["adapter"] == "''"
    assert not {"resolved.adapter", "resolved.dataset", "resolved.batch_size"} & set(logged.params)
    assert logged.params["resolved.bootstrap_samples"] == "200"  # differs from what the project logged
    assert logged.params["seed"] == "0"  # not given by the project: logged by the stage
    assert logged.metrics["eval/n"] == 4
    assert client.get_experiment(experiment_id).tags["mlflow.note.content"]  # described, not renamed


def test_evaluate_generate_mode_counts_parse_failures(mlflow_store):
    """scoring=generate: the model writes, the answer is extracted, unreadable = wrong and counted."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    cfg = EvaluateConfig(max_items=4, scoring="generate", max_new_tokens=12, device="cpu", bootstrap_samples=50)
    out = run(cfg)
    metrics = MlflowClient().get_run(out.run_id).data.metrics
    predictions = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="evaluation/predictions.parquet")
    )
    assert len(predictions) == 4
    assert {"text", "parsed", "pred"} <= set(predictions.columns)
    unparsed = int((~predictions["parsed"].astype(bool)).sum())
    assert metrics["eval/parse_failure_rate"] == pytest.approx(unparsed / 4)  # logged where answers are parsed
    # An unparsed answer is never counted as correct.
    assert not predictions.loc[~predictions["parsed"].astype(bool), "correct"].any()


def test_evaluate_generate_through_an_openai_compatible_server(mlflow_store, monkeypatch):
    """The vLLM path: scoring=generate with backend=openai against a local fake server that
    answers '정답: N' with its own deterministic choice; the metrics follow those answers."""
    import mlflow
    import pandas as pd
    from fakes.fake_openai import FakeOpenAIServer
    from mlflow import MlflowClient

    with FakeOpenAIServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.base_url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "unused-local-key")
        cfg = EvaluateConfig(
            max_items=10, scoring="generate", backend="openai", model="served-student", bootstrap_samples=50
        )
        out = run(cfg)
        served = len(server.successes())
    assert served == 10
    predictions = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="evaluation/predictions.parquet")
    )
    assert predictions["parsed"].all()
    metrics = MlflowClient().get_run(out.run_id).data.metrics
    assert metrics["eval/parse_failure_rate"] == 0
    assert metrics["eval/accuracy"] == pytest.approx(predictions["correct"].mean())
