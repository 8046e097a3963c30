"""Every quality gate lets a good candidate through and refuses a bad one with a reason."""

from __future__ import annotations

import copy
import json

import pytest

from distill.blueprint import gates
from distill.blueprint.decontam import Match
from distill.blueprint.dedup import DuplicateFilter, find_duplicates
from distill.blueprint.schema import BlueprintOutput

GOLDEN_STEPS = 4


def blueprint(**changes) -> dict:
    """A valid teacher answer (5 choices, gold 2, rejected 4, 4 steps mapped 1..4)."""
    data = {
        "logic_structure": "단서로 시대를 확정한 뒤 선택지를 그 시대와 앞뒤 시대로 나누어 판별한다",
        "problem": {
            "paragraph": "암모나이트와 공룡 발자국 화석이 함께 발견된 지층이 있다.",
            "question": "이 지층이 쌓인 시대에 대한 설명으로 옳은 것은?",
            "question_plus": "",
            "choices": [
                "최초의 육상 식물이 출현하였다.",
                "겉씨식물이 번성하였다.",
                "매머드가 번성하였다.",
                "삼엽충이 번성하였다.",
                "인류의 조상이 출현하였다.",
            ],
            "answer": 2,
        },
        "chosen_steps": [
            {"golden_step": 1, "text": "암모나이트와 공룡은 중생대의 표준 화석이다."},
            {"golden_step": 2, "text": "중생대에는 겉씨식물이 번성하였다."},
            {"golden_step": 3, "text": "①과 ④는 고생대, ③과 ⑤는 신생대의 일이다."},
            {"golden_step": 4, "text": "따라서 중생대의 사실은 ②이다."},
        ],
        "chosen_answer_line": "정답: 2",
        "rejected_reasoning": "바다 생물인 암모나이트가 핵심 단서이므로 바다 생물이 번성한 시대의 삼엽충이 맞다.\n정답: 4",
        "rejected_choice": 4,
        "error_type": "era confusion",
    }
    for path, value in changes.items():
        target = data
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return data


def output(**changes) -> BlueprintOutput:
    return BlueprintOutput.model_validate(blueprint(**changes))


# -- schema ---------------------------------------------------------------------------------------


def test_schema_passes_a_valid_answer_as_dict_or_json_text():
    for payload in (blueprint(), json.dumps(blueprint(), ensure_ascii=False)):
        result, parsed = gates.check_schema(payload)
        assert result.passed and parsed is not None and parsed.problem.answer == 2


@pytest.mark.parametrize(
    "payload, words",
    [
        ('{"logic_structure": "잘린 답', "not valid JSON"),
        ({k: v for k, v in blueprint().items() if k != "problem"}, "problem"),
        (blueprint(problem__choices=["가", "나", "다"]), "3 choices"),
        (blueprint(problem__choices=["가", "나", "가 ", "라", "마"]), "the same text"),
        (blueprint(problem__answer=6), "answer 6 is out of range"),
        (blueprint(rejected_choice=0), "rejected_choice 0 is out of range"),
        (blueprint(problem__question="  "), "empty question"),
        (None, "empty response"),
    ],
)
def test_schema_refuses_a_broken_answer(payload, words):
    result, _ = gates.check_schema(payload)
    assert not result.passed and result.gate == "schema" and words in result.reason


def test_schema_refuses_a_request_that_finally_failed():
    result, parsed = gates.check_schema(blueprint(), error="503 after 6 retries")
    assert not result.passed and "no usable response" in result.reason and parsed is None


# -- answers ------------------------------------------------------------------------------------


def test_answers_pass_when_chosen_ends_in_gold_and_rejected_in_its_named_wrong_choice():
    assert gates.check_answers(output()).passed


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"chosen_answer_line": "정답: 4"}, "the chosen answer ends in 4, but the gold answer is 2"),
        ({"chosen_answer_line": "잘 모르겠다"}, "no readable final answer"),
        ({"rejected_choice": 2, "rejected_reasoning": "겉씨식물이다.\n정답: 2"}, "rejected_choice is the gold answer"),
        ({"rejected_reasoning": "삼엽충이 맞다.\n정답: 1"}, "ends in 1, but it names 4"),
    ],
)
def test_answers_refuse_a_wrong_final_answer(changes, words):
    result = gates.check_answers(output(**changes))
    assert not result.passed and result.gate == "answers" and words in result.reason


# -- form ---------------------------------------------------------------------------------------


def test_form_passes_bounded_distinct_reasonings_with_aligned_steps():
    assert gates.check_form(output(), GOLDEN_STEPS).passed
    # step counts within the tolerance pass too
    assert gates.check_form(output(), GOLDEN_STEPS + 2, step_tolerance=2).passed


