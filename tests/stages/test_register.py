"""The register stage against a real (temporary) MLflow store and model registry.

Two real adapters on the synthetic fact task: one trained for a single step at a tiny learning
rate (no gain on the held-out items) and one trained long enough to learn the facts (its gain on
the held-out items is measured, not assumed). The gate refuses the first, refuses the second when
alpha is set to its own p-value (p < alpha fails), registers it at alpha = 0.05, and gate=none
then forces the first in: the alias moves, the older version stays.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distill.stages.register import RegisterConfig, _pick_candidate, choose_best, gate_decision, run
from distill.stages.train import TrainConfig
from tests.sweep_helpers import synthetic_task

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, pairs: Path, heldout: Path, **kwargs):
    from distill.stages import train as training

    common = dict(
        pairs=str(pairs),
        eval_dataset=str(heldout),
        per_device_batch_size=8,
        lora_rank=8,
        lora_alpha=16,
        dev_fraction=0.1,
        bootstrap_samples=200,
        output_dir=str(tmp_path / "train"),
    )
    common.update(kwargs)
    return training.run(TrainConfig(**common))


def test_gate_refuses_registers_and_moves_the_alias(mlflow_store, tmp_path):
    import mlflow

    pairs, heldout = synthetic_task(tmp_path / "task", n_train=32, n_heldout=16)
    weak = _train(tmp_path, pairs, heldout, max_steps=1, learning_rate=1e-5)
    strong = _train(tmp_path, pairs, heldout, max_steps=40, learning_rate=5e-3, beta=1.0)
    # The learning claim, measured on held-out items by the train run itself.
    assert strong.metrics["compare/delta_accuracy"] > 0 and strong.metrics["compare/mcnemar_p"] < 0.05, strong.summary
    assert weak.metrics["compare/delta_accuracy"] <= 0, weak.summary

    client = mlflow.MlflowClient()
    common = dict(bootstrap_samples=200, output_dir=str(tmp_path / "register"))

    # 1. No gain: refused, and a refusal is an outcome (exit 0 from the entry point).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "register",
            "--run_id",
            weak.run_id,
            "--bootstrap_samples",
            "200",
            "--output_dir",
            str(tmp_path / "register"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED" in done.stdout and "no accuracy gain" in done.stdout
    assert client.search_registered_models() == []
    refused_run = client.search_runs(
        [client.get_experiment_by_name("distill-train").experiment_id],
        filter_string="tags.`distill.stage` = 'register'",
    )[0]
    assert refused_run.data.tags["distill.register.decision"] == "refused"
    assert "no accuracy gain" in refused_run.data.tags["distill.register.reason"]

    # 2. The best train run by a train metric is the strong one. Its gain is real but the gate
    #    needs p < alpha: with alpha equal to its own p-value, refused.
    p_value = strong.metrics["compare/mcnemar_p"]
    # (40 steps that learned the facts end at a lower loss than 1 step at a tiny learning rate)
    strict = run(RegisterConfig(metric="train/loss", direction="minimize", alpha=p_value, **common))
    assert strict.candidate_run_id == strong.run_id
    assert not strict.registered and "not significant" in strict.decision.reason
    assert strict.comparison["compare/mcnemar_p"] == pytest.approx(p_value)
    assert client.search_registered_models() == []

    # 3. At alpha = 0.05 it passes: version 1, alias champion.
    first = run(RegisterConfig(run_id=strong.run_id, alpha=0.05, **common))
    assert first.registered and first.version == "1"
    assert first.comparison["compare/delta_accuracy"] == pytest.approx(strong.metrics["compare/delta_accuracy"])
    champion = client.get_model_version_by_alias("distill-student", "champion")
    assert str(champion.version) == "1" and champion.run_id == strong.run_id
    tags = champion.tags
    assert tags["distill.source_run"] == strong.run_id and tags["distill.register_run"] == first.run_id
    assert tags["base_model"] == "tiny-qwen3"
    assert float(tags["compare.mcnemar_p"]) == pytest.approx(p_value, rel=1e-5)
    assert float(tags["eval.accuracy"]) == pytest.approx(strong.metrics["eval/accuracy"], rel=1e-5)
    assert float(tags["base.accuracy"]) == pytest.approx(strong.metrics["base/accuracy"], rel=1e-5)
    assert "base_model_path" not in tags, "the base as the user named it, no cache folder"
    assert any(key.startswith("dataset.training.") for key in tags), tags
    registered_run = client.get_run(first.run_id)
    # One digest per content: the test split shows the same digest in the train run, the
    # register run (same context, eval) and the version's tags.
    (test_input,) = [i.dataset for i in registered_run.inputs.dataset_inputs]
    (train_eval,) = [
        i.dataset for i in client.get_run(strong.run_id).inputs.dataset_inputs if i.tags[0].value == "eval"
    ]
    assert test_input.digest == train_eval.digest == tags["test_dataset.digest"] == tags["dataset.eval.heldout"]
    # The register run's test metrics are linked to the candidate's logged model and the test split.
    model = client.get_logged_model(strong.logged_model_uri.removeprefix("models:/"))
    assert {("eval/accuracy", first.run_id, "heldout")} <= {(m.key, m.run_id, m.dataset_name) for m in model.metrics}
    # Named after the candidate; described, with links; no base figures of its own.
    assert registered_run.info.run_name == f"register distill-student ← {strong.run_name}"
    note = registered_run.data.tags["mlflow.note.content"]
    for linked in (strong.run_id, registered_run.data.tags["distill.base_run.eval"]):
        assert f"/runs/{linked})" in note
    assert "#/models/distill-student/versions/1" in note
    assert not [k for k in registered_run.data.metrics if k.startswith("base")]
    # The version's description is its report.
    assert "| subject | n | base correct | trained correct | Δ |" in champion.description
    assert registered_run.data.tags["base.cache"] == "hit", "the base was scored by training already"
    train_tags = client.get_run(strong.run_id).data.tags
    assert registered_run.data.tags["base.cache_file"] == train_tags["base.cache_file"], "one cache entry for both"
    assert "config.yaml" in {a.path for a in client.list_artifacts(first.run_id)}
    assert registered_run.data.tags["distill.register.decision"] == "registered"
    report = mlflow.artifacts.load_text(f"runs:/{first.run_id}/report/report.md")
    assert "| subject | n | base correct | trained correct | Δ |" in report
    assert "McNemar p =" in report and "Registered as distill-student version 1" in report
    assert {Path(a.path).name for a in client.list_artifacts(first.run_id, "report")} >= {"report.md", "subjects.csv"}
    assert "charts.html" in {a.path for a in client.list_artifacts(first.run_id)}

    # The registered champion loads as an adapter.
    from distill.models import resolve_adapter

    assert (resolve_adapter("models:/distill-student@champion") / "adapter_config.json").is_file()

    # 4. gate=none forces the weak one in: the alias moves, version 1 stays.
    forced = run(RegisterConfig(run_id=weak.run_id, gate="none", **common))
    assert forced.registered and forced.version == "2"
    assert str(client.get_model_version_by_alias("distill-student", "champion").version) == "2"
    assert client.get_run(forced.run_id).data.tags["distill.register.previous_champion"] == "1"
    versions = sorted(int(v.version) for v in client.search_model_versions("name='distill-student'"))
    assert versions == [1, 2]
    assert client.get_model_version("distill-student", "1").tags["distill.source_run"] == strong.run_id


def test_candidates_of_a_sweep_are_its_finished_children(mlflow_store):
    """Selection among a sweep parent's children (runs made directly in the store: no training)."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("distill-sweep")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    values = {"a": 0.2, "b": 0.7, "c": 0.9, "d": 0.5}
    ids = {}
    for name, value in values.items():
        child = client.create_run(
            experiment_id, tags={"mlflow.parentRunId": parent, "train/model_uri": "runs:/x/adapter"}, run_name=name
        )
        ids[name] = child.info.run_id
        client.log_metric(ids[name], "dev/macro_f1", value)
        client.set_terminated(ids[name], "FAILED" if name == "c" else "FINISHED")
    other = client.create_run(experiment_id, tags={"train/model_uri": "runs:/y/adapter"}).info.run_id  # not a child
    client.log_metric(other, "dev/macro_f1", 0.99)
    client.set_terminated(other, "FINISHED")

    best, selection, value = _pick_candidate(client, RegisterConfig(sweep_run=parent))
    assert best.info.run_id == ids["b"] and value == 0.7, "c failed and `other` is no trial of this sweep"
    assert "sweep run" in selection
    worst, _, _ = _pick_candidate(client, RegisterConfig(sweep_run=parent, direction="minimize"))
    assert worst.info.run_id == ids["a"]


