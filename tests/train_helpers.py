"""Test helpers for the train stage: a synthetic preference task, and small pair/item files.

The synthetic task is a small table of facts, each a multiple-choice question with its own four
choices and a fixed gold position ("한글을 만든 왕은?" → 세종, choice 2). Prompts of one fact
differ in their filler passage and in the wording of the question; the held-out split uses
filler and wordings never seen in training, over the same facts. Random weights answer at
chance; a model gets held-out prompts right only if it learned to tell the facts apart.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from distill.contracts import MCQItem
from distill.data.prompts import format_final_answer, render_messages

FACTS = [
    ("한글을 만든 왕", ["태조", "세종", "정조", "고종"], 2),
    ("거북선을 이끈 장군", ["이순신", "강감찬", "을지문덕", "권율"], 1),
    ("만유인력을 밝힌 과학자", ["다윈", "퀴리", "뉴턴", "멘델"], 3),
    ("국부론을 쓴 경제학자", ["케인스", "마르크스", "리카도", "애덤 스미스"], 4),
    ("운명 교향곡을 지은 작곡가", ["모차르트", "베토벤", "바흐", "쇼팽"], 2),
    ("목민심서를 쓴 실학자", ["정약용", "박지원", "유형원", "이익"], 1),
    ("진화론을 세운 학자", ["라부아지에", "파스퇴르", "다윈", "갈릴레이"], 3),
    ("상대성 이론을 세운 물리학자", ["보어", "플랑크", "맥스웰", "아인슈타인"], 4),
]
TRAIN_QUESTIONS = ["{fact}은 누구인가?", "다음 중 {fact}은?", "{fact}으로 옳은 것은?"]
HELDOUT_QUESTIONS = ["{fact}을 고르면?", "보기 가운데 {fact}은 누구인가?"]
_SYLLABLES = "가나다라마바사아자차카타파하거너더러머버서어저처커터퍼허고노도로모보소오조초"


FILLER_WORDS = (1, 3)
"""How many filler words a passage has (min, max): enough that no two prompts are the same, few
enough that the fact's own words dominate a tiny model's attention average."""


def _filler(rng: random.Random) -> str:
    words = [
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(rng.randint(*FILLER_WORDS))
    ]
    return " ".join(words) + "."


def synthetic_items(n: int, *, heldout: bool, seed: int) -> list[MCQItem]:
    """`n` questions over the fact table (facts cycled, so every fact appears)."""
    rng = random.Random(seed)
    questions = HELDOUT_QUESTIONS if heldout else TRAIN_QUESTIONS
    items = []
    for index in range(n):
        fact, choices, answer = FACTS[index % len(FACTS)]
        items.append(
            MCQItem(
                id=f"{'h' if heldout else 't'}{seed}-{index:03d}",
                paragraph=_filler(rng),
                question=rng.choice(questions).format(fact=fact),
                choices=tuple(choices),
                answer=answer,
                subject="인물",
                source="synthetic",
            )
        )
    return items


def pair_for(item: MCQItem, rng: random.Random, *, reasoning: bool = False) -> dict:
    """A preference pair: chosen ends with the gold label, rejected with a wrong one."""
    wrong = rng.choice([k for k in range(1, len(item.choices) + 1) if k != item.answer])
    if reasoning:
        chosen = f"{item.choices[item.answer - 1]} 분야이다.\n\n{format_final_answer(item.answer)}"
        rejected = f"{item.choices[wrong - 1]} 분야이다.\n\n{format_final_answer(wrong)}"
    else:
        chosen, rejected = format_final_answer(item.answer), format_final_answer(wrong)
    return {
        "id": f"pair-{item.id}",
        "seed_id": item.id,
        "problem": item.to_dict(),
        "prompt": render_messages(item, reasoning=False),
        "chosen": chosen,
        "rejected": rejected,
        "gold": item.answer,
        "rejected_choice": wrong,
        "subject": item.subject,
        "transfer": "intra-subject",
        "logic_structure": "fact lookup",
        "error_type": "wrong fact",
        "prompt_version": "synthetic-1",
    }


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_synthetic_task(
    folder: Path, *, n_train: int, n_heldout: int, seed: int = 0, reasoning: bool = False
) -> tuple[Path, Path]:
    """(pairs file, held-out items file). Train pairs use training wordings; held-out items
    use wordings never trained on."""
    rng = random.Random(seed)
    train = synthetic_items(n_train, heldout=False, seed=seed)
    heldout = synthetic_items(n_heldout, heldout=True, seed=seed + 1000)
    pairs = write_jsonl(folder / "pairs.jsonl", [pair_for(item, rng, reasoning=reasoning) for item in train])
    items = write_jsonl(folder / "heldout.jsonl", [item.to_dict() for item in heldout])
    return pairs, items


def heldout_pairs(items_file: Path, seed: int = 0) -> list[dict]:
    """Preference pairs for the held-out items (to measure the margin on them)."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in items_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = [MCQItem(**{**r, "choices": tuple(r["choices"])}) for r in rows]
    return [pair_for(item, rng) for item in items]
