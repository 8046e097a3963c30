"""The transfer plan: for each hard negative, which targets the teacher writes new problems for.

A plan file (YAML, see distill/resources/transfer_plan.yaml) lists, per subject, the topics an
intra-subject transfer may move to and the subjects a cross-subject transfer may move to, plus
the cross-domain targets, the number of pairs per seed and the mix of transfer kinds.
`build_plan` turns it into one `PlanEntry` per candidate:

1. Each seed gets its `pairs_per_seed` slots (the config's override, else the subject's own
   value, else the plan's).
2. The slots get transfer kinds in proportion to `mix` (`seed_kinds`: whole parts first, the
   rest drawn by the fractional parts), so over many seeds the mix is the plan's.
3. Each slot draws its target from its kind's list, never the same target twice for one seed.

Both draws use a generator seeded by (seed, seed id) only: the same seed gives the same plan,
and a seed's targets do not depend on the other seeds, so adding seeds to a run keeps every
earlier candidate's request (and its cached response) unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import InputError

TRANSFER_KINDS: tuple[str, ...] = ("intra-subject", "cross-subject", "cross-domain")


@dataclass(frozen=True)
class TransferTarget:
    kind: str
    """intra-subject | cross-subject | cross-domain"""
    subject: str
    """The subject the new problem belongs to (the seed's own for intra-subject)."""
    topic: str
    """The era, topic or field inside that subject the problem is set in."""


@dataclass(frozen=True)
class PlanEntry:
    candidate_id: str
    """`<seed id>-aug<k>`: the id of the candidate and of the pair it may become."""
    seed_id: str
    index: int
    """1-based slot of this seed."""
    target: TransferTarget


@dataclass(frozen=True)
class SubjectPlan:
    topics: tuple[str, ...]
    cross: tuple[str, ...]
    pairs_per_seed: int | None = None


@dataclass(frozen=True)
class TransferPlan:
    pairs_per_seed: int
    mix: dict[str, float]
    subjects: dict[str, SubjectPlan]
    cross_domain: tuple[tuple[str, str], ...]
    """(subject, topic) pairs."""
    fallback: SubjectPlan
    aliases: dict[str, str] = field(default_factory=dict)

    def subject_plan(self, subject: str) -> SubjectPlan:
        name = self.aliases.get(subject, subject)
        return self.subjects.get(name, self.fallback)

    def topics_of(self, subject: str) -> tuple[str, ...]:
        name = self.aliases.get(subject, subject)
        if name in self.subjects:
            return self.subjects[name].topics
        return (f"{subject} 전반",)


# ---------------------------------------------------------------------------------------------
# Reading a plan file


def default_plan_path() -> Path:
    from distill.resources import resource_path

    return resource_path("transfer_plan.yaml")


def load_plan(path: str | Path | None = None) -> TransferPlan:
    """Read and check a plan file (None: the bundled default)."""
    import yaml

    path = Path(path) if path else default_plan_path()
    if not path.is_file():
        raise InputError(path, "transfer plan: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc})") from None
    return plan_from_dict(path, data)


def _text_list(path, value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(path, "must be a non-empty list", field=where)
    texts = []
    for position, entry in enumerate(value, start=1):
        if not isinstance(entry, str) or not entry.strip():
            raise InputError(path, f"entry {position} must be non-empty text", field=where)
        texts.append(entry.strip())
    if len(set(texts)) != len(texts):
        raise InputError(path, "lists the same entry twice", field=where)
    return tuple(texts)


def _positive_int(path, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(path, f"must be a whole number >= 1, got {value!r}", field=where)
    return value


def _subject_plan(path, value: Any, where: str) -> SubjectPlan:
    if not isinstance(value, dict):
        raise InputError(path, "must be a mapping with topics and cross", field=where)
    unknown = set(value) - {"topics", "cross", "pairs_per_seed"}
    if unknown:
        raise InputError(path, f"unknown keys {sorted(unknown)}", field=where)
    per_seed = value.get("pairs_per_seed")
    return SubjectPlan(
        topics=_text_list(path, value.get("topics"), f"{where}.topics"),
        cross=_text_list(path, value.get("cross"), f"{where}.cross"),
        pairs_per_seed=None if per_seed is None else _positive_int(path, per_seed, f"{where}.pairs_per_seed"),
    )


def plan_from_dict(path, data: Any) -> TransferPlan:
    """Check a parsed plan; every fault is an InputError naming the key."""
    if not isinstance(data, dict):
        raise InputError(path, "a transfer plan is a mapping (pairs_per_seed, mix, subjects, cross_domain, fallback)")
    unknown = set(data) - {"pairs_per_seed", "mix", "subjects", "cross_domain", "fallback", "aliases"}
    if unknown:
        raise InputError(path, f"unknown keys {sorted(unknown)}")
    pairs_per_seed = _positive_int(path, data.get("pairs_per_seed"), "pairs_per_seed")

    mix_raw = data.get("mix")
    if not isinstance(mix_raw, dict) or not mix_raw:
        raise InputError(path, f"must map transfer kinds ({', '.join(TRANSFER_KINDS)}) to shares", field="mix")
    mix: dict[str, float] = {}
    for kind, share in mix_raw.items():
        if kind not in TRANSFER_KINDS:
            raise InputError(path, f"unknown transfer kind {kind!r}; use {', '.join(TRANSFER_KINDS)}", field="mix")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0:
            raise InputError(path, f"share of {kind} must be a number >= 0, got {share!r}", field="mix")
        mix[kind] = float(share)
    if sum(mix.values()) <= 0:
        raise InputError(path, "shares add up to 0", field="mix")

    subjects_raw = data.get("subjects")
    if not isinstance(subjects_raw, dict) or not subjects_raw:
        raise InputError(path, "must map subject names to {topics, cross}", field="subjects")
    subjects = {str(name): _subject_plan(path, value, f"subjects.{name}") for name, value in subjects_raw.items()}

    aliases_raw = data.get("aliases") or {}
    if not isinstance(aliases_raw, dict):
        raise InputError(path, "must map subject labels to subjects of the plan", field="aliases")
    aliases = {}
    for label, name in aliases_raw.items():
        if str(name) not in subjects:
            raise InputError(path, f"{label!r} points to {name!r}, which the plan does not list", field="aliases")
        aliases[str(label)] = str(name)

    domains_raw = data.get("cross_domain")
    cross_domain: list[tuple[str, str]] = []
    if mix.get("cross-domain", 0) > 0 or domains_raw:
        if not isinstance(domains_raw, list) or not domains_raw:
            raise InputError(path, "must list {subject, topic} targets", field="cross_domain")
        for position, entry in enumerate(domains_raw, start=1):
            if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), str) and entry[k].strip() for k in ("subject", "topic")
            ):
                raise InputError(path, f"entry {position} needs text subject and topic", field="cross_domain")
            cross_domain.append((entry["subject"].strip(), entry["topic"].strip()))
        if len(set(cross_domain)) != len(cross_domain):
            raise InputError(path, "lists the same target twice", field="cross_domain")

    fallback = _subject_plan(path, data.get("fallback"), "fallback")
    return TransferPlan(
        pairs_per_seed=pairs_per_seed,
        mix=mix,
        subjects=subjects,
        cross_domain=tuple(cross_domain),
        fallback=fallback,
        aliases=aliases,
    )


