"""The known-truth world: multiple-choice items built from a few logic structures.

Everything here is synthetic. The world exists so that the whole method (mine → augment →
train → evaluate → register) can be run and tested end to end on a machine with no pretrained
model: the truth of every item is known, the student's defect is known, and a gain can only
come from pairs that teach the right rule. It is no evidence about real models.

Each structure is a rule that decides the answer from what the item states:

- `explicit_over_popular`: what the text states explicitly beats the keyword that is popular.
- `stated_fact`: what the text states explicitly, among words it never mentions.
- `purpose_means`: a policy's stated purpose decides the means that fits it.
- `not_member`: "which is NOT in the group": the one missing from the text's list.
- `time_order`: "which came first": the event the text puts first in time.

A choice's text carries the words the rule reads ("본문이 명시한 X", "요즘 인기인 Y"), so a
small model can learn each rule from a few thousand items, and a solver can read the truth
back from any rendering of an item (the teacher of this world solves what it is sent, not what
it remembers).

Content (places, things, events) comes from generated pseudo-words, cut into disjoint pools:
the student's training items, the seeds mine reads, the held-out test set, the guard set and
the teacher's new problems never share a content word.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from distill.contracts import MCQItem

SYNTHETIC_NOTE = (
    "synthetic: a generated known-truth world; it shows the machinery carries a gain from mined "
    "errors to a registered model, and is no evidence about real models"
)

STRUCTURES = ("explicit_over_popular", "stated_fact", "purpose_means", "not_member", "time_order")
"""Every structure, in a fixed order (the subject of each item is its structure)."""

DEFECTIVE = ("explicit_over_popular",)
"""The structures the world's student was taught wrongly (its training labels follow `WRONG_RULES`)."""

POOLS = ("student", "seed", "test", "guard", "teacher")
"""Disjoint content pools: who may use which pseudo-words."""

N_CHOICES = 5

# The words a choice carries, per role. The solver reads them; the student learns them.
TAG_EXPLICIT = "본문이 명시한"
TAG_POPULAR = "요즘 인기인"
TAG_PURPOSE = "목적에 맞는"
TAG_MISSING = "목록에 없는"
TAG_FIRST = "가장 먼저인"
TAG_LATER = ("그다음인", "마지막인")

RULES = {
    "explicit_over_popular": "본문이 명시한 내용이 요즘 인기인 키워드보다 우선하므로 본문이 명시한 것을 고른다.",
    "stated_fact": "본문이 명시한 내용이 정답의 근거이므로 본문이 명시한 것을 고른다.",
    "purpose_means": "정책의 목적이 수단을 정하므로 목적에 맞는 수단을 고른다.",
    "not_member": "목록에 있는 것은 모두 속하므로 목록에 없는 것이 속하지 않는 것이다.",
    "time_order": "시간 순서에서 처음에 놓인 일이 가장 먼저 일어난 일이므로 그것을 고른다.",
}
"""The correct rule of each structure, as one reasoning step."""

WRONG_RULES = {
    "explicit_over_popular": "요즘 인기인 키워드가 가장 널리 알려져 있으므로 요즘 인기인 것을 고른다.",
}
"""The wrong rule the student was taught, per defective structure (its error's reasoning)."""

ERROR_TYPES = {"explicit_over_popular": "인기 키워드 선호: 본문의 명시적 진술 대신 널리 알려진 키워드를 고름"}


@dataclass(frozen=True)
class Solution:
    """What the solver reads from an item."""

    structure: str
    answer: int
    """The gold label, 1-based."""
    lure: int | None
    """The label the wrong rule picks (defective structures), else None."""


# ---------------------------------------------------------------------------------------------
# Vocabulary

_INITIALS = "ㄱㄴㄷㄹㅁㅂㅅㅇㅈㅊㅋㅌㅍㅎ"
_INITIAL_INDEX = [0, 2, 3, 5, 6, 7, 9, 11, 12, 14, 15, 16, 17, 18]
_VOWEL_INDEX = [0, 4, 8, 13, 18, 20, 1, 5]  # ㅏ ㅓ ㅗ ㅜ ㅡ ㅣ ㅐ ㅔ
_FINAL_INDEX = [0, 0, 4, 8, 16]  # none (twice as likely), ㄴ ㄹ ㅇ


def _syllable(initial: int, vowel: int, final: int) -> str:
    return chr(0xAC00 + (initial * 21 + vowel) * 28 + final)


