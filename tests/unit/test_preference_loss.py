"""The odds-ratio term stays finite, in value and gradient, where the pinned TRL's does not."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from distill.errors import DistillError
from distill.preference_loss import LOG1MEXP_EPS, odds_ratio_terms, safe_log1mexp

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
    """Ours in TRL's `odds_ratio_loss` shape: (losses, chosen rewards, rejected rewards, mean
    log-sigmoid of the log odds, mean log odds)."""

    def odds_ratio_loss(chosen, rejected):
        losses, log_odds = odds_ratio_terms(chosen, rejected, BETA)
        ratio = torch.nn.functional.logsigmoid(log_odds)
        return losses, BETA * chosen.detach(), BETA * rejected.detach(), ratio.mean(), log_odds.mean()

    return odds_ratio_loss


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
    from distill.preference_trainer import NonFiniteLossCallback

    callback = NonFiniteLossCallback()
    state = SimpleNamespace(global_step=7)
    callback.on_log(None, state, None, logs={"loss": 1.2, "nll_loss": 1.0, "log_odds_ratio": -0.7})
    with pytest.raises(DistillError, match=r"non-finite \(nll_loss=nan\) at step 7"):
        callback.on_log(None, state, None, logs={"loss": 1.2, "nll_loss": float("nan")})
    with pytest.raises(DistillError, match="loss=inf"):
        callback.on_log(None, state, None, logs={"loss": float("inf")})


def test_truncate_tokenized_pair_keeps_prompt_end_and_fits_max_length():
    from distill.preference_trainer import truncate_tokenized_pair

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
    from distill.preference_trainer import PreferenceTrainer

    trainer = object.__new__(PreferenceTrainer)  # only the attributes concatenated_forward reads
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


# ---------------------------------------------------------------------------------------------
# The other methods' losses (distill.preference_loss.total_loss)


def _batch(seed: int = 0, n: int = 16):
    rng = torch.Generator().manual_seed(seed)
    chosen = -torch.rand(n, generator=rng) * 3 - 0.05
    rejected = -torch.rand(n, generator=rng) * 3 - 0.05
    lengths_c = torch.randint(1, 20, (n,), generator=rng).float()
    lengths_r = torch.randint(1, 20, (n,), generator=rng).float()
    nll = torch.tensor(1.7)
    return chosen, rejected, lengths_c, lengths_r, nll


def test_orpo_total_is_trls_nll_minus_the_odds_ratio_term():
    from distill.preference_loss import LossSpec, total_loss

    chosen, rejected, *_, nll = _batch()
    loss, rewards_c, rewards_r = total_loss(
        LossSpec("orpo", beta=BETA), nll=nll, chosen_avg=chosen, rejected_avg=rejected
    )
    theirs = _trl_method()(chosen, rejected)
    torch.testing.assert_close(loss, nll - theirs[0].mean())
    torch.testing.assert_close(rewards_c, theirs[1])
    torch.testing.assert_close(rewards_r, theirs[2])


def test_simpo_matches_trls_cpo_trainer_with_loss_type_simpo():
    from trl.experimental.cpo import CPOTrainer

    from distill.preference_loss import LossSpec, total_loss

    chosen, rejected, *_, nll = _batch(1)
    fake = SimpleNamespace(
        alpha=0.0,
        beta=2.0,
        simpo_gamma=0.5,
        loss_type="simpo",
        label_smoothing=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    theirs, their_c, their_r = CPOTrainer.cpo_loss(fake, chosen, rejected)
    for cpo_alpha in (0.0, 1.0):  # TRL adds cpo_alpha * nll the same way
        spec = LossSpec("simpo", beta=2.0, gamma=0.5, nll_weight=cpo_alpha)
        loss, rewards_c, rewards_r = total_loss(spec, nll=nll, chosen_avg=chosen, rejected_avg=rejected)
        torch.testing.assert_close(loss, theirs.mean() + cpo_alpha * nll)
    torch.testing.assert_close(rewards_c, their_c)
    torch.testing.assert_close(rewards_r, their_r)


def test_dpo_is_the_sigmoid_loss_on_summed_log_ratios_plus_rpo_nll():
    from distill.preference_loss import LossSpec, total_loss

    chosen, rejected, n_c, n_r, nll = _batch(2)
    ref_c, ref_r = chosen.flip(0) * n_c, rejected.flip(0) * n_r
    beta, rpo_alpha = 0.1, 0.5
    loss, rewards_c, rewards_r = total_loss(
        LossSpec("dpo", beta=beta, nll_weight=rpo_alpha),
        nll=nll,
        chosen_avg=chosen,
        rejected_avg=rejected,
        chosen_sum=chosen * n_c,
        rejected_sum=rejected * n_r,
        ref_chosen_sum=ref_c,
        ref_rejected_sum=ref_r,
    )
    logits = beta * ((chosen * n_c - ref_c) - (rejected * n_r - ref_r))
    expected = torch.log1p(torch.exp(-logits)).mean() + rpo_alpha * nll  # -log sigmoid(x) = log(1 + e^-x)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(rewards_c - rewards_r, logits)
    with pytest.raises(ValueError, match="reference"):
        total_loss(LossSpec("dpo", beta=beta), nll=nll, chosen_avg=chosen, rejected_avg=rejected)


def test_sft_ignores_the_rejected_completion():
    from distill.preference_loss import LossSpec, total_loss

    chosen, rejected, *_, nll = _batch(3)
    rejected = rejected.clone().requires_grad_(True)
    nll = nll.clone().requires_grad_(True)
    loss, *_ = total_loss(LossSpec("sft"), nll=nll, chosen_avg=chosen, rejected_avg=rejected)
    loss.backward()
    assert loss.item() == pytest.approx(1.7) and rejected.grad is None and nll.grad.item() == 1.0


def test_preference_methods_push_the_rejected_down_and_sft_does_not():
    """d loss / d rejected: positive for ORPO, DPO and SimPO (descending lowers the rejected
    log-prob), zero for SFT. This is what tells the methods apart on held-out pairs."""
    from distill.preference_loss import LossSpec, total_loss

    specs = {
        "orpo": LossSpec("orpo", beta=1.0),
        "dpo": LossSpec("dpo", beta=0.1),
        "simpo": LossSpec("simpo", beta=2.0, gamma=0.5),
        "sft": LossSpec("sft"),
    }
    for name, spec in specs.items():
        rejected = torch.tensor([-1.0], requires_grad=True)
        chosen = torch.tensor([-1.2])
        loss, *_ = total_loss(
            spec,
            nll=torch.tensor(1.0, requires_grad=True),
            chosen_avg=chosen,
            rejected_avg=rejected,
            chosen_sum=chosen * 3,
            rejected_sum=rejected * 3,
            ref_chosen_sum=torch.tensor([-3.0]),
            ref_rejected_sum=torch.tensor([-3.0]),
        )
        loss.backward()
        grad = 0.0 if rejected.grad is None else rejected.grad.item()
        assert (grad > 0) == (name != "sft"), (name, grad)
