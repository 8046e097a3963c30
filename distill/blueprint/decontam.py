"""Character n-gram overlap between a new problem and every reference item (eval sets, seeds).

Text is normalised before it is cut into n-grams: Unicode NFKC, case folded, and everything
that is not a letter or a digit removed (spaces, punctuation, symbols, the ㄱ/ㄴ markers'
brackets, circled numbers). A copy whose whitespace and punctuation were changed therefore has
exactly the n-grams of the original, and replacing one word changes only the few n-grams that
cross it.

The score of a pair of texts is the overlap coefficient of their n-gram sets,
|A ∩ B| / min(|A|, |B|): 1.0 when one text's n-grams all occur in the other. Taking the
smaller set catches both a lightly edited copy and a new problem that embeds a whole reference
item (or a passage an evaluation set uses) inside more text of its own. Korean n-grams of five
syllables are about two words long, so unrelated problems on the same topic share only stock
phrases ("옳은 것만을 <보기>에서 고른 것은") and score near 0.1.

`NgramIndex` is an inverted index (n-gram -> reference rows, frozen into numpy arrays on the
first query), so a query costs one pass over its own n-grams' posting lists: fast for a few
thousand reference items, and exact (no sketch, no false negatives).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from distill.contracts import MCQItem

DEFAULT_NGRAM = 5


def normalise(text: str) -> str:
    """NFKC, case folded, letters and digits only."""
    folded = unicodedata.normalize("NFKC", text or "").casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LN")


def char_ngrams(text: str, n: int = DEFAULT_NGRAM) -> set[str]:
    """The set of character n-grams of the normalised text (the whole text if shorter than n)."""
    compact = normalise(text)
    if not compact:
        return set()
    if len(compact) <= n:
        return {compact}
    return {compact[i : i + n] for i in range(len(compact) - n + 1)}


def item_text(item: MCQItem) -> str:
    """What of an item is compared: passage, question, <보기> and choices."""
    return "\n".join([item.paragraph, item.question, item.question_plus, *item.choices])


def overlap(a: set[str], b: set[str]) -> float:
    """|A ∩ B| / min(|A|, |B|), 0 when either is empty."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


@dataclass(frozen=True)
class Match:
    ref_id: str
    """Id of the reference item (or candidate) matched."""
    kind: str
    """What the reference is: "eval", "seed", "candidate", ..."""
    score: float
    shared: int
    """N-grams the two texts share."""


class NgramIndex:
    """Reference texts by their character n-grams; `best_match(text)` finds the closest one."""

    def __init__(self, n: int = DEFAULT_NGRAM):
        if n < 2:
            raise ValueError(f"n-gram size must be at least 2, got {n}")
        self.n = n
        self.ids: list[str] = []
        self.kinds: list[str] = []
        self._sizes: list[int] = []
        self._postings: dict[str, list[int]] = {}
        self._frozen: dict[str, np.ndarray] | None = None
        self._size_array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ref_id: str, text: str, kind: str = "reference") -> None:
        grams = char_ngrams(text, self.n)
        row = len(self.ids)
        self.ids.append(str(ref_id))
        self.kinds.append(kind)
        self._sizes.append(len(grams))
        for gram in grams:
            self._postings.setdefault(gram, []).append(row)
        self._frozen = None

    def add_items(self, items: Iterable[MCQItem], kind: str) -> None:
        for item in items:
            self.add(item.id, item_text(item), kind)

    def _freeze(self) -> None:
        if self._frozen is None:
            self._frozen = {gram: np.asarray(rows, dtype=np.int32) for gram, rows in self._postings.items()}
            self._size_array = np.asarray(self._sizes, dtype=np.float64)

    def scores(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(overlap score, shared n-gram count) of `text` against every reference row."""
        grams = char_ngrams(text, self.n)
        if not self.ids:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        self._freeze()
        assert self._frozen is not None and self._size_array is not None
        hits = [self._frozen[gram] for gram in grams if gram in self._frozen]
        if not hits or not grams:
            return np.zeros(len(self.ids)), np.zeros(len(self.ids), dtype=np.int64)
        shared = np.bincount(np.concatenate(hits), minlength=len(self.ids))
        smaller = np.minimum(self._size_array, len(grams))
        score = np.divide(shared, smaller, out=np.zeros(len(self.ids)), where=smaller > 0)
        return score, shared

    def best_match(self, text: str) -> Match | None:
        """The reference with the highest score (ties: the one added first); None when empty."""
        score, shared = self.scores(text)
        if len(score) == 0:
            return None
        row = int(np.argmax(score))
        return Match(ref_id=self.ids[row], kind=self.kinds[row], score=float(score[row]), shared=int(shared[row]))


def build_reference_index(
    eval_items: Iterable[MCQItem], seed_items: Iterable[MCQItem], n: int = DEFAULT_NGRAM
) -> NgramIndex:
    """One index over every evaluation item and every seed item."""
    index = NgramIndex(n)
    index.add_items(eval_items, "eval")
    index.add_items(seed_items, "seed")
    return index
