"""Command-line plumbing shared by the entry points.

A stage config is a dataclass whose fields carry `metadata={"help": ...}`. `parse_config`
builds an argparse parser from it, so the help text of every parameter is written once, next
to the field, and `--help` never drifts from the code. `main_guard` turns a DistillError into
one line on stderr and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Callable, TypeVar

from distill.errors import DistillError

C = TypeVar("C")

_NONE_WORDS = {"", "none", "null"}


def _field_type(cls, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(field.name, str)


def _converter(tp: Any) -> Callable[[str], Any]:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1
    base = args[0] if optional else tp

    def convert(text: str) -> Any:
        if optional and text.strip().lower() in _NONE_WORDS:
            return None
        if base is bool:
            low = text.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off"}:
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if typing.get_origin(base) in (list, tuple):
            return [part.strip() for part in text.split(",") if part.strip()]
        return text

    return convert


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description or (cls.__doc__ or "").strip().splitlines()[0])
    for field in dataclasses.fields(cls):
        if not field.init or field.metadata.get("cli") is False:
            continue
        tp = _field_type(cls, field)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        else:
            default = None
        help_text = field.metadata.get("help", "")
        parser.add_argument(
            f"--{field.name}",
            dest=field.name,
            type=_converter(tp),
            default=default,
            help=f"{help_text} (default: {default!r})",
        )
    return parser


def parse_config(cls: type[C], argv: list[str] | None = None, description: str | None = None) -> C:
    args = build_parser(cls, description).parse_args(argv)
    return cls(**vars(args))


def main_guard(main: Callable[[], Any]) -> None:
    """Run `main`; report user errors as one line and exit 2."""
    try:
        main()
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
