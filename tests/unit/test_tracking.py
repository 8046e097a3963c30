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
