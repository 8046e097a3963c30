"""The odds-ratio term stays finite, in value and gradient, where the pinned TRL's does not."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from distill.errors import DistillError
from distill.orpo_loss import LOG1MEXP_EPS, odds_ratio_terms, safe_log1mexp

BETA = 0.1

# (chosen avg log-prob, rejected avg log-prob): a policy that is (nearly) certain of a
# single-token completion, as after a few steps on "정답: N<eos>" pairs.
CONFIDENT = [(-1e-9, 0.0), (0.0, 0.0), (0.0, -1.0), (-1e-9, -1e-9), (-1e-9, -2.0)]


def _orpo_loss_and_grads(odds_ratio_loss, chosen: float, rejected: float):
    """The ORPO odds-ratio part of the loss (TRL adds `-losses.mean()`) and its gradients."""
    c = torch.tensor([chosen], requires_grad=True)
    r = torch.tensor([rejected], requires_grad=True)
    losses = odds_ratio_loss(c, r)[0]
    loss = -losses.mean()
    loss.backward()
    return loss.item(), c.grad.item(), r.grad.item()


def _trl_method():
    from trl.experimental.orpo import ORPOTrainer

    fake_trainer = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device=torch.device("cpu")))
    return lambda c, r: ORPOTrainer.odds_ratio_loss(fake_trainer, c, r)


def _safe_method():
    from distill.orpo_trainer import SafeORPOTrainer

    fake_trainer = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device=torch.device("cpu")))
    return lambda c, r: SafeORPOTrainer.odds_ratio_loss(fake_trainer, c, r)


@pytest.mark.parametrize("chosen, rejected", CONFIDENT)
def test_safe_odds_ratio_is_finite_in_value_and_gradient(chosen, rejected):
    loss, grad_c, grad_r = _orpo_loss_and_grads(_safe_method(), chosen, rejected)
    assert math.isfinite(loss) and math.isfinite(grad_c) and math.isfinite(grad_r)
    assert loss >= 0.0


def test_pinned_trl_odds_ratio_is_not_finite_there():
    """Documents the bug we work around. If this starts failing, TRL fixed it: the override can go."""
    broken = []
    for chosen, rejected in CONFIDENT:
        values = _orpo_loss_and_grads(_trl_method(), chosen, rejected)
        if not all(math.isfinite(v) for v in values):
            broken.append((chosen, rejected))
    assert broken == CONFIDENT


def test_safe_version_matches_trl_where_trl_is_fine():
    rng = torch.Generator().manual_seed(0)
    chosen = -torch.rand(64, generator=rng) * 5 - 1e-3
    rejected = -torch.rand(64, generator=rng) * 5 - 1e-3
    ours = _safe_method()(chosen, rejected)
    theirs = _trl_method()(chosen, rejected)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_safe_log1mexp_values_and_clamp():
    x = torch.tensor([-20.0, -1.0, -0.5, -1e-3, -1e-9, 0.0])
    got = safe_log1mexp(x)
    reference = torch.log(-torch.expm1(x.double().clamp(max=-LOG1MEXP_EPS))).float()
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(got).all()
    assert got[-1].item() == pytest.approx(math.log(LOG1MEXP_EPS), rel=1e-4)


def test_odds_ratio_prefers_the_more_likely_chosen():
    losses_good, log_odds_good = odds_ratio_terms(torch.tensor([-0.1]), torch.tensor([-3.0]), BETA)
    losses_bad, log_odds_bad = odds_ratio_terms(torch.tensor([-3.0]), torch.tensor([-0.1]), BETA)
    assert log_odds_good.item() > 0 > log_odds_bad.item()
    # TRL's convention: the total loss subtracts `losses`, so a better pair has larger losses.
    assert losses_good.item() > losses_bad.item()


def test_non_finite_logged_loss_stops_training():
    from distill.orpo_trainer import NonFiniteLossCallback

    callback = NonFiniteLossCallback()
    state = SimpleNamespace(global_step=7)
    callback.on_log(None, state, None, logs={"loss": 1.2, "nll_loss": 1.0, "log_odds_ratio": -0.7})
    with pytest.raises(DistillError, match=r"non-finite \(nll_loss=nan\) at step 7"):
        callback.on_log(None, state, None, logs={"loss": 1.2, "nll_loss": float("nan")})
    with pytest.raises(DistillError, match="loss=inf"):
        callback.on_log(None, state, None, logs={"loss": float("inf")})


def test_truncate_tokenized_pair_keeps_prompt_end_and_fits_max_length():
    from distill.orpo_trainer import truncate_tokenized_pair

    prompt = list(range(100, 110))  # 10 prompt tokens
    chosen = [1, 2, 3, 4, 5, 99]
    rejected = [6, 7, 99]
    batch = {
        "prompt_input_ids": prompt,
        "prompt_attention_mask": [1] * 10,
        "chosen_input_ids": prompt + chosen,
        "chosen_attention_mask": [1] * 16,
        "chosen_labels": [-100] * 10 + chosen,
        "rejected_input_ids": prompt + rejected,
        "rejected_attention_mask": [1] * 13,
        "rejected_labels": [-100] * 10 + rejected,
    }
    out = truncate_tokenized_pair(batch, max_prompt_length=4, max_length=8)
    assert out["prompt_input_ids"] == [106, 107, 108, 109]
    assert out["chosen_input_ids"] == [106, 107, 108, 109, 1, 2, 3, 4]
    assert out["chosen_labels"] == [-100] * 4 + [1, 2, 3, 4]
    assert out["rejected_input_ids"] == [106, 107, 108, 109, 6, 7, 99]
    assert len(out["rejected_attention_mask"]) == 7
    assert truncate_tokenized_pair(batch, max_prompt_length=20, max_length=100) == batch


def _tiny_model():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    return Qwen3ForCausalLM(config).eval()


@pytest.mark.parametrize("prompt_loss", [False, True])
def test_nll_term_covers_the_completion_only_unless_prompt_loss(prompt_loss):
    from distill.orpo_trainer import SafeORPOTrainer

    trainer = object.__new__(SafeORPOTrainer)  # only the attributes concatenated_forward reads
    trainer.is_encoder_decoder, trainer.padding_value, trainer.aux_loss_enabled = False, 0, False
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"))
    trainer.prompt_loss = prompt_loss
    prompt = [5, 6, 7, 8]
    chosen, rejected = [9, 10, 11], [12, 13]
    batch = {
        "chosen_input_ids": torch.tensor([prompt + chosen]),
        "chosen_attention_mask": torch.ones(1, 7, dtype=torch.long),
        "chosen_labels": torch.tensor([[-100] * 4 + chosen]),
        "rejected_input_ids": torch.tensor([prompt + rejected]),
        "rejected_attention_mask": torch.ones(1, 6, dtype=torch.long),
        "rejected_labels": torch.tensor([[-100] * 4 + rejected]),
    }
    model = _tiny_model()
    with torch.no_grad():
        nll = trainer.concatenated_forward(model, batch)[4]
        logprobs = torch.log_softmax(model(input_ids=batch["chosen_input_ids"]).logits[0].float(), dim=-1)
    targets = prompt + chosen
    first = 1 if prompt_loss else len(prompt)  # position t - 1 predicts token t
    expected = -torch.stack([logprobs[t - 1, targets[t]] for t in range(first, len(targets))]).mean()
    torch.testing.assert_close(nll.float(), expected, rtol=1e-5, atol=1e-5)
