"""The mine stage's pure parts (distill/mining.py): requests, attempts, the selection rule, the
judge step and the metrics."""

from __future__ import annotations

import pytest

from distill.contracts import ATTEMPT_COLUMNS, MCQItem, attempts_frame
from distill.data.prompts import render_messages
from distill.llm import Response
from distill.llm.templates import load_template
from distill.mining import (
    answer_requests,
    apply_verdict,
    attempt,
    decide,
    generation_params,
    hard_negative,
    judge_attempt,
    judge_candidates,
    judge_order_swapped,
    judge_request,
    mine_metrics,
    pass_rate,
    prompt_hash,
)
from distill.stages.mine import MineConfig

ITEM = MCQItem(
    id="t-1",
    paragraph="지문 내용",
    question="옳은 것은?",
    choices=("가", "나", "다", "라", "마"),
    answer=3,
    subject="한국사",
    source="test",
)


def rows_for(item: MCQItem, role: str, texts: list[str | None]) -> list:
    """Attempts from texts (None = a request that finally failed)."""
    cfg = MineConfig()
    requests = answer_requests([item], role, len(texts), generation_params(cfg, role))
    rows = []
    for request, text in zip(requests, texts):
        response = Response(text="", error="gave up after 7 attempts") if text is None else Response(text=text)
        rows.append(attempt(item, role, "replay", f"example-{role}", request, response))
    return rows


# -- requests and attempt rows ----------------------------------------------------------------


def test_answer_requests_sample_the_same_prompt_with_distinct_sample_indices_and_keys():
    from distill.llm import request_key

    cfg = MineConfig()
    requests = answer_requests([ITEM], "student", 3, generation_params(cfg, "student"))
    assert [r.sample_index for r in requests] == [0, 1, 2]
    assert all(list(r.messages) == render_messages(ITEM) for r in requests)
    assert requests[0].params.temperature == cfg.student_temperature and requests[0].params.thinking is False
    assert len({request_key("local", "m", r) for r in requests}) == 3
    assert len({prompt_hash(r.messages) for r in requests}) == 1


def test_attempt_rows_read_the_choice_and_never_guess():
    rows = rows_for(
        ITEM, "student", ["<think>1번? 2번?</think>\n풀이.\n정답: 3", "1번 아니면 4번인데 모르겠다.", "정답: 2", None]
    )
    assert [r.choice for r in rows] == [3, None, 2, None]
    assert [r.correct for r in rows] == [True, False, False, False]
    assert rows[0].reasoning == "풀이.\n정답: 3"  # think block removed
    assert rows[0].text.startswith("<think>")
    assert rows[3].error and rows[0].error is None
    frame = attempts_frame(rows)
    assert list(frame.columns) == list(ATTEMPT_COLUMNS)
    assert str(frame["choice"].dtype) == "Int64" and frame["choice"].isna().tolist() == [False, True, False, True]


def test_pass_rate_counts_unreadable_as_wrong_and_failed_requests_as_no_answer():
    rows = rows_for(ITEM, "student", ["정답: 3", "모르겠다", None])
    assert pass_rate(rows) == pytest.approx(1 / 2)
    assert pass_rate(rows_for(ITEM, "student", [None, None])) is None


# -- the selection rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "teacher, student, threshold, reason",
    [
        (["정답: 3"], ["정답: 1", "정답: 2", "정답: 3"], 0.34, "selected"),
        (["정답: 3"], ["정답: 1", "정답: 2", "정답: 4"], 0.34, "selected"),
        (["정답: 3"], ["정답: 3", "정답: 2", "정답: 3"], 0.34, "student pass rate above threshold"),
        (["정답: 3"], ["정답: 1", "정답: 2", "정답: 3"], 0.33, "student pass rate above threshold"),
        (["정답: 2"], ["정답: 1", "정답: 2", "정답: 4"], 0.34, "teacher wrong"),
        (["정답: 3", "정답: 1"], ["정답: 1"] * 3, 0.34, "teacher wrong"),  # not a majority
        ([None], ["정답: 1"] * 3, 0.34, "teacher failed"),
        (["정답: 3"], [None, None, None], 0.34, "no student answer"),
        (["정답: 3"], ["정답: 3"] * 3, 1.0, "no wrong student answer"),
    ],
)
def test_selection_rule(teacher, student, threshold, reason):
    decision = decide(ITEM, rows_for(ITEM, "teacher", teacher), rows_for(ITEM, "student", student), threshold)
    assert decision.reason == reason
    assert decision.selected == (reason == "selected")


def test_failed_path_prefers_a_readable_wrong_answer_and_falls_back_to_an_unreadable_one():
    teacher = rows_for(ITEM, "teacher", ["풀이 T\n정답: 3"])
    student = rows_for(ITEM, "student", ["1번 또는 4번", "틀린 풀이\n정답: 4", "정답: 3"])
    decision = decide(ITEM, teacher, student, 0.34)
    assert decision.failed.sample_index == 1 and decision.failed.choice == 4
    record = hard_negative(ITEM, decision, student, "keyword bias").to_dict()
    assert record["golden_path"] == "풀이 T\n정답: 3" and record["failed_path"] == "틀린 풀이\n정답: 4"
    assert record["student_pass_rate"] == pytest.approx(1 / 3)
    assert (record["teacher_choice"], record["student_choice"], record["student_choices"]) == (3, 4, [None, 4, 3])
    assert (
        record["error_type"] == "keyword bias" and record["choices"] == list(ITEM.choices) and record["id"] == ITEM.id
    )

    only_unreadable = rows_for(ITEM, "student", ["1번 또는 4번", "모르겠다", "정답: 3"])
    decision = decide(ITEM, teacher, only_unreadable, 0.34)
    assert decision.selected and decision.failed.sample_index == 0
    written = hard_negative(ITEM, decision, only_unreadable, None).to_dict()
    assert written["student_choice"] is None and written["error_type"] is None


