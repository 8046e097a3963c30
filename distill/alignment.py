"""Reasoning alignment: how closely one reasoning follows another, step by step.

The blueprint method asks the teacher for a chosen reasoning that follows the seed's golden path
step by step, and a rejected reasoning that repeats the student's failed path. This module
measures both from the texts alone (data in, data out; no model, no network):

- `reasoning_steps(text)`: the steps of a reasoning: its numbered lines ("1. ...", "2) ...") or,
  without numbering, its non-empty lines; the final answer line ("정답: N") and the numbers in
  front of steps are removed.
- `step_similarity(a, b)`: cosine similarity of the character-bigram count vectors of the two
  steps, after lower-casing and removing whitespace and punctuation (0: no bigram in common,
  1: the same bigrams in the same proportions). Character n-grams need no tokenizer and work
  for Korean, where a syllable is one character and particles attach to words; bigrams, because
  most Korean words are two syllables (trigrams left most transferred steps at exactly 0 on the
  bundled recording). Two steps of 50 characters cost a few microseconds.
- `align_steps(a, b)`: the best *monotone* alignment of two step lists (Needleman-Wunsch with
  gaps free of cost: each step matched at most once, matches in the same order on both sides)
  maximising the summed similarity of the matched steps; its `score` is that sum divided by the
  longer list's length, in [0, 1]: 1 for the same steps in the same order, lower for steps
  reworded, missing, added or out of order (a shuffled copy keeps only its longest in-order
  run of matches), near 0 for unrelated reasoning.
- `pair_alignment(...)`: the two scores augment logs per pair: `alignment_golden` (chosen steps
  against the golden path's) and `alignment_failed` (rejected reasoning against the failed path).

The scores are lexical: a transfer to another subject shares the golden path's structure, not
its words, so its `alignment_golden` is lower than an intra-subject transfer's; compare scores
within a transfer kind, and set `min_alignment` (augment's optional gate) with that in mind.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

NGRAM = 2
"""Character n-gram size of `step_similarity` (bigrams: see the module docstring)."""

_NUMBER = re.compile(r"^\s*\d{1,2}\s*[.)](?=\s)\s*")
_NUMBERED_LINE = re.compile(r"^\s*\d{1,2}\s*[.)]\s+\S")
_ANSWER_LINE = re.compile(r"^\s*\**\s*정답\s*\**\s*[:：]")
_NOT_TEXT = re.compile(r"[\W_]+", re.UNICODE)


def reasoning_steps(text: str) -> list[str]:
    """The steps of a reasoning text (see the module docstring), without their numbers."""
    lines = [line for line in (text or "").splitlines() if line.strip() and not _ANSWER_LINE.match(line)]
    if any(_NUMBERED_LINE.match(line) for line in lines):
        steps: list[str] = []
        for line in lines:
            if _NUMBERED_LINE.match(line) or not steps:
                steps.append(_NUMBER.sub("", line, count=1).strip())
            else:  # a continuation line belongs to the step above it
                steps[-1] = f"{steps[-1]} {line.strip()}"
        return steps
    return [line.strip() for line in lines]


def _ngrams(text: str) -> Counter:
    flat = _NOT_TEXT.sub("", text.lower())
    if len(flat) < NGRAM:
        return Counter([flat]) if flat else Counter()
    return Counter(flat[i : i + NGRAM] for i in range(len(flat) - NGRAM + 1))


def step_similarity(a: str, b: str) -> float:
    """Cosine similarity of the two steps' character-bigram counts, in [0, 1]."""
    ca, cb = _ngrams(a), _ngrams(b)
    if not ca or not cb:
        return 0.0
    dot = sum(n * cb[g] for g, n in ca.items() if g in cb)
    return dot / math.sqrt(sum(n * n for n in ca.values()) * sum(n * n for n in cb.values()))


@dataclass(frozen=True)
class Alignment:
    score: float
    """Summed similarity of the matched steps over the longer list's length, in [0, 1]."""
    matches: tuple[tuple[int, int, float], ...]
    """(index in a, index in b, similarity) of each matched step, in order."""


def align_steps(a: Sequence[str], b: Sequence[str]) -> Alignment:
    """The monotone alignment of two step lists with the largest summed similarity."""
    n, m = len(a), len(b)
    if not n or not m:
        return Alignment(0.0, ())
    sim = [[step_similarity(x, y) for y in b] for x in a]
    # best[i][j]: the best sum aligning a[:i] with b[:j]; a step may stay unmatched at no cost.
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best[i][j] = max(best[i - 1][j], best[i][j - 1], best[i - 1][j - 1] + sim[i - 1][j - 1])
    matches = []
    i, j = n, m
    while i and j:
        if best[i][j] == best[i - 1][j - 1] + sim[i - 1][j - 1] and sim[i - 1][j - 1] > 0:
            matches.append((i - 1, j - 1, sim[i - 1][j - 1]))
            i, j = i - 1, j - 1
        elif best[i][j] == best[i - 1][j]:
            i -= 1
        else:
            j -= 1
    return Alignment(best[n][m] / max(n, m), tuple(reversed(matches)))


def reasoning_alignment(text: str, reference: str) -> float:
    """`align_steps` score of two reasoning texts' steps."""
    return align_steps(reasoning_steps(text), reasoning_steps(reference)).score


def pair_alignment(
    chosen_steps: Sequence[str], golden_path: str, rejected_reasoning: str, failed_path: str
) -> dict[str, float]:
    """A pair's two scores: chosen against the golden path, rejected against the failed path."""
    return {
        "alignment_golden": round(align_steps(list(chosen_steps), reasoning_steps(golden_path)).score, 4),
        "alignment_failed": round(reasoning_alignment(rejected_reasoning, failed_path), 4),
    }


ALIGNMENT_METRICS = ("augment/alignment_golden", "augment/alignment_failed")
"""The run-level figures: the mean of each per-pair score over the accepted pairs."""


def alignment_metrics(pairs: Sequence) -> dict[str, float]:
    """Mean `alignment_golden` and `alignment_failed` over the pairs that carry them (`meta`)."""
    metrics = {}
    for name in ALIGNMENT_METRICS:
        key = name.split("/", 1)[1]
        values = [pair.meta[key] for pair in pairs if key in pair.meta]
        if values:
            metrics[name] = sum(values) / len(values)
    return metrics
