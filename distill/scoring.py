"""Log-likelihood ("logits") scoring of multiple-choice labels.

The score of choice k of an item is log P(label k | prompt), where the prompt is the item's chat
prompt (thinking on or off) followed by ANSWER_PREFIX (`정답: `) and the label is the choice
number as text ("1".."K"). The prediction is the label with the highest score.

Which tokens are scored (the tokenisation trap): we never assume that "3" is one
token or that it tokenises the same way after the prompt as on its own. For every label we
tokenise `prompt + label` as ONE string and compare it with the tokens of `prompt` alone:
- usually the prompt's tokens are an exact prefix (the boundary is stable) and the label's tokens
  are what follows;
- when a merge crosses the boundary (a tokenizer that merges the prefix's trailing space with the
  digit into " 3", say), the prompt's last tokens differ. We then cut every choice of the item
  at the longest token prefix that ALL its `prompt + label` strings share with the prompt, and
  score everything after that cut. The cut is common to the item's K choices, so the K scores
  are log-probabilities of K different continuations of one and the same context, and their
  ranking equals the ranking of log P(prompt + label) under that tokenisation. The scored span
  then includes the few prompt characters that merged with the label (the same characters for
  every choice), which is what the tokenizer would actually produce there.

Speed. A 수능 passage is shared by 3 to 6 questions and is most of each prompt's tokens, and every
prompt starts with the same chat header and system prompt; the prompt puts them first on purpose.
So items are grouped by the token prefix they share (`prefix_groups`): the prefix common to all
prompts runs once, each passage's prefix runs once after it, and their key/value caches serve
every question of the group. The suffix rows do not get a copy of their prefix's cache: where
the model's attention goes through transformers' AttentionInterface and its config lists
full-attention `layer_types` (Qwen2, Qwen3 and other current decoders; not Llama, whose config
has none; with or without a PEFT adapter) and the model runs on a CPU (where it was
measured; a GPU keeps the cache path below until it is), `_split_prefix_attention` attends to each
prefix once for all its rows (no mask, no copy) and to each row's own suffix separately, and
merges the two by their log-sum-exp, which is exact. That also lets rows of several passages
share a batch, sorted by length across groups (less padding). Elsewhere the cache is expanded
over the batch as a transformers DynamicCache (`split_attention=False` forces that path).
When every label of an item is one token (the usual case), one row per item (the rest of its
context) gives all K scores from the last position's next-token distribution; otherwise each
(item, choice) is a row `context rest + label tokens` and the label tokens' log-probs are summed.
Rows are right-padded (every real token keeps its unpadded position and never sees a pad),
sorted by length, and only the positions that are read get logits and a
log-softmax (`logits_to_keep` with their indices), which keeps memory small for large
vocabularies. `score_choices_reference` is the slow oracle: one item and one choice per forward
pass, no padding, no cache.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distill.contracts import ANSWER_PREFIX, MCQItem
from distill.data.prompts import apply_chat_template, render_messages


@dataclass(frozen=True)
class ChoiceTokens:
    """The token ids to score for one item: one shared context, one continuation per label."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    boundary_stable: bool
    """False when a merge crossed the prompt/label boundary and the context was cut earlier."""

    @property
    def single_token(self) -> bool:
        return all(len(c) == 1 for c in self.continuations)


def scoring_prompt(tokenizer: Any, item: MCQItem, *, thinking: bool = False) -> str:
    """The text after which a label is scored: chat prompt + `정답: `."""
    messages = render_messages(item, reasoning=False)
    return apply_chat_template(tokenizer, messages, thinking=thinking) + ANSWER_PREFIX


