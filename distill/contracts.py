"""The data contracts between stages (docs/design.md, "Contracts").

What one stage writes and the next reads, each written and read by the code here:

- `MCQItem`: the canonical multiple-choice item every loader returns (`distill.data`).
- `Attempt`: one answer of the teacher, the student or the judge (mine's attempts.parquet).
- `HardNegative`: a seed item with the teacher's golden path and the student's failed path
  (mine's hard_negatives.jsonl → augment).
- `PreferencePair`: a prompt with chosen and rejected completions (augment's pairs.jsonl → train).
- Prediction rows: one row per scored item (evaluate's predictions.parquet → register, analyze).

JSON lines are read by `distill.io.iter_jsonl` and written by `distill.io.write_jsonl`.
Readers check every field and name file, row and field on the first fault.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import InputError

ANSWER_PREFIX = "정답: "
"""The final line of every reasoning the project writes or trains on: `정답: N`."""
_ANSWER_LINE = re.compile(rf"^{re.escape(ANSWER_PREFIX.strip())}\s*(\d+)\s*$")


# ---------------------------------------------------------------------------------------------
# Item


@dataclass(frozen=True)
class MCQItem:
    """One multiple-choice question in canonical form."""

    id: str
    """Unique within its dataset."""
    paragraph: str
    """The passage the question is about ("" when there is none)."""
    question: str
    """The question stem."""
    choices: tuple[str, ...]
    """2..10 non-empty, distinct choice texts, in order; labels are 1..len(choices)."""
    answer: int | None = None
    """The gold choice, 1-based, or None when the set carries no gold (e.g. a test split)."""
    question_plus: str = ""
    """The <보기> box, when the item has one. Never dropped."""
    subject: str = "unknown"
    """Subject used for per-subject metrics."""
    source: str = ""
    """Where the item came from (file name or dataset name)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Anything else a loader kept (e.g. KICE score); not used for scoring."""

    @property
    def n_choices(self) -> int:
        return len(self.choices)

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["choices"] = list(self.choices)
        if not row["extra"]:
            row.pop("extra")
        return row


# ---------------------------------------------------------------------------------------------
# Attempt


@dataclass(frozen=True)
class Attempt:
    """One answer to one item by one role (teacher, student or judge): a row of attempts.parquet."""

    item_id: str
    role: str
    backend: str
    model: str
    sample_index: int
    prompt_hash: str
    """sha256 of the messages sent, so attempts of one prompt can be grouped across runs."""
    text: str
    """The raw response text."""
    reasoning: str
    """The text without any think block ("" when the call failed)."""
    choice: int | None
    """The extracted choice, None when unreadable or failed."""
    correct: bool
    latency_s: float
    input_tokens: int
    output_tokens: int
    error: str | None
    """Why the call failed, None when it did not."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ATTEMPT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Attempt))


def attempts_frame(attempts: Sequence[Attempt | dict[str, Any]]):
    """Attempts as a pandas frame with the contract's columns, in order (an empty frame keeps them)."""
    import pandas as pd

    rows = [a.to_dict() if isinstance(a, Attempt) else dict(a) for a in attempts]
    frame = pd.DataFrame(rows, columns=list(ATTEMPT_COLUMNS))
    # Fixed dtypes, so an empty or all-failed run writes the same parquet schema as any other.
    frame = frame.astype(
        {
            "choice": "Int64",
            "correct": bool,
            "sample_index": "int64",
            "input_tokens": "int64",
            "output_tokens": "int64",
            "latency_s": "float64",
        }
    )
    frame["error"] = frame["error"].astype(object).where(frame["error"].notna(), None)
    return frame


def attempts_from_frame(frame) -> list[Attempt]:
    """Attempts back from a frame `attempts_frame` made (or attempts.parquet read back)."""
    import pandas as pd

    attempts = []
    for row in frame[list(ATTEMPT_COLUMNS)].to_dict("records"):
        values = {name: None if value is pd.NA or value is None else value for name, value in row.items()}
        if values["choice"] is not None:
            values["choice"] = int(values["choice"])
        if isinstance(values["error"], float):  # a null read back as NaN
            values["error"] = None
        attempts.append(Attempt(**values))
    return attempts


# ---------------------------------------------------------------------------------------------
# Hard negative


