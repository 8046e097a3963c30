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

Speed: when every label of an item is one token after a shared context (the usual case), all K
scores come from ONE forward pass of the context, reading K entries of the last position's
next-token distribution. Otherwise each (item, choice) becomes a row `context + label tokens`
and the log-probs of the label tokens are summed. Items are sorted by length and batched with
left padding, explicit position ids (so every real token sees the same positions as unpadded)
and only the last few positions' logits are computed (`logits_to_keep`), which keeps memory
small for large vocabularies. `score_choices_reference` is the slow oracle: one item and one
choice per forward pass, no padding.
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


def _last_logprobs(model: Any, sequences: list[Sequence[int]], n_keep: int, pad_id: int):
    """Log-softmax (float32) of the last `n_keep` positions of each left-padded sequence."""
    import torch

    device = _model_device(model)
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, width - len(seq) :] = 1
    # Positions count real tokens only, so a left-padded row sees exactly the positions it
    # would see alone (0, 1, 2, ...).
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "position_ids": position_ids.to(device),
        "use_cache": False,
    }
    try:
        logits = model(**inputs, logits_to_keep=n_keep).logits
    except TypeError:  # an architecture without logits_to_keep: compute all, keep the tail
        logits = model(**inputs).logits
    logits = logits[:, -n_keep:, :]
    return torch.log_softmax(logits.float(), dim=-1)


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


def score_choices(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCQItem],
    *,
    thinking: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    fast_path: bool = True,
) -> list[list[float]]:
    """Log-likelihood of each choice label after the prompt; `result[i][k-1]` is label k of item i.

    Batches of `batch_size` items, longest first. Items whose labels are single tokens after a
    shared context take one row each (one forward pass reads all K labels); the rest take one
    row per choice. `fast_path=False` sends every item down the one-row-per-choice path (tests
    and benchmarks use it to check that both paths agree).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens = [
        choice_tokens(tokenizer, scoring_prompt(tokenizer, item, thinking=thinking), item.n_choices) for item in items
    ]
    scores: list[list[float] | None] = [None] * len(items)
    pad_id = _pad_id(tokenizer)

    fast = [i for i, t in enumerate(tokens) if fast_path and t.single_token]
    general = [i for i, t in enumerate(tokens) if not (fast_path and t.single_token)]

    def length_sorted(indices: list[int]) -> list[int]:
        # Longest first: similar lengths share a batch (little padding), and a batch that does
        # not fit in memory fails at once rather than at the end.
        return sorted(
            indices, key=lambda i: len(tokens[i].context) + max(map(len, tokens[i].continuations)), reverse=True
        )

    with _EvalMode(model), tqdm(total=len(items), desc="scoring", unit="item", disable=not progress) as bar:
        fast_sorted = length_sorted(fast)
        for start in range(0, len(fast_sorted), batch_size):
            batch = fast_sorted[start : start + batch_size]
            logprobs = _last_logprobs(model, [tokens[i].context for i in batch], 1, pad_id)[:, -1, :]
            for row, i in enumerate(batch):
                label_ids = [c[0] for c in tokens[i].continuations]
                scores[i] = logprobs[row, label_ids].tolist()
            bar.update(len(batch))

        general_sorted = length_sorted(general)
        for start in range(0, len(general_sorted), batch_size):
            batch = general_sorted[start : start + batch_size]
            rows = [(i, k) for i in batch for k in range(len(tokens[i].continuations))]
            sequences = [tokens[i].context + tokens[i].continuations[k] for i, k in rows]
            n_keep = max(len(tokens[i].continuations[k]) for i, k in rows) + 1
            logprobs = _last_logprobs(model, sequences, n_keep, pad_id)
            for i in batch:
                scores[i] = [0.0] * len(tokens[i].continuations)
            for row, (i, k) in enumerate(rows):
                continuation = tokens[i].continuations[k]
                c = len(continuation)
                # Sequence ends at the last kept position; token j of the continuation sits at
                # kept index n_keep - c + j and is predicted by the position before it.
                total = 0.0
                for j, token in enumerate(continuation):
                    total += float(logprobs[row, n_keep - c + j - 1, token])
                scores[i][k] = total  # type: ignore[index]
            bar.update(len(batch))
    return [list(s) for s in scores]  # type: ignore[arg-type]


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
