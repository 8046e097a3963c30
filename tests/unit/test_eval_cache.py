"""The one base-model evaluation cache that train and register share (`distill.eval_cache`).

Both stages call `cached_base_eval` with what they know of the base (name, resolved path,
thinking, 4-bit, compute dtype) and the items; the same arguments must land on the same entry,
the second call must score nothing, and a PeftModel must be scored with its adapter off."""

from __future__ import annotations

import numpy as np
import pytest

from distill.eval_cache import cached_base_eval
from distill.models import dtype_name, load_student, resolve_model_path
from tests.scoring_helpers import make_items


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty cache folder (the session's may already hold entries for these items)."""
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    resolve_model_path("tiny-qwen3")  # builds tiny-qwen3 into the new home once
    return tmp_path / "home"


def _arguments(**changes):
    arguments = dict(
        student="tiny-qwen3",
        student_path=resolve_model_path("tiny-qwen3"),
        thinking="off",
        load_in_4bit=False,
        dtype=dtype_name("cpu"),
        batch_size=4,
        progress=False,
    )
    arguments.update(changes)
    return arguments


def test_same_arguments_hit_the_same_entry_and_load_nothing(home):
    items = make_items(6)
    loads = []

    def load():
        loads.append(1)
        return load_student("tiny-qwen3", device="cpu")

    first = cached_base_eval(items, load=load, **_arguments())
    assert not first.hit and first.path.is_file() and first.path.parent == home / "eval_cache"
    assert len(loads) == 1

    # What register does after train: the same base, items and settings, another caller.
    second = cached_base_eval(items, load=load, **_arguments())
    assert second.hit and second.path == first.path
    assert len(loads) == 1, "a hit loads no model"
    assert second.result.metrics == first.result.metrics
    assert second.result.predictions["pred"].tolist() == first.result.predictions["pred"].tolist()

    # Anything that changes the base's predictions is another entry.
    for changes in (dict(thinking="on"), dict(dtype="bfloat16"), dict(load_in_4bit=True)):
        other = cached_base_eval(items, load=load, **_arguments(**changes))
        assert not other.hit and other.path != first.path, changes
    assert not cached_base_eval(items[:5], load=load, **_arguments()).hit


def test_a_model_with_an_adapter_is_scored_without_it(home, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    items = make_items(6)
    base, tokenizer = load_student("tiny-qwen3", device="cpu")
    plain = cached_base_eval(items, load=lambda: (base, tokenizer), **_arguments())

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapted = get_peft_model(load_student("tiny-qwen3", device="cpu")[0], config).eval()
    plain.path.unlink()  # score again, now through the adapter model with its adapter disabled
    again = cached_base_eval(items, load=lambda: (adapted, tokenizer), **_arguments())
    assert not again.hit
    assert again.result.predictions["pred"].tolist() == plain.result.predictions["pred"].tolist()
    score_columns = [c for c in plain.result.predictions.columns if c.startswith("score_")]
    assert np.allclose(
        again.result.predictions[score_columns], plain.result.predictions[score_columns], equal_nan=True, atol=1e-5
    )


def test_base_dev_figures_are_measured_once(home):
    from distill.eval_cache import cached_base_dev

    calls = []

    def measure():
        calls.append(1)
        return {"accuracy": 0.5, "margin": -0.1}

    arguments = dict(
        student="tiny-qwen3",
        student_path=resolve_model_path("tiny-qwen3"),
        rows_digest="abc",
        thinking="off",
        load_in_4bit=False,
        dtype="float32",
        max_length=256,
        max_prompt_length=200,
    )
    first = cached_base_dev(measure, **arguments)
    second = cached_base_dev(measure, **arguments)
    assert (first.hit, second.hit, len(calls)) == (False, True, 1)
    assert second.metrics == first.metrics == {"accuracy": 0.5, "margin": -0.1}
    assert not cached_base_dev(measure, **{**arguments, "rows_digest": "other"}).hit


def test_one_base_run_per_key_in_a_store(home, mlflow_store):
    import mlflow

    from distill.eval_cache import base_run

    items = make_items(6)
    cached = cached_base_eval(items, load=lambda: load_student("tiny-qwen3", device="cpu"), **_arguments())
    metrics = {k.split("/", 1)[1]: v for k, v in cached.result.headline.items()}
    with mlflow.start_run(run_name="a train run"):
        first = base_run(
            cached.path.stem,
            student="tiny-qwen3",
            split="items",
            context="eval",
            metrics=metrics,
            params={},
            result=cached.result,
        )
    with mlflow.start_run(run_name="another"):
        again = base_run(
            cached.path.stem,
            student="tiny-qwen3",
            split="items",
            context="eval",
            metrics=metrics,
            params={},
            result=cached.result,
        )
    assert first == again, "the second run links the same base run"
    logged = mlflow.MlflowClient().get_run(first)
    assert logged.info.run_name == "base tiny-qwen3 · items" and logged.data.tags["distill.stage"] == "base"
    assert logged.data.metrics["eval/accuracy"] == cached.result.metrics["eval/accuracy"]
    assert logged.data.tags["mlflow.note.content"] and logged.info.status == "FINISHED"
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(first, "evaluation")}
    assert "evaluation/predictions.parquet" in files
