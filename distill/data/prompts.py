"""Turn an MCQ item into chat messages, and fix the one answer format every stage uses.

The answer format is the contract between evaluation, training and answer extraction:
a model's final line is `정답: N`. Training pairs end in exactly that line, logit scoring
scores the label after exactly that prefix, and extraction looks for it first.

Qwen3 thinking, decided on purpose:
- thinking off: the chat template is applied with `enable_thinking=False`, which (like Qwen3's
  own template) places an empty `<think>\n\n</think>\n\n` at the start of the assistant turn.
  Logit scoring and training both score what follows it, so the model is never asked to
  predict the empty block and never sees a reasoning block it did not write.
- thinking on: the generation prompt is left open; a reasoning trace goes inside
  `<think>...</think>` and the answer line follows it.

The prompt's text lives in distill/resources/prompts/answer.txt (and answer_direct.txt, which
differs only in its last line) and is filled by the one template engine, distill/llm/templates.py:
what is sent is what mine registers in the prompt registry.
"""

from __future__ import annotations

from typing import Any

from distill.contracts import ANSWER_PREFIX, MCQItem

ANSWER_TEMPLATE = "answer"
"""distill/resources/prompts/answer.txt: the prompt that asks for reasoning and then the answer
line. The LLM stages send it (mine, augment's pairs and re-solves, generate-mode evaluation) and
mine registers it in the prompt registry as `distill-answer`."""
DIRECT_TEMPLATE = "answer_direct"
"""distill/resources/prompts/answer_direct.txt: the same prompt asking for the answer line only
(logit scoring, whose label follows the answer prefix)."""

_TEMPLATE_SYSTEM = object()
"""`render_messages`' default system message: the template's own."""


def answer_template(*, reasoning: bool = True):
    """The answer prompt's Template (distill/llm/templates.py), as the package's file holds it."""
    from distill.llm.templates import load_template

    return load_template(ANSWER_TEMPLATE if reasoning else DIRECT_TEMPLATE)


def __getattr__(name: str) -> str:
    """SYSTEM_PROMPT, ANSWER_INSTRUCTION_REASONING and ANSWER_INSTRUCTION_DIRECT, read from the
    template files (the files are the one home of the prompt's text)."""
    if name == "SYSTEM_PROMPT":
        return answer_template().messages[0]["content"]
    if name in ("ANSWER_INSTRUCTION_REASONING", "ANSWER_INSTRUCTION_DIRECT"):
        user = answer_template(reasoning=name.endswith("REASONING")).messages[-1]["content"]
        return user.rsplit("\n\n", 1)[-1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_final_answer(choice: int) -> str:
    """The exact final line for a choice number."""
    return f"{ANSWER_PREFIX}{int(choice)}"


def item_variables(item: MCQItem) -> dict[str, str]:
    """The answer template's variables for an item: passage, question, <보기>, numbered choices."""
    return {
        "paragraph": item.paragraph.strip(),
        "question": item.question.strip(),
        "question_plus": item.question_plus.strip(),
        "choices": "\n".join(f"{label}. {text.strip()}" for label, text in enumerate(item.choices, 1)),
    }


def render_messages(item: MCQItem, *, reasoning: bool = True, system: Any = _TEMPLATE_SYSTEM) -> list[dict[str, str]]:
    """Chat messages (system + user) for one item, filled from the answer template file.

    `system`: the template's system message by default; another text replaces it, None or ""
    leaves it out."""
    messages = answer_template(reasoning=reasoning).fill(item_variables(item))
    if system is _TEMPLATE_SYSTEM:
        return messages
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system}] if system else []) + rest


def render_user_prompt(item: MCQItem, *, reasoning: bool = True) -> str:
    """The user message alone: passage, question, <보기>, numbered choices, the answer instruction."""
    return render_messages(item, reasoning=reasoning)[-1]["content"]


def apply_chat_template(tokenizer: Any, messages: list[dict[str, str]], *, thinking: bool) -> str:
    """The prompt text that ends where the assistant starts writing.

    With thinking off the template inserts the empty think block itself (Qwen3 convention),
    so the text returned already contains it and the model continues with the answer.
    """
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=thinking,
    )


def parse_thinking(value: Any) -> bool:
    """`on`/`off` (also true/false, 1/0) as MLproject parameters carry them."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"on", "true", "1", "yes"}:
        return True
    if text in {"off", "false", "0", "no", ""}:
        return False
    from distill.errors import ConfigError

    raise ConfigError(f"thinking must be 'on' or 'off', got {value!r}")