def test_gate_and_selection_rules():
    base = {"compare/delta_accuracy": 0.1, "compare/mcnemar_p": 0.01}
    assert gate_decision(base, gate="mcnemar", alpha=0.05).passed
    assert not gate_decision(base, gate="mcnemar", alpha=0.01).passed  # p < alpha is strict
    assert not gate_decision({**base, "compare/delta_accuracy": 0.0}, gate="mcnemar", alpha=0.5).passed
    assert not gate_decision(
        {"compare/delta_accuracy": -0.2, "compare/mcnemar_p": 0.001}, gate="mcnemar", alpha=0.05
    ).passed
    assert gate_decision({"compare/delta_accuracy": -0.2, "compare/mcnemar_p": 1.0}, gate="none", alpha=0.05).passed
    assert choose_best([("a", 0.5), ("b", float("nan")), ("c", 0.5), ("d", 0.2)], "maximize") == ("a", 0.5)
    assert choose_best([("a", 0.5), ("d", 0.2)], "minimize") == ("d", 0.2)
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match="test split"):
        RegisterConfig(metric="eval/accuracy")
    with pytest.raises(ConfigError, match="gate"):
        RegisterConfig(gate="maybe")


def test_predictions_run_scored_by_generation_is_refused(mlflow_store):
    """The base and the guards are logit-scored, so generated answers are no like-for-like candidate."""
    import mlflow

    from distill.errors import ConfigError
    from distill.stages.register import _check_predictions_run

    client = mlflow.MlflowClient()
    runs = {}
    for scoring in ("logits", "generate"):
        with mlflow.start_run(run_name=f"evaluate {scoring}") as r:
            mlflow.log_params({"adapter": "runs:/t/adapter", "model": "tiny-qwen3", "scoring": scoring})
        runs[scoring] = r.info.run_id
    _check_predictions_run(client, runs["logits"], adapter_uris=["runs:/t/adapter"], student="tiny-qwen3")
    with pytest.raises(ConfigError, match="scored by 'generate'"):
        _check_predictions_run(client, runs["generate"], adapter_uris=["runs:/t/adapter"], student="tiny-qwen3")
