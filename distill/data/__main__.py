"""`python -m distill.data convert|check`: turn any known MCQ format into canonical JSONL.

    python -m distill.data convert --dataset train.csv --format competition --output train.jsonl
    python -m distill.data check --dataset 2019_11_KICE.json

`convert` loads, validates and writes the canonical JSONL atomically (nothing is written when
any row is bad); `check` only validates. Both end with a one-screen summary. A bad file is
one line on stderr, `error: <file>, row N, field 'x': message`, and exit code 2.
"""

from __future__ import annotations

import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from distill.cli import main_guard, parse_config
from distill.errors import ConfigError

COMMANDS = ("convert", "check")
MAX_SUBJECT_LINES = 20


@dataclass
class CheckConfig:
    """Validate an MCQ file and print what it holds."""

    dataset: str = field(default="", metadata={"help": "The MCQ file to read."})
    format: str = field(
        default="auto",
        metadata={"help": "competition, kice, kmmlu, jsonl, or auto (by extension and CSV header)."},
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


def _usage() -> str:
    return (
        "usage: python -m distill.data {convert,check} --dataset PATH [--format FMT] "
        "[--subject_map MAP] [--output OUT.jsonl]\n"
        "  convert  load, validate and write canonical JSONL\n"
        "  check    load and validate only\n"
        "Run 'python -m distill.data convert --help' for every option."
    )


def summarize(items, *, dataset: str, fmt: str, output: str | None, digest: str) -> str:
    """A one-screen summary: counts, subjects, answers, question_plus."""
    subjects = Counter(item.subject for item in items)
    n_choices = Counter(item.n_choices for item in items)
    with_answer = sum(item.answer is not None for item in items)
    with_plus = sum(bool(item.question_plus) for item in items)
    duplicates = sum("duplicate_choices" in item.extra for item in items)
    lines = [
        f"{len(items)} items from {dataset} (format {fmt})",
        f"  with answer:        {with_answer}",
        f"  with question_plus: {with_plus}",
        "  choices:            " + ", ".join(f"{k}: {v}" for k, v in sorted(n_choices.items())),
    ]
    if duplicates:
        lines.append(f"  duplicate choices:  {duplicates} (kept, flagged in extra.duplicate_choices)")
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
    from distill.data.loaders import detect_format, items_digest, load_items, write_items_jsonl

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command = argv.pop(0)
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    config_class = ConvertConfig if command == "convert" else CheckConfig
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
    fmt = cfg.format if cfg.format != "auto" else f"auto: {detect_format(cfg.dataset)}"
    print(summarize(items, dataset=cfg.dataset, fmt=fmt, output=output, digest=items_digest(items)))


if __name__ == "__main__":
    main_guard(main)
