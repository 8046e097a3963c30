"""Small files in the layouts of tests/data_specs/*.yaml and of the shipped public-benchmark specs.

Each writer returns the dataset path and what a correct reading must find, so a test checks
the spec against facts about the file rather than against the loader's own output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_helpers import write_csv

SPECS = Path(__file__).resolve().parents[2] / "data_specs"

CHOICES5 = ["가", "나", "다", "라", "마"]


def list_literal_csv(folder: Path) -> tuple[Path, dict[str, Any]]:
    """`question, choices (Python list literal), answer (1-based), source`: 3 items, one with 4 choices."""
    rows = [
        ["다음 중 옳은 것은?", repr(CHOICES5), 3, "2021 수능"],
        ["밑줄 친 부분의 의미로 적절한 것은?", repr(["하나", "둘", "셋", "넷"]), 4, "2022 6월 모의"],
        [
            '"인용"이 든 문제는?',
            json.dumps(["ㄱ, ㄴ", "ㄴ, ㄷ", "ㄷ, ㄹ", "ㄹ, ㅁ", "ㅁ, ㅂ"], ensure_ascii=False),
            1,
            "2022 수능",
        ],
    ]
    path = write_csv(folder / "flat.csv", ["question", "choices", "answer", "source"], rows)
    return path, {
        "count": 3,
        "answers": [3, 4, 1],
        "n_choices": [5, 4, 5],
        "sources": ["2021 수능", "2022 6월 모의", "2022 수능"],
    }


def passage_folder(folder: Path) -> tuple[Path, dict[str, Any]]:
    """One JSON file per passage: nested `questions`, `options`, 0-based `answer`, a `viewContent` <보기>."""
    folder.mkdir(parents=True, exist_ok=True)
    passages = [
        ("p001", "첫째 지문입니다. 봄이 왔다.", [(0, "<보기> 봄은 따뜻하다."), (4, "")]),
        ("p002", "둘째 지문입니다. 여름이 왔다.", [(2, ""), (1, "<보기> 여름은 덥다."), (3, "")]),
    ]
    for passage_id, text, questions in passages:
        payload = {
            "passageId": passage_id,
            "title": f"지문 {passage_id}",
            "passage": text,
            "questions": [
                {
                    "questionNo": number,
                    "question": f"{passage_id}의 {number}번 질문으로 가장 적절한 것은?",
                    "viewContent": view,
                    "options": [f"{passage_id}-{number} 선택지 {k}" for k in range(1, 6)],
                    "answer": answer,
                }
                for number, (answer, view) in enumerate(questions, start=1)
            ],
        }
        (folder / f"{passage_id}.json").write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder, {
        "count": 5,
        "ids": ["p001-1", "p001-2", "p002-1", "p002-2", "p002-3"],
        "answers": [1, 5, 3, 2, 4],
        "with_view": 2,
        "paragraphs": {"p001": passages[0][1], "p002": passages[1][1]},
    }


def prompt_column_csv(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The whole prompt in one column; the answer and the students' correct-rate in others."""

    def prompt(question: str, options: list[str]) -> str:
        numbered = "\n".join(f"({k}) {text}" for k, text in enumerate(options, start=1))
        return f"### Question\n{question}\n### Options\n{numbered}"

    rows = [
        ["q1", prompt("(1)과 (2)를 비교한 설명으로 옳은 것은?", CHOICES5), 2, "0.62"],
        ["q2", prompt("다음 중 맞춤법이 바른 것은?", ["됬다", "됐다", "되었따", "돼었다"]), 2, "0.35"],
        ["q3", prompt("가장 적절한 것은?", ["ㄱ", "ㄴ", "ㄷ", "ㄹ", "ㅁ"]), 5, "0.81"],
        ["q4", prompt("시의 화자에 대한 설명으로 적절한 것은?", ["하나", "둘", "셋", "넷", "다섯"]), 1, "0.47"],
    ]
    path = write_csv(folder / "prompts.csv", ["id", "prompt", "answer", "correct_rate"], rows)
    return path, {
        "count": 4,
        "answers": [2, 2, 5, 1],
        "n_choices": [5, 4, 5, 5],
        "correct_rates": [0.62, 0.35, 0.81, 0.47],
        "first_question": "(1)과 (2)를 비교한 설명으로 옳은 것은?",
    }


