"""Small writers for MCQ files in every format, shared by the data-layer tests."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

COMPETITION_HEADER = ["id", "paragraph", "problems", "question_plus", "category"]
KMMLU_HEADER = ["question", "answer", "A", "B", "C", "D", "Category", "Human Accuracy"]


def csv_text(header: list[str] | None, rows: list[list[Any]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header is not None:
        writer.writerow(header)
    for row in rows:
        writer.writerow(["" if cell is None else cell for cell in row])
    return buffer.getvalue()


def write_csv(path: Path, header: list[str] | None, rows: list[list[Any]], encoding: str = "utf-8") -> Path:
    path.write_bytes(csv_text(header, rows).encode(encoding))
    return path


def problems_json(question: str, choices: list[Any], answer: Any = None, **more: Any) -> str:
    return json.dumps({"question": question, "choices": choices, "answer": answer, **more}, ensure_ascii=False)


def problems_literal(question: str, choices: list[Any], answer: Any = "", **more: Any) -> str:
    """The Python-literal spelling the real test.csv uses (single quotes, answer '')."""
    return repr({"question": question, "choices": choices, "answer": answer, **more})


def competition_row(
    item_id: str,
    question: str = "옳은 것은?",
    choices: list[Any] | None = None,
    answer: Any = 1,
    *,
    paragraph: str = "지문입니다.",
    question_plus: str = "",
    category: str = "한국사",
    literal: bool = False,
    **more: Any,
) -> list[Any]:
    choices = choices if choices is not None else ["하나", "둘", "셋", "넷"]
    make = problems_literal if literal else problems_json
    return [item_id, paragraph, make(question, choices, answer, **more), question_plus, category]


def kice_problem(number: int, answer: Any = 1, **more: Any) -> dict[str, Any]:
    problem = {
        "question": f" 질문 {number}번으로 가장 적절한 것은?",
        "score": 3 if number % 7 == 0 else 2,
        "choices": [f"{number}번 선택지 {k}" for k in range(1, 6)],
        "answer": answer,
    }
    problem.update(more)
    return problem


def kice_passages(
    sizes: list[int], prefix: str = "KICE", ranges: list[tuple[int, int]] | None = None
) -> list[dict[str, Any]]:
    """Passages holding `sizes[i]` questions each, numbered 1.. across passages.

    Ids are `<prefix>_<index>`, or with `ranges` the real files' `<prefix>_<first>-<last>`
    (a passage may hold more questions than its range: the real files append stand-alone ones).
    """
    passages, number = [], 0
    for index, size in enumerate(sizes, start=1):
        problems = []
        for _ in range(size):
            number += 1
            problems.append(kice_problem(number, answer=(number % 5) + 1))
        suffix = f"{ranges[index - 1][0]}-{ranges[index - 1][1]}" if ranges else str(index)
        passages.append(
            {
                "id": f"{prefix}_{suffix}",
                "paragraph": f" 지문 {index}. 다음 글을 읽고 물음에 답하시오.",
                "problems": problems,
            }
        )
    return passages


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def canonical_row(item_id: str, **more: Any) -> dict[str, Any]:
    row = {
        "id": item_id,
        "paragraph": "",
        "question": "다음 중 옳은 것은?",
        "question_plus": "",
        "choices": ["가", "나", "다", "라"],
        "answer": 2,
        "subject": "국어",
        "source": "hand",
    }
    row.update(more)
    return row


def write_jsonl_rows(path: Path, rows: list[Any]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def exam_passages(year: int, sizes: list[int], extras: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """A KICE exam file's passages with the real id format `<year>_11_KICE_<first>-<last>`.

    `extras[i]`: passage i (0-based) also holds that many stand-alone questions after its range,
    as the real files do (`2019_11_KICE_8-10` holds questions 8 to 11).
    """
    extras = extras or {}
    ranges, first = [], 1
    for index, size in enumerate(sizes):
        ranges.append((first, first + size - 1))
        first += size + extras.get(index, 0)
    totals = [size + extras.get(index, 0) for index, size in enumerate(sizes)]
    return kice_passages(totals, prefix=f"{year}_11_KICE", ranges=ranges)