def _encode(tokenizer: Any, text: str) -> list[int]:
    # The chat template already wrote every special token it wants; adding BOS again would
    # shift the context away from what the model sees in training and generation.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def choice_tokens(tokenizer: Any, prompt: str, n_choices: int) -> ChoiceTokens:
    """Split `prompt + label` (label = "1".."n_choices") into a shared context and continuations."""
    prompt_ids = _encode(tokenizer, prompt)
    fulls = [_encode(tokenizer, prompt + str(label)) for label in range(1, n_choices + 1)]
    cut = len(prompt_ids)
    for full in fulls:
        cut = min(cut, _common_prefix_length(prompt_ids, full))
    if cut == 0:
        raise ValueError("the prompt shares no token with prompt + label; nothing to condition on")
    return ChoiceTokens(
        context=tuple(prompt_ids[:cut]),
        continuations=tuple(tuple(full[cut:]) for full in fulls),
        boundary_stable=cut == len(prompt_ids),
    )


def _model_device(model: Any):
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


class _EvalMode:
    """Run a block in eval mode and inference mode, restoring training mode afterwards."""

    def __init__(self, model: Any):
        self.model = model

    def __enter__(self):
        import torch

        self.was_training = bool(getattr(self.model, "training", False))
        self.model.eval()
        self.inference = torch.inference_mode()
        self.inference.__enter__()
        return self

    def __exit__(self, *exc):
        self.inference.__exit__(*exc)
        if self.was_training:
            self.model.train()
        return False


@dataclass(frozen=True)
class _Row:
    """One forward row after a cached prefix: the suffix tokens and what to read from them."""

    tokens: tuple[int, ...]
    targets: tuple[tuple[int, int, int, int], ...]
    """(position in `tokens` whose next-token distribution is read, token id, item index, choice index)."""


def prefix_groups(
    contexts: Sequence[Sequence[int]], *, min_shared: int = 16
) -> tuple[int, list[tuple[int, list[int]]]]:
    """Partition items into groups that share a cached token prefix.

    Returns `(root, [(prefix_length, item indices), ...])`. `root` is the length of the prefix
    ALL contexts share (the chat header and the system prompt). Sorting the contexts makes items
    that share a passage neighbours; runs of neighbours that share at least `min_shared` tokens
    beyond the root are candidates, and each run is split where that pays (`_split_run`): every
    question of a 수능 exam starts with the same instruction ("다음 글을 읽고 …"), which alone
    would chain several passages into one run whose common prefix is only that instruction, so
    each passage would run again for each of its questions. Items left alone join the root group
    (prefix length `root`). A prefix always stops at least one token short of each member's
    context, so every item keeps a last position to score.
    """
    if not contexts:
        return 0, []
    root = min(min(len(c) for c in contexts) - 1, min(_common_prefix_length(contexts[0], c) for c in contexts))
    order = sorted(range(len(contexts)), key=lambda i: tuple(contexts[i]))
    shared_next = [_common_prefix_length(contexts[a], contexts[b]) for a, b in zip(order, order[1:])]
    groups: list[tuple[int, list[int]]] = []
    loose: list[int] = []
    start = 0
    for end in range(1, len(order) + 1):
        if end == len(order) or shared_next[end - 1] < root + min_shared:
            if end - start > 1:
                run_groups, run_loose = _split_run(contexts, order, shared_next, start, end, root)[1:]
                groups += run_groups
                loose += run_loose
            else:
                loose.append(order[start])
            start = end
    groups = [(length, sorted(members)) for length, members in groups]
    return root, ([(root, sorted(loose))] if loose else []) + groups


