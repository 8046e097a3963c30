"""Decontamination against real evaluation sets (../shared/data), loaded the way `augment` loads
its `eval_sets`: a lightly edited copy of a real item is refused, a genuinely new item passes.

Measured with the default 5-gram index over the competition train file (2003 items) and the
2019 KICE exam: an edited copy (spacing doubled, punctuation dropped or moved, one word of the
passage replaced) scores 0.97-1.0 against its original (87 items with a passage tried); the 29
bundled augment pairs score at most 0.11 against these items and the 2015-2018 exams. The
threshold (0.5) sits between them.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from distill.blueprint import gates
from distill.blueprint.decontam import build_reference_index, item_text
from distill.contracts import MCQItem
from distill.stages.augment import AugmentConfig, load_reference_items

THRESHOLD = AugmentConfig().decontam_threshold


@pytest.fixture(scope="module")
def real_eval_sets(shared_data):
    paths = [
        str(shared_data / "competition" / "cleaned_category_labeled_train.cp949.csv"),
        str(shared_data / "kice" / "2019_11_KICE.json"),
    ]
    items = load_reference_items(paths)
    return items, build_reference_index(items, [])


def lightly_edited(item: MCQItem) -> MCQItem:
    """Whitespace and punctuation changed everywhere, and one word of the passage replaced."""

    def respace(text: str) -> str:
        text = re.sub(r"\s+", "  ", text)
        return text.replace(".", " .").replace(",", "").replace("?", " ?")

    words = item.paragraph.split()
    longest = max(range(len(words)), key=lambda k: len(words[k]))
    words[longest] = "대체어"
    return dataclasses.replace(
        item,
        id=f"edited-{item.id}",
        paragraph=respace(" ".join(words)),
        question=respace(item.question),
        question_plus=respace(item.question_plus),
        choices=tuple(respace(c) + " " for c in item.choices),
    )


def test_a_lightly_edited_copy_of_a_real_item_is_refused(real_eval_sets):
    items, index = real_eval_sets
    assert len(items) > 2000
    with_passage = [item for item in items if len(item.paragraph) > 200]
    for original in (with_passage[7], with_passage[len(with_passage) // 2], items[-1]):
        copy = lightly_edited(original)
        assert item_text(copy) != item_text(original)
        match = index.best_match(item_text(copy))
        result = gates.check_decontamination(match, THRESHOLD)
        assert not result.passed, (original.id, match)
        assert original.id in result.reason and match.score >= 0.9


def test_a_genuinely_new_item_passes(real_eval_sets):
    _, index = real_eval_sets
    new = MCQItem(
        id="new-1",
        paragraph=(
            "냉장고는 냉매가 액체에서 기체로 변할 때 주변의 열을 흡수하는 성질을 이용한다. 압축기에서 압축된 냉매는 "
            "응축기에서 열을 내보내며 액체가 되고, 팽창 밸브를 지나며 압력이 낮아진 뒤 증발기에서 기체로 변하면서 "
            "냉장고 안의 열을 빼앗는다."
        ),
        question="윗글의 내용과 일치하는 것만을 <보기>에서 고른 것은?",
        question_plus="ㄱ. 냉매는 증발기에서 기체로 변하며 열을 흡수한다.\nㄴ. 냉매는 응축기에서 열을 내보내며 액체가 된다.",
        choices=("ㄱ", "ㄴ", "ㄱ, ㄴ", "없음"),
        answer=3,
    )
    match = index.best_match(item_text(new))
    assert gates.check_decontamination(match, THRESHOLD).passed
    assert match.score < 0.2
