"""Reading a model's final choice (and a judge's verdict) out of free text, conservatively.

An answer that cannot be read is `None`: the caller counts it as a parse failure and as wrong,
never as a guess. The order of evidence:

1. Think blocks are removed first (`strip_think`): reasoning may mention every choice.
2. A JSON object with an answer key (`{"Answer": "3"}`, `{"정답": 3}`, `{"answer": "③"}`);
   the last such object wins.
3. Explicit answer statements, the LAST one wins: `정답: 3`, `정답은 ③`, `답: 3번`,
   `최종 답: 3`, `Answer: 3`, `The answer is (3)`, and the reverse form `3번이 정답이다`.
   The value right after the marker may list several choices (`1, 3`, `1 또는 3`, `1번과 3번`):
   more than one distinct choice there means no answer.
4. The last line alone: a bare choice (`3`, `③`, `3번`, `(3)`), or a concluding sentence with
   exactly one choice reference (`따라서 ③이 가장 적절하다.`) and no negation.
Any choice outside 1..n_choices is no answer.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩"
_FULLWIDTH = str.maketrans("０１２３４５６７８９：", "0123456789:")

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_THINK_OPEN = re.compile(r"<think>", re.I)
_THINK_CLOSE = re.compile(r"</think>", re.I)


def strip_think(text: str) -> str:
    """The text without reasoning: complete `<think>...</think>` blocks removed; a stray
    `</think>` (the opening tag was in the prompt) drops everything before it; an unterminated
    `<think>` (the model ran out of tokens while thinking) drops everything after it."""
    if not text:
        return ""
    text = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    return text.strip()


def split_think(text: str) -> tuple[str, str]:
    """(reasoning inside think blocks, the visible rest) — `strip_think` gives the second."""
    if not text:
        return "", ""
    visible = strip_think(text)
    thoughts = [m.group(0)[len("<think>") : -len("</think>")].strip() for m in _THINK_BLOCK.finditer(text)]
    rest = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(rest))
    if closes:
        thoughts.insert(0, rest[: closes[-1].start()].strip())
        rest = rest[closes[-1].end() :]
    opened = _THINK_OPEN.search(rest)
    if opened:
        thoughts.append(rest[opened.end() :].strip())
    return "\n\n".join(t for t in thoughts if t), visible


# -- choice tokens ---------------------------------------------------------------------------

# One choice reference: 3, (3), [3], **3**, 3번, ③, ③번.
_TOKEN = r"[\(\[\*\s]*(?:\d{1,2}|[①-⑩])[\)\]\*]*(?:\s*번)?"
# A list of them: "1, 3", "1 또는 3", "1번과 3번", "1/3", "1 or 3".
_SEP = r"\s*(?:,|/|·|및|와|과|또는|혹은|이나|or|and|&)\s*"
_VALUE = rf"(?P<value>{_TOKEN}(?:{_SEP}{_TOKEN})*)"

_B = r"\**"  # markdown bold around a marker: **정답**: 3, **정답: 3**
_MARKERS = [
    rf"정답{_B}(?:\s*(?:은|는))?\s*{_B}\s*(?:[:=]|->|→)?\s*(?:바로\s*)?",
    rf"최종\s*(?:정답|답안?|선택){_B}(?:\s*(?:은|는))?\s*{_B}\s*[:=]?\s*",
    rf"(?<![가-힣])답{_B}(?:\s*(?:은|는)\s*{_B}\s*[:=]?|\s*{_B}\s*[:=])\s*",
    rf"(?:final\s+)?answer{_B}(?:\s+is)?\s*{_B}\s*[:=]?\s*(?:option\s*|choice\s*)?",
]
_FORWARD = re.compile(rf"(?:{'|'.join(_MARKERS)})(?:\*\*\s*)?{_VALUE}", re.I)
# "3번이 정답이다" / "③이 답이다", but not "3번이 정답이 아닌 이유".
_REVERSE = re.compile(rf"{_VALUE}\s*(?:이|가)\s*(?:정답|답)(?![가-힣]*\s*(?:이|은|는)?\s*(?:아니|아닌|아님))", re.I)
_ONE_TOKEN = re.compile(r"\d{1,2}|[①-⑩]")

_BARE_LINE = re.compile(r"^[\s\*\(\[]*(\d{1,2}|[①-⑩])[\)\]\*]*\s*(?:번)?\s*[\.\)]?\s*$")
_CONCLUSION = re.compile(r"따라서|그러므로|그래서|결론|가장\s*적절|정답|고르면|옳은\s*것은")
_NEGATION = re.compile(r"않|아니|아닌|아님|틀리|틀린|틀렸|없|못|오답")
_CHOICE_REF = re.compile(r"[①-⑩]|(?<!\d)\d{1,2}\s*번")

_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_ANSWER_KEYS = {"answer", "정답", "final_answer", "finalanswer", "choice", "답"}


def _token_value(token: str) -> int | None:
    token = token.strip()
    found = _ONE_TOKEN.search(token)
    if not found:
        return None
    digit = found.group(0)
    if digit in _CIRCLED:
        return _CIRCLED.index(digit) + 1
    return int(digit)


def _values(value_text: str) -> list[int]:
    values = []
    for match in _ONE_TOKEN.finditer(value_text):
        digit = match.group(0)
        values.append(_CIRCLED.index(digit) + 1 if digit in _CIRCLED else int(digit))
    return values


def _in_range(choice: int | None, n_choices: int) -> int | None:
    if choice is None or not (1 <= choice <= n_choices):
        return None
    return choice


def _single(values: list[int], n_choices: int) -> int | None:
    distinct = set(values)
    if len(distinct) != 1:
        return None
    return _in_range(values[0], n_choices)


def _json_answer(text: str) -> tuple[bool, int | None]:
    """(found an answer object, its choice). The last object with an answer key decides."""
    found, choice = False, None
    for match in _JSON_OBJECT.finditer(text):
        data = _load_object(match.group(0))
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            if str(key).strip().lower().replace(" ", "_") in _ANSWER_KEYS:
                found, choice = True, _json_value(value)
                break
    return found, choice


def _load_object(snippet: str) -> Any:
    try:
        return json.loads(snippet)
    except ValueError:
        pass
    try:  # {'answer': 3} written Python-style
        return ast.literal_eval(snippet)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _json_value(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        values = _values(value.translate(_FULLWIDTH))
        return values[0] if len(set(values)) == 1 else None
    return None


def extract_answer(text: str | None, n_choices: int) -> int | None:
    """The chosen option (1-based), or None when the text does not state exactly one."""
    if not text:
        return None
    body = strip_think(text).translate(_FULLWIDTH)
    if not body:
        return None

    found, choice = _json_answer(body)
    if found:
        return _in_range(choice, n_choices)

    statements = [(m.end(), m.group("value")) for m in _FORWARD.finditer(body)]
    statements += [(m.end(), m.group("value")) for m in _REVERSE.finditer(body)]
    if statements:
        _, value = max(statements, key=lambda s: s[0])
        return _single(_values(value), n_choices)

    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    bare = _BARE_LINE.match(last)
    if bare:
        return _in_range(_token_value(bare.group(1)), n_choices)
    if _CONCLUSION.search(last) and not _NEGATION.search(last):
        refs = [_token_value(m.group(0)) for m in _CHOICE_REF.finditer(last)]
        return _single([r for r in refs if r is not None], n_choices)
    return None


# -- judge verdicts --------------------------------------------------------------------------

_VERDICT_WORD = r"(?P<verdict>A|B|TIE|tie|Tie|무승부|동점)"
_VERDICT_MARKERS = re.compile(
    r"(?:verdict|winner|better|판정|승자|결론|더\s*나은\s*(?:풀이|답안|답)?(?:은|는)?)\s*[:=：]\s*"
    rf"[\*\[\(\"']*\s*{_VERDICT_WORD}(?![A-Za-z가-힣])",
    re.I,
)
_VERDICT_BRACKETS = re.compile(rf"\[\[\s*{_VERDICT_WORD}\s*\]\]")
_VERDICT_BARE = re.compile(rf"^[\s\*\[\(\"']*{_VERDICT_WORD}[\s\*\]\)\"'\.]*$")
_VERDICT_KEYS = {"verdict", "winner", "판정", "better"}


def _normalise_verdict(word: str) -> str | None:
    word = word.strip().upper()
    if word in ("A", "B"):
        return word
    if word in ("TIE", "무승부", "동점"):
        return "TIE"
    return None


def parse_judge_verdict(text: str | None) -> str | None:
    """ "A", "B" or "TIE" from a judge's answer, or None. Strict: only an explicit verdict
    (`판정: A`, `Verdict: B`, `[[TIE]]`, `{"verdict": "A"}`, or a last line that is just the
    verdict) counts; the last one decides; a letter in passing never does."""
    if not text:
        return None
    body = strip_think(text).translate(_FULLWIDTH)
    if not body:
        return None
    for match in reversed(list(_JSON_OBJECT.finditer(body))):
        data = _load_object(match.group(0))
        if isinstance(data, dict):
            for key, value in data.items():
                if str(key).strip().lower() in _VERDICT_KEYS:
                    return _normalise_verdict(str(value)) if isinstance(value, str) else None
    statements = [(m.end(), m.group("verdict")) for m in _VERDICT_MARKERS.finditer(body)]
    statements += [(m.end(), m.group("verdict")) for m in _VERDICT_BRACKETS.finditer(body)]
    if statements:
        end, word = max(statements, key=lambda s: s[0])
        # "판정: A 또는 B" is not a verdict.
        rest = body[end : end + 12]
        if re.match(r"\s*(?:,|/|또는|or|and|혹은)\s*(?:A|B|TIE)\b", rest, re.I):
            return None
        return _normalise_verdict(word)
    lines = [line for line in body.splitlines() if line.strip()]
    if lines:
        bare = _VERDICT_BARE.match(lines[-1])
        if bare:
            return _normalise_verdict(bare.group("verdict"))
    return None