def _split_run(
    contexts: Sequence[Sequence[int]], order: list[int], shared_next: list[int], start: int, end: int, root: int
) -> tuple[int, list[tuple[int, list[int]]], list[int]]:
    """The cheapest grouping of the sorted run `order[start:end]`: (tokens to run, groups, loose items).

    Either the whole run is one group (its prefix is what all of it shares), or it is cut where
    that shared prefix ends and each part is grouped the same way (a part of one item is loose:
    it runs after the root). Cost = tokens the model runs after the root, prefixes included.
    """
    members = order[start:end]
    lengths = [len(contexts[i]) for i in members]
    shared = min(shared_next[start : end - 1])
    prefix = min(shared, min(lengths) - 1)
    whole = (prefix - root) + sum(n - prefix for n in lengths)
    cost, groups, loose = 0, [], []
    part = start
    for cut in range(start + 1, end + 1):
        if cut == end or shared_next[cut - 1] == shared:
            if cut - part > 1:
                part_cost, part_groups, part_loose = _split_run(contexts, order, shared_next, part, cut, root)
                cost, groups, loose = cost + part_cost, groups + part_groups, loose + part_loose
            else:
                cost, loose = cost + len(contexts[order[part]]) - root, loose + [order[part]]
            part = cut
    if whole <= cost:
        return whole, [(prefix, list(members))], []
    return cost, groups, loose


def _prefix_cache(model: Any, tokens: Sequence[int], past: list | None, device) -> list:
    """Run `tokens` after the cached `past` (a list of per-layer (keys, values)); return the grown cache."""
    import torch
    from transformers import DynamicCache

    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
    start = 0 if past is None else past[0][0].shape[-2]
    cache = DynamicCache(past) if past is not None else DynamicCache()
    attention_mask = torch.ones((1, start + len(tokens)), dtype=torch.long, device=device)
    position_ids = torch.arange(start, start + len(tokens), device=device)[None]
    # Only the cache is wanted: keep one position's logits so a large vocabulary costs nothing.
    model(
        input_ids=ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return [(keys, values) for keys, values, *_ in cache]


def _split_prefix_cache(model: Any, tokens: Sequence[int], past: list) -> list | None:
    """`_prefix_cache` through the split attention: `past` is read where it lies, not copied into
    a DynamicCache and masked; None when the model's attention did not take that path."""
    import torch
    from transformers import DynamicCache

    device = _model_device(model)
    start = past[0][0].shape[-2]
    side = _PrefixSideChannel([(0, 1, past)], torch.tensor([len(tokens)], device=device), len(tokens))
    cache = DynamicCache()  # receives only the new tokens' keys and values
    with _attention_implementation(model.config, _SPLIT_ATTENTION):
        model(
            input_ids=torch.tensor([list(tokens)], dtype=torch.long, device=device),
            attention_mask={kind: None for kind in set(model.config.layer_types)},
            position_ids=torch.arange(start, start + len(tokens), device=device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **{_SIDE_CHANNEL: side},
        )
    if side.layers_seen != set(range(len(past))):
        return None
    return [
        (torch.cat([pk, k], dim=-2), torch.cat([pv, v], dim=-2))
        for (pk, pv), (k, v, *_) in zip(past, cache, strict=True)
    ]


_SPLIT_ATTENTION = "distill_split_prefix"
"""The name `_split_prefix_attention` is registered under in transformers' AttentionInterface."""
_SIDE_CHANNEL = "distill_shared_prefix"
"""The forward keyword that carries the `_PrefixSideChannel` down to every attention call."""


class _PrefixSideChannel:
    """What `_split_prefix_attention` needs besides the suffix rows' own keys and values."""

    def __init__(self, segments: list[tuple[int, int, list]], lengths, width: int):
        self.segments = segments
        """(first row, end row, per-layer (keys, values) of that rows' prefix, batch 1): read, never copied."""
        self.lengths = lengths
        self.width = width
        self.layers_seen: set[int] = set()
        self._suffix_mask = None

    def suffix_mask(self, dtype):
        """Additive (batch, 1, width, width) mask: causal, and no real query sees a right pad.

        None when no row is padded: plain causal attention then needs no mask (a faster kernel).
        """
        import torch

        if bool((self.lengths == self.width).all()):
            return None
        if self._suffix_mask is None or self._suffix_mask.dtype != dtype:
            device = self.lengths.device
            idx = torch.arange(self.width, device=device)
            allowed = (idx[None, :] <= idx[:, None])[None] & (idx[None, None, :] < self.lengths[:, None, None])
            mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
            self._suffix_mask = mask.masked_fill_(~allowed, float("-inf"))[:, None]
        return self._suffix_mask


def _fused_cpu_attention():
    """torch's fused CPU attention that also returns the log-sum-exp (a private op: looked up, not assumed)."""
    import torch

    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attention_partial(query, key, value, scale: float, mask=None, *, causal=False, fused: bool | None = None):
    """Softmax attention and the log-sum-exp of its scores (what merging two key sets needs).

    `mask` is additive; `causal` (queries and keys of equal length) applies instead of a mask.
    `fused=None` uses the fused kernel where there is one (CPU), else plain matrix products.
    """
    import torch

    if fused is None:
        fused = query.device.type == "cpu" and query.dtype == key.dtype and _fused_cpu_attention() is not None
    if fused:
        # The fused CPU kernel returns the log-sum-exp that the public SDPA call keeps to itself.
        return _fused_cpu_attention()(query, key, value, is_causal=causal, attn_mask=mask, scale=scale)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if causal:
        size = scores.shape[-1]
        mask = torch.ones(size, size, dtype=torch.bool, device=scores.device).triu(1)
        mask = torch.zeros(mask.shape, device=scores.device).masked_fill_(mask, float("-inf"))
    if mask is not None:
        scores = scores + mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse[..., None]), value.float()).to(query.dtype), lse


