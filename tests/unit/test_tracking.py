"""The tracking layer against a real MLflow store: the resolved config, datasets, one digest."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from distill import tracking
from distill.cli import parse_config


@dataclass
class WithSecret:
    """A config with a credential-looking field."""

    model: str = field(default="m", metadata={"help": "A model."})
    api_key: str | None = field(default=None, metadata={"help": "A key."})
    rate: float = field(default=0.1, metadata={"help": "A rate."})


def test_log_config_is_rerunnable_and_keeps_secrets_out(mlflow_store, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    cfg = WithSecret(model="sk-test-secret-value-in-a-path", api_key="sk-test-secret-value", rate=0.3)
    with mlflow.start_run() as run:
        tracking.log_config(cfg)
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="config.yaml", dst_path=str(tmp_path)
    )
    text = open(local, encoding="utf-8").read()
    assert "sk-test-secret-value" not in text and "api_key" not in text
    data = yaml.safe_load(text)
    assert data["rate"] == 0.3
    reread = parse_config(WithSecret, ["--config", local])
    assert reread.rate == 0.3 and reread.api_key is None


def test_one_digest_for_the_same_rows_and_dataset_inputs_carry_it(mlflow_store):
    import mlflow
    import pandas as pd

    rows = [{"id": "a", "x": 1}, {"id": "b", "x": 2}]
    assert tracking.rows_digest(rows) == tracking.rows_digest([dict(r) for r in rows])
    assert tracking.rows_digest(rows) != tracking.rows_digest(rows[::-1])
    digest = tracking.rows_digest(rows)
    with mlflow.start_run() as run:
        tracking.log_dataset(pd.DataFrame(rows), name="tiny", source="/data/tiny.jsonl", context="eval", digest=digest)
    inputs = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [digest]
    assert [t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context"] == ["eval"]


def test_tags_are_redacted(mlflow_store, monkeypatch):
    import mlflow

    monkeypatch.setenv("GEMINI_API_KEY", "AIza-secret-123456")
    with mlflow.start_run() as run:
        tracking.set_tags({"error": "401 for key AIza-secret-123456"})
    tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["error"] == "401 for key <GEMINI_API_KEY>"


def test_param_values_are_named_and_numbers_have_one_form():
    assert [tracking.param_text(v) for v in (3, 3.0, 0.1, 2e-4, True, False, None, [], ["a", 1.0])] == [
        "3",
        "3",
        "0.1",
        "0.0002",
        "true",
        "false",
        "none",
        "none",
        "a,1",
    ]
    assert tracking.param_text(None, "all") == "all"
    # what `mlflow run` logged and what a stage means by it
    for before, text in (("3.0", "3"), ("''", "bundled"), ("True", "true"), ("/data/x/pairs.jsonl", "pairs.jsonl")):
        assert tracking.same_param(before, text), (before, text)
    assert not tracking.same_param("3", "4") and not tracking.same_param("''", "59")
    assert tracking.round_significant(0.12520653814999466) == 0.1252
    assert [tracking.short_number(v) for v in (0.12520653814999466, 1.6e-4, 2e-4, 8, 16.0, 0.01)] == [
        "0.13",
        "1.6e-4",
        "2e-4",
        "8",
        "16",
        "0.01",
    ]


def test_config_params_put_paths_and_locations_in_tags_and_name_unset_values(tmp_path):
    from distill.cli import unset_field

    @dataclass
    class Cfg:
        """A config for this test."""

        data: str | None = unset_field("bundled", "Data.")
        model: str = field(default="Qwen/Qwen3-0.6B", metadata={"help": "A hub id is no path."})
        limit: int | None = unset_field("all", "Limit.")
        output_dir: str = field(default="outputs/x", metadata={"help": "Where."})
        api_key: str | None = field(default="secret", metadata={"help": "A key."})

    params, tags = tracking.config_params(Cfg())
    assert params == {"data": "bundled", "model": "Qwen/Qwen3-0.6B", "limit": "all"}
    assert tags == {"distill.output_dir": "outputs/x"}
    local = tmp_path / "my data.jsonl"
    local.write_text("{}\n", encoding="utf-8")
    params, tags = tracking.config_params(Cfg(data=str(local)), limit=59)
    assert params["data"] == "my data.jsonl" and tags["distill.path.data"] == str(local)
    assert params["limit"] == "59", "the effective value replaces the configured one"


def test_descriptions_link_runs_and_experiments_are_described(mlflow_store):
    import mlflow

    tracking.configure(None, "train")
    with mlflow.start_run(run_name="first") as first:
        pass
    with mlflow.start_run(run_name="second") as second:
        tracking.describe_run("line one\nline two", {"used": tracking.run_link(first.info.run_id)})
    client = mlflow.MlflowClient()
    note = client.get_run(second.info.run_id).data.tags["mlflow.note.content"]
    assert note.startswith(f"- used: [first](#/experiments/{first.info.experiment_id}/runs/{first.info.run_id})")
    assert "```text\nline one\nline two\n```" in note
    experiment = client.get_experiment(first.info.experiment_id)
    assert experiment.name == "distill-train" and "**register**" in experiment.tags["mlflow.note.content"]
    # A description the user wrote stays.
    client.set_experiment_tag(experiment.experiment_id, "mlflow.note.content", "mine")
    tracking.configure(None, "train")
    assert client.get_experiment(experiment.experiment_id).tags["mlflow.note.content"] == "mine"


def test_an_output_and_its_consumer_share_a_digest_and_a_runs_source(mlflow_store, tmp_path):
    import json

    import mlflow
    import pandas as pd
    import pytest

    rows = [{"id": "a", "x": 1}, {"id": "b", "x": 2}]
    with mlflow.start_run() as producer:
        uri = tracking.record_output("pairs", "pairs", rows)
    assert uri == f"runs:/{producer.info.run_id}/pairs"
    with mlflow.start_run() as consumer:
        dataset = tracking.log_dataset(pd.DataFrame(rows), name="pairs", source=uri, context="training", rows=rows)
        tracking.log_metrics({"dev/accuracy": 0.5}, dataset=dataset)
    client = mlflow.MlflowClient()
    (logged,) = client.get_run(consumer.info.run_id).inputs.dataset_inputs
    assert json.loads(logged.dataset.source) == {"uri": uri}
    assert logged.dataset.digest == client.get_run(producer.info.run_id).data.tags["distill.output.pairs.digest"]
    assert tracking.run_of_uri(uri) == producer.info.run_id
    # A temporary copy is no source: it would be gone when someone follows it.
    import tempfile

    temporary = tempfile.mkdtemp(prefix="distill-pairs-") + "/pairs.jsonl"
    with pytest.raises(ValueError, match="temporary copy"):
        tracking.dataset_source(temporary)
    assert tracking.dataset_source(str(tmp_path / "user.jsonl")) == str(tmp_path / "user.jsonl")


def test_system_metrics_are_sampled_on_request(mlflow_store, monkeypatch):
    import time

    import mlflow

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with tracking.start_run(run_name="sampled", system_metrics=True) as active:
        time.sleep(1.0)
    with tracking.start_run(run_name="plain") as plain:
        time.sleep(0.5)
    client = mlflow.MlflowClient()
    assert any(k.startswith("system/") for k in client.get_run(active.info.run_id).data.metrics)
    assert not any(k.startswith("system/") for k in client.get_run(plain.info.run_id).data.metrics)