def test_form_refuses_identical_empty_short_long_misaligned_or_off_count_reasonings():
    same = output()
    same.rejected_reasoning = gates.chosen_reasoning(same) + "\n정답: 4"
    cases = [
        (same, GOLDEN_STEPS, {}, "the same text"),
        (output(rejected_reasoning="정답: 4"), GOLDEN_STEPS, {}, "rejected reasoning is empty"),
        (output(chosen_steps=[{"golden_step": 1, "text": "  "}]), GOLDEN_STEPS, {}, "chosen reasoning is empty"),
        (output(), GOLDEN_STEPS, {"min_chars": 500}, "at least 500 needed"),
        (output(), GOLDEN_STEPS, {"max_chars": 60}, "at most 60 allowed"),
        (output(), 8, {}, "has 4 steps, the golden path 8"),
        (
            output(
                chosen_steps=[
                    {"golden_step": s, "text": "단계 설명을 충분히 길게 적은 문장이다."} for s in (1, 3, 2, 4)
                ]
            ),
            GOLDEN_STEPS,
            {},
            "out of order",
        ),
        (
            output(
                chosen_steps=[
                    {"golden_step": s, "text": "단계 설명을 충분히 길게 적은 문장이다."} for s in (1, 2, 3, 7)
                ]
            ),
            GOLDEN_STEPS,
            {},
            "outside 1..4",
        ),
    ]
    for candidate, golden, options, words in cases:
        result = gates.check_form(candidate, golden, **options)
        assert not result.passed and result.gate == "form" and words in result.reason, (words, result)


def test_pair_texts_end_in_exactly_the_answer_line_of_training_and_evaluation():
    from distill.data.prompts import format_final_answer

    chosen = gates.final_text(gates.chosen_reasoning(output()), 2)
    rejected = gates.final_text(gates.without_answer_lines(output().rejected_reasoning), 4)
    assert chosen.endswith("\n\n" + format_final_answer(2)) and chosen.startswith("1. ")
    assert rejected.endswith("\n\n" + format_final_answer(4)) and rejected.count("정답:") == 1
    numbered = output(chosen_steps=[{"golden_step": 1, "text": "1) 이미 번호가 붙은 단계이다."}])
    assert gates.chosen_reasoning(numbered) == "1. 이미 번호가 붙은 단계이다."
    # a circled number names a choice, and a decimal is a number: both stay
    kept = output(
        chosen_steps=[
            {"golden_step": 1, "text": "① 육상 식물은 고생대에 출현하였다."},
            {"golden_step": 2, "text": "3.5배 늘었다."},
        ]
    )
    assert gates.chosen_reasoning(kept) == "1. ① 육상 식물은 고생대에 출현하였다.\n2. 3.5배 늘었다."


# -- decontamination, verification, dedup ---------------------------------------------------------


def test_decontamination_refuses_at_or_above_the_threshold_only():
    assert gates.check_decontamination(None, 0.5).passed
    assert gates.check_decontamination(Match("eval-1", "eval", 0.49, 40), 0.5).passed
    refused = gates.check_decontamination(Match("eval-1", "eval", 0.5, 41), 0.5)
    assert not refused.passed and "eval item eval-1" in refused.reason


def test_verification_passes_only_when_every_resolve_reaches_gold():
    assert gates.check_verification([2], 2).passed
    assert gates.check_verification([2, 2], 2).passed
    for answers, errors, words in [
        ([3], [None], "the verifier answered 3, the gold answer is 2"),
        ([2, 5], [None, None], "verifier sample 1 answered 5"),
        ([None], [None], "no readable answer"),
        ([None], ["timed out"], "no usable response from the verifier"),
        ([], [], "no verifier answer"),
    ]:
        result = gates.check_verification(answers, 2, errors)
        assert not result.passed and result.gate == "verification" and words in result.reason


def test_dedup_keeps_the_first_of_near_duplicates_and_passes_different_problems():
    first = "가나다라마바사아자차카타파하 거너더러머버서어저처커터퍼허 고노도로모보소오조초코토포호"
    near = first.replace("고노도로", "구누두루")
    other = "하파타카차자아사바마라다나가 허퍼터커처저어서버머러더너거 호포토코초조오소보모로도노고"
    assert gates.check_duplicate(None, 0.6).passed
    assert find_duplicates([("a", first), ("b", near), ("c", other)], 0.6).keys() == {"b"}
    kept = DuplicateFilter(0.6)
    kept.keep("a", first)
    refused = gates.check_duplicate(kept.closest(near), 0.6)
    assert not refused.passed and refused.gate == "dedup" and "near-duplicate of a" in refused.reason
    assert gates.check_duplicate(kept.closest(other), 0.6).passed


def test_gates_run_cheapest_first_and_dedup_last():
    assert gates.GATES[0] == "schema" and gates.GATES[-1] == "dedup"
    assert gates.GATES.index("verification") > gates.GATES.index("decontamination")
    assert copy.deepcopy(blueprint()) == blueprint()  # the helper builds a fresh answer each time
