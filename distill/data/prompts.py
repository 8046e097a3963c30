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
"""

from __future__ import annotations

from typing import Any

from distill.data.schema import MCQItem

ANSWER_PREFIX = "정답: "
"""What the final line starts with; the choice number follows it."""

SYSTEM_PROMPT = (
    "당신은 대학수학능력시험과 같은 객관식 문제를 푸는 전문가입니다. "
    "지문과 문제를 꼼꼼히 읽고 단계적으로 추론한 뒤 정답 하나를 고르세요."
)

ANSWER_INSTRUCTION_REASONING = (
    "풀이 과정을 간결하게 쓴 뒤, 마지막 줄에 '정답: 번호' 형식으로 선택지 번호 하나만 쓰세요."
)
ANSWER_INSTRUCTION_DIRECT = "마지막 줄에 '정답: 번호' 형식으로 선택지 번호 하나만 쓰세요."


def format_final_answer(choice: int) -> str:
    """The exact final line for a choice number."""
    return f"{ANSWER_PREFIX}{int(choice)}"


def render_user_prompt(item: MCQItem, *, reasoning: bool = True) -> str:
    """Paragraph, question, <보기> (question_plus), numbered choices, the answer instruction."""
    parts: list[str] = []
    if item.paragraph.strip():
        parts.append(f"지문:\n{item.paragraph.strip()}")
    parts.append(f"질문:\n{item.question.strip()}")
    if item.question_plus.strip():
        parts.append(f"<보기>\n{item.question_plus.strip()}")
    numbered = "\n".join(f"{label}. {text.strip()}" for label, text in enumerate(item.choices, 1))
    parts.append(f"선택지:\n{numbered}")
    parts.append(ANSWER_INSTRUCTION_REASONING if reasoning else ANSWER_INSTRUCTION_DIRECT)
    return "\n\n".join(parts)


def render_messages(item: MCQItem, *, reasoning: bool = True, system: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """Chat messages (system + user) for one item."""
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": render_user_prompt(item, reasoning=reasoning)})
    return messages


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
