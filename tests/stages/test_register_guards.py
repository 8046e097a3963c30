"""Forgetting guards in the register gate, against a real (temporary) MLflow store and registry.

One real adapter trained on the synthetic fact task (its gain on the held-out items is measured,
so it passes the main gate). Two guard sets are built from what the base and the adapter actually
answer: `worse` has the base's answers as gold, so every item the adapter changed is one it now
gets wrong; `equal` holds only items on which both give the same answer. `worse` blocks the
registration with a reason naming it; `equal` alone lets it through.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from distill.stages.register import RegisterConfig, run
from distill.stages.train import TrainConfig
from tests.sweep_helpers import synthetic_task

pytestmark = pytest.mark.slow


def _predictions(adapter_dir: Path, items):
    """(base predictions, adapter predictions) on `items`, scored here with the adapter off and on."""
    from distill.evaluation import evaluate_items
    from distill.models import load_student

    model, tokenizer = load_student("tiny-qwen3", adapter=str(adapter_dir), device="cpu")
    with model.disable_adapter():
        base = evaluate_items(model, tokenizer, items, progress=False).predictions["pred"].tolist()
    new = evaluate_items(model, tokenizer, items, progress=False).predictions["pred"].tolist()
    return base, new


def test_guard_sets_block_a_worse_candidate_and_pass_an_equal_one(mlflow_store, tmp_path):
    import mlflow

    from distill.data.loaders import load_items
    from distill.io import write_jsonl
    from distill.resources import resource_path
    from distill.stages import train as training

    pairs, heldout = synthetic_task(tmp_path / "task", n_train=32, n_heldout=16)
    strong = training.run(
        TrainConfig(
            pairs=str(pairs),
            eval_dataset=str(heldout),
            per_device_batch_size=8,
            lora_rank=8,
            lora_alpha=16,
            dev_fraction=0.1,
            bootstrap_samples=200,
            output_dir=str(tmp_path / "train"),
            max_steps=40,
            learning_rate=5e-3,
            beta=1.0,
        )
    )
    assert strong.metrics["compare/delta_accuracy"] > 0 and strong.metrics["compare/mcnemar_p"] < 0.05, strong.summary

    pool = load_items(heldout, require_answer=True) + load_items(resource_path("eval_sample.jsonl"))[:40]
    base, new = _predictions(strong.adapter_dir, pool)
    changed = [i for i, (b, n) in enumerate(zip(base, new)) if b != n]
    kept = [i for i, (b, n) in enumerate(zip(base, new)) if b == n]
    assert len(changed) >= 3 and len(kept) >= 10, (len(changed), len(kept))
    worse = write_jsonl(
        tmp_path / "worse.jsonl", (dataclasses.replace(pool[i], answer=base[i]).to_dict() for i in range(len(pool)))
    )
    equal = write_jsonl(tmp_path / "equal.jsonl", (pool[i].to_dict() for i in kept))
    common = dict(run_id=strong.run_id, bootstrap_samples=200, output_dir=str(tmp_path / "register"))
    client = mlflow.MlflowClient()

    # 1. A guard on which the candidate is worse blocks it, although the main gate passes.
    blocked = run(RegisterConfig(guard_sets=f"{worse}@jsonl,{equal}@jsonl", **common))
    assert not blocked.registered and client.search_registered_models() == []
    assert "forgetting guard failed on worse" in blocked.decision.reason, blocked.decision.reason
    assert "equal (" not in blocked.decision.reason.split("main gate passed")[0], "only the failing guard is named"
    assert "main gate passed: gain significant" in blocked.decision.reason
    figures = {g.name: g.figures for g in blocked.guards}
    assert figures["worse"]["base_accuracy"] == 1.0
    assert figures["worse"]["delta_accuracy"] == pytest.approx(-len(changed) / len(pool))
    assert figures["worse"]["delta_ci_low"] <= -0.02 and figures["worse"]["non_inferior"] == 0.0
    assert figures["equal"]["delta_accuracy"] == 0.0 and figures["equal"]["non_inferior"] == 1.0
    logged = client.get_run(blocked.run_id)
    assert logged.data.tags["distill.register.decision"] == "refused"
    assert "forgetting guard failed on worse" in logged.data.tags["distill.register.reason"]
    assert logged.data.tags["distill.register.guards"] == "worse:fail,equal:pass"
    assert logged.data.metrics["guard/worse/non_inferior"] == 0.0
    assert logged.data.metrics["guard/equal/delta_ci_low"] == 0.0
    # The margin is a parameter of the run, not a figure of each guard.
    assert "guard/equal/margin" not in logged.data.metrics
    assert float(logged.data.params["guard_margin"]) == pytest.approx(0.02)
    note = logged.data.tags["mlflow.note.content"]
    assert "guard     worse" in note and "WORSE" in note and "REFUSED" in note
    report = mlflow.artifacts.load_text(f"runs:/{blocked.run_id}/report/report.md")
    assert "| guard set | n | base accuracy | trained accuracy | Δ | 95% CI | non-inferior |" in report
    assert "| worse |" in report and "| NO |" in report
    contexts = {i.dataset.name: i.tags[0].value for i in logged.inputs.dataset_inputs}
    assert contexts["worse"] == contexts["equal"] == "guard"

    # 2. A guard on which it is equal lets it through; the version carries the guard's figures.
    passed = run(RegisterConfig(guard_sets=f"{equal}@jsonl", **common))
    assert passed.registered and passed.version == "1", passed.decision.reason
    assert "non-inferior (margin 0.02) on every guard set: equal" in passed.decision.reason
    assert passed.guards[0].base_hit, "the base on the guard set comes from the cache the first run filled"
    tags = client.get_model_version("distill-student", "1").tags
    assert float(tags["guard.equal.delta_accuracy"]) == 0.0 and tags["guard_margin"] == "0.02"

    # 3. A metric of the guard sets cannot choose the candidate.
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match="test split"):
        RegisterConfig(metric="guard/equal/delta_accuracy")
    with pytest.raises(ConfigError, match="guard_sets"):
        RegisterConfig(guard_sets="a.jsonl@xml")


def test_pipeline_passes_guard_sets_to_register():
    from distill.stages.pipeline import PipelineConfig, step_config

    cfg = PipelineConfig(guard_sets="a.jsonl,b.csv@kmmlu", guard_margin=0.05)
    register = step_config(cfg, "register")
    assert (register.guard_sets, register.guard_margin) == ("a.jsonl,b.csv@kmmlu", 0.05)
    assert [(g.name, g.format) for g in register.guards] == [("a", "auto"), ("b", "kmmlu")]
    default = step_config(PipelineConfig(), "register")
    assert (default.guard_sets, default.guard_margin, default.guards) == (None, 0.02, [])