def _all_words() -> list[str]:
    """Every pseudo-word of the world, in a fixed shuffled order (three syllables each)."""
    rng = random.Random(20261203)
    syllables = [_syllable(i, v, f) for i in _INITIAL_INDEX for v in _VOWEL_INDEX for f in _FINAL_INDEX]
    syllables = sorted(set(syllables))
    words: set[str] = set()
    while len(words) < 6000:
        words.add("".join(rng.choice(syllables) for _ in range(3)))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


_WORDS: list[str] | None = None


def pool_words(pool: str) -> list[str]:
    """The pseudo-words of one content pool (disjoint from every other pool's)."""
    global _WORDS
    if pool not in POOLS:
        raise ValueError(f"unknown content pool {pool!r}; choose one of {', '.join(POOLS)}")
    if _WORDS is None:
        _WORDS = _all_words()
    k = POOLS.index(pool)
    return _WORDS[k :: len(POOLS)]


# ---------------------------------------------------------------------------------------------
# Items


def _phrase(rng: random.Random, words: Sequence[str], k_max: int = 2) -> str:
    """One to `k_max` content words: choices differ in length, so no label sits at a fixed
    distance from the answer."""
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, k_max)))


def _filler(rng: random.Random, words: Sequence[str]) -> str:
    """A sentence of background that no rule reads."""
    a, b, c = (rng.choice(words) for _ in range(3))
    forms = (
        f"참고로 {a} 지역의 특징: {b}.",
        f"덧붙여 {a} 마을의 행사: {b} 그리고 {c}.",
        f"한편 {a} 근처의 명소: {b}.",
    )
    return rng.choice(forms)


def _draw(rng: random.Random, words: Sequence[str], k: int) -> list[str]:
    return rng.sample(list(words), k)


def make_item(structure: str, rng: random.Random, words: Sequence[str], item_id: str) -> tuple[MCQItem, Solution]:
    """One item of `structure` on content drawn from `words`, with its solution."""
    place, topic, *content = _draw(rng, words, 10)
    extra_words = [w for w in words if w not in {place, topic, *content}]
    fill = " ".join(_filler(rng, extra_words) for _ in range(rng.randint(0, 2)))
    others = [_phrase(rng, extra_words) for _ in range(N_CHOICES)]
    lure_text = None
    if structure == "explicit_over_popular":
        x, y = content[:2]
        paragraph = f"{place} 안내문이 명시한 대표 {topic}: {x}. 그러나 요즘 인기인 {topic}: {y}. {fill}"
        question = f"윗글에 따를 때 {place}의 대표 {topic}에 해당하는 것은?"
        gold_text = f"{TAG_EXPLICIT} {x}"
        lure_text = f"{TAG_POPULAR} {y}"
        rest = others[:3]
    elif structure == "stated_fact":
        x = content[0]
        paragraph = f"{place} 안내문이 명시한 {topic}: {x}. {fill}"
        question = f"윗글에서 {place} 안내문이 밝힌 {topic}은?"
        gold_text = f"{TAG_EXPLICIT} {x}"
        rest = others[:4]
    elif structure == "purpose_means":
        goal, x = content[:2]
        paragraph = f"{place} 정책의 목적: {goal}. 이 목적에 맞는 수단: {x}. {fill}"
        question = f"윗글에서 {place} 정책의 목적에 맞는 수단은?"
        gold_text = f"{TAG_PURPOSE} {x}"
        rest = others[:4]
    elif structure == "not_member":
        listed = content[:4]
        v = content[4]
        paragraph = f"{topic} 목록에 속하는 것: {', '.join(listed)}. {fill}"
        question = f"윗글의 {topic} 목록에 속하지 않는 것은?"
        gold_text = f"{TAG_MISSING} {v}"
        rest = listed
    elif structure == "time_order":
        a, b, c = content[:3]
        paragraph = f"{place}에서 있었던 일: 먼저 {a}, 그다음 {b}, 마지막으로 {c}. {fill}"
        question = f"윗글에서 {place}에서 가장 먼저 일어난 일은?"
        gold_text = f"{TAG_FIRST} {a}"
        rest = [f"{TAG_LATER[0]} {b}", f"{TAG_LATER[1]} {c}", *others[:2]]
    else:
        raise ValueError(f"unknown structure {structure!r}; choose one of {', '.join(STRUCTURES)}")
    choices = [gold_text, *([lure_text] if lure_text else []), *rest]
    rng.shuffle(choices)
    if len(set(choices)) != len(choices):  # a repeated content phrase: draw again
        return make_item(structure, rng, words, item_id)
    answer = choices.index(gold_text) + 1
    lure = choices.index(lure_text) + 1 if lure_text else None
    item = MCQItem(
        id=item_id,
        paragraph=paragraph.strip(),
        question=question,
        choices=tuple(choices),
        answer=answer,
        subject=structure,
        source="world (synthetic)",
    )
    return item, Solution(structure, answer, lure)


