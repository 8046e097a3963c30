"""Shared-prefix scoring: items that share a passage reuse one key/value cache, and every score
still equals the one-item-at-a-time reference (1e-4 in fp32, same argmax), with and without a
LoRA adapter, 4-, 5- and 10-choice items, passage-sharing and standalone items mixed."""

from __future__ import annotations

import dataclasses

import pytest
from scoring_helpers import make_items

from distill.scoring import (
    choice_tokens,
    predict,
    prefix_groups,
    score_choices,
    score_choices_reference,
    scoring_prompt,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny():
    from distill.models import load_student

    return load_student("tiny-qwen3", device="cpu")


@pytest.fixture(scope="module")
def items():
    """Three passages shared by 3, 4 and 2 questions, plus standalone items (some without passage)."""
    pool = make_items(16, seed=7, with_ten=True)
    passages = [" ".join([pool[0].question] * 6), " ".join([pool[1].question] * 9), " ".join([pool[2].question] * 4)]
    shared = []
    for group, (passage, size) in enumerate(zip(passages, (3, 4, 2))):
        for k in range(size):
            source = pool[len(shared)]
            shared.append(dataclasses.replace(source, id=f"p{group}q{k}", paragraph=passage))
    loose = [dataclasses.replace(item, id=f"s{n}") for n, item in enumerate(pool[len(shared) :])]
    loose[0] = dataclasses.replace(loose[0], paragraph="")
    mixed = shared[:5] + loose[:3] + shared[5:] + loose[3:]  # groups are not contiguous in the input
    assert {item.n_choices for item in mixed} == {4, 5, 10}
    return mixed


@pytest.fixture(scope="module")
def contexts(tiny, items):
    _, tokenizer = tiny
    return [choice_tokens(tokenizer, scoring_prompt(tokenizer, item), item.n_choices).context for item in items]


def assert_same_scores(got, want, items):
    assert [len(row) for row in got] == [item.n_choices for item in items]
    for item, g, w in zip(items, got, want):
        assert g == pytest.approx(w, abs=TOLERANCE), item.id
    assert predict(got) == predict(want)


def test_items_sharing_a_passage_share_a_prefix(items, contexts):
    root, groups = prefix_groups(contexts)
    assert root > 0  # the chat header and system prompt every prompt starts with
    by_id = [sorted(items[i].id for i in members) for _, members in groups]
    assert sorted(by_id) == sorted(
        [
            ["p0q0", "p0q1", "p0q2"],
            ["p1q0", "p1q1", "p1q2", "p1q3"],
            ["p2q0", "p2q1"],
            sorted(item.id for item in items if item.id.startswith("s")),
        ]
    )
    for length, members in groups:
        assert all(length < len(contexts[i]) for i in members)  # a last position is left to score
        assert all(tuple(contexts[i][:length]) == tuple(contexts[members[0]][:length]) for i in members)
        if items[members[0]].id.startswith("p"):
            assert length > root
        else:
            assert length == root


def test_prefix_groups_edge_cases():
    assert prefix_groups([]) == (0, [])
    # identical contexts: the prefix stops one token short so the last position is still scored
    root, groups = prefix_groups([(1, 2, 3)] * 3, min_shared=1)
    assert root == 2 and groups == [(2, [0, 1, 2])]
    root, groups = prefix_groups([(1, 2, 3, 4, 5), (1, 2, 3, 4, 6), (1, 9)], min_shared=2)
    assert root == 1 and groups == [(1, [2]), (4, [0, 1])]


@pytest.fixture(scope="module")
def reference(tiny, items):
    model, tokenizer = tiny
    return score_choices_reference(model, tokenizer, items)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("fast_path", [True, False])
def test_shared_prefix_equals_reference(tiny, items, reference, batch_size, fast_path):
    model, tokenizer = tiny
    got = score_choices(model, tokenizer, items, batch_size=batch_size, progress=False, fast_path=fast_path)
    assert_same_scores(got, reference, items)


def test_without_prefix_cache_equals_reference(tiny, items, reference):
    model, tokenizer = tiny
    got = score_choices(model, tokenizer, items, batch_size=4, progress=False, shared_prefix=False)
    assert_same_scores(got, reference, items)


def test_thinking_on_with_shared_prefix(tiny, items):
    model, tokenizer = tiny
    got = score_choices(model, tokenizer, items[:6], thinking=True, batch_size=4, progress=False)
    assert_same_scores(got, score_choices_reference(model, tokenizer, items[:6], thinking=True), items[:6])


def test_shared_prefix_with_a_lora_adapter(tiny, items, reference):
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny
    fresh = type(base)(base.config)
    fresh.load_state_dict(base.state_dict())
    torch.manual_seed(3)
    # init_lora_weights=False: B is random too, so the adapter really changes the scores
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(fresh, config)
    want = score_choices_reference(model, tokenizer, items)
    assert any(w != pytest.approx(r, abs=TOLERANCE) for w, r in zip(want, reference))
    for batch_size in (1, 5):
        assert_same_scores(score_choices(model, tokenizer, items, batch_size=batch_size, progress=False), want, items)


def test_passages_behind_a_common_instruction_get_their_own_groups():
    # Every question starts with the same instruction after the root, then its passage: the
    # instruction alone must not chain the passages into one group (each passage would then run
    # again for every question); two questions of one passage that happen to share a few more
    # tokens must not split their passage's group either.
    root, instruction = [1, 2, 3], list(range(10, 30))
    passages = [list(range(100 * p, 100 * p + 40)) for p in (1, 2, 3)]
    contexts, owner = [], []
    for p, passage in enumerate(passages):
        for q in range(3):
            question = [7, 7, 7, 7] if q < 2 else [8]
            contexts.append(tuple(root + instruction + passage + question + [500 + 10 * p + q]))
            owner.append(p)
    contexts.append(tuple(root + [9, 9, 9]))
    got_root, groups = prefix_groups(contexts, min_shared=4)
    assert got_root == len(root)
    shared = len(root) + len(instruction) + 40
    assert sorted(groups) == [(len(root), [9])] + [(shared, [3 * p, 3 * p + 1, 3 * p + 2]) for p in range(3)]


def _spy_split_attention(monkeypatch):
    """Count the split attention's calls with the side channel, those without it (a fallback), and
    the most prefixes one forward attended to (calls through)."""
    from distill import scoring

    seen = {"calls": 0, "without_side": 0, "max_prefixes": 0}
    real = scoring._split_prefix_attention

    def spy(module, *args, **kwargs):
        side = kwargs.get(scoring._SIDE_CHANNEL)
        if side is not None:
            seen["calls"] += 1
            seen["max_prefixes"] = max(seen["max_prefixes"], len(side.segments))
        else:
            seen["without_side"] += 1
        return real(module, *args, **kwargs)

    monkeypatch.setattr(scoring, "_split_prefix_attention", spy)
    return seen


@pytest.mark.parametrize("batch_size", [1, 8])
def test_split_attention_is_used_and_equals_reference(tiny, items, reference, batch_size, monkeypatch):
    model, tokenizer = tiny
    seen = _spy_split_attention(monkeypatch)
    got = score_choices(model, tokenizer, items, batch_size=batch_size, progress=False)
    assert seen["calls"] > 0
    # batch 8 pools rows of several passages into one forward; batch 1 never can
    if batch_size == 1:
        assert seen["max_prefixes"] == 1
    else:
        assert seen["max_prefixes"] >= 2
    assert seen["without_side"] == 0
    assert_same_scores(got, reference, items)
    assert model.config._attn_implementation == "sdpa"  # switched for the forward only


def test_split_rows_pooled_up_to_the_memory_bound(tiny, items, reference, monkeypatch):
    # A bound below one prefix's cache: each passage's rows run as soon as its prefix is built.
    from distill import scoring

    model, tokenizer = tiny
    monkeypatch.setattr(scoring, "_POOL_BYTES", 1)
    seen = _spy_split_attention(monkeypatch)
    got = score_choices(model, tokenizer, items, batch_size=8, progress=False)
    assert seen["calls"] > 0 and seen["max_prefixes"] == 1
    assert_same_scores(got, reference, items)


def test_a_layer_the_split_cannot_do_falls_back_to_the_cache(tiny, items, reference, monkeypatch):
    # Some configs pass a sliding window even to "full_attention" layers; one longer than any
    # prompt attends like full attention, so the scores must still equal the reference.
    base, tokenizer = tiny
    model = type(base)(base.config)
    model.load_state_dict(base.state_dict())
    for layer in model.model.layers:
        layer.self_attn.sliding_window = 1 << 20
    seen = _spy_split_attention(monkeypatch)
    got = score_choices(model, tokenizer, items, batch_size=8, progress=False)
    assert seen["calls"] > 0 and seen["without_side"] == 0
    assert_same_scores(got, reference, items)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("batch_size", [3, 8])
def test_cache_path_without_split_attention_equals_reference(tiny, items, reference, batch_size, monkeypatch):
    model, tokenizer = tiny
    seen = _spy_split_attention(monkeypatch)
    got = score_choices(model, tokenizer, items, batch_size=batch_size, progress=False, split_attention=False)
    assert seen["calls"] == 0
    assert_same_scores(got, reference, items)


def test_a_model_that_drops_the_side_channel_falls_back_to_the_cache(tiny, items, reference, monkeypatch):
    import torch

    base, tokenizer = tiny

    class DropsExtraKeywords(torch.nn.Module):
        """A wrapper that forwards only the usual arguments, as some model wrappers do."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=kwargs.get("use_cache"),
                logits_to_keep=kwargs.get("logits_to_keep", 0),
            )

    seen = _spy_split_attention(monkeypatch)
    got = score_choices(DropsExtraKeywords(base), tokenizer, items, batch_size=4, progress=False)
    assert seen["calls"] == 0 and seen["without_side"] > 0  # the split was tried, and nothing of it kept
    assert_same_scores(got, reference, items)
    assert base.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("fused", [True, False])
def test_split_attention_equals_attention_over_the_concatenated_keys(fused, monkeypatch):
    """Rows of two prefixes in one batch, right padding, grouped-query heads: the two-part
    attention merged by log-sum-exp equals one softmax over [prefix | own causal suffix]."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv

    from distill import scoring

    real_partial = scoring._attention_partial
    monkeypatch.setattr(scoring, "_attention_partial", lambda *a, **k: real_partial(*a, **k, fused=fused))
    torch.manual_seed(0)
    heads, kv_heads, dim, width, layer = 4, 2, 8, 5, 1
    lengths = [5, 3, 4]
    prefixes = [
        [(torch.randn(1, kv_heads, n, dim), torch.randn(1, kv_heads, n, dim)) for _ in range(2)] for n in (6, 9)
    ]
    query = torch.randn(3, heads, width, dim)
    key, value = torch.randn(3, kv_heads, width, dim), torch.randn(3, kv_heads, width, dim)
    side = scoring._PrefixSideChannel([(0, 2, prefixes[0]), (2, 3, prefixes[1])], torch.tensor(lengths), width)
    module = type("Attention", (), {"layer_idx": layer})()
    got, _ = scoring._split_prefix_attention(
        module, query, key, value, None, scaling=0.3, **{scoring._SIDE_CHANNEL: side}
    )
    assert side.layers_seen == {layer}
    for row, prefix in enumerate([prefixes[0], prefixes[0], prefixes[1]]):
        real = lengths[row]
        keys = torch.cat([prefix[layer][0][0], key[row, :, :real]], dim=1)
        values = torch.cat([prefix[layer][1][0], value[row, :, :real]], dim=1)
        start = prefix[layer][0].shape[-2]
        allowed = torch.arange(start + real)[None, :] <= start + torch.arange(real)[:, None]
        want = torch.nn.functional.scaled_dot_product_attention(
            query[row, :, :real],
            repeat_kv(keys[None], 2)[0],
            repeat_kv(values[None], 2)[0],
            attn_mask=allowed,
            scale=0.3,
        )
        torch.testing.assert_close(got[row, :real].transpose(0, 1), want, atol=1e-5, rtol=1e-5)


def test_split_attention_with_a_lora_adapter_and_multi_token_rows(tiny, items, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny
    fresh = type(base)(base.config)
    fresh.load_state_dict(base.state_dict())
    torch.manual_seed(4)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj"], init_lora_weights=False)
    model = get_peft_model(fresh, config)
    want = score_choices_reference(model, tokenizer, items)
    seen = _spy_split_attention(monkeypatch)
    for batch_size in (1, 8):
        got = score_choices(model, tokenizer, items, batch_size=batch_size, progress=False, fast_path=False)
        assert_same_scores(got, want, items)
    assert seen["calls"] > 0


def test_overlapping_switches_restore_the_original_implementation(tiny):
    # Two threads scoring with one model (a served pyfunc) enter and leave in this order.
    from distill import scoring

    config = tiny[0].config
    first = scoring._attention_implementation(config, scoring._SPLIT_ATTENTION).__enter__()
    second = scoring._attention_implementation(config, scoring._SPLIT_ATTENTION).__enter__()
    first.__exit__(None, None, None)
    assert config._attn_implementation == scoring._SPLIT_ATTENTION  # the second forward is still running
    second.__exit__(None, None, None)
    assert config._attn_implementation == "sdpa"