# ---------------------------------------------------------------------------------------------
# Building the plan of a run


def seed_kinds(mix: dict[str, float], size: int, rng: random.Random) -> list[str]:
    """The transfer kinds of one seed's `size` slots, in TRANSFER_KINDS order.

    Each kind gets the whole part of `size x share`; the slots left over go to distinct kinds
    drawn without replacement, weighted by the fractional parts. So every kind's expected count
    is exactly `size x share`, and a seed never depends on what the other seeds drew."""
    whole = sum(mix.values())
    exact = {kind: size * mix.get(kind, 0.0) / whole for kind in TRANSFER_KINDS}
    counts = {kind: int(exact[kind]) for kind in TRANSFER_KINDS}
    left = size - sum(counts.values())
    weights = {kind: exact[kind] - counts[kind] for kind in TRANSFER_KINDS if exact[kind] - counts[kind] > 1e-12}
    for _ in range(left):
        kinds = list(weights)
        draw = rng.random() * sum(weights.values())
        chosen = kinds[-1]
        for kind in kinds:
            draw -= weights[kind]
            if draw < 0:
                chosen = kind
                break
        counts[chosen] += 1
        del weights[chosen]
    return [kind for kind in TRANSFER_KINDS for _ in range(counts[kind])]


def _pick_target(
    kind: str, seed_subject: str, plan: TransferPlan, used: set[tuple[str, str]], rng: random.Random
) -> TransferTarget:
    if kind == "intra-subject":
        options = [(seed_subject, topic) for topic in plan.subject_plan(seed_subject).topics]
    elif kind == "cross-subject":
        canonical = plan.aliases.get(seed_subject, seed_subject)
        others = [s for s in plan.subject_plan(seed_subject).cross if s not in (seed_subject, canonical)]
        others = others or [s for s in plan.fallback.cross if s not in (seed_subject, canonical)]
        fresh = [s for s in others if not any(u[0] == s for u in used)] or others
        subject = rng.choice(fresh)
        options = [(subject, topic) for topic in plan.topics_of(subject)]
    else:
        options = list(plan.cross_domain)
    free = [option for option in options if option not in used] or options
    subject, topic = rng.choice(free)
    used.add((subject, topic))
    return TransferTarget(kind=kind, subject=subject, topic=topic)


def build_plan(
    seeds: Sequence[tuple[str, str]],
    plan: TransferPlan,
    seed: int,
    *,
    pairs_per_seed: int | None = None,
) -> list[PlanEntry]:
    """One entry per candidate for `seeds` = [(seed id, subject), ...] in their given order.

    `pairs_per_seed` (when given) overrides the plan's numbers for every subject."""
    sizes = []
    for _, subject in seeds:
        own = plan.subject_plan(subject).pairs_per_seed
        sizes.append(pairs_per_seed if pairs_per_seed is not None else (own or plan.pairs_per_seed))
    if any(size < 1 for size in sizes):
        raise ValueError("pairs_per_seed must be at least 1")
    entries: list[PlanEntry] = []
    for (seed_id, subject), size in zip(seeds, sizes):
        rng = random.Random(f"distill-augment-plan:{seed}:{seed_id}")
        used: set[tuple[str, str]] = set()
        for index, kind in enumerate(seed_kinds(plan.mix, size, rng), start=1):
            entries.append(
                PlanEntry(
                    candidate_id=f"{seed_id}-aug{index}",
                    seed_id=seed_id,
                    index=index,
                    target=_pick_target(kind, subject, plan, used, rng),
                )
            )
    return entries


def plan_counts(entries: Sequence[PlanEntry]) -> dict[str, int]:
    """Candidates per transfer kind."""
    counts = {kind: 0 for kind in TRANSFER_KINDS}
    for entry in entries:
        counts[entry.target.kind] += 1
    return counts
