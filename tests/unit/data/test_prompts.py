"""The answer prompt (distill/data/prompts.py) renders from distill/resources/prompts/answer.txt and
answer_direct.txt, byte for byte what it rendered when its text was Python strings.

answer_prompt_before.json was captured from `render_messages` before the move: full messages for
a few items (with and without a passage or a <보기> box, padded choices, text that looks like a
template variable) and a digest over every bundled seed and eval item, in both modes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from distill.contracts import MCQItem
from distill.data import prompts
from distill.data.prompts import render_messages, render_user_prompt

BEFORE = json.loads((Path(__file__).parent / "answer_prompt_before.json").read_text(encoding="utf-8"))


def _item(data: dict) -> MCQItem:
    return MCQItem(
        id=data["id"],
        paragraph=data["paragraph"],
        question=data["question"],
        question_plus=data["question_plus"],
        choices=tuple(data["choices"]),
        answer=data["answer"],
    )


def _text(messages: list[dict[str, str]]) -> bytes:
    return json.dumps(messages, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("case", BEFORE["cases"], ids=[case["item"]["id"] for case in BEFORE["cases"]])
def test_render_messages_is_byte_identical_to_the_python_string_prompt(case):
    item = _item(case["item"])
    assert _text(render_messages(item)) == _text(case["reasoning"])
    assert _text(render_messages(item, reasoning=False)) == _text(case["direct"])
    assert _text(render_messages(item, system=None)) == _text(case["no_system"])
    assert render_user_prompt(item) == case["reasoning"][-1]["content"]


def test_every_bundled_item_renders_as_before():
    from distill.data.loaders import load_items
    from distill.resources import resource_path

    items = load_items(resource_path("seeds.jsonl")) + load_items(resource_path("eval_sample.jsonl"))
    for mode, reasoning in (("reasoning", True), ("direct", False)):
        digest = hashlib.sha256()
        for item in items:
            digest.update(_text(render_messages(item, reasoning=reasoning)) + b"\n")
        assert digest.hexdigest() == BEFORE["bundled_items_sha256"][mode], mode


def test_the_prompt_constants_are_read_from_the_template_files():
    system, user = BEFORE["cases"][0]["reasoning"]
    assert prompts.SYSTEM_PROMPT == system["content"]
    assert user["content"].endswith("\n\n" + prompts.ANSWER_INSTRUCTION_REASONING)
    assert BEFORE["cases"][0]["direct"][-1]["content"].endswith("\n\n" + prompts.ANSWER_INSTRUCTION_DIRECT)
    assert prompts.ANSWER_INSTRUCTION_DIRECT in prompts.ANSWER_INSTRUCTION_REASONING
    with pytest.raises(AttributeError):
        prompts.NO_SUCH_PROMPT  # noqa: B018


def test_another_system_message_replaces_the_templates():
    item = _item(BEFORE["cases"][0]["item"])
    messages = render_messages(item, system="다른 지시")
    assert messages[0] == {"role": "system", "content": "다른 지시"} and messages[1:] == render_messages(item)[1:]
