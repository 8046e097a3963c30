"""Every `method` trains through the train stage on tiny-qwen3 and logs the same metric names,
so runs of different methods compare in one MLflow table; the run says which method it was.
DPO's reference is the base itself (the adapter disabled), not a second copy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distill.errors import DistillError
from distill.stages.train import TrainConfig, run
from tests.train_helpers import write_synthetic_task

pytestmark = pytest.mark.slow

METHODS = ("orpo", "dpo", "simpo", "sft")


def test_each_method_trains_and_logs_the_same_metric_names(mlflow_store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    pairs, heldout = write_synthetic_task(tmp_path / "task", n_train=12, n_heldout=4, seed=0)
    client = MlflowClient()
    names, histories = {}, {}
    for method in METHODS:
        cfg = TrainConfig(
            pairs=str(pairs),
            method=method,
            rpo_alpha=1.0,
            dev_fraction=0.25,
            score_eval=False,
            max_steps=2,
            per_device_batch_size=4,
            max_length=256,
            max_prompt_length=200,
            learning_rate=1e-2,
            output_dir=str(tmp_path / "outputs"),
        )
        out = run(cfg)
        data = client.get_run(out.run_id).data
        names[method] = {k for k in data.metrics if not k.startswith("system/")}
        histories[method] = out
        assert data.tags["train/method"] == method
        assert out.run_name.split()[1] == method
        assert out.steps == 2
        assert any(k.startswith("train/") for k in names[method]) and any(k.startswith("dev/") for k in names[method])
    assert all(names[m] == names["orpo"] for m in METHODS), {m: sorted(names[m] ^ names["orpo"]) for m in METHODS}
    assert "λ=" in histories["orpo"].run_name and "γ=" in histories["simpo"].run_name
    assert "β=" in histories["dpo"].run_name and "λ=" not in histories["sft"].run_name
    assert "DPO β=0.1 α=1" in histories["dpo"].summary


@pytest.mark.parametrize("load_in_4bit", ["false", "true"])
def test_dpo_reference_is_the_base_with_the_adapter_disabled(tmp_path, load_in_4bit):
    """LoRA starts with B = 0, so at the first step the policy *is* the reference: DPO's
    implicit rewards are exactly 0 (a reference other than the base would not give 0). After a
    step they move. The same on the QLoRA path (4-bit through bitsandbytes' CPU path)."""
    from distill.models import resolve_model_path
    from distill.pairs import load_pairs
    from distill.training import decide_backend, load_for_training, preference_rows, train_preference

    pairs, _ = write_synthetic_task(tmp_path / "task", n_train=8, n_heldout=2, seed=0)
    cfg = TrainConfig(
        pairs=str(pairs),
        method="dpo",
        load_in_4bit=load_in_4bit,
        max_steps=2,
        per_device_batch_size=4,
        learning_rate=1e-2,
        max_length=256,
        max_prompt_length=200,
    )
    backend = decide_backend(cfg.load_in_4bit, cfg.use_unsloth)
    assert backend.load_in_4bit == (load_in_4bit == "true")
    model, tokenizer, lora = load_for_training(cfg, backend, resolve_model_path(cfg.student))
    rows = preference_rows(load_pairs(pairs).pairs, tokenizer, thinking=False)
    result = train_preference(cfg, backend, model, tokenizer, lora, rows, tmp_path / "work")
    first, second = (h for h in result.history if "train/rewards/chosen" in h)
    assert first["train/rewards/chosen"] == first["train/rewards/rejected"] == 0.0
    assert second["train/rewards/margins"] != 0.0


def test_dpo_without_an_adapter_is_refused():
    from distill.preference_loss import LossSpec
    from distill.preference_trainer import PreferenceTrainer

    trainer = object.__new__(PreferenceTrainer)
    trainer.accelerator = SimpleNamespace(unwrap_model=lambda m: m)
    trainer.model = torch.nn.Linear(2, 2)
    trainer.loss_spec = LossSpec("dpo", beta=0.1)
    with pytest.raises(DistillError, match="needs LoRA"):
        trainer.check_reference()


@pytest.mark.parametrize("method", ["orpo", "simpo", "sft"])
def test_the_trainer_uses_each_methods_own_loss(tmp_path, method):
    """Not ORPO under every name: each method's logged reward is its own scale times the
    average log-prob (ORPO's λ, SimPO's β, 1 for SFT), and only SFT's loss is its NLL alone.
    (DPO's zero rewards at the first step are the test above.)"""
    from distill.models import resolve_model_path
    from distill.pairs import load_pairs
    from distill.training import decide_backend, load_for_training, preference_rows, train_preference

    pairs, _ = write_synthetic_task(tmp_path / "task", n_train=8, n_heldout=2, seed=0)
    cfg = TrainConfig(
        pairs=str(pairs),
        method=method,
        beta=0.5,
        simpo_beta=3.0,
        max_steps=1,
        per_device_batch_size=4,
        learning_rate=1e-2,
        max_length=256,
        max_prompt_length=200,
    )
    backend = decide_backend(cfg.load_in_4bit, cfg.use_unsloth)
    model, tokenizer, lora = load_for_training(cfg, backend, resolve_model_path(cfg.student))
    rows = preference_rows(load_pairs(pairs).pairs, tokenizer, thinking=False)
    result = train_preference(cfg, backend, model, tokenizer, lora, rows, tmp_path / "work")
    step = next(h for h in result.history if "train/rewards/chosen" in h)
    scale = {"orpo": cfg.beta, "simpo": cfg.simpo_beta, "sft": 1.0}[method]
    for side in ("chosen", "rejected"):
        assert step[f"train/rewards/{side}"] == pytest.approx(scale * step[f"train/logps/{side}"], rel=1e-4)
    # transformers rounds the logged loss to 4 decimals
    assert (abs(step["train/loss"] - step["train/nll_loss"]) < 2e-4) == (method == "sft"), step
