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
prompts runs once, each passage's prefix runs once after it, and their key/value caches
(transformers' DynamicCache, expanded over a batch without copying) serve every question of the
group. When every label of an item is one token (the usual case), one row per item (the rest of
its context) gives all K scores from the last position's next-token distribution; otherwise each
(item, choice) is a row `context rest + label tokens` and the label tokens' log-probs are summed.
Rows are right-padded (every real token keeps its unpadded position and never sees a pad),
sorted by length within a group, and only the positions that are read get logits and a
log-softmax (`logits_to_keep` with their indices), which keeps memory small for large
vocabularies. `score_choices_reference` is the slow oracle: one item and one choice per forward
pass, no padding, no cache.
"""

from __future__ import annotations

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
    ALL contexts share (the chat header and the system prompt). Items that share at least
    `min_shared` tokens beyond it (a passage and the text before it) form a group with their own
    longer prefix; sorting the contexts makes such items neighbours, and the prefix a sorted run
    shares is the one its first and last member share. Every other item joins the root group
    (prefix length `root`). A prefix always stops at least one token short of each member's
    context, so every item keeps a last position to score.
    """
    if not contexts:
        return 0, []
    root = min(min(len(c) for c in contexts) - 1, min(_common_prefix_length(contexts[0], c) for c in contexts))
    order = sorted(range(len(contexts)), key=lambda i: tuple(contexts[i]))
    runs: list[list[int]] = []
    for prev, cur in zip([None, *order], order):
        if prev is not None and _common_prefix_length(contexts[prev], contexts[cur]) >= root + min_shared:
            runs[-1].append(cur)
        else:
            runs.append([cur])
    loose = sorted(i for run in runs if len(run) == 1 for i in run)
    groups = [(root, loose)] if loose else []
    for run in (r for r in runs if len(r) > 1):
        shared = _common_prefix_length(contexts[run[0]], contexts[run[-1]])
        groups.append((min([shared] + [len(contexts[i]) - 1 for i in run]), sorted(run)))
    return root, groups


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


def _score_rows(model: Any, rows: Sequence[_Row], past: list | None, pad_id: int, scores: list[list[float]]):
    """One forward pass of right-padded suffix rows after the shared cached prefix `past`."""
    import torch
    from transformers import DynamicCache

    device = _model_device(model)
    batch = len(rows)
    width = max(len(r.tokens) for r in rows)
    start = 0 if past is None else past[0][0].shape[-2]
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, start + width), dtype=torch.long)
    attention_mask[:, :start] = 1
    for row, r in enumerate(rows):
        input_ids[row, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
        attention_mask[row, start : start + len(r.tokens)] = 1
    # Right padding: every real token keeps the position it has in the unpadded prompt, and the
    # pads sit after all of them, so no real token ever attends to one.
    position_ids = torch.arange(start, start + width)[None].expand(batch, width)
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "position_ids": position_ids.to(device),
    }
    if past is not None:
        # A view per row (expand copies nothing); the cache's own concatenation makes the copy.
        inputs["past_key_values"] = DynamicCache(
            [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in past]
        )
        inputs["use_cache"] = True
    else:
        inputs["use_cache"] = False
    # Logits only at the positions that are read, and the log-softmax only there.
    positions = sorted({pos for r in rows for pos, *_ in r.targets})
    keep = torch.tensor(positions, dtype=torch.long, device=device)
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:  # an architecture without logits_to_keep: compute all, keep the read positions
        logits = model(**inputs).logits[:, keep, :]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    column = {pos: j for j, pos in enumerate(positions)}
    for row, r in enumerate(rows):
        for pos, token, item, choice in r.targets:
            scores[item][choice] += float(logprobs[row, column[pos], token])


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
) -> list[list[float]]:
    """Log-likelihood of each choice label after the prompt; `result[i][k-1]` is label k of item i.

    Items are grouped by the token prefix their prompts share (`prefix_groups`); each group's
    prefix runs once and its key/value cache serves every row of the group. A row is the rest of
    one item's context (all K single-token labels read at its last position) or, for
    multi-token labels, context rest + one label. Rows are sorted by length within a group and
    sent `batch_size` at a time. `fast_path=False` gives every choice its own row and
    `shared_prefix=False` caches nothing (tests and benchmarks use both to check that every path
    agrees with the reference).
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

    with _EvalMode(model), tqdm(total=len(items), desc="scoring", unit="item", disable=not progress) as bar:
        root = _prefix_cache(model, contexts[0][:root_length], None, device) if root_length else None
        for length, members in groups:
            if length == root_length:
                past = root
            else:
                past = _prefix_cache(model, contexts[members[0]][root_length:length], root, device)
            # Longest first: similar lengths share a batch (little padding), and a batch that
            # does not fit in memory fails at once rather than at the end.
            rows = sorted((r for i in members for r in rows_of(i, length)), key=lambda r: -len(r.tokens))
            for begin in range(0, len(rows), batch_size):
                _score_rows(model, rows[begin : begin + batch_size], past, pad_id, scores)
            bar.update(len(members))
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
