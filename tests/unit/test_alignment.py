"""Reasoning alignment on hand-made cases: the golden path itself > the same steps reworded >
shuffled > unrelated; the steps a text is split into; the gate."""

from __future__ import annotations

import pytest

from distill.alignment import align_steps, pair_alignment, reasoning_alignment, reasoning_steps, step_similarity
from distill.blueprint.gates import active_gates, check_alignment

GOLDEN = """1. 지문에서 균역법은 군포를 2필에서 1필로 줄인 제도라고 설명한다.
2. 줄어든 재정은 결작과 선무군관포, 어염선세로 보충하였다.
3. 이 제도를 시행한 왕은 영조이다.
4. 따라서 영조 때의 정책을 고른 선택지가 옳다.
정답: 3"""

ALIGNED = [  # the same steps, reworded a little
    "지문은 균역법이 군포를 2필에서 1필로 줄인 제도라고 설명한다",
    "줄어든 재정은 결작, 선무군관포, 어염선세로 보충했다",
    "이 제도를 시행한 왕은 영조였다",
    "그러므로 영조 때의 정책을 고른 선택지가 옳다",
]
UNRELATED = [
    "광합성은 빛 에너지를 화학 에너지로 바꾸는 과정이다",
    "엽록체의 틸라코이드 막에서 명반응이 일어난다",
    "캘빈 회로에서 이산화탄소가 고정된다",
    "그러므로 포도당이 만들어진다",
]


def test_reasoning_steps_drop_numbers_and_the_answer_line():
    steps = reasoning_steps(GOLDEN)
    assert len(steps) == 4 and steps[0].startswith("지문에서") and not any("정답" in s for s in steps)
    assert reasoning_steps("첫째 줄\n\n둘째 줄\n정답: 1") == ["첫째 줄", "둘째 줄"]
    assert reasoning_steps("1. 가나다\n이어지는 줄\n2. 라마바") == ["가나다 이어지는 줄", "라마바"]


def test_step_similarity_is_a_cosine_of_character_bigrams():
    assert step_similarity("영조가 시행한 균역법", "영조가 시행한 균역법") == pytest.approx(1.0)
    assert step_similarity("영조가 시행한 균역법", "캘빈 회로의 탄소 고정") == 0.0
    assert 0.0 < step_similarity(ALIGNED[2], reasoning_steps(GOLDEN)[2]) < 1.0
    assert step_similarity("", "가나다") == 0.0


def test_aligned_beats_shuffled_beats_unrelated():
    golden = reasoning_steps(GOLDEN)
    itself = align_steps(golden, golden).score
    aligned = align_steps(ALIGNED, golden).score
    shuffled = align_steps([ALIGNED[k] for k in (3, 2, 1, 0)], golden).score
    unrelated = align_steps(UNRELATED, golden).score
    print(f"\nitself {itself:.3f} aligned {aligned:.3f} shuffled {shuffled:.3f} unrelated {unrelated:.3f}")
    assert itself == pytest.approx(1.0)
    assert itself > aligned > shuffled > unrelated
    assert aligned >= 0.5 and shuffled <= aligned / 2 and unrelated <= 0.1


def test_alignment_is_monotone_and_penalises_missing_steps():
    golden = reasoning_steps(GOLDEN)
    result = align_steps(ALIGNED, golden)
    assert [(i, j) for i, j, _ in result.matches] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    reversed_result = align_steps(list(reversed(ALIGNED)), golden)
    # in reverse order only one of the four true matches can keep the order
    assert sum(similarity > 0.5 for *_, similarity in reversed_result.matches) == 1
    half = align_steps(ALIGNED[:2], golden).score
    assert half < align_steps(ALIGNED, golden).score  # two of four golden steps followed
    assert align_steps([], golden).score == 0.0


def test_pair_alignment_scores_chosen_on_golden_and_rejected_on_failed():
    failed = "1. 균역법은 정조 때 시행되었다.\n2. 따라서 정조 때의 정책을 고른다.\n정답: 2"
    rejected_following = "1. 균역법은 정조 때 시행된 제도이다.\n2. 그러므로 정조 때의 정책을 고른다.\n정답: 2"
    scores = pair_alignment(ALIGNED, GOLDEN, rejected_following, failed)
    assert set(scores) == {"alignment_golden", "alignment_failed"}
    assert scores["alignment_failed"] > reasoning_alignment("\n".join(UNRELATED), failed)
    assert scores["alignment_golden"] == pytest.approx(align_steps(ALIGNED, reasoning_steps(GOLDEN)).score, abs=1e-4)


def test_alignment_gate_and_the_gates_a_run_applies():
    assert check_alignment(0.6, 0.5).passed
    refused = check_alignment(0.2, 0.5)
    assert not refused.passed and refused.gate == "alignment" and "0.20 < min_alignment 0.50" in refused.reason
    assert "alignment" not in active_gates(verify=True, alignment=False)
    on = active_gates(verify=False, alignment=True)
    assert "verification" not in on and on.index("alignment") == on.index("decontamination") + 1
