"""Answer extraction pinned by a corpus of realistic model outputs (Korean, English, think
blocks, JSON, ambiguous and garbage), and strict judge-verdict parsing."""

from __future__ import annotations

import pytest

from distill.data.prompts import format_final_answer
from distill.extraction import extract_answer, parse_judge_verdict, split_think, strip_think

# (id, text, n_choices, expected choice or None)
CORPUS = [
    ("plain-final-line", "지문에 따르면 ㄱ과 ㄴ만 옳다.\n정답: 3", 5, 3),
    ("final-line-number-word", "각 선택지를 검토하면 다음과 같다.\n정답: 4번", 5, 4),
    ("sentence-with-circled", "ㄱ은 옳고 ㄷ은 틀리므로 정답은 ③입니다.", 5, 3),
    ("answer-colon-beon", "①은 시기가 맞지 않는다.\n답: 2번", 5, 2),
    ("think-then-answer", "<think>\n1번? 아니다. 정답: 1 은 아닌 것 같고 4일지도.\n</think>\n\n정답: 2", 5, 2),
    ("think-mentions-other-digits", "<think>선택지 1, 2, 5를 지운다. 답: 5?</think>\n따라서 정답은 4번이다.", 5, 4),
    ("qwen-empty-think", "<think>\n\n</think>\n\n정답: 1", 4, 1),
    ("stray-close-tag", "우선 지문을 읽는다... 3번이 맞다.\n</think>\n\n정답: 5", 5, 5),
    ("unterminated-think", "<think>\n지문을 분석하면 1번은 틀리고, 2번은", 5, None),
    ("two-candidates-comma", "ㄱ, ㄷ이 옳으므로\n정답: 1, 3", 5, None),
    ("two-candidates-or", "확신이 없다. 정답은 1 또는 3이다.", 5, None),
    ("two-candidates-beon-gwa", "정답은 2번과 4번입니다.", 5, None),
    ("last-statement-wins", "처음에는 정답: 2 라고 생각했다.\n다시 검토하니 2는 틀렸다.\n정답: 4", 5, 4),
    ("json-answer-string", '{"reasoning": "ㄴ만 옳다", "Answer": "3"}', 5, 3),
    ("json-korean-key", '풀이를 마쳤다.\n{"정답": 3}', 5, 3),
    ("json-lower-int", '```json\n{"answer": 2}\n```', 4, 2),
    ("json-circled", '{"answer": "④"}', 5, 4),
    ("json-out-of-range", '{"answer": 9}', 5, None),
    ("json-list-ambiguous", '{"answer": "1, 3"}', 5, None),
    ("english-answer-colon", "Option 2 ignores the date.\nAnswer: 3", 5, 3),
    ("english-answer-is-paren", "Therefore, the answer is (1).", 4, 1),
    ("english-final-answer-bold", "**Final answer:** 5", 5, 5),
    ("reverse-beon-jeongdap", "①, ②는 사실과 다르다. 따라서 4번이 정답이다.", 5, 4),
    ("reverse-negated", "5번이 정답이 아닌 이유는 연도가 다르기 때문이다.", 5, None),
    ("lone-final-digit", "지문의 흐름상 가장 자연스러운 것은\n3", 5, 3),
    ("lone-final-circled", "검토 결과:\n⑤", 5, 5),
    ("conclusion-circled", "ㄱ과 ㄹ이 옳다. 그러므로 ②가 가장 적절하다.", 5, 2),
    ("conclusion-negated", "따라서 ②는 적절하지 않다.", 5, None),
    ("mention-without-conclusion", "②번 선택지는 시대가 맞지 않는다.", 5, None),
    ("out-of-range", "정답: 7", 5, None),
    ("ten-choices", "정답: 10", 10, 10),
    ("ten-choices-out-of-range", "정답: 10", 5, None),
    ("fullwidth-digits", "정답：３", 5, 3),
    ("bold-marker", "**정답**: 1", 4, 1),
    ("final-answer-korean", "최종 답: 2", 4, 2),
    ("garbage", "asdf qwer ;; ]]", 5, None),
    ("empty", "", 5, None),
    ("number-in-passage-only", "1392년에 조선이 건국되었다는 사실을 고려하면 판단하기 어렵다.", 5, None),
    ("answer-then-explanation", "정답: 3, 왜냐하면 ㄱ만 옳기 때문이다.", 5, 3),
    ("parenthesised", "정답은 (2)이다.", 4, 2),
]


@pytest.mark.parametrize("text,n_choices,expected", [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_extract_answer_corpus(text, n_choices, expected):
    assert extract_answer(text, n_choices) == expected


def test_corpus_is_large_and_covers_failures():
    assert len(CORPUS) >= 30
    assert len({c[0] for c in CORPUS}) == len(CORPUS)
    assert sum(1 for c in CORPUS if c[3] is None) >= 10


@pytest.mark.parametrize("choice", range(1, 11))
def test_the_project_answer_format_always_parses(choice):
    text = f"<think>\n고민한다.\n</think>\n\n풀이를 요약하면 다음과 같다.\n{format_final_answer(choice)}"
    assert extract_answer(text, 10) == choice


def test_strip_think_variants():
    assert strip_think("<think>a</think>\n\nB") == "B"
    assert strip_think("<THINK>a</THINK>B<think>c</think>D") == "BD"
    assert strip_think("reasoning without open tag</think>answer") == "answer"
    assert strip_think("<think>never closed") == ""
    assert strip_think("answer first<think>then rambling") == "answer first"
    assert strip_think("no tags at all") == "no tags at all"
    assert strip_think("") == ""
    assert split_think("<think>\n생각\n</think>\n\n정답: 2") == ("생각", "정답: 2")
    assert split_think("먼저 읽는다</think>답") == ("먼저 읽는다", "답")
    assert split_think("<think>끝나지 않은") == ("끝나지 않은", "")
    assert split_think("그냥 답") == ("", "그냥 답")


VERDICTS = [
    ("판정: A", "A"),
    ("두 풀이를 비교했다.\n판정: B", "B"),
    ("Verdict: TIE", "TIE"),
    ("결론: 무승부", "TIE"),
    ("[[A]]", "A"),
    ('{"verdict": "B", "reason": "..."}', "B"),
    ("<think>판정: A 로 할까?</think>\n판정: B", "B"),
    ("**Winner:** A", "A"),
    ("B", "B"),
    ("판정: A\n재검토 결과 판정: B", "B"),
    ("A가 더 자연스럽다고 본다.", None),
    ("판정: A 또는 B", None),
    ("판정: C", None),
    ('{"verdict": "maybe"}', None),
    ("", None),
    ("Apple is better than Banana", None),
]


@pytest.mark.parametrize("text,expected", VERDICTS, ids=[f"v{i}" for i in range(len(VERDICTS))])
def test_parse_judge_verdict(text, expected):
    assert parse_judge_verdict(text) == expected
