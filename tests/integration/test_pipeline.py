"""The pipeline on the embedded default, end to end in a temporary MLflow store: five child runs
chained by artifact URIs under one parent; a rerun reuses every step (no training, no LLM
request, no registration); a changed train parameter recomputes train and what follows only."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.pipeline import STEPS, TAG_HASH, TAG_REUSED, TAG_STEP, PipelineConfig, content_digest, run, step_hash
from distill.registry import gate_decision

pytestmark = pytest.mark.slow


def _children(client, parent_id: str):
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags[TAG_STEP]: r for r in runs}


def test_default_pipeline_then_a_rerun_that_reuses_every_step(mlflow_store, tmp_path):
    import mlflow

    client = mlflow.MlflowClient()
    first = run(PipelineConfig())
    assert [s.step for s in first.steps.values()] == list(STEPS)
    assert not any(s.reused for s in first.steps.values())

    parent = client.get_run(first.run_id)
    assert client.get_experiment(parent.info.experiment_id).name == "distill-pipeline"
    assert parent.data.tags["distill.stage"] == "pipeline"
    children = _children(client, first.run_id)
    assert sorted(children) == sorted(STEPS), "one child run per step"
    ids = {step: children[step].info.run_id for step in STEPS}
    for step, child in children.items():
        assert child.info.status == "FINISHED" and child.data.tags["distill.stage"] == step
        assert child.data.tags[TAG_HASH] == first.steps[step].step_hash
        assert child.info.experiment_id == parent.info.experiment_id

    # Outputs travel as artifact URIs from each step to the next.
    assert children["augment"].data.params["hard_negatives"] == f"runs:/{ids['mine']}/mine/hard_negatives.jsonl"
    assert children["train"].data.params["pairs"] == f"runs:/{ids['augment']}/pairs"
    assert children["evaluate"].data.params["adapter"] == f"runs:/{ids['train']}/adapter"
    assert children["register"].data.params["run_id"] == ids["train"]
    assert children["register"].data.params["predictions_run"] == ids["evaluate"]
    assert children["train"].data.metrics["data/n_pairs_loaded"] == children["augment"].data.metrics["augment/accepted"]

    # The register decision is the gate applied to what was measured.
    register = children["register"]
    measured = {k: v for k, v in register.data.metrics.items() if k.startswith("compare/")}
    expected = gate_decision(measured, gate="mcnemar", alpha=0.05)
    assert first.registered == expected.passed
    assert register.data.tags["distill.register.decision"] == ("registered" if expected.passed else "refused")
    assert parent.data.tags["distill.register.decision"] == register.data.tags["distill.register.decision"]
    assert parent.data.metrics["eval/accuracy"] == register.data.metrics["eval/accuracy"]
    assert parent.data.metrics["compare/mcnemar_p"] == register.data.metrics["compare/mcnemar_p"]
    report = mlflow.artifacts.load_text(f"runs:/{first.run_id}/report/report.md")
    assert "| subject | n | base correct | trained correct | Δ |" in report and "McNemar p =" in report
    assert {Path(a.path).name for a in client.list_artifacts(first.run_id, "report")} >= {"report.md", "subjects.html"}

    experiment_id = parent.info.experiment_id
    stage_runs_before = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=1000)
    versions_before = client.search_model_versions("name='distill-student'")
    cache_files = {name: Path("outputs/pipeline") / name / "cache.sqlite" for name in ("mine", "augment")}
    assert all(path.is_file() for path in cache_files.values())
    caches = {name: content_digest(path) for name, path in cache_files.items()}

    # A rerun with nothing changed: every step reused, nothing recomputed.
    second = run(PipelineConfig())
    assert all(s.reused for s in second.steps.values())
    assert {step: s.source_run_id for step, s in second.steps.items()} == ids
    markers = _children(client, second.run_id)
    assert sorted(markers) == sorted(STEPS)
    for step, marker in markers.items():
        assert marker.data.tags[TAG_REUSED] == ids[step]
        assert TAG_HASH not in marker.data.tags, "a reuse marker is never itself reused"
    new_runs = [r for r in client.search_runs([experiment_id], max_results=1000) if r.info.run_id not in {x.info.run_id for x in stage_runs_before}]
    assert {r.info.run_id for r in new_runs} == {second.run_id} | {m.info.run_id for m in markers.values()}
    assert not [r for r in new_runs if TAG_REUSED not in r.data.tags and r.info.run_id != second.run_id], "no stage ran: no training, no LLM request"
    assert {name: content_digest(path) for name, path in cache_files.items()} == caches, "the response caches saw nothing new"
    assert len(client.search_model_versions("name='distill-student'")) == len(versions_before)
    assert client.get_run(second.run_id).data.metrics["pipeline/n_reused"] == len(STEPS)
    assert client.get_run(second.run_id).data.metrics["eval/accuracy"] == parent.data.metrics["eval/accuracy"]

    # A changed train parameter: mine and augment reused, train and everything after it recomputed.
    third = run(PipelineConfig(max_steps=2, beta=0.2))
    assert {step: s.reused for step, s in third.steps.items()} == {"mine": True, "augment": True, "train": False, "evaluate": False, "register": False}
    assert third.steps["train"].source_run_id != ids["train"]
    assert client.get_run(third.steps["train"].run_id).data.params["pairs"] == f"runs:/{ids['augment']}/pairs"


def test_step_hash_follows_content_not_paths(tmp_path):
    from distill.evaluation import EvaluateConfig

    a = tmp_path / "a.jsonl"
    b = tmp_path / "b" / "items.jsonl"
    b.parent.mkdir()
    text = Path(EvaluateConfig().dataset).read_text(encoding="utf-8")
    a.write_text(text, encoding="utf-8")
    b.write_text(text, encoding="utf-8")
    same = step_hash("evaluate", EvaluateConfig(dataset=str(a), output_dir="x"))
    assert same == step_hash("evaluate", EvaluateConfig(dataset=str(b), output_dir="elsewhere", experiment="other"))
    b.write_text(text.replace("1", "2", 1), encoding="utf-8")
    assert step_hash("evaluate", EvaluateConfig(dataset=str(b))) != same
    assert step_hash("evaluate", EvaluateConfig(dataset=str(a), batch_size=4)) != same
    assert step_hash("train", EvaluateConfig(dataset=str(a))) != same