def letters_jsonl(folder: Path) -> tuple[Path, dict[str, Any]]:
    rows = [
        {
            "qid": "L1",
            "stem": "헌법상 옳은 것은?",
            "options": _labelled(["a", "b", "c", "d"]),
            "key": "C",
            "domain": "law",
        },
        {
            "qid": "L2",
            "stem": "수요 곡선은?",
            "options": _labelled(["e", "f", "g", "h"]),
            "key": "(A)",
            "domain": "econ",
        },
    ]
    path = folder / "letters.jsonl"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    return path, {"count": 2, "answers": [3, 1], "subjects": ["법", "경제"]}


def _labelled(texts: list[str]) -> list[dict[str, str]]:
    return [{"label": "ABCDEFGHIJ"[i], "text": text} for i, text in enumerate(texts)]


def optional_fifth_tsv(folder: Path) -> tuple[Path, dict[str, Any]]:
    """Tab-separated, CP949, 보기1..보기5 with 보기5 empty for four-choice items, circled answers."""
    header = ["시험", "번호", "문제", "보기1", "보기2", "보기3", "보기4", "보기5", "정답"]
    rows = [
        ["2020수능", "1", "옳은 것은?", "가", "나", "다", "라", "마", "⑤"],
        ["2020수능", "2", "틀린 것은?", "가", "나", "다", "라", "", "②"],
        ["2021수능", "1", "적절한 것은?", "ㄱ", "ㄴ", "ㄷ", "ㄹ", "", "④"],
    ]
    text = "\r\n".join("\t".join(row) for row in [header, *rows]) + "\r\n"
    path = folder / "sheet.tsv"
    path.write_bytes(text.encode("cp949"))
    return path, {
        "count": 3,
        "answers": [5, 2, 4],
        "n_choices": [5, 4, 4],
        "ids": ["2020수능-1", "2020수능-2", "2021수능-1"],
    }


def kmmlu_rows() -> list[dict[str, Any]]:
    """Rows in the hub layout of HAERAE-HUB/KMMLU (question, answer 1-based, A-D, Category, Human Accuracy)."""
    return [
        {
            "question": "민법상 옳은 것은?",
            "answer": 2,
            "A": "가",
            "B": "나",
            "C": "다",
            "D": "라",
            "Category": "Law",
            "Human Accuracy": 0.41,
        },
        {
            "question": "회계 등식은?",
            "answer": 4,
            "A": "하나",
            "B": "둘",
            "C": "셋",
            "D": "넷",
            "Category": "Accounting",
            "Human Accuracy": 0.55,
        },
        {
            "question": "세법상 옳은 것은?",
            "answer": 1,
            "A": "ㄱ",
            "B": "ㄴ",
            "C": "ㄷ",
            "D": "ㄹ",
            "Category": "Taxation",
            "Human Accuracy": 0.3,
        },
    ]


def csat_qa_rows() -> list[dict[str, Any]]:
    """Rows in the CSAT-QA layout lm-evaluation-harness reads: context, question, option#1..#5, gold (1-based)."""
    return [
        {
            "context": f"지문 {n}",
            "question": f"질문 {n}?",
            **{f"option#{k}": f"{n}-{k}" for k in range(1, 6)},
            "gold": gold,
        }
        for n, gold in ((1, 3), (2, 5), (3, 1))
    ]


def haerae_rows() -> list[dict[str, Any]]:
    """Rows in the HAE-RAE Bench layout: `query` holds question and options (A)..(E), `answer` "(B)"."""
    return [
        {
            "query": "다음 단어의 뜻으로 알맞은 것은? 가랑비\n(A) 큰 비\n(B) 가늘게 내리는 비\n(C) 눈\n(D) 우박\n(E) 안개",
            "answer": "(B)",
        },
        {"query": "'사과'의 외래어가 아닌 것은?\n(A) 애플\n(B) 포도\n(C) 배\n(D) 감\n(E) 귤", "answer": "(E)"},
    ]


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    header = list(rows[0])
    return write_csv(path, header, [[row[name] for name in header] for row in rows])
