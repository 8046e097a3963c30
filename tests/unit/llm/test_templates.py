"""The one prompt-filling engine (distill/llm/templates.py) over the package's prompt files: the
text a stage sends is the text it registers, filled."""

from __future__ import annotations

import pytest

from distill.contracts import MCQItem
from distill.data.prompts import item_variables, render_messages
from distill.errors import InputError
from distill.llm.templates import fill_text, load_template, parse_template, template_path


def _all_bundled_items() -> list[MCQItem]:
    from distill.data.loaders import load_items
    from distill.resources import resource_path

    items = load_items(resource_path("seeds.jsonl")) + load_items(resource_path("eval_sample.jsonl"))
    # the layouts that matter: with and without <보기>, with and without a passage
    items.append(MCQItem(id="no-passage", paragraph="  ", question="질문?", choices=("a", "b"), answer=1))
    items.append(
        MCQItem(
            id="no-passage-box",
            paragraph="",
            question="질문?",
            question_plus="ㄱ. 하나",
            choices=("a ", " b", "c"),
            answer=2,
        )
    )
    return items


def test_every_bundled_prompt_file_parses_and_names_its_variables():
    names = sorted(path.stem for path in template_path("answer").parent.glob("*.txt"))
    assert names == ["answer", "answer_direct", "blueprint", "judge", "verify"]
    for name in names:
        template = load_template(name)
        assert template.name == name and template.variables, name
        assert template.chat == (name in ("answer", "answer_direct", "judge")), name


def test_the_answer_prompt_sent_is_the_registered_template_filled():
    """render_messages (what every stage sends) is what the prompt registry holds, filled."""
    items = _all_bundled_items()
    assert any(i.question_plus.strip() for i in items) and any(not i.question_plus.strip() for i in items)
    assert any(not i.paragraph.strip() for i in items)
    for reasoning, name in ((True, "answer"), (False, "answer_direct")):
        registered = load_template(name).registered()  # what mine hands to ensure_prompt
        assert [m["role"] for m in registered] == ["system", "user"]
        for item in items:
            filled = [
                {"role": m["role"], "content": fill_text(m["content"], item_variables(item))} for m in registered
            ]
            assert filled == render_messages(item, reasoning=reasoning), item.id


def test_the_two_answer_templates_differ_only_in_the_answer_instruction():
    reasoning, direct = load_template("answer"), load_template("answer_direct")
    assert reasoning.messages[0] == direct.messages[0]
    head = reasoning.messages[-1]["content"].rsplit("\n\n", 1)[0]
    assert direct.messages[-1]["content"].rsplit("\n\n", 1)[0] == head
    assert reasoning.messages[-1]["content"] != direct.messages[-1]["content"]


def test_plain_templates_register_the_file_text_and_send_it_as_one_user_message():
    template = load_template("verify")
    assert not template.chat and template.registered() == template.text
    assert template.variables == {"problem"}
    messages = template.fill({"problem": "P"})
    assert messages == [{"role": "user", "content": template.text.replace("{{problem}}", "P")}]
    assert len(template.version) == 12 and template.version == load_template("verify").version


def test_judge_template_has_the_variables_the_stage_fills_and_asks_for_a_strict_verdict():
    template = load_template("judge")
    assert template.variables == {
        "paragraph",
        "question",
        "question_plus",
        "choices",
        "gold",
        "reasoning_a",
        "reasoning_b",
    }
    assert "판정: A" in template.messages[-1]["content"] and "판정: TIE" in template.messages[-1]["content"]
    # its own prompt, not the answer prompt (the reference project sent the wrong one)
    assert template.messages != load_template("answer").messages


def test_fill_text_leaves_out_blocks_whose_variables_are_all_empty_and_refuses_missing_ones():
    text = "지문:\n{{p}}\n\n질문:\n{{q}}\n\n끝"
    assert fill_text(text, {"p": "", "q": "무엇?"}) == "질문:\n무엇?\n\n끝"
    assert fill_text(text, {"p": "P", "q": "Q"}) == "지문:\nP\n\n질문:\nQ\n\n끝"
    assert fill_text(text, {"p": "{{q}}", "q": "Q"}) == "지문:\n{{q}}\n\n질문:\nQ\n\n끝"  # values are not filled again
    with pytest.raises(KeyError, match="q"):
        fill_text(text, {"p": "P"})


def test_fill_refuses_a_value_the_template_does_not_have():
    template = parse_template("[user]\n{{a}}")
    with pytest.raises(KeyError, match="misspelt"):
        template.fill({"a": "A", "misspelt": "B"})


def test_parse_template_rejects_text_outside_a_message():
    with pytest.raises(InputError, match="row 1"):
        parse_template("stray\n[user]\nhi", source="t.txt")
    parsed = parse_template("[system]\nS\n\n[user]\nU\n")
    assert parsed.chat and list(parsed.messages) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
    ]
    assert parsed.registered() == list(parsed.messages)