# -- the judge step ---------------------------------------------------------------------------


def _judge_setup():
    teacher = rows_for(ITEM, "teacher", ["1. 단계\n2. 단계\n정답: 3"])
    student = rows_for(ITEM, "student", ["정답: 1", "짧게.\n정답: 3", "정답: 2"])
    decision = decide(ITEM, teacher, student, 0.34)
    return teacher, student, decision


def test_judge_candidates_are_the_golden_path_and_the_next_correct_reasoning():
    teacher, student, decision = _judge_setup()
    golden, other = judge_candidates(decision, teacher, student)
    assert golden is decision.golden and other.role == "student" and other.sample_index == 1
    two_teachers = rows_for(ITEM, "teacher", ["A 풀이\n정답: 3", "B 풀이\n정답: 3"])
    decision2 = decide(ITEM, two_teachers, student, 0.34)
    assert judge_candidates(decision2, two_teachers, student)[1].sample_index == 1  # teacher sample first
    lonely = rows_for(ITEM, "student", ["정답: 1"] * 3)
    assert judge_candidates(decide(ITEM, teacher, lonely, 0.34), teacher, lonely) is None


@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize("verdict, winner", [("A", "first"), ("B", "second"), ("TIE", "golden"), (None, "golden")])
def test_apply_verdict_maps_the_shown_order_back_to_the_candidates(swapped, verdict, winner):
    teacher, student, decision = _judge_setup()
    candidates = judge_candidates(decision, teacher, student)
    first, second = (candidates[1], candidates[0]) if swapped else candidates
    expected = {"first": first, "second": second, "golden": candidates[0]}[winner]
    judged = apply_verdict(decision, candidates, swapped, verdict)
    assert judged.golden is expected
    assert judged.golden_from == f"{expected.role}:{expected.sample_index}"
    assert judged.judge_verdict == (verdict or "unparsed")
    record = hard_negative(ITEM, judged, student, None).to_dict()
    assert record["golden_path"] == expected.reasoning and record["teacher_choice"] == 3


def test_judge_request_shows_both_reasonings_in_order_with_the_gold_answer():
    teacher, student, decision = _judge_setup()
    golden, other = judge_candidates(decision, teacher, student)
    request = judge_request(ITEM, load_template("judge"), other, golden, generation_params(MineConfig(), "judge"))
    user = request.messages[-1]["content"]
    assert user.index("풀이 A:\n짧게.") < user.index("풀이 B:\n1. 단계")
    assert "정답: 3번" in user and "지문:\n지문 내용" in user and "3. 다" in user
    assert request.params.temperature == 0.0


def test_judge_order_is_fixed_per_item_and_not_always_the_same():
    flips = [judge_order_swapped(f"seed-{n:03d}") for n in range(1, 25)]
    assert flips == [judge_order_swapped(f"seed-{n:03d}") for n in range(1, 25)]
    assert any(flips) and not all(flips)


# -- metrics -------------------------------------------------------------------------------------


def test_mine_metrics_per_subject_and_parse_failures():
    other = MCQItem(id="t-2", paragraph="p", question="q?", choices=("a", "b", "c", "d"), answer=1, subject="경제")
    rows, decisions = [], []
    for item, teacher, student in (
        (ITEM, ["정답: 3"], ["정답: 1", "모르겠다", "정답: 3"]),
        (other, ["정답: 2"], ["정답: 1", "정답: 1", None]),
    ):
        t, s = rows_for(item, "teacher", teacher), rows_for(item, "student", student)
        rows += t + s
        decisions.append(decide(item, t, s, 0.34))
    metrics = mine_metrics([ITEM, other], rows, decisions)
    assert metrics["mine/teacher_accuracy"] == 0.5
    assert metrics["mine/teacher_accuracy/한국사"] == 1.0 and metrics["mine/teacher_accuracy/경제"] == 0.0
    assert metrics["mine/student_accuracy"] == pytest.approx(3 / 5)  # the failed request is no answer
    assert metrics["mine/parse_failure_rate/student"] == pytest.approx(1 / 5)
    assert metrics["mine/student_request_failures"] == 1
    assert (
        metrics["mine/hard_negatives"] == 1
        and metrics["mine/hard_negatives/한국사"] == 1
        and metrics["mine/hard_negatives/경제"] == 0
    )
    assert metrics["mine/skipped/teacher_wrong"] == 1


def test_judge_attempt_stores_the_verdict_as_its_choice_and_is_never_correct():
    request = answer_requests([ITEM], "judge", 1, generation_params(MineConfig(), "judge"))[0]
    response = Response(text="정답은 3번이다.\n정답: 3\n판정: A")
    for verdict, choice in (("A", 1), ("B", 2), ("TIE", 0), (None, None)):
        judged = judge_attempt(ITEM, "replay", "example-teacher", request, response, verdict)
        assert (judged.role, judged.choice, judged.correct) == ("judge", choice, False)


def test_attempts_written_through_the_contract_read_back_equal(tmp_path):
    import pandas as pd

    from distill.contracts import attempts_from_frame

    rows = rows_for(ITEM, "student", ["정답: 3", "모르겠다", None])
    path = tmp_path / "attempts.parquet"
    attempts_frame(rows).to_parquet(path, index=False)
    assert attempts_from_frame(pd.read_parquet(path)) == rows
