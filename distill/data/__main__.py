"""`python -m distill.data convert|check|preview`: turn any known MCQ format into canonical JSONL.

    python -m distill.data convert --dataset train.csv --format competition --output train.jsonl
    python -m distill.data check --dataset 2019_11_KICE.json
    python -m distill data preview --dataset exam.csv --format my_layout.yaml --n 2

`convert` loads, validates and writes the canonical JSONL atomically (nothing is written when
any row is bad); `check` only validates. Both end with a one-screen summary. `preview` adds the
first items rendered exactly as evaluate sends them to the model, to check a new format spec. A bad file is
one line on stderr, `error: <file>, row N, field 'x': message`, and exit code 2.
"""

from __future__ import annotations

import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from distill.cli import main_guard, parse_config
from distill.errors import ConfigError

COMMANDS = ("convert", "check", "preview")
MAX_SUBJECT_LINES = 20


@dataclass
class CheckConfig:
    """Validate an MCQ file and print what it holds."""

    dataset: str = field(default="", metadata={"help": "The MCQ file to read."})
    format: str = field(
        default="auto",
        metadata={
            "help": "competition, kice, kmmlu, jsonl, another shipped spec (csat_qa, haerae), a format spec "
            "file (.yaml, see 'Bring your own data layout'), or auto (by extension and CSV header, else "
            "the first shipped spec that fits)."
        },
    )
    subject_map: str | None = field(
        default=None,
        metadata={
            "help": "Optional CSV (key,subject) or JSON/YAML object mapping item ids or category "
            "labels to subjects; ids win over categories."
        },
    )
    require_answer: bool = field(default=False, metadata={"help": "Treat an item without a gold answer as an error."})
    allow_duplicate_choices: bool = field(
        default=False,
        metadata={
            "help": "Keep items whose choices repeat a text (flagged in extra.duplicate_choices) instead of failing."
        },
    )


@dataclass
class ConvertConfig(CheckConfig):
    """Convert an MCQ file to canonical JSONL (written atomically)."""

    output: str = field(default="", metadata={"help": "Where to write the canonical JSONL."})


@dataclass
class PreviewConfig(CheckConfig):
    """Show what a dataset holds and its first items as the model will see them."""

    n: int = field(default=2, metadata={"help": "How many items to render (0: the summary only)."})
    scoring: str = field(
        default="logits",
        metadata={
            "help": "Render as evaluate's scoring sends it: logits (the answer line only) or generate "
            "(reasoning, then the answer line)."
        },
    )


def _usage() -> str:
    return (
        "usage: python -m distill.data {convert,check,preview} --dataset PATH [--format FMT] "
        "[--subject_map MAP] [--output OUT.jsonl] [--n N]\n"
        "  convert  load, validate and write canonical JSONL\n"
        "  check    load and validate only\n"
        "  preview  the summary and the first N items rendered as the model sees them\n"
        "Run 'python -m distill.data convert --help' for every option."
    )


def summarize(items, *, dataset: str, fmt: str, output: str | None, digest: str) -> str:
    """A one-screen summary: counts, subjects, answers, question_plus."""
    subjects = Counter(item.subject for item in items)
    n_choices = Counter(item.n_choices for item in items)
    with_answer = sum(item.answer is not None for item in items)
    with_plus = sum(bool(item.question_plus) for item in items)
    duplicates = sum("duplicate_choices" in item.extra for item in items)
    answers = Counter(item.answer for item in items if item.answer is not None)
    lines = [
        f"{len(items)} items from {dataset} (format {fmt})",
        f"  with answer:        {with_answer}",
        "  answers:            " + (", ".join(f"{k}: {v}" for k, v in sorted(answers.items())) or "none"),
        f"  with question_plus: {with_plus}",
        "  choices:            " + ", ".join(f"{k}: {v}" for k, v in sorted(n_choices.items())),
    ]
    if duplicates:
        lines.append(f"  duplicate choices:  {duplicates} (kept, flagged in extra.duplicate_choices)")
    extra_keys = Counter(key for item in items for key in item.extra if key != "duplicate_choices")
    if extra_keys:
        shown = ", ".join(f"{key}: {count}" for key, count in extra_keys.most_common(MAX_SUBJECT_LINES))
        lines.append(f"  extra fields:       {shown}")
    lines.append(f"  digest (sha256):    {digest}")
    if output:
        lines.append(f"  written:            {output}")
    lines.append(f"  subjects ({len(subjects)}):")
    width = max((_display_width(name) for name in subjects), default=0)
    for name, count in subjects.most_common(MAX_SUBJECT_LINES):
        padding = " " * (width - _display_width(name))
        lines.append(f"    {name}{padding}  {count:>6}")
    if len(subjects) > MAX_SUBJECT_LINES:
        lines.append(f"    ... {len(subjects) - MAX_SUBJECT_LINES} more")
    return "\n".join(lines)


def _display_width(text: str) -> int:
    """Terminal columns: Hangul and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def main(argv: list[str] | None = None) -> None:
    from distill.data.loaders import detect_format_name, items_digest, load_items, write_items_jsonl

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command = argv.pop(0)
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    config_class = {"convert": ConvertConfig, "check": CheckConfig, "preview": PreviewConfig}[command]
    cfg = parse_config(config_class, argv, prog=f"python -m distill data {command}")
    if not cfg.dataset:
        raise ConfigError("pass --dataset PATH")
    if command == "convert" and not cfg.output:
        raise ConfigError("pass --output OUT.jsonl")

    items = load_items(
        cfg.dataset,
        cfg.format,
        cfg.subject_map,
        require_answer=cfg.require_answer,
        allow_duplicate_choices=cfg.allow_duplicate_choices,
    )
    output = None
    if command == "convert":
        output = str(write_items_jsonl(cfg.output, items))
    fmt = cfg.format if cfg.format != "auto" else f"auto: {detect_format_name(cfg.dataset)}"
    print(summarize(items, dataset=cfg.dataset, fmt=fmt, output=output, digest=items_digest(items)))
    if command == "preview":
        print(render_preview(items, n=cfg.n, scoring=cfg.scoring))


def render_preview(items, *, n: int, scoring: str) -> str:
    """The first `n` items as evaluate sends them: the chat messages of the answer template
    (distill/data/prompts.py), logits scoring's direct prompt or generate's reasoning prompt; the
    model's chat template then wraps them (and logits scoring appends the answer prefix)."""
    from distill.data.prompts import render_messages

    if scoring not in ("logits", "generate"):
        raise ConfigError(f"scoring must be logits or generate, got {scoring!r}")
    if n < 0:
        raise ConfigError(f"n must be 0 or more, got {n}")
    blocks = []
    for item in items[:n]:
        lines = [f"--- item {item.id} · subject {item.subject} · gold answer {item.answer} ---"]
        for message in render_messages(item, reasoning=scoring == "generate"):
            lines += [f"[{message['role']}]", message["content"]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


if __name__ == "__main__":
    main_guard(main)