def _split_prefix_attention(
    module: Any,
    query,
    key,
    value,
    attention_mask,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs,
):
    """Attention of suffix rows over [shared prefix | own suffix] without copying the prefix per row.

    Registered in transformers' AttentionInterface and used only for scoring forwards. The prefix
    keys and values (batch 1 per prefix; a batch may hold rows of several prefixes, in runs) come
    from the side channel; the suffix rows' own come in as usual (no cache). Two exact partial
    softmaxes, merged by their log-sum-exp: (a) the queries of all rows of one prefix, flattened
    into one sequence per key/value head, against that prefix (no mask: every suffix token sees
    the whole prefix), and (b) each row against its own suffix, causal with right padding. The
    expanded-cache path instead copies batch x prefix keys and values in every layer and runs a
    masked attention over them, which is slower on a CPU.
    """
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv

    side = kwargs.get(_SIDE_CHANNEL)
    if side is None or sliding_window is not None or dropout:
        # The side channel did not arrive (a wrapper that drops unknown keywords; another thread's
        # forward while the implementation is switched), or a layer this function cannot do (a
        # sliding window some configs pass even to layer_types "full_attention"): compute what
        # SDPA would and leave the layer unmarked, so the scoring caller discards the result
        # and takes the cache path instead of failing.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, width, dim = query.shape
    scale = dim**-0.5 if scaling is None else scaling
    outs, lses = [], []
    for start, end, past in side.segments:
        prefix_keys, prefix_values = past[module.layer_idx]
        rows, kv_heads = end - start, prefix_keys.shape[1]
        groups = heads // kv_heads
        # Query head h uses key/value head h // groups (transformers' repeat_kv order), so the
        # queries of one key/value head are (rows, groups, width): one long sequence, one prefix.
        flat = query[start:end].reshape(rows, kv_heads, groups, width, dim).transpose(0, 1)
        out, lse = _attention_partial(
            flat.reshape(1, kv_heads, -1, dim), prefix_keys.to(query.dtype), prefix_values.to(query.dtype), scale
        )
        outs.append(out.reshape(kv_heads, rows, groups, width, dim).transpose(0, 1).reshape(rows, heads, width, dim))
        lses.append(lse.reshape(kv_heads, rows, groups, width).transpose(0, 1).reshape(rows, heads, width))
    out_a, lse_a = torch.cat(outs), torch.cat(lses)
    groups = heads // key.shape[1]
    mask = side.suffix_mask(query.dtype)
    out_b, lse_b = _attention_partial(
        query, repeat_kv(key, groups), repeat_kv(value, groups), scale, mask, causal=mask is None
    )
    # Merged in fp32: a bf16 model's two partial outputs are weighted without a second rounding.
    lse_a, lse_b = lse_a.float(), lse_b.float()
    lse = torch.logaddexp(lse_a, lse_b)
    out = out_a.float() * torch.exp(lse_a - lse)[..., None] + out_b.float() * torch.exp(lse_b - lse)[..., None]
    side.layers_seen.add(module.layer_idx)
    # (batch, width, heads, dim) contiguous, as transformers' own attention functions return it.
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


