"""Near-duplicates among the generated problems: keep the first, drop the later copies.

A teacher asked for several transfers of one seed sometimes writes the same problem twice
(or two seeds with one logic lead to one problem). Two such pairs would weigh that problem
double in training and could sit on both sides of the dev split. Candidates are taken in plan
order; each is compared (character n-gram overlap, `distill.blueprint.decontam`) with the
problems already kept, and dropped when it is at least `threshold` close to one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.blueprint.decontam import DEFAULT_NGRAM, Match, NgramIndex


@dataclass
class DuplicateFilter:
    """Stateful in one way only: what was kept so far. `check` is a pure question, `keep` records."""

    threshold: float
    n: int = DEFAULT_NGRAM
    _kept: NgramIndex = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"duplicate threshold must be in (0, 1], got {self.threshold}")
        self._kept = NgramIndex(self.n)

    def closest(self, text: str) -> Match | None:
        """The kept problem closest to `text` (None when nothing is kept yet)."""
        return self._kept.best_match(text)

    def keep(self, candidate_id: str, text: str) -> None:
        self._kept.add(candidate_id, text, kind="candidate")


def find_duplicates(texts: list[tuple[str, str]], threshold: float, n: int = DEFAULT_NGRAM) -> dict[str, Match]:
    """{later id: match with the earlier kept one} for every near-duplicate in `texts` (in order)."""
    dedup = DuplicateFilter(threshold, n)
    duplicates: dict[str, Match] = {}
    for candidate_id, text in texts:
        match = dedup.closest(text)
        if match is not None and match.score >= threshold:
            duplicates[candidate_id] = match
        else:
            dedup.keep(candidate_id, text)
    return duplicates
