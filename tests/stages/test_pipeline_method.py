"""`pipeline -P method=...` reaches the train step, and the pipeline's summary names the method."""

from __future__ import annotations

from distill.stages.pipeline import STEPS, PipelineConfig, StepResult, step_config, summary_text

UPSTREAM = {
    "mine": {"run_id": "m", "hard_negatives": "runs:/m/mine/hard_negatives.jsonl"},
    "augment": {"run_id": "a", "pairs": "runs:/a/pairs"},
    "train": {"run_id": "t", "adapter": "runs:/t/adapter"},
    "evaluate": {"run_id": "e"},
}


def test_method_and_its_hyperparameters_pass_through_to_train():
    cfg = PipelineConfig(method="dpo", overrides="train.dpo_beta=0.3,train.rpo_alpha=1")
    train = step_config(cfg, "train", UPSTREAM)
    assert (train.method, train.dpo_beta, train.rpo_alpha) == ("dpo", 0.3, 1.0)
    assert step_config(PipelineConfig(), "train", UPSTREAM).method == "orpo"


def test_summary_names_the_method():
    cfg = PipelineConfig(method="simpo", overrides="train.simpo_gamma=0.8")
    results = {
        step: StepResult(
            step=step,
            run_id=step[0],
            source_run_id=step[0],
            reused=False,
            outputs={"decision": "refused", "reason": "test"} if step == "register" else {},
            seconds=1.0,
            step_hash="h",
            config=step_config(cfg, step, UPSTREAM),
        )
        for step in STEPS
    }
    metrics = {"pipeline/n_computed": 5.0, "pipeline/n_reused": 0.0}
    text = summary_text(results, metrics, "parent", 5.0)
    assert "method    SimPO β=2 γ=0.8 α=0" in text