_SWITCH_LOCK = threading.Lock()
_SWITCHED: dict[int, list] = {}
"""id(config) -> [its implementation before the first switch, forwards in flight]. Two threads
scoring with one model (a served pyfunc) overlap their switches: saving and restoring per switch
would let the later one restore the other's switched name for good."""


class _attention_implementation:
    """Switch a config's attention implementation for one forward pass (None: leave it)."""

    def __init__(self, config: Any, name: str | None):
        self.config, self.name = config, name

    def __enter__(self):
        if self.name is not None:
            from transformers import AttentionInterface

            AttentionInterface.register(self.name, _split_prefix_attention)
            with _SWITCH_LOCK:
                entry = _SWITCHED.setdefault(id(self.config), [self.config._attn_implementation, 0])
                entry[1] += 1
                self.config._attn_implementation = self.name
        return self

    def __exit__(self, *exc):
        if self.name is not None:
            with _SWITCH_LOCK:
                entry = _SWITCHED[id(self.config)]
                entry[1] -= 1
                if entry[1] == 0:
                    del _SWITCHED[id(self.config)]
                    self.config._attn_implementation = entry[0]
        return False


_POOL_BYTES = 1 << 30
"""How much prefix key/value cache the split path holds at once to pool rows of several groups."""


def _cache_bytes(past: list) -> int:
    return sum(t.numel() * t.element_size() for layer in past for t in layer[:2])


def _can_split(model: Any) -> bool:
    """Whether a model's attention can be routed through `_split_prefix_attention` at all."""
    config = getattr(model, "config", None)
    layer_types = getattr(config, "layer_types", None)
    return bool(layer_types) and set(layer_types) == {"full_attention"} and hasattr(config, "_attn_implementation")