@dataclass(frozen=True)
class HardNegative:
    """A seed item with the teacher's golden path and the student's failed path."""

    item: MCQItem
    golden_path: str
    failed_path: str
    student_choice: int | None = None
    """The wrong choice the failed path reached (None when it was unparseable)."""
    error_type: str = ""
    """What went wrong in the failed path, when mining named it ("" otherwise)."""
    student_pass_rate: float | None = None
    teacher_choice: int | None = None
    """The choice the golden path reached (the gold answer when the golden path was the student's)."""
    student_choices: tuple[int | None, ...] = ()
    """Every student sample's choice, in sample order (lineage; augment does not use it)."""
    golden_from: str = ""
    """Which role wrote the golden path (teacher or student)."""
    judge_verdict: str | None = None
    """The judge's verdict when two golden candidates were compared, else None."""

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def golden_steps(self) -> int:
        from distill.blueprint.schema import count_steps

        return count_steps(self.golden_path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON line mine writes: the item's fields, then the paths and their lineage."""
        record = self.item.to_dict()
        record.update(
            golden_path=self.golden_path,
            failed_path=self.failed_path,
            student_pass_rate=self.student_pass_rate,
            teacher_choice=self.teacher_choice,
            student_choice=self.student_choice,
            student_choices=list(self.student_choices),
            error_type=self.error_type or None,
            golden_from=self.golden_from,
            judge_verdict=self.judge_verdict,
        )
        return record

    @classmethod
    def from_dict(cls, path, row: int, data: dict[str, Any]) -> HardNegative:
        return hard_negative_from_dict(path, row, data)


def hard_negative_from_dict(path, row: int, data: dict[str, Any]) -> HardNegative:
    """Build a HardNegative from one JSON line; any fault names file, row and field."""
    from distill.data.schema import item_from_dict

    item = item_from_dict(path, row, data)
    if item.answer is None:
        raise InputError(path, "a hard negative needs the gold answer", row, "answer")
    texts: dict[str, str] = {}
    for name in ("golden_path", "failed_path"):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InputError(path, "missing or empty", row, name)
        texts[name] = value
    student_choice = data.get("student_choice")
    if student_choice is not None:
        if isinstance(student_choice, bool) or not isinstance(student_choice, int):
            raise InputError(path, f"must be a choice number or null, got {student_choice!r}", row, "student_choice")
    pass_rate = data.get("student_pass_rate")
    if pass_rate is not None and not isinstance(pass_rate, (int, float)):
        raise InputError(path, f"must be a number, got {pass_rate!r}", row, "student_pass_rate")
    # The item's own `extra` must not carry the paths twice.
    extra = {k: v for k, v in item.extra.items() if k not in _HARD_NEGATIVE_FIELDS}
    item = dataclasses.replace(item, extra=extra)
    return HardNegative(
        item=item,
        golden_path=texts["golden_path"],
        failed_path=texts["failed_path"],
        student_choice=student_choice,
        error_type=str(data.get("error_type") or ""),
        student_pass_rate=None if pass_rate is None else float(pass_rate),
        teacher_choice=data.get("teacher_choice") if isinstance(data.get("teacher_choice"), int) else None,
        student_choices=tuple(data.get("student_choices") or ()),
        golden_from=str(data.get("golden_from") or ""),
        judge_verdict=data.get("judge_verdict"),
    )


_HARD_NEGATIVE_FIELDS = {
    "golden_path",
    "failed_path",
    "student_pass_rate",
    "teacher_choice",
    "student_choice",
    "error_type",
    # mine's lineage fields: about the mining run, not about the item
    "student_choices",
    "golden_from",
    "judge_verdict",
}


def load_hard_negatives(path: str | Path) -> list[HardNegative]:
    """Read a hard_negatives.jsonl (mine's output); ids must be unique."""
    from distill.io import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a regular file")
    negatives: list[HardNegative] = []
    first_row: dict[str, int] = {}
    for row, data in iter_jsonl(path):
        negative = hard_negative_from_dict(path, row, data)
        if negative.id in first_row:
            raise InputError(
                path, f"duplicate id {negative.id!r} (first seen at row {first_row[negative.id]})", row, "id"
            )
        first_row[negative.id] = row
        negatives.append(negative)
    if not negatives:
        raise InputError(path, "no hard negatives in the file")
    return negatives


def write_hard_negatives(path: str | Path, negatives: Sequence[HardNegative]) -> Path:
    """hard_negatives.jsonl, atomically (the file `load_hard_negatives` reads)."""
    from distill.io import write_jsonl

    return write_jsonl(path, (negative.to_dict() for negative in negatives))


# ---------------------------------------------------------------------------------------------
# Preference pair

PAIR_REQUIRED_FIELDS = ("id", "prompt", "chosen", "rejected", "gold", "rejected_choice", "subject")
PAIR_META_FIELDS = ("seed_id", "transfer", "logic_structure", "error_type", "prompt_version")


@dataclass(frozen=True)
class PreferencePair:
    """One checked preference pair."""

    id: str
    messages: tuple[dict[str, str], ...]
    """The prompt as chat messages (a plain-string prompt became one user message)."""
    chosen: str
    rejected: str
    gold: int
    rejected_choice: int
    subject: str
    problem: MCQItem | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """seed_id, transfer, logic_structure, error_type, prompt_version and anything else kept."""
    row: int = field(default=0, compare=False)
    """1-based row in the source, for messages (where a pair was read, not what it says)."""

    @property
    def group(self) -> str:
        """Pairs from one seed problem share a group (dev split never separates them)."""
        seed = self.meta.get("seed_id")
        return str(seed) if seed not in (None, "") else self.id

    def to_dict(self) -> dict[str, Any]:
        """The JSON line `pair_from_dict` reads back, fields in the order of the project's pair
        files (augment's pairs.jsonl, the bundled example pairs): id, seed_id, problem, prompt, ..."""
        row: dict[str, Any] = {"id": self.id}
        if "seed_id" in self.meta:
            row["seed_id"] = self.meta["seed_id"]
        if self.problem is not None:
            row["problem"] = self.problem.to_dict()
        row.update(
            prompt=[dict(m) for m in self.messages],
            chosen=self.chosen,
            rejected=self.rejected,
            gold=self.gold,
            rejected_choice=self.rejected_choice,
            subject=self.subject,
        )
        row.update((k, v) for k, v in self.meta.items() if k != "seed_id")
        return row

    @classmethod
    def from_dict(cls, path, row: int, data: dict[str, Any]) -> PreferencePair:
        return pair_from_dict(path, row, data)


def answer_line_choice(text: str) -> int | None:
    """The N of the final non-empty line `정답: N`, or None when the text does not end with one."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = _ANSWER_LINE.match(lines[-1].strip())
    return int(match.group(1)) if match else None


def _messages(path, row: int, prompt: Any) -> tuple[dict[str, str], ...]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError(path, "prompt is empty", row, "prompt")
        return ({"role": "user", "content": prompt},)
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise InputError(path, "prompt must be a non-empty list of chat messages or a string", row, "prompt")
    messages = []
    for position, message in enumerate(prompt, start=1):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise InputError(path, f"message {position} needs string 'role' and 'content'", row, "prompt")
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(m["content"].strip() for m in messages):
        raise InputError(path, "prompt messages are all empty", row, "prompt")
    return tuple(messages)


def _choice_number(path, row: int, name: str, value: Any, n_choices: int) -> int:
    if isinstance(value, bool) or value is None:
        raise InputError(path, f"{name} must be a choice number, got {value!r}", row, name)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(path, f"{name} must be a choice number, got {value!r}", row, name) from None
    if number != value and str(number) != str(value).strip():
        raise InputError(path, f"{name} must be a whole number, got {value!r}", row, name)
    if not 1 <= number <= n_choices:
        raise InputError(path, f"{name} {number} is out of range 1..{n_choices}", row, name)
    return number


def pair_from_dict(path, row: int, data: dict[str, Any]) -> PreferencePair:
    """Check one raw pair; every fault is an InputError naming file, row and field."""
    for name in PAIR_REQUIRED_FIELDS:
        if name not in data or data[name] is None:
            raise InputError(path, "missing required field", row, name)
    pair_id = str(data["id"]).strip()
    if not pair_id:
        raise InputError(path, "id is empty", row, "id")
    messages = _messages(path, row, data["prompt"])

    from distill.data.schema import MAX_CHOICES, item_from_dict

    problem = None
    if data.get("problem") is not None:
        if not isinstance(data["problem"], dict):
            raise InputError(path, "problem must be an MCQ item object", row, "problem")
        try:
            problem = item_from_dict(path, row, data["problem"])
        except InputError as exc:
            raise InputError(path, f"problem: {exc.message}", row, f"problem.{exc.field}") from None
    n_choices = problem.n_choices if problem is not None else MAX_CHOICES

    texts = {}
    for name in ("chosen", "rejected"):
        value = data[name]
        if not isinstance(value, str):
            raise InputError(path, f"{name} must be text, got {type(value).__name__}", row, name)
        if not value.strip():
            raise InputError(path, f"{name} is empty", row, name)
        texts[name] = value
    if texts["chosen"].strip() == texts["rejected"].strip():
        raise InputError(path, "chosen and rejected are the same text", row, "rejected")

    gold = _choice_number(path, row, "gold", data["gold"], n_choices)
    rejected_choice = _choice_number(path, row, "rejected_choice", data["rejected_choice"], n_choices)
    if gold == rejected_choice:
        raise InputError(path, f"rejected_choice equals gold ({gold})", row, "rejected_choice")
    if problem is not None and problem.answer is not None and problem.answer != gold:
        raise InputError(path, f"gold {gold} differs from problem.answer {problem.answer}", row, "gold")
    for name, expected in (("chosen", gold), ("rejected", rejected_choice)):
        found = answer_line_choice(texts[name])
        if found is None:
            raise InputError(path, f"{name} must end with the line '{ANSWER_PREFIX}{expected}'", row, name)
        if found != expected:
            raise InputError(
                path, f"{name} ends with '{ANSWER_PREFIX}{found}' but its choice is {expected}", row, name
            )

    subject = str(data["subject"]).strip()
    if not subject:
        raise InputError(path, "subject is empty", row, "subject")
    known = set(PAIR_REQUIRED_FIELDS) | {"problem"}
    meta = {k: v for k, v in data.items() if k not in known}
    return PreferencePair(
        id=pair_id,
        messages=messages,
        chosen=texts["chosen"],
        rejected=texts["rejected"],
        gold=gold,
        rejected_choice=rejected_choice,
        subject=subject,
        problem=problem,
        meta=meta,
        row=row,
    )


# ---------------------------------------------------------------------------------------------
# Prediction rows

PREDICTION_COLUMNS = ("id", "subject", "gold", "pred", "correct", "n_choices")
"""The fixed columns of predictions.parquet; `score_1..score_K` follow (NaN beyond an item's choices)."""
PREDICTION_REQUIRED = ("id", "gold", "pred")
"""What a predictions table from elsewhere must have for register and analyze to read it."""


def predictions_frame(items: Sequence[MCQItem], scores: Sequence[Sequence[float]], preds: Sequence[int]):
    """One row per item; score_k is NaN for labels beyond the item's own choice count. An item
    without an answer (a served model's input) has gold and correct None."""
    import pandas as pd

    width = max((item.n_choices for item in items), default=0)
    rows = []
    for item, item_scores, pred in zip(items, scores, preds):
        gold = None if item.answer is None else int(item.answer)
        row: dict[str, Any] = {
            "id": item.id,
            "subject": item.subject,
            "gold": gold,
            "pred": int(pred),
            "correct": None if gold is None else bool(int(pred) == gold),
            "n_choices": item.n_choices,
        }
        for k in range(1, width + 1):
            row[f"score_{k}"] = float(item_scores[k - 1]) if k <= len(item_scores) else float("nan")
        rows.append(row)
    columns = list(PREDICTION_COLUMNS) + [f"score_{k}" for k in range(1, width + 1)]
    return pd.DataFrame(rows, columns=columns)


def choice_label(value: Any, n_choices: int | None = None) -> int | None:
    """A 1-based choice number, or None for null/NaN/out-of-range."""
    if value is None:
        return None
    try:
        if isinstance(value, float) and math.isnan(value):
            return None
        number = int(value)
    except (TypeError, ValueError):
        return None
    if number != value and not isinstance(value, str):
        return None
    if number < 1 or (n_choices is not None and number > n_choices):
        return None
    return number


def normalise_predictions(df, *, source: str = "<predictions>"):
    """A clean copy: id and subject as text, gold as int, pred as int or None, correct recomputed.

    `n_choices` is taken from the table when present, else the largest gold or pred seen.
    A missing column or a row without gold is an InputError naming `source`.
    """
    import pandas as pd

    missing = [name for name in PREDICTION_REQUIRED if name not in df.columns]
    if missing:
        raise InputError(source, f"predictions table lacks column(s) {', '.join(missing)}", field=missing[0])
    out = df.copy().reset_index(drop=True)
    out["id"] = out["id"].astype(str)
    if out["id"].duplicated().any():
        duplicate = out.loc[out["id"].duplicated(), "id"].iloc[0]
        raise InputError(source, f"id {duplicate!r} appears more than once", field="id")
    out["subject"] = out["subject"].astype(str) if "subject" in out.columns else "unknown"
    golds = [choice_label(g) for g in out["gold"]]
    for row, gold in enumerate(golds, start=1):
        if gold is None:
            raise InputError(source, f"item {out['id'][row - 1]!r} has no gold answer", row=row, field="gold")
    if "n_choices" in out.columns:
        n_choices = [int(n) for n in out["n_choices"]]
    else:
        widest = max([*golds, *[choice_label(p) or 0 for p in out["pred"]]], default=0)
        n_choices = [widest] * len(out)
    out["gold"] = pd.array(golds, dtype="int64")
    out["pred"] = pd.array([choice_label(p, n) for p, n in zip(out["pred"], n_choices)], dtype="Int64")
    out["n_choices"] = n_choices
    out["correct"] = [p is not pd.NA and int(p) == g for p, g in zip(out["pred"], golds)]
    return out
