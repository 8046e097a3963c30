"""Command-line plumbing: config dataclass ⇄ argparse ⇄ YAML run configs.

A stage config is a dataclass whose fields carry `metadata={"help": ...}`. `build_parser` makes
an argparse parser from it, so the help text of every parameter is written once, next to the
field, and `--help`, MLproject and the README tables never drift from the code.

A value comes, lowest first, from the field's default, a `--config run.yaml` file (a mapping of
field names; unknown keys are an error that names them), then the command line. Under
`mlflow run` every MLproject parameter is on the command line, so there (`--from-mlproject`) a
value equal to its default does not override the config file. `main_guard` turns a DistillError
into one line on stderr and exit code 2 instead of a traceback.

Unset values have names. A field whose default is None (or an empty list) says in its metadata
what unset means (`unset_field`: "all", "bundled", "auto", "none"); that word is its default in
MLproject, `--help` and the README, the command line and a config file accept it (and an empty
value, and none/null) as unset, and its MLflow param shows it (`distill.tracking.config_params`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from distill.errors import ConfigError, DistillError

C = TypeVar("C")

NONE_WORDS = frozenset({"", "none", "null"})
"""Text that means "unset" for an optional field (MLproject passes an empty value as ''), besides
the field's own unset word."""
UNSET = "unset"
"""Field metadata: the word that names the field's unset value (`unset_field`)."""
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def unset_field(word: str, help: str, default: Any = None, **metadata: Any) -> Any:
    """A dataclass field whose unset value (`default`, None or an empty list) is called `word`
    everywhere a user sees it: params, MLproject, --help, the README."""
    extra = {"help": help, UNSET: word, **metadata}
    if isinstance(default, list):
        return dataclasses.field(default_factory=list, metadata=extra)
    return dataclasses.field(default=default, metadata=extra)


def unset_word(field: dataclasses.Field) -> str | None:
    return field.metadata.get(UNSET)


def blank_to_none(value: Any) -> Any:
    """An empty or whitespace-only string means "unset" (None); anything else is kept."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def switch(value: Any, name: str) -> bool:
    """An on/off value (bool, 1/0, true/false, yes/no, on/off) as a bool; a ConfigError naming `name` otherwise."""
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}: expected on/off (true/false), got {value!r}")


def field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls).get(name, str)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = origin in (typing.Union, types.UnionType) and len(args) == 1 and len(typing.get_args(tp)) == 2
    return (args[0] if optional else tp), optional


def converter(tp: Any, unset: str | None = None) -> Callable[[str], Any]:
    """A function from command-line text to a value of type `tp` (Optional, bool, int, float, list, str).

    `unset`: the field's word for its unset value; it (like an empty value, none or null) gives
    None for an optional field and [] for a list."""
    base, optional = _unwrap_optional(tp)
    unset_words = NONE_WORDS | ({unset.lower()} if unset else set())

    def convert(text: str) -> Any:
        if optional and text.strip().lower() in unset_words:
            return None
        if typing.get_origin(base) in (list, tuple) and text.strip().lower() in unset_words:
            return []
        if base is bool:
            low = text.strip().lower()
            if low in TRUE_WORDS:
                return True
            if low in FALSE_WORDS:
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


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields a user sets: init fields not marked `metadata={"cli": False}`."""
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli") is not False]


def field_converter(cls: type, name: str) -> Callable[[str], Any]:
    """`converter` for field `name` of `cls`, with the field's unset word."""
    found = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    return converter(field_type(cls, name), unset_word(found) if found is not None else None)


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def default_text(value: Any, unset: str | None = None) -> str:
    """A default as it is written on a command line and in MLproject: an unset one (None, an
    empty list) as the field's `unset` word (else "none", which every optional field reads as
    unset), numbers as params show them. Never '': `mlflow run` would log that as a param."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return unset or "none"
    if isinstance(value, float):
        from distill.tracking import param_text

        return param_text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def field_default_text(field: dataclasses.Field) -> str:
    """`default_text` of a field's default, with its unset word."""
    return default_text(field_default(field), unset_word(field))


def build_parser(cls: type, description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser for `cls`; a flag not given is absent from the parsed namespace."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or (cls.__doc__ or "").strip().splitlines()[0],
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        dest="__config",
        metavar="FILE",
        help="A YAML run config (field: value); command-line values override it. 'none': no file.",
    )
    parser.add_argument("--from-mlproject", dest="__from_mlproject", action="store_true", help=argparse.SUPPRESS)
    for field in cli_fields(cls):
        parser.add_argument(
            f"--{field.name}",
            dest=field.name,
            type=converter(field_type(cls, field.name), unset_word(field)),
            help=f"{field.metadata.get('help', '')} (default: {field_default_text(field) or 'unset'})",
        )
    return parser


def _coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """A YAML value for field `name`: text goes through the command-line converter, numbers are checked."""
    tp = field_type(cls, name)
    base, optional = _unwrap_optional(tp)
    if value is None:
        return None
    try:
        if isinstance(value, str):
            return field_converter(cls, name)(value)
        if base is bool:
            return switch(value, name)
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if typing.get_origin(base) in (list, tuple) and isinstance(value, list):
            return [str(v) for v in value]
        if typing.get_origin(base) is dict and isinstance(value, dict):
            return value
        if base is str and isinstance(value, (int, float)):
            return str(value)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name}: {exc}") from None
    raise ConfigError(f"{source}: {name}: expected {getattr(base, '__name__', base)}, got {value!r}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML run config as a mapping; a ConfigError naming the file otherwise."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run config is a mapping of parameter names to values")
    return data


def values_from_mapping(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Field values from a run config mapping; unknown keys are one error that names them all."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}")
    return {name: _coerce(cls, name, value, source) for name, value in data.items()}


def parse_config(
    cls: type[C], argv: list[str] | None = None, description: str | None = None, prog: str | None = None
) -> C:
    """A config of type `cls` from defaults, an optional `--config` file and the command line."""
    parsed = vars(build_parser(cls, description, prog).parse_args(argv))
    config_path = parsed.pop("__config", None)
    if config_path is not None and str(config_path).strip().lower() in NONE_WORDS:
        config_path = None  # MLproject's `config` parameter left at its default
    from_mlproject = parsed.pop("__from_mlproject", False)
    values: dict[str, Any] = {}
    if config_path:
        values.update(values_from_mapping(cls, read_config_file(config_path), str(config_path)))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in parsed.items():
        if from_mlproject and config_path and name in values:
            default = field_converter(cls, name)(field_default_text(fields[name]))
            if value == default:
                continue  # MLproject passed its default; the config file's value stands
        values[name] = value
    return cls(**values)


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain mapping that `--config` reads back to the same config."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


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