def generate(
    pool: str, per_structure: int, *, seed: int = 0, structures: Iterable[str] = STRUCTURES, prefix: str | None = None
) -> list[MCQItem]:
    """`per_structure` items of each structure on `pool`'s content, deterministic for `seed`."""
    words = pool_words(pool)
    items: list[MCQItem] = []
    for structure in structures:
        rng = random.Random(_stable_seed(pool, structure, seed))
        for k in range(per_structure):
            item_id = f"{prefix or pool}-{structure}-{k:04d}"
            items.append(make_item(structure, rng, words, item_id)[0])
    return items


def _stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def seeded_rng(*parts) -> random.Random:
    """A Random decided by `parts` alone (the teacher's new problems are a function of the request)."""
    return random.Random(_stable_seed(*parts))


# ---------------------------------------------------------------------------------------------
# Solving

_QUESTION_STRUCTURE = (
    (re.compile(r"대표 .+에 해당하는 것은"), "explicit_over_popular"),
    (re.compile(r"안내문이 밝힌 .+은\?"), "stated_fact"),
    (re.compile(r"목적에 맞는 수단은"), "purpose_means"),
    (re.compile(r"속하지 않는 것은"), "not_member"),
    (re.compile(r"가장 먼저 일어난 일은"), "time_order"),
)
_GOLD_TAG = {
    "explicit_over_popular": TAG_EXPLICIT,
    "stated_fact": TAG_EXPLICIT,
    "purpose_means": TAG_PURPOSE,
    "not_member": TAG_MISSING,
    "time_order": TAG_FIRST,
}


def structure_of(question: str) -> str | None:
    """The structure a question stem belongs to, or None for a question of no known structure."""
    for pattern, structure in _QUESTION_STRUCTURE:
        if pattern.search(question):
            return structure
    return None


def solve(question: str, choices: Sequence[str]) -> Solution | None:
    """Read the truth from a question and its choices (any item of this world, in any order)."""
    structure = structure_of(question)
    if structure is None:
        return None
    tag = _GOLD_TAG[structure]
    gold = [k for k, text in enumerate(choices, 1) if text.strip().startswith(tag)]
    if len(gold) != 1:
        return None
    lure = None
    if structure in WRONG_RULES:
        found = [k for k, text in enumerate(choices, 1) if text.strip().startswith(TAG_POPULAR)]
        lure = found[0] if len(found) == 1 else None
    return Solution(structure, gold[0], lure)


def solve_item(item: MCQItem) -> Solution:
    found = solve(item.question, item.choices)
    if found is None:
        raise ValueError(f"item {item.id}: not an item of the world (no structure or no single gold choice)")
    return found


# ---------------------------------------------------------------------------------------------
# Reasoning texts (the world's answer format: numbered steps, a blank line, "정답: N")


def pick_step(choice: int) -> str:
    return f"정답은 {choice}번이다."


def reasoning_steps(structure: str, choice: int, *, wrong: bool = False) -> list[str]:
    """The steps that justify `choice`: the student's wrong rule when `wrong`, else the right one.

    The pick comes first: the step the model must get right is the first thing it writes, right
    where a logit-scored answer would follow the prompt, so what a pair teaches there is what
    evaluation reads."""
    rule = WRONG_RULES[structure] if wrong else RULES[structure]
    return [pick_step(choice), rule]


def reasoning_text(structure: str, choice: int, *, wrong: bool = False) -> str:
    """Numbered steps, a blank line and the answer line, as a model of this world writes them."""
    steps = reasoning_steps(structure, choice, wrong=wrong)
    body = "\n".join(f"{k}. {s}" for k, s in enumerate(steps, 1))
    return f"{body}\n\n정답: {choice}"
