"""The `eda` stage: its config syntax, and a whole run on the bundled seeds, pairs and eval sample.

The overlap figures are tested on hand-made embeddings in tests/unit/eda/test_overlap.py, and on
real exams in tests/realdata/test_eda_realdata.py.
"""

from __future__ import annotations

import pytest

from distill.errors import ConfigError
from distill.stages.eda import EdaConfig, parse_dataset_spec, run, unique_names


def test_dataset_spec_syntax():
    assert parse_dataset_spec("data/a.json:kice") == ("data/a.json", "kice")
    assert parse_dataset_spec("data/a.csv") == ("data/a.csv", "auto")
    assert parse_dataset_spec("runs:/abc/items.jsonl") == ("runs:/abc/items.jsonl", "auto")
    assert parse_dataset_spec("runs:/abc/items.jsonl:jsonl") == ("runs:/abc/items.jsonl", "jsonl")
    assert unique_names(["a", "b", "a"]) == ["a", "b", "a_2"]


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="k must be"):
        EdaConfig(k=0)
    with pytest.raises(ConfigError, match="projection"):
        EdaConfig(projection="tsne")
    assert EdaConfig(eval_sets="a.json:kice, b.csv").eval_sets == ["a.json:kice", "b.csv"]


def test_run_on_bundled_data_logs_config_inputs_metrics_and_files(mlflow_store, tmp_path):
    import mlflow
    import yaml

    out = run(EdaConfig(projection="pca", dimensions=16, output_dir=str(tmp_path / "eda")))
    client = mlflow.MlflowClient()
    logged = client.get_run(out.run_id)
    assert logged.data.tags["distill.stage"] == "eda" and logged.data.tags["eda.projection"] == "pca"
    assert logged.data.params["k"] == "10"
    config = yaml.safe_load(open(client.download_artifacts(out.run_id, "config.yaml"), encoding="utf-8"))
    assert config["projection"] == "pca" and config["dimensions"] == 16
    names = {a.path for a in client.list_artifacts(out.run_id, "eda")}
    assert {"eda/map.html", "eda/overlap.html", "eda/overlap.json", "eda/summary.txt"} <= names
    assert {i.tags[0].value for i in logged.inputs.dataset_inputs} == {"seeds", "training", "eval"}
    assert logged.data.metrics["eda/n"] == len(out.overlap) > 0
    assert "eda/svd_energy_share" in logged.data.metrics and "eda/wall_s" in logged.data.metrics
    assert (out.output_dir / "points.parquet").is_file()
