"""The `eda` stage: its config syntax, and a whole run on the bundled seeds, pairs and eval sample.

The overlap figures are tested on hand-made embeddings in tests/unit/eda/test_overlap.py, and on
real exams in tests/realdata/test_eda_realdata.py.
"""

from __future__ import annotations

import pytest

from distill.errors import ConfigError
from distill.stages.eda import EdaConfig, eval_sets_of, run


def test_eval_sets_use_the_evaluate_stage_syntax_and_keep_the_training_sets_names():
    sets = eval_sets_of(EdaConfig(eval_sets="data/a.json@kice, data/seeds.csv, runs:/abc/items.jsonl@jsonl"))
    assert [(s.name, s.path, s.format) for s in sets] == [
        ("a", "data/a.json", "kice"),
        ("seeds-2", "data/seeds.csv", "auto"),  # "seeds" names the training seeds
        ("items", "runs:/abc/items.jsonl", "jsonl"),
    ]
    assert [s.name for s in eval_sets_of(EdaConfig())] == ["eval_sample"]


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="k must be"):
        EdaConfig(k=0)
    with pytest.raises(ConfigError, match="projection"):
        EdaConfig(projection="tsne")
    assert EdaConfig(eval_sets="a.json@kice, b.csv").eval_sets == ["a.json@kice", "b.csv"]
    with pytest.raises(ConfigError, match="eval_sets"):
        EdaConfig(eval_sets="a.json@nosuchformat")


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
