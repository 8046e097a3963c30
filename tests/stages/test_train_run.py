"""The train stage end to end in a real (temporary) MLflow store, read back with MlflowClient:
params, TRL's step metrics, the dataset input, the pyfunc adapter (reloaded by URI with the same
logits), eval/base/compare and dev metrics, the base-eval cache; and bad pair files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import InputError
from distill.stages.train import TrainConfig, run
from tests.train_helpers import write_jsonl, write_synthetic_task

pytestmark = pytest.mark.slow

TRL_STEP_METRICS = (
    "train/loss",
    "train/nll_loss",
    "train/log_odds_ratio",
    "train/log_odds_chosen",
    "train/rewards/chosen",
    "train/rewards/rejected",
    "train/rewards/accuracies",
    "train/rewards/margins",
)


def _config(tmp_path: Path, pairs: Path, heldout: Path, **changes) -> TrainConfig:
    values = dict(
        pairs=str(pairs),
        eval_dataset=str(heldout),
        dev_fraction=0.25,
        max_steps=3,
        per_device_batch_size=4,
        max_length=256,
        max_prompt_length=200,
        learning_rate=1e-2,
        bootstrap_samples=100,
        output_dir=str(tmp_path / "outputs"),
    )
    values.update(changes)
    return TrainConfig(**values)


def _logits(model, tokenizer, text: str):
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_train_run_logs_everything_and_the_model_reloads_by_uri(mlflow_store, tmp_path, capsys, monkeypatch):
    # An empty cache folder of its own, so the first base-model evaluation is a miss whatever
    # other tests have cached in the session's folder.
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from distill.models import load_student

    pairs, heldout = write_synthetic_task(tmp_path / "task", n_train=24, n_heldout=8)
    cfg = _config(tmp_path, pairs, heldout)
    out = run(cfg)
    printed = capsys.readouterr().out
    assert f"run      {out.run_id}" in printed and "base → adapter" in printed

    client = MlflowClient()
    logged = client.get_run(out.run_id)
    assert client.get_experiment(logged.info.experiment_id).name == "distill-train"
    params, metrics, tags = logged.data.params, logged.data.metrics, logged.data.tags

    # Parameters: the config, and what it resolved to on this machine.
    assert params["student"] == "tiny-qwen3" and params["beta"] == "0.1" and params["max_steps"] == "3"
    assert params["pairs"] == str(pairs) and params["backend"] == "lora"
    assert params["n_train_pairs"] == str(out.n_train) and params["n_dev_pairs"] == str(out.n_dev)
    assert out.n_train + out.n_dev == 24 and out.n_dev == 6
    assert tags["train/backend"] == "lora" and "no CUDA GPU" in tags["train/backend_notes"]

    # TRL's per-step metrics under train/, one value per optimizer step, all finite.
    for name in TRL_STEP_METRICS:
        history = client.get_metric_history(out.run_id, name)
        assert [m.step for m in history] == [1, 2, 3], name
        assert all(m.value == m.value and abs(m.value) != float("inf") for m in history), name
    assert out.steps == 3 and metrics["train/steps"] == 3
    assert (
        metrics["data/n_train"] == out.n_train and metrics["data/n_overlong"] == 0 and metrics["data/n_dropped"] == 0
    )

    # The training set as a dataset input (context training); the pairs file as an artifact.
    contexts = {}
    for dataset_input in logged.inputs.dataset_inputs:
        context = {t.key: t.value for t in dataset_input.tags}.get("mlflow.data.context")
        contexts[context] = dataset_input.dataset
    assert {"training", "dev", "eval"} <= set(contexts)
    schema = json.loads(contexts["training"].schema)["mlflow_colspec"]
    assert {c["name"] for c in schema} >= {"id", "subject", "prompt", "chosen", "rejected"}
    assert json.loads(contexts["training"].profile)["num_rows"] == out.n_train
    assert "pairs.jsonl" in {Path(a.path).name for a in client.list_artifacts(out.run_id, "pairs")}
    assert "config.yaml" in {a.path for a in client.list_artifacts(out.run_id)}

    # Eval on the held-out items with the adapter, the base model on the same items, the comparison, dev.
    for name in (
        "eval/accuracy",
        "eval/macro_f1",
        "base/accuracy",
        "base/macro_f1",
        "compare/delta_accuracy",
        "compare/mcnemar_p",
        "compare/delta_ci_low",
        "compare/delta_ci_high",
        "dev/reward_accuracy",
        "dev/margin",
        "dev/accuracy",
        "dev/macro_f1",
        "base_dev/reward_accuracy",
        "base_dev/margin",
        "base_dev/accuracy",
    ):
        assert name in metrics, name
    assert metrics["compare/delta_accuracy"] == pytest.approx(metrics["eval/accuracy"] - metrics["base/accuracy"])
    assert tags["base.cache"] == "miss"

    # The adapter is a pyfunc model (not the transformers flavor) recording its base model.
    model_uri = f"runs:/{out.run_id}/adapter"
    assert out.model_uri == model_uri and tags["train/model_uri"] == model_uri
    info = mlflow.models.get_model_info(model_uri)
    assert set(info.flavors) == {"python_function"}
    assert info.metadata["distill"]["base_model"] == "tiny-qwen3"
    assert info.metadata["distill"]["base_model_seed"] == 0
    assert Path(info.metadata["distill"]["base_model_path"]).is_dir()

    # Loading by URI reproduces the trained adapter's logits exactly ...
    text = "<|im_start|>user\n한글을 만든 왕은?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n정답: "
    by_uri, tokenizer = load_student("tiny-qwen3", adapter=model_uri)
    local, _ = load_student("tiny-qwen3", adapter=str(out.adapter_dir))
    base, _ = load_student("tiny-qwen3")
    assert (_logits(by_uri, tokenizer, text) == _logits(local, tokenizer, text)).all()
    assert not (_logits(by_uri, tokenizer, text) == _logits(base, tokenizer, text)).all(), (
        "the adapter changes the model"
    )

    # ... and the pyfunc model predicts what the run's own evaluation recorded.
    logged_predictions = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="evaluation/predictions.parquet")
    )
    items = pd.DataFrame([json.loads(line) for line in heldout.read_text(encoding="utf-8").splitlines()])
    predicted = mlflow.pyfunc.load_model(model_uri).predict(items)
    assert predicted["id"].tolist() == logged_predictions["id"].tolist()
    assert predicted["pred"].tolist() == logged_predictions["pred"].tolist()
    for k in (1, 2, 3, 4):
        assert predicted[f"score_{k}"].tolist() == logged_predictions[f"score_{k}"].tolist()

    # A second run on the same base and items reads the base evaluation from the cache; its
    # limits put every pair over max_prompt_length, so all are truncated (and counted), and
    # TRL trains on the cut rows.
    again = run(
        _config(tmp_path, pairs, heldout, max_steps=1, overlong="truncate", max_prompt_length=64, max_length=128)
    )
    second = client.get_run(again.run_id)
    assert second.data.tags["base.cache"] == "hit"
    assert second.data.tags["base.cache_file"] == tags["base.cache_file"]
    assert second.data.metrics["base/accuracy"] == metrics["base/accuracy"]
    assert second.data.metrics["data/max_prompt_tokens"] > 64
    assert second.data.metrics["data/n_overlong"] == second.data.metrics["data/n_truncated"] == again.n_train == 18
    assert second.data.metrics["data/n_dropped"] == 0
    assert abs(second.data.metrics["train/loss"]) < float("inf")


def _bad_pairs(tmp_path: Path, change) -> Path:
    pairs, _ = write_synthetic_task(tmp_path / "task", n_train=6, n_heldout=2)
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    change(rows[2])
    return write_jsonl(tmp_path / "bad_pairs.jsonl", rows)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda row: row.pop("rejected"), "rejected"),
        (lambda row: row.update(chosen=""), "chosen"),
        (lambda row: row.update(chosen=row["rejected"]), "rejected"),
    ],
)
def test_bad_pairs_fail_before_any_run(mlflow_store, tmp_path, change, field):
    import mlflow

    bad = _bad_pairs(tmp_path, change)
    with pytest.raises(InputError) as info:
        run(TrainConfig(pairs=str(bad), output_dir=str(tmp_path / "outputs")))
    assert (info.value.path, info.value.row, info.value.field) == (str(bad), 3, field)
    assert mlflow.search_runs(search_all_experiments=True).empty, "no MLflow run for bad input"


def test_all_pairs_over_the_limit_with_drop_is_a_clear_error(mlflow_store, tmp_path):
    import mlflow

    from distill.errors import ConfigError

    pairs, heldout = write_synthetic_task(tmp_path / "task", n_train=8, n_heldout=2)
    with pytest.raises(ConfigError, match=r"all 6 training pairs are over the limits .* overlong=truncate"):
        run(_config(tmp_path, pairs, heldout, overlong="drop", max_prompt_length=16, max_length=32))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_bad_pairs_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    bad = _bad_pairs(tmp_path, lambda row: row.update(chosen=row["rejected"]))
    result = subprocess.run(
        [sys.executable, "-m", "distill", "train", "--pairs", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == f"error: {bad}, row 3, field 'rejected': chosen and rejected are the same text"