def _score_rows(
    model: Any,
    rows: Sequence[_Row],
    pasts: Sequence[list | None],
    pad_id: int,
    scores: list[list[float]],
    *,
    split: bool = False,
) -> bool:
    """One forward pass of right-padded suffix rows, row i after the cached prefix `pasts[i]`.

    Without `split` every row has the same prefix, expanded into a DynamicCache over the batch.
    `split=True` runs the suffix rows without a cache and lets `_split_prefix_attention` attend
    to each row's prefix (rows of one prefix must be neighbours). Returns False, adding nothing to
    `scores`, when the model's attention did not go through that function in every layer (an
    architecture that ignores the attention interface or drops the side channel): the caller
    then uses the cache path.
    """
    import torch
    from transformers import DynamicCache

    device = _model_device(model)
    batch = len(rows)
    width = max(len(r.tokens) for r in rows)
    past = pasts[0]
    start = 0 if past is None else past[0][0].shape[-2]
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    lengths = torch.tensor([len(r.tokens) for r in rows], dtype=torch.long)
    for row, r in enumerate(rows):
        input_ids[row, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
    # Right padding: every real token keeps the position it has in the unpadded prompt, and the
    # pads sit after all of them, so no real token ever attends to one.
    starts = torch.tensor([0 if p is None else p[0][0].shape[-2] for p in pasts], dtype=torch.long)
    position_ids = starts[:, None] + torch.arange(width)[None]
    inputs = {"input_ids": input_ids.to(device), "position_ids": position_ids.to(device), "use_cache": False}
    side = None
    if split:
        segments = []
        for row, p in enumerate(pasts):
            if segments and segments[-1][2] is p:
                segments[-1][1] = row + 1
            else:
                segments.append([row, row + 1, p])
        side = _PrefixSideChannel([tuple(s) for s in segments], lengths.to(device), width)
        # Already-prepared masks (one per layer type) skip the model's own mask building, which
        # would size a mask for a cache the model never sees; the attention reads `side` instead.
        inputs["attention_mask"] = {kind: None for kind in set(model.config.layer_types)}
        inputs[_SIDE_CHANNEL] = side
    else:
        if any(p is not past for p in pasts):
            raise ValueError("the cache path needs one prefix for the whole batch")
        attention_mask = torch.zeros((batch, start + width), dtype=torch.long)
        attention_mask[:, :start] = 1
        attention_mask[:, start:] = (torch.arange(width)[None] < lengths[:, None]).long()
        inputs["attention_mask"] = attention_mask.to(device)
        if past is not None:
            # A view per row (expand copies nothing); the cache's own concatenation makes the copy.
            inputs["past_key_values"] = DynamicCache(
                [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in past]
            )
            inputs["use_cache"] = True
    # Logits only at the positions that are read, and the log-softmax only there.
    positions = sorted({pos for r in rows for pos, *_ in r.targets})
    keep = torch.tensor(positions, dtype=torch.long, device=device)
    with _attention_implementation(model.config, _SPLIT_ATTENTION if split else None):
        try:
            logits = model(**inputs, logits_to_keep=keep).logits
        except TypeError:  # an architecture without logits_to_keep: compute all, keep the read positions
            logits = model(**inputs).logits[:, keep, :]
    if side is not None and side.layers_seen != set(range(len(past))):
        return False
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    column = {pos: j for j, pos in enumerate(positions)}
    for row, r in enumerate(rows):
        for pos, token, item, choice in r.targets:
            scores[item][choice] += float(logprobs[row, column[pos], token])
    return True


def score_choices(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCQItem],
    *,
    thinking: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    fast_path: bool = True,
    shared_prefix: bool = True,
    split_attention: bool = True,
) -> list[list[float]]:
    """Log-likelihood of each choice label after the prompt; `result[i][k-1]` is label k of item i.

    Items are grouped by the token prefix their prompts share (`prefix_groups`); each group's
    prefix runs once and its key/value cache serves every row of the group. A row is the rest of
    one item's context (all K single-token labels read at its last position) or, for
    multi-token labels, context rest + one label. Rows are sorted by length (across the groups
    pooled for the split attention, see the module's docstring) and sent `batch_size` at a time.
    `fast_path=False` gives every choice its own row, `shared_prefix=False` caches nothing and
    `split_attention=False` expands each prefix's cache over its batch (tests and benchmarks use
    them to check that every path agrees with the reference).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens = [
        choice_tokens(tokenizer, scoring_prompt(tokenizer, item, thinking=thinking), item.n_choices) for item in items
    ]
    scores = [[0.0] * len(t.continuations) for t in tokens]
    if not items:
        return scores
    pad_id = _pad_id(tokenizer)
    device = _model_device(model)
    contexts = [t.context for t in tokens]
    root_length, groups = prefix_groups(contexts) if shared_prefix else (0, [(0, list(range(len(items))))])
    # Measured on CPU only (benchmarks/eval_vs_lmeval.py); on a GPU the cache path's fused SDPA
    # kernels are the known quantity until the split path has been timed there.
    split = split_attention and _can_split(model) and device.type == "cpu"

    def rows_of(i: int, cut: int) -> list[_Row]:
        spec = tokens[i]
        rest = spec.context[cut:]
        if fast_path and spec.single_token:
            last = len(rest) - 1
            return [_Row(rest, tuple((last, c[0], i, k) for k, c in enumerate(spec.continuations)))]
        return [
            _Row(rest + c, tuple((len(rest) + j - 1, token, i, k) for j, token in enumerate(c)))
            for k, c in enumerate(spec.continuations)
        ]

    def run(batchable: list[tuple[_Row, list | None]], n_items: int, use_split: bool) -> None:
        nonlocal split
        # Longest first: similar lengths share a batch (little padding), and a batch that does
        # not fit in memory fails at once rather than at the end. Within a batch, rows of one
        # prefix are neighbours (the split attention runs each prefix once for all its rows).
        ordered = sorted(range(len(batchable)), key=lambda n: -len(batchable[n][0].tokens))
        for begin in range(0, len(ordered), batch_size):
            batch = [
                batchable[n] for n in sorted(ordered[begin : begin + batch_size], key=lambda n: id(batchable[n][1]))
            ]
            rows, pasts = [r for r, _ in batch], [p for _, p in batch]
            if use_split and split:
                if _score_rows(model, rows, pasts, pad_id, scores, split=True):
                    continue
                split = False  # the model's attention did not take the split path: use the cache from now on
            for past in {id(p): p for p in pasts}.values():
                same = [r for r, p in batch if p is past]
                _score_rows(model, same, [past] * len(same), pad_id, scores)
        bar.update(n_items)

    pending: list[tuple[_Row, list | None]] = []  # split-path rows waiting for a batch, with their prefix cache
    pending_items = held = 0
    with _EvalMode(model), tqdm(total=len(items), desc="scoring", unit="item", disable=not progress) as bar:
        root = _prefix_cache(model, contexts[0][:root_length], None, device) if root_length else None
        split = split and root is not None
        for length, members in groups:
            rows = [r for i in members for r in rows_of(i, length)]
            # The split attention costs a second attention and a merge per row token and saves
            # copying the prefix and attending to it under a mask per row: it pays for a prefix
            # at least as long as the rows (a passage), not for a short one (the system prompt).
            if not (split and length > root_length and length >= max(len(r.tokens) for r in rows)):
                past = (
                    root
                    if length == root_length
                    else _prefix_cache(model, contexts[members[0]][root_length:length], root, device)
                )
                run([(r, past) for r in rows], len(members), use_split=False)
                continue
            past = _split_prefix_cache(model, contexts[members[0]][root_length:length], root)
            if past is None:
                split = False  # the model's attention did not take the split path: use the cache from now on
                past = _prefix_cache(model, contexts[members[0]][root_length:length], root, device)
            pending += [(r, past) for r in rows]
            pending_items += len(members)
            held += _cache_bytes(past)
            # Rows of several passages are pooled (less padding: a passage's 3 to 6 questions rarely
            # fill a batch of similar lengths), holding at most about _POOL_BYTES of prefix caches.
            if held >= _POOL_BYTES:
                run(pending, pending_items, use_split=True)
                pending, pending_items, held = [], 0, 0
        run(pending, pending_items, use_split=True)
    return scores


def score_choices_reference(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCQItem],
    *,
    thinking: bool = False,
    progress: bool = False,
) -> list[list[float]]:
    """The slow oracle: one item and one choice per forward pass, no padding, full logits."""
    import torch
    from tqdm.auto import tqdm

    device = _model_device(model)
    results: list[list[float]] = []
    with _EvalMode(model):
        for item in tqdm(items, desc="scoring (reference)", unit="item", disable=not progress):
            spec = choice_tokens(tokenizer, scoring_prompt(tokenizer, item, thinking=thinking), item.n_choices)
            item_scores = []
            for continuation in spec.continuations:
                ids = torch.tensor([list(spec.context) + list(continuation)], dtype=torch.long, device=device)
                logprobs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)[0]
                start = len(spec.context)
                item_scores.append(sum(float(logprobs[start + j - 1, token]) for j, token in enumerate(continuation)))
            results.append(item_scores)
    return results


def predict(scores: Sequence[Sequence[float]]) -> list[int]:
    """1-based argmax per item; a tie goes to the lowest label (deterministic, never random)."""
    predictions = []
    for row in scores:
        best = max(range(len(row)), key=lambda k: (row[k], -k))
        predictions.append(best + 1)
    return predictions
