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
    "train/rewards/accuracies",
    "train/rewards/margins",
    "train/learning_rate",
    "train/grad_norm",
)
"""TRL's per-step figures a run shows as metrics (the others are in train_history.json)."""


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


METRIC_BUDGET = 25
"""What the issue asks: a run carries at most about 25 headline metrics (system/* aside)."""


def _table(run_id: str, path: str) -> list[dict]:
    import mlflow

    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def test_train_run_logs_everything_and_the_model_reloads_by_uri(mlflow_store, tmp_path, capsys, monkeypatch):
    # An empty cache folder of its own, so the first base-model evaluation is a miss whatever
    # other tests have cached in the session's folder; system metrics sampled every second, so
    # this short run gets some.
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from distill.adapter_model import logged_model_name
    from distill.evaluation import dataset_digest
    from distill.io import iter_jsonl
    from distill.models import load_student
    from distill.tracking import rows_digest

    pairs, heldout = write_synthetic_task(tmp_path / "task", n_train=24, n_heldout=8)
    cfg = _config(tmp_path, pairs, heldout)
    out = run(cfg)
    printed = capsys.readouterr().out
    assert f"run      {out.run_id}" in printed and "base → adapter" in printed

    client = MlflowClient()
    logged = client.get_run(out.run_id)
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == "distill-train" and "train" in experiment.tags["mlflow.note.content"]
    params, metrics, tags = logged.data.params, logged.data.metrics, logged.data.tags

    # The name says what differs between runs (and the pairs actually trained).
    assert logged.info.run_name == out.run_name == f"train orpo λ=0.1 r=16 lr=0.01 pairs={out.n_train}"

    # Parameters: the config with what this run used; no '' anywhere, no paths, no duplicates.
    assert params["student"] == "tiny-qwen3" and params["beta"] == "0.1" and params["max_steps"] == "3"
    assert params["n_pairs"] == str(out.n_train) and params["n_dev_pairs"] == str(out.n_dev)
    assert params["pairs"] == "pairs.jsonl" and tags["distill.path.pairs"] == str(pairs.resolve())
    assert params["load_in_4bit"] == "false" and params["compute_dtype"] == "float32"
    assert "" not in params.values() and "''" not in params.values()
    assert not {"backend", "student_path", "pairs_path", "output_dir", "experiment"} & set(params)
    assert out.n_train + out.n_dev == 24 and out.n_dev == 6
    assert tags["train/backend"] == "lora" and "no CUDA GPU" in tags["train/backend_notes"]

    # A budget of headline metrics whose names sort what is compared first; no base figures,
    # nothing per subject; system metrics beside them.
    headline = sorted(k for k in metrics if not k.startswith("system/"))
    assert len(headline) <= METRIC_BUDGET, headline
    assert not [k for k in headline if k.startswith(("base", "data/")) or (k.count("/") > 1 and "rewards" not in k)]
    assert headline[0].startswith("compare/") and headline[-1].startswith("train/")
    assert any(k.startswith("system/cpu") for k in metrics) and any("memory" in k for k in metrics)

    # TRL's chosen per-step metrics under train/, one value per optimizer step, all finite; the
    # rest in the step history.
    for name in TRL_STEP_METRICS:
        history = client.get_metric_history(out.run_id, name)
        assert [m.step for m in history] == [1, 2, 3], name
        assert all(m.value == m.value and abs(m.value) != float("inf") for m in history), name
    assert "train/logps/chosen" not in metrics
    steps = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="train_history.json")).read_text()
    )
    assert [row["step"] for row in steps if "train/logps/chosen" in row] == [1, 2, 3]
    assert out.steps == 3
    assert "0 over the limits" in tags["data.overlong"] and tags["data.n_pairs_loaded"] == "24"

    # Lineage: the pairs file as the training input (its own digest: the rows as read), the dev
    # split, the eval set; the user's files as sources.
    inputs = {}
    for dataset_input in logged.inputs.dataset_inputs:
        context = {t.key: t.value for t in dataset_input.tags}.get("mlflow.data.context")
        inputs[context] = dataset_input.dataset
    assert set(inputs) == {"training", "dev", "eval"}
    assert inputs["training"].digest == rows_digest(row for _, row in iter_jsonl(pairs))
    assert json.loads(inputs["training"].source)["uri"] == str(pairs.resolve())
    schema = json.loads(inputs["training"].schema)["mlflow_colspec"]
    assert {c["name"] for c in schema} >= {"id", "subject", "prompt", "chosen", "rejected"}
    assert json.loads(inputs["training"].profile)["num_rows"] == out.n_train
    from distill.contracts import MCQItem

    eval_items = [MCQItem(**{**row, "choices": tuple(row["choices"])}) for _, row in iter_jsonl(heldout)]
    assert inputs["eval"].digest == dataset_digest(eval_items) and inputs["eval"].name == "heldout"
    # The dev split is made by this run: its rows are the run's artifact, recorded as an output.
    assert (
        json.loads(inputs["dev"].source)["uri"]
        == tags["distill.output.dev"]
        == f"runs:/{out.run_id}/data/dev_rows.jsonl"
    )
    dev_file = mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="data/dev_rows.jsonl")
    assert inputs["dev"].digest == tags["distill.output.dev.digest"] == rows_digest(r for _, r in iter_jsonl(dev_file))
    assert "pairs.jsonl" in {Path(a.path).name for a in client.list_artifacts(out.run_id, "pairs")}
    assert "config.yaml" in {a.path for a in client.list_artifacts(out.run_id)}

    # Eval on the held-out items with the adapter, the comparison with the base, dev.
    for name in (
        "eval/accuracy",
        "eval/macro_f1",
        "compare/delta_accuracy",
        "compare/mcnemar_p",
        "compare/delta_ci_low",
        "compare/delta_ci_high",
        "dev/reward_accuracy",
        "dev/margin",
        "dev/accuracy",
        "dev/macro_f1",
    ):
        assert name in metrics, name
    assert tags["base.cache"] == "miss"
    # The base's own figures are the base runs', linked (tag and description), not repeated here.
    base_eval = client.get_run(tags["distill.base_run.eval"])
    base_dev = client.get_run(tags["distill.base_run.dev"])
    assert base_eval.data.tags["distill.stage"] == base_dev.data.tags["distill.stage"] == "base"
    assert metrics["compare/delta_accuracy"] == pytest.approx(
        metrics["eval/accuracy"] - base_eval.data.metrics["eval/accuracy"]
    )
    assert base_eval.data.metrics["eval/accuracy"] == pytest.approx(out.metrics["base/accuracy"])
    assert base_dev.data.metrics["dev/accuracy"] == pytest.approx(out.metrics["base_dev/accuracy"])
    assert {row["subject"] for row in _table(out.run_id, "subjects.json")} == {"인물"}
    assert _table(out.run_id, "subjects.json")[0]["base_accuracy"] == pytest.approx(out.metrics["base/accuracy"])
    note = tags["mlflow.note.content"]
    for linked in (base_eval.info.run_id, base_dev.info.run_id):
        assert f"#/experiments/{logged.info.experiment_id}/runs/{linked}" in note
    assert f"run      {out.run_id}" in note

    # The adapter is a pyfunc model (not the transformers flavor) named after the run, recording
    # its base model as the user named it; its page lists the data it was evaluated on.
    model_uri = f"runs:/{out.run_id}/{logged_model_name(out.run_name)}"
    assert out.model_uri == model_uri and tags["train/model_uri"] == model_uri
    info = mlflow.models.get_model_info(model_uri)
    assert set(info.flavors) == {"python_function"}
    assert info.metadata["distill"]["base_model"] == "tiny-qwen3"
    assert info.metadata["distill"]["base_model_seed"] == 0
    model = client.get_logged_model(out.logged_model_uri.removeprefix("models:/"))
    assert f"#/experiments/{logged.info.experiment_id}/models/{model.model_id}" in note
    linked = {(m.key, m.dataset_name, m.dataset_digest) for m in model.metrics}
    assert ("eval/accuracy", "heldout", inputs["eval"].digest) in linked
    assert ("dev/accuracy", "pairs-dev", inputs["dev"].digest) in linked
    assert ("train/wall_s", "pairs", inputs["training"].digest) in linked

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

    # A second run reads pairs another run wrote (runs:/ URI): its training input's source is
    # that URI and its digest the one the producer recorded. On the same base and items it reads
    # the base evaluation from the cache and links the same base run; its limits put every pair
    # over max_prompt_length, so all are truncated (and counted), and TRL trains on the cut rows.
    # (Other pairs than the first run's: MLflow keeps one record per dataset name and digest, with
    # the source it was first logged with.)
    produced_pairs, _ = write_synthetic_task(tmp_path / "produced", n_train=24, n_heldout=8, seed=1)
    with mlflow.start_run(run_name="producer") as producer:
        mlflow.log_artifact(str(produced_pairs), "pairs")
        from distill.tracking import OUTPUT_TAG, record_output

        record_output("pairs", "pairs", (row for _, row in iter_jsonl(produced_pairs)))
    again = run(
        _config(
            tmp_path,
            f"runs:/{producer.info.run_id}/pairs",
            heldout,
            max_steps=1,
            overlong="truncate",
            max_prompt_length=64,
            max_length=128,
        )
    )
    second = client.get_run(again.run_id)
    (training,) = [i.dataset for i in second.inputs.dataset_inputs if i.tags[0].value == "training"]
    produced = client.get_run(producer.info.run_id).data.tags
    assert (
        json.loads(training.source)["uri"] == produced[OUTPUT_TAG + "pairs"] == f"runs:/{producer.info.run_id}/pairs"
    )
    assert training.digest == produced[OUTPUT_TAG + "pairs.digest"] != inputs["training"].digest
    assert not client.list_artifacts(again.run_id, "pairs"), "the producer's artifact is not copied"
    assert f"runs/{producer.info.run_id}" in second.data.tags["mlflow.note.content"]
    assert second.data.tags["base.cache"] == "hit"
    assert second.data.tags["base.cache_file"] == tags["base.cache_file"]
    assert second.data.tags["distill.base_run.eval"] == tags["distill.base_run.eval"]
    assert again.overlong.max_prompt_tokens > 64
    assert again.overlong.n_overlong == again.overlong.n_truncated == again.n_train == 18
    assert again.overlong.n_dropped == 0 and "18 truncated" in second.data.tags["data.overlong"]
    assert abs(second.data.metrics["train/loss"]) < float("inf")


def test_a_trial_run_that_would_score_the_test_split_is_refused(mlflow_store, tmp_path):
    """The test split is touched once: a run tagged as a sweep trial must not score it."""
    import mlflow

    from distill.errors import ConfigError
    from distill.sweep_runs import trial_tags

    pairs, heldout = write_synthetic_task(tmp_path / "task", n_train=8, n_heldout=2)
    with pytest.raises(ConfigError, match="dev split only"):
        run(_config(tmp_path, pairs, heldout), run_tags=trial_tags("study", 0, "0" * 32, "worker"))
    assert mlflow.search_runs(search_all_experiments=True).empty


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
