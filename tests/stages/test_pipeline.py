"""The pipeline on the embedded default, end to end in a temporary MLflow store: five child runs
chained by artifact URIs under one parent; a rerun reuses every step (no training, no LLM
request, no registration); a changed train parameter recomputes train and what follows only.
Without running anything: how the step configs are composed from the stage configs (derived
fields, sections, overrides, precedence) and how the step hash follows content."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from distill.cli import cli_fields, config_dict, field_default, parse_config
from distill.errors import ConfigError
from distill.stages import STAGES
from distill.stages.pipeline import (
    ROUTES,
    STEPS,
    TAG_HASH,
    TAG_REUSED,
    TAG_STEP,
    WIRING,
    PipelineConfig,
    content_digest,
    run,
    step_config,
    step_hash,
)
from distill.stages.register import gate_decision


def _children(client, parent_id: str):
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags[TAG_STEP]: r for r in runs}


@pytest.mark.slow
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
    assert children["evaluate"].data.params["adapter"] == children["train"].data.tags["train/model_uri"]
    assert children["evaluate"].data.params["adapter"].startswith(f"runs:/{ids['train']}/")
    assert children["register"].data.params["run_id"] == ids["train"]
    assert children["register"].data.params["predictions_run"] == ids["evaluate"]
    assert children["train"].data.tags["data.n_pairs_loaded"] == str(
        int(children["augment"].data.metrics["augment/accepted"])
    )
    # The training input is the augment run's artifact, with the digest of its rows.
    from distill.io import iter_jsonl
    from distill.tracking import rows_digest

    (training,) = [i.dataset for i in children["train"].inputs.dataset_inputs if i.tags[0].value == "training"]
    assert yaml.safe_load(training.source)["uri"] == f"runs:/{ids['augment']}/pairs"
    produced = Path(mlflow.artifacts.download_artifacts(f"runs:/{ids['augment']}/pairs/pairs.jsonl"))
    assert training.digest == rows_digest(row for _, row in iter_jsonl(produced))
    # The test split is evaluate's and register's: the pipeline's train run scores the dev split only.
    assert not [k for k in children["train"].data.metrics if k.startswith(("eval/", "compare/"))]
    assert "eval/accuracy" in children["evaluate"].data.metrics
    # Names tell the runs apart; the parent's description links every step.
    names = [r.info.run_name for r in [parent, *children.values()]]
    assert len(set(names)) == len(names), names
    for step in STEPS:
        assert f"/runs/{ids[step]})" in parent.data.tags["mlflow.note.content"], step

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
    assert {Path(a.path).name for a in client.list_artifacts(first.run_id, "report")} >= {"report.md", "subjects.csv"}

    experiment_id = parent.info.experiment_id
    stage_runs_before = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=1000
    )
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
        assert f"/runs/{ids[step]})" in marker.data.tags["mlflow.note.content"]
        assert not [k for k in marker.data.metrics if k.startswith("system/")]
    new_runs = [
        r
        for r in client.search_runs([experiment_id], max_results=1000)
        if r.info.run_id not in {x.info.run_id for x in stage_runs_before}
    ]
    assert {r.info.run_id for r in new_runs} == {second.run_id} | {m.info.run_id for m in markers.values()}
    assert not [r for r in new_runs if TAG_REUSED not in r.data.tags and r.info.run_id != second.run_id], (
        "no stage ran: no training, no LLM request"
    )
    assert {name: content_digest(path) for name, path in cache_files.items()} == caches, (
        "the response caches saw nothing new"
    )
    assert len(client.search_model_versions("name='distill-student'")) == len(versions_before)
    assert client.get_run(second.run_id).data.metrics["pipeline/n_reused"] == len(STEPS)
    assert client.get_run(second.run_id).data.metrics["eval/accuracy"] == parent.data.metrics["eval/accuracy"]

    # A changed train parameter: mine and augment reused, train and everything after it recomputed.
    third = run(PipelineConfig(max_steps=2, beta=0.2))
    assert {step: s.reused for step, s in third.steps.items()} == {
        "mine": True,
        "augment": True,
        "train": False,
        "evaluate": False,
        "register": False,
    }
    assert third.steps["train"].source_run_id != ids["train"]
    assert client.get_run(third.steps["train"].run_id).data.params["pairs"] == f"runs:/{ids['augment']}/pairs"


def test_step_hash_follows_content_not_paths(tmp_path):
    from distill.stages.evaluate import EvaluateConfig

    a = tmp_path / "a.jsonl"
    b = tmp_path / "b" / "items.jsonl"
    b.parent.mkdir()
    text = Path(EvaluateConfig().dataset_source).read_text(encoding="utf-8")
    a.write_text(text, encoding="utf-8")
    b.write_text(text, encoding="utf-8")
    same = step_hash("evaluate", EvaluateConfig(dataset=str(a), output_dir="x"))
    assert same == step_hash("evaluate", EvaluateConfig(dataset=str(b), output_dir="elsewhere", experiment="other"))
    b.write_text(text.replace("1", "2", 1), encoding="utf-8")
    assert step_hash("evaluate", EvaluateConfig(dataset=str(b))) != same
    assert step_hash("evaluate", EvaluateConfig(dataset=str(a), batch_size=4)) != same
    assert step_hash("train", EvaluateConfig(dataset=str(a))) != same


def test_step_hash_follows_the_content_of_each_set_in_a_list_with_formats(tmp_path):
    from distill.stages.register import RegisterConfig

    guard = tmp_path / "guard.jsonl"
    other = tmp_path / "other.jsonl"
    guard.write_text('{"id": "g1"}\n', encoding="utf-8")
    other.write_text('{"id": "o1"}\n', encoding="utf-8")
    sets = f"{guard}@jsonl,{other}"
    before = step_hash("register", RegisterConfig(guard_sets=sets))
    assert before == step_hash("register", RegisterConfig(guard_sets=sets))
    guard.write_text('{"id": "g2"}\n', encoding="utf-8")
    assert step_hash("register", RegisterConfig(guard_sets=sets)) != before
    changed = step_hash("register", RegisterConfig(guard_sets=sets))
    assert step_hash("register", RegisterConfig(guard_sets=f"{guard}@kmmlu,{other}")) != changed


def _stage_field(target: str) -> dataclasses.Field:
    step, name = target.split(".")
    return {f.name: f for f in dataclasses.fields(STAGES[step].config_class())}[name]


UPSTREAM = {
    "mine": {"run_id": "m", "hard_negatives": "runs:/m/mine/hard_negatives.jsonl"},
    "augment": {"run_id": "a", "pairs": "runs:/a/pairs"},
    "train": {"run_id": "t", "adapter": "runs:/t/adapter"},
    "evaluate": {"run_id": "e"},
}


@pytest.mark.parametrize(
    "name, target",
    [
        ("beta", "train.beta"),
        ("learning_rate", "train.learning_rate"),
        ("lora_rank", "train.lora_rank"),
        ("n_pairs", "train.n_pairs"),
        ("max_seeds", "mine.max_items"),
        ("plan", "augment.plan"),
        ("gate", "register.gate"),
        ("model_name", "register.model_name"),
    ],
)
def test_a_derived_field_has_the_stages_default_and_help(name, target):
    pipeline_field = {f.name: f for f in dataclasses.fields(PipelineConfig)}[name]
    source = _stage_field(target)
    assert field_default(pipeline_field) == field_default(source)
    assert pipeline_field.metadata["help"] == source.metadata["help"]
    assert pipeline_field.metadata[ROUTES] == (target,)
    assert getattr(step_config(PipelineConfig(), target.split(".")[0], UPSTREAM), target.split(".")[1]) == (
        field_default(source)
    )


def test_every_route_and_wire_names_a_stage_field():
    targets = [t for f in dataclasses.fields(PipelineConfig) for t in f.metadata.get(ROUTES, ())]
    targets += list(WIRING)
    for target in targets:
        step, name = target.split(".")
        assert step in STEPS and name in {f.name for f in dataclasses.fields(STAGES[step].config_class())}, target
    assert PipelineConfig().learning_rate == 2e-4, "the train stage's default, not a pipeline copy"


def test_shared_values_and_upstream_outputs_reach_every_step():
    cfg = PipelineConfig(student="my/model", eval_dataset="test.jsonl", eval_format="jsonl", seed=7, max_seeds=3)
    configs = {step: step_config(cfg, step, UPSTREAM) for step in STEPS}
    assert configs["train"].student == configs["evaluate"].model == "my/model"
    assert configs["mine"].student == "example-student", "the bundled recording answers as example-student"
    assert configs["mine"].max_items == 3 and configs["augment"].max_seeds is None
    assert configs["augment"].eval_sets == ["test.jsonl@jsonl"], "augment reads the test split in its format"
    assert step_config(PipelineConfig(eval_dataset="t.csv"), "augment").eval_sets == ["t.csv"], "auto: detected"
    assert configs["train"].eval_dataset == configs["evaluate"].dataset == configs["register"].dataset == "test.jsonl"
    assert configs["evaluate"].format == configs["register"].format == "jsonl" and configs["mine"].format == "auto"
    assert {c.seed for c in configs.values()} == {7}
    assert configs["augment"].hard_negatives == "runs:/m/mine/hard_negatives.jsonl"
    assert configs["register"].run_id == "t" and configs["register"].predictions_run == "e"
    assert configs["mine"].cache_path == str(Path("outputs/pipeline/mine/cache.sqlite"))
    assert configs["evaluate"].cache_path is None
    assert configs["train"].score_eval is False, "the test split is evaluate's and register's"
    generated = PipelineConfig(evaluate={"scoring": "generate"})
    assert step_config(generated, "register", UPSTREAM).predictions_run is None, "register scores logits itself"
    overridden = PipelineConfig(overrides="train.score_eval=true")
    assert step_config(overridden, "train", UPSTREAM).score_eval is True


def test_a_section_beats_the_pipeline_value_and_overrides_beat_the_section():
    cfg = PipelineConfig(beta=0.3, train={"beta": 0.2, "per_device_batch_size": "8"}, mine={"student_samples": 5})
    train = step_config(cfg, "train", UPSTREAM)
    assert train.beta == 0.2 and train.per_device_batch_size == 8
    assert step_config(cfg, "mine").student_samples == 5
    overridden = PipelineConfig(beta=0.3, train={"beta": 0.2}, overrides="train.beta=0.5")
    assert step_config(overridden, "train", UPSTREAM).beta == 0.5
    # Same parameters, same hash, whichever way they were given: a section does not break reuse.
    assert step_hash("train", train) == step_hash(
        "train", step_config(PipelineConfig(beta=0.2, overrides="train.per_device_batch_size=8"), "train", UPSTREAM)
    )


def test_an_unknown_section_key_names_the_section_and_the_key():
    with pytest.raises(ConfigError, match=r"'train'.*no_such_knob"):
        PipelineConfig(train={"no_such_knob": 1})
    with pytest.raises(ConfigError, match="'mine'"):
        PipelineConfig(mine=["student_samples"])


def test_pipeline_config_file_with_sections(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        "beta: 0.3\nlearning_rate: 1.0e-3\ntrain:\n  beta: 0.2\n  dev_fraction: 0.1\nmine:\n  student_samples: 5\n",
        encoding="utf-8",
    )
    cfg = parse_config(PipelineConfig, ["--config", str(run_yaml), "--epochs", "1"])
    train = step_config(cfg, "train", UPSTREAM)
    assert (train.beta, train.learning_rate, train.dev_fraction, train.epochs) == (0.2, 1e-3, 0.1, 1.0)
    assert step_config(cfg, "mine").student_samples == 5
    # Sections live in the config file only; and the logged config reads back to the same config.
    assert not {f.name for f in cli_fields(PipelineConfig)} & set(STEPS)
    with pytest.raises(SystemExit):
        parse_config(PipelineConfig, ["--train", "beta=0.2"])
    logged = tmp_path / "config.yaml"
    logged.write_text(yaml.safe_dump(config_dict(cfg)), encoding="utf-8")
    assert parse_config(PipelineConfig, ["--config", str(logged)]) == cfg
