"""The transfer plan: read from YAML with clear errors, deterministic for a seed, the mix of
transfer kinds honoured, and a default plan that covers the 수능 subjects."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from distill.blueprint.plan import TRANSFER_KINDS, build_plan, load_plan, plan_counts, seed_kinds
from distill.errors import InputError

SUNEUNG_SUBJECTS = (
    "한국사",
    "세계사",
    "동아시아사",
    "경제",
    "정치와법",
    "사회문화",
    "윤리와사상",
    "생활과윤리",
    "국어",
)


def _seeds(n: int, subject: str = "한국사") -> list[tuple[str, str]]:
    return [(f"s{k:03d}", subject) for k in range(n)]


def _write(tmp_path, data) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return str(path)


def _minimal() -> dict:
    return {
        "pairs_per_seed": 2,
        "mix": {"intra-subject": 1.0},
        "subjects": {"A": {"topics": ["a1", "a2"], "cross": ["B"]}, "B": {"topics": ["b1"], "cross": ["A"]}},
        "fallback": {"topics": ["f1"], "cross": ["A"]},
    }


def test_default_plan_covers_the_suneung_subjects_and_every_cross_target_has_topics():
    plan = load_plan()
    for subject in SUNEUNG_SUBJECTS:
        assert subject in plan.subjects, subject
        assert len(plan.subjects[subject].topics) >= 3
        for other in plan.subjects[subject].cross:
            assert other != subject and other in plan.subjects, (subject, other)
    assert plan.subject_plan("독서").topics == plan.subjects["국어"].topics  # an alias
    assert plan.subject_plan("no such subject") == plan.fallback
    assert plan.cross_domain and set(plan.mix) == set(TRANSFER_KINDS)


def test_same_seed_same_plan_other_seed_other_plan_and_new_seeds_leave_old_entries_alone():
    plan = load_plan()
    seeds = [(f"s{k}", subject) for k, subject in enumerate(SUNEUNG_SUBJECTS * 3)]
    first = build_plan(seeds, plan, seed=0)
    assert build_plan(seeds, plan, seed=0) == first
    assert build_plan(seeds, plan, seed=1) != first
    longer = build_plan(seeds + [("extra", "경제")], plan, seed=0)
    assert longer[: len(first)] == first
    assert [e.candidate_id for e in first[:2]] == ["s0-aug1", "s0-aug2"]


def test_targets_follow_their_kind_and_never_repeat_within_a_seed():
    plan = load_plan()
    seeds = [(f"s{k}", subject) for k, subject in enumerate(SUNEUNG_SUBJECTS * 4)]
    entries = build_plan(seeds, plan, seed=3, pairs_per_seed=4)
    subject_of = dict(seeds)
    domains = set(plan.cross_domain)
    for entry in entries:
        seed_subject = subject_of[entry.seed_id]
        target = entry.target
        if target.kind == "intra-subject":
            assert target.subject == seed_subject and target.topic in plan.subject_plan(seed_subject).topics
        elif target.kind == "cross-subject":
            assert target.subject != seed_subject and target.subject in plan.subject_plan(seed_subject).cross
            assert target.topic in plan.topics_of(target.subject)
        else:
            assert (target.subject, target.topic) in domains
    for seed_id, _ in seeds:
        targets = [(e.target.subject, e.target.topic) for e in entries if e.seed_id == seed_id]
        assert len(targets) == 4 and len(set(targets)) == 4


def test_the_mix_is_exact_per_seed_where_it_can_be_and_right_on_average_where_it_cannot():
    import random

    mix = {"intra-subject": 0.5, "cross-subject": 0.3, "cross-domain": 0.2}
    assert Counter(seed_kinds(mix, 10, random.Random(0))) == {
        "intra-subject": 5,
        "cross-subject": 3,
        "cross-domain": 2,
    }
    counts = plan_counts(build_plan(_seeds(400), load_plan(), seed=0, pairs_per_seed=2))
    assert sum(counts.values()) == 800
    # two slots: one is always intra-subject, the other cross-subject 60% / cross-domain 40%
    assert counts["intra-subject"] == 400
    assert 0.5 < counts["cross-subject"] / 400 < 0.7


def test_pairs_per_seed_from_the_config_then_the_subject_then_the_plan(tmp_path):
    data = _minimal()
    data["subjects"]["B"]["pairs_per_seed"] = 1
    plan = load_plan(_write(tmp_path, data))
    entries = build_plan([("x", "A"), ("y", "B")], plan, seed=0)
    assert Counter(e.seed_id for e in entries) == {"x": 2, "y": 1}
    assert Counter(e.seed_id for e in build_plan([("x", "A"), ("y", "B")], plan, seed=0, pairs_per_seed=3)) == {
        "x": 3,
        "y": 3,
    }


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d["mix"].update({"sideways": 1.0}), "mix"),
        (lambda d: d.update(mix={"intra-subject": 0}), "mix"),
        (lambda d: d.update(pairs_per_seed=0), "pairs_per_seed"),
        (lambda d: d["subjects"]["A"].update(topics=[]), "subjects.A.topics"),
        (lambda d: d.update(aliases={"국사": "C"}), "aliases"),
        (lambda d: d["mix"].update({"cross-domain": 0.5}), "cross_domain"),
    ],
)
def test_a_bad_plan_names_the_key_at_fault(tmp_path, change, field):
    data = _minimal()
    change(data)
    with pytest.raises(InputError) as caught:
        load_plan(_write(tmp_path, data))
    assert caught.value.field == field


def test_a_missing_or_unreadable_plan_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_plan(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("pairs_per_seed: [1,\n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid YAML"):
        load_plan(broken)
