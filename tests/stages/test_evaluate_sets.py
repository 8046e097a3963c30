"""`evaluate -P datasets=a,b`: several sets in one run, each with its own metrics, table and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.errors import ConfigError, InputError
from distill.evaluation import parse_sets
from distill.stages.evaluate import EvaluateConfig, run

N_ITEMS = 10


def _bundled_items():
    from distill.data.loaders import load_items
    from distill.resources import resource_path

    return load_items(resource_path("eval_sample.jsonl"), require_answer=True)


def test_parse_sets_names_formats_and_errors(tmp_path):
    sets = parse_sets(f"bundled,{tmp_path}/a b.jsonl@jsonl, {tmp_path}/x/a b.jsonl", default_format="kice")
    assert [(s.name, Path(s.path).name, s.format) for s in sets] == [
        ("eval_sample", "eval_sample.jsonl", "kice"),
        ("a_b", "a b.jsonl", "jsonl"),
        ("a_b-2", "a b.jsonl", "kice"),
    ]
    for bad in ("a.jsonl,,b.jsonl", "", "a.jsonl@xml"):
        with pytest.raises(ConfigError, match="datasets"):
            parse_sets(bad)
    with pytest.raises(ConfigError, match="not both"):
        EvaluateConfig(dataset="a.jsonl", datasets="b.jsonl")
    with pytest.raises(ConfigError, match="baseline_run"):
        EvaluateConfig(datasets="b.jsonl", baseline_run="0" * 32)


def test_several_sets_in_one_run(mlflow_store, tmp_path, capsys):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from distill.io import write_jsonl

    items = _bundled_items()
    other = tmp_path / "other.jsonl"
    write_jsonl(other, (item.to_dict() for item in items[N_ITEMS : 2 * N_ITEMS]))
    cfg = EvaluateConfig(datasets=f"bundled,{other}@jsonl", max_items=N_ITEMS, device="cpu", output_dir=str(tmp_path))
    out = run(cfg)
    printed = capsys.readouterr().out
    assert "on 2 sets" in printed and "eval_sample:" in printed and "other:" in printed

    client = MlflowClient()
    logged = client.get_run(out.run_id)
    assert logged.info.run_name == f"evaluate tiny-qwen3 · eval_sample+other[:{N_ITEMS}] · logits"
    assert set(out.results) == {"eval_sample", "other"}
    metrics = logged.data.metrics
    assert not [k for k in metrics if k.startswith("eval/accuracy")], "no unprefixed figures: they would mix sets"
    for name, expected in (("eval_sample", items[:N_ITEMS]), ("other", items[N_ITEMS : 2 * N_ITEMS])):
        predictions = pd.read_parquet(
            mlflow.artifacts.download_artifacts(
                run_id=out.run_id, artifact_path=f"{name}/evaluation/predictions.parquet"
            )
        )
        assert predictions["id"].tolist() == [item.id for item in expected]
        assert metrics[f"{name}/eval/accuracy"] == pytest.approx(predictions["correct"].mean())
        assert metrics[f"{name}/eval/n"] == N_ITEMS and metrics[f"{name}/eval/items_per_s"] > 0
        table = json.loads(
            Path(
                mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path=f"{name}/subjects.json")
            ).read_text()
        )
        assert "accuracy" in table["columns"] and table["data"]
        assert (tmp_path / out.run_id / name / "evaluation" / "predictions.parquet").is_file()
    inputs = sorted(i.dataset.name for i in logged.inputs.dataset_inputs)
    assert inputs == [f"eval_sample[:{N_ITEMS}]", f"other[:{N_ITEMS}]"]
    # The same figures as a run on that set alone.
    alone = run(EvaluateConfig(dataset=str(other), format="jsonl", max_items=N_ITEMS, device="cpu"))
    assert alone.result.metrics["eval/accuracy"] == pytest.approx(metrics["other/eval/accuracy"])
    assert alone.result.predictions["pred"].tolist() == out.results["other"].predictions["pred"].tolist()


def test_a_bad_set_stops_before_any_run(mlflow_store, tmp_path):
    from mlflow import MlflowClient

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="broken.jsonl"):
        run(EvaluateConfig(datasets=f"bundled,{broken}@jsonl", max_items=2, device="cpu"))
    experiment = MlflowClient().get_experiment_by_name("distill-eval")
    assert experiment is None or not MlflowClient().search_runs([experiment.experiment_id])
