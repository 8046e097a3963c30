"""Format specs: a YAML file that maps a file layout to the canonical item, so new data needs no code.

`format=path/to/spec.yaml` (or the name of a shipped spec in distill/formats/) works wherever a
stage reads items. A spec says four things (the README's "Bring your own data layout" has an
example; docs/design.md the rationale):

    reader:  csv | tsv | json | jsonl | parquet | hf_disk | hub | auto, or a mapping
             {type, delimiter (a character or auto), encoding (auto = UTF-8 then CP949),
              files (glob inside a folder), id/config/split (hub; split also for hf_disk)}
    records: where the records are inside a JSON file (or each JSONL line), a dotted path (`passages.problems`);
             each list on the way is iterated, and a record reads its parents' fields as `../name`
    fields:  id, paragraph, question, question_plus, choices, answer, subject, source, extra
    keep_unmapped: true keeps every field no mapping used in `extra` (default false)

A field's value is a column or path (`problems.question`: a cell that holds a JSON object or a
Python literal is parsed), `{const: ...}`, `{template: "{title}: {body}"}`, `{var: position}`,
`{first: [a, b]}` (the first that says something), or `{field: x, regex: '...'}` (named group
`value`, else group 1; `.` matches newlines). Any of them may add `map: {...}`, `default`,
`unless: path` (blank when that path is true) and `type: text | int | float | flag`. Variables are
`$file` (file stem), `$filename`, `$position` (1-based record in the file) and `$row`. `names`
(e.g. `[passage, question]`) says what each records level holds, for messages.

Choices: a list field (or a JSON / Python list literal in a text cell; `item: text` picks a key
of each element), `{columns: [A, B, C, D, E], required: 4}` (blank trailing optional columns
dropped, so an empty E means four choices), or `{field: prompt, regex: '...'}` (every match is one
choice: named group `choice`, else group 1; `within: '...'` first narrows the text to its group 1).
Answer: `{field: x, as: one_based | zero_based | letter | circled | text}`. Subject: a
value as above, or `{rules: kice, passage_id: ../id}` (the KICE question-number rules, keyed on the
year in the file name; `passage_id` checks that no question is missing from a passage).

Spec faults are InputErrors naming the spec file and the key (`fields.answer.as`); data faults
name the data file, the record's row and the field, as the built-in loaders do.
"""

from __future__ import annotations

import ast
import codecs
import glob
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from distill.contracts import MCQItem
from distill.data.normalize import normalize_text
from distill.data.schema import check_id_text
from distill.errors import InputError

FORMATS_DIR = Path(__file__).resolve().parents[1] / "formats"
"""The shipped specs, one `<name>.yaml` each (distill/formats)."""

READERS = ("auto", "csv", "tsv", "json", "jsonl", "parquet", "hf_disk", "hub")
ANSWER_STYLES = ("one_based", "zero_based", "letter", "circled", "text")
VARIABLES = ("file", "filename", "position", "row")
TARGETS = ("id", "paragraph", "question", "question_plus", "choices", "answer", "subject", "source", "extra")
_VALUE_FORMS = ("field", "const", "template", "var", "first")
_VALUE_KEYS = (*_VALUE_FORMS, "regex", "map", "default", "unless", "type")
TYPES = ("text", "int", "float", "flag")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
_MISSING = object()
CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩"
LETTERS = "ABCDEFGHIJ"


def is_spec_reference(fmt: str) -> bool:
    """A `format` value that names a spec file rather than a format."""
    return str(fmt).strip().lower().endswith((".yaml", ".yml"))


def shipped_specs() -> dict[str, Path]:
    """Name → file of every spec in distill/formats."""
    return {path.stem: path for path in sorted(FORMATS_DIR.glob("*.yaml"))}


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Value:
    """Where one value comes from; `key` is its place in the spec, for error messages."""

    key: str
    form: str
    arg: Any
    regex: re.Pattern | None = None
    mapping: dict[str, Any] | None = None
    default: Any = _MISSING
    unless: str | None = None  # a path whose true value blanks this one (KICE's no_paragraph)
    type: str | None = None  # text (strictly) | int | float | flag (true when the value is, else left out)


@dataclass(frozen=True)
class Choices:
    key: str
    value: Value | None = None  # a list field, or a text field and `regex`
    columns: tuple[str, ...] = ()
    required: int = 0
    regex: re.Pattern | None = None
    item: str | None = None
    within: re.Pattern | None = None  # first narrow the text to this pattern's group 1 (the options part)


@dataclass(frozen=True)
class Reader:
    type: str = "auto"
    delimiter: str = ","
    encoding: str = "auto"
    files: str | None = None
    hub_id: str | None = None
    config: str | None = None
    split: str | None = None


@dataclass(frozen=True, eq=False)  # hashed by identity: specs are cached per file
class FormatSpec:
    path: Path
    name: str
    reader: Reader
    records: tuple[str, ...]
    fields: dict[str, Value]
    choices: Choices
    answer: Value | None
    answer_style: str
    subject: Value | None
    kice_rules: bool
    passage_id: Value | None
    extra: dict[str, Value] = field(default_factory=dict)
    keep_unmapped: bool = False
    names: tuple[str, ...] = ()  # what each level of `records` holds, for messages (passage, question)


class _SpecReader:
    """Walks the YAML with key paths, so every fault names the spec file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, message: str):
        # key "" is the document itself (a YAML list or an empty file): no field to name
        raise InputError(self.path, message if key else f"format spec {message}", field=key or None)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {type(value).__name__}")
        for name in value:
            if name not in allowed:
                self.fail(f"{key}.{name}" if key else str(name), f"unknown key; known: {', '.join(allowed)}")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be non-empty text, got {value!r}")
        return value

    def regex(self, value: Any, key: str) -> re.Pattern:
        try:
            return re.compile(self.text(value, key), re.DOTALL)
        except re.error as exc:
            self.fail(key, f"bad regular expression: {exc}")

    def value(self, raw: Any, key: str) -> Value:
        if isinstance(raw, str):
            return Value(key, "field", self.text(raw, key))
        if raw is None:
            self.fail(key, "missing mapping: name a column or path, or give const/template/var/first")
        spec = self.mapping(raw, key, _VALUE_KEYS)
        forms = [name for name in _VALUE_FORMS if name in spec]
        if len(forms) != 1:
            self.fail(key, f"give exactly one of {', '.join(_VALUE_FORMS)} (got {', '.join(forms) or 'none'})")
        form = forms[0]
        arg = spec[form]
        if form == "field":
            arg = self.text(arg, f"{key}.field")
        elif form == "template":
            arg = self.text(arg, f"{key}.template")
            for name in re.findall(r"\{([^{}]*)\}", arg):
                self._placeholder(name, f"{key}.template")
        elif form == "var":
            if arg not in VARIABLES:
                self.fail(f"{key}.var", f"unknown variable {arg!r}; known: {', '.join(VARIABLES)}")
        elif form == "first":
            if not isinstance(arg, list) or not arg:
                self.fail(f"{key}.first", "must be a non-empty list of values")
            arg = tuple(self.value(part, f"{key}.first[{i}]") for i, part in enumerate(arg))
        elif form == "const" and isinstance(arg, (dict, list)):
            self.fail(f"{key}.const", "must be a single value")
        regex = None
        if "regex" in spec:
            if form != "field":
                self.fail(f"{key}.regex", "a regex reads a field: give `field` with it")
            regex = self.regex(spec["regex"], f"{key}.regex")
        mapping = None
        if "map" in spec:
            if not isinstance(spec["map"], dict) or not spec["map"]:
                self.fail(f"{key}.map", "missing mapping: must be a non-empty mapping of value: replacement")
            mapping = {str(k): v for k, v in spec["map"].items()}
        unless = self.text(spec["unless"], f"{key}.unless") if "unless" in spec else None
        kind = spec.get("type")
        if kind is not None and kind not in TYPES:
            self.fail(f"{key}.type", f"unknown type {kind!r}; known: {', '.join(TYPES)}")
        return Value(key, form, arg, regex, mapping, spec.get("default", _MISSING), unless, kind)

    def _placeholder(self, name: str, key: str) -> None:
        name = name.strip()
        if not name:
            self.fail(key, "empty placeholder {}")
        if name.startswith("$") and name[1:] not in VARIABLES:
            self.fail(key, f"unknown variable {name!r}; known: {', '.join('$' + v for v in VARIABLES)}")


def load_spec(reference: str | Path) -> FormatSpec:
    """A spec from a YAML file, or from the name of a shipped one; any fault names file and key."""
    path = Path(reference)
    if not str(reference).lower().endswith((".yaml", ".yml")):
        shipped = shipped_specs()
        if str(reference) not in shipped:
            raise InputError(
                path, f"no shipped format spec of that name; shipped: {', '.join(shipped)}", field="format"
            )
        path = shipped[str(reference)]
    path = path.resolve() if path.exists() else path
    return _load_spec_file(path, path.stat().st_mtime_ns if path.is_file() else 0)


@cache
def _load_spec_file(path: Path, mtime_ns: int) -> FormatSpec:
    """Read once per version of the file (`mtime_ns` is only the cache key)."""
    import yaml

    if not path.is_file():
        raise InputError(path, "format spec: no such file", field="format")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "format spec is not UTF-8 text", row=1) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(
            path,
            f"format spec is not valid YAML ({getattr(exc, 'problem', None) or exc})",
            row=mark.line + 1 if mark is not None else None,
        ) from None
    spec = _SpecReader(path)
    top = spec.mapping(raw, "", ("name", "description", "reader", "records", "names", "fields", "keep_unmapped"))
    names = top.get("names") or []
    if not isinstance(names, list):
        spec.fail("names", "must be a list naming each level of records (e.g. [passage, question])")
    if "fields" not in top:
        spec.fail("fields", "missing mapping: a spec needs `fields` with at least question, choices")
    fields_raw = spec.mapping(top["fields"], "fields", TARGETS)
    for required in ("question", "choices"):
        if required not in fields_raw:
            spec.fail(f"fields.{required}", "missing mapping: every item needs one")
    values = {
        name: spec.value(fields_raw[name], f"fields.{name}")
        for name in ("id", "paragraph", "question", "question_plus", "source")
        if name in fields_raw
    }
    answer, style = _answer(spec, fields_raw.get("answer"))
    subject, kice_rules, passage_id = _subject(spec, fields_raw.get("subject"))
    extra_raw = fields_raw.get("extra") or {}
    if isinstance(extra_raw, list):
        extra_raw = {spec.text(name, f"fields.extra[{i}]"): name for i, name in enumerate(extra_raw)}
    if not isinstance(extra_raw, dict):
        spec.fail(
            "fields.extra", f"must be a mapping (name: value) or a list of names, got {type(extra_raw).__name__}"
        )
    extra = {
        str(name): spec.value(source, f"fields.extra.{name}")
        for name, source in spec.mapping(extra_raw, "fields.extra", tuple(str(k) for k in extra_raw)).items()
    }
    records = top.get("records") or ""
    reader = _reader(spec, top.get("reader", "auto"))
    if records and reader.type not in ("auto", "json", "jsonl"):
        spec.fail("records", f"a {reader.type} reader has flat rows: records applies to json and jsonl only")
    keep = top.get("keep_unmapped", False)
    if not isinstance(keep, bool):
        spec.fail("keep_unmapped", f"must be true or false, got {keep!r}")
    return FormatSpec(
        path=path,
        name=str(top.get("name") or path.stem),
        reader=reader,
        records=tuple(part for part in spec.text(records, "records").split(".") if part) if records else (),
        fields=values,
        choices=_choices(spec, fields_raw["choices"]),
        answer=answer,
        answer_style=style,
        subject=subject,
        kice_rules=kice_rules,
        passage_id=passage_id,
        extra=extra,
        keep_unmapped=keep,
        names=tuple(spec.text(name, f"names[{i}]") for i, name in enumerate(names)),
    )


def _reader(spec: _SpecReader, raw: Any) -> Reader:
    if isinstance(raw, str):
        raw = {"type": raw}
    raw = spec.mapping(raw, "reader", ("type", "delimiter", "encoding", "files", "id", "config", "split"))
    kind = str(raw.get("type", "auto")).lower()
    if kind not in READERS:
        spec.fail("reader.type", f"unknown reader {kind!r}; known: {', '.join(READERS)}")
    delimiter = raw.get("delimiter", "\t" if kind == "tsv" else ",")
    if delimiter != "auto" and (not isinstance(delimiter, str) or len(delimiter) != 1):
        spec.fail("reader.delimiter", f"must be one character or auto, got {delimiter!r}")
    encoding = str(raw.get("encoding", "auto"))
    if encoding != "auto":
        try:
            codecs.lookup(encoding)
        except LookupError:
            spec.fail("reader.encoding", f"unknown encoding {encoding!r}")
    if kind == "hub" and not raw.get("id"):
        spec.fail("reader.id", "missing mapping: a hub reader needs the dataset id (owner/name)")
    text = {
        name: (str(raw[name]) if raw.get(name) is not None else None) for name in ("files", "id", "config", "split")
    }
    return Reader(kind, delimiter, encoding, text["files"], text["id"], text["config"], text["split"])


def _choices(spec: _SpecReader, raw: Any) -> Choices:
    key = "fields.choices"
    if isinstance(raw, str) or raw is None:
        return Choices(key, spec.value(raw, key))
    raw = spec.mapping(raw, key, ("field", "columns", "required", "regex", "within", "item"))
    if ("columns" in raw) == ("field" in raw):
        spec.fail(key, "give either field (a list, or a text with regex) or columns")
    if "columns" in raw:
        columns = raw["columns"]
        if not isinstance(columns, list) or len(columns) < 2:
            spec.fail(f"{key}.columns", "must be a list of at least two columns")
        columns = tuple(spec.text(name, f"{key}.columns[{i}]") for i, name in enumerate(columns))
        required = raw.get("required", min(4, len(columns)))
        if not isinstance(required, int) or isinstance(required, bool) or not 2 <= required <= len(columns):
            spec.fail(f"{key}.required", f"must be a whole number from 2 to {len(columns)}, got {required!r}")
        for name in ("regex", "within", "item"):
            if name in raw:
                spec.fail(f"{key}.{name}", "only with field")
        return Choices(key, columns=columns, required=required)
    if "required" in raw:
        spec.fail(f"{key}.required", "only with columns")
    regex = spec.regex(raw["regex"], f"{key}.regex") if "regex" in raw else None
    item = spec.text(raw["item"], f"{key}.item") if "item" in raw else None
    within = spec.regex(raw["within"], f"{key}.within") if "within" in raw else None
    if within is not None and regex is None:
        spec.fail(f"{key}.within", "only with regex (within narrows the text the regex reads)")
    return Choices(
        key, Value(key, "field", spec.text(raw["field"], f"{key}.field")), regex=regex, item=item, within=within
    )


def _answer(spec: _SpecReader, raw: Any) -> tuple[Value | None, str]:
    key = "fields.answer"
    if raw is None:
        return None, "one_based"
    style = "one_based"
    if isinstance(raw, dict) and "as" in raw:
        style = raw["as"]
        if style not in ANSWER_STYLES:
            spec.fail(f"{key}.as", f"unknown answer style {style!r}; known: {', '.join(ANSWER_STYLES)}")
        raw = {k: v for k, v in raw.items() if k != "as"}
    return spec.value(raw, key), style


def _subject(spec: _SpecReader, raw: Any) -> tuple[Value | None, bool, Value | None]:
    key = "fields.subject"
    if isinstance(raw, dict) and "rules" in raw:
        raw = spec.mapping(raw, key, ("rules", "passage_id"))
        if raw["rules"] != "kice":
            spec.fail(f"{key}.rules", f"unknown subject rules {raw['rules']!r}; known: kice")
        passage = spec.value(raw["passage_id"], f"{key}.passage_id") if "passage_id" in raw else None
        return None, True, passage
    return (spec.value(raw, key) if raw is not None else None), False, None


# --------------------------------------------------------------------------- reading records


@dataclass
class Record:
    """One record and where it came from: the file, its 1-based row, its parents (nearest last)."""

    data: Any
    file: Path
    row: int
    position: int
    parents: tuple[Any, ...] = ()
    tabular: bool = False  # a table row (CSV, Parquet, a dataset): every mapped column must exist
    parsed: dict[int, Any] = field(default_factory=dict)  # id(cell) -> parsed literal, parsed once


def iter_records(spec: FormatSpec, dataset: str | Path) -> Iterator[Record]:
    """Every record of the dataset, file by file, as the spec's reader and records path say."""
    reader = spec.reader
    if reader.type == "hub" or str(dataset).startswith("hub:"):
        # `hub:owner/name` as the dataset names it; else the spec's reader.id
        text = str(dataset)
        yield from _hub_records(spec, (text.removeprefix("hub:") if text.startswith("hub:") else "") or reader.hub_id)
        return
    path = Path(dataset)
    if path.is_dir() and (reader.type == "hf_disk" or _is_saved_dataset(path)) and reader.type in ("auto", "hf_disk"):
        yield from _rows_records(path, _saved_rows(spec, path))
        return
    files = _dataset_files(spec, path)
    for file in files:
        kind = reader.type if reader.type not in ("auto", "hf_disk") else _EXTENSIONS.get(file.suffix.lower())
        if kind is None:
            raise InputError(
                file,
                f"cannot tell how to read {file.suffix or 'a file without extension'!r}; set reader.type in {spec.path}",
                field="format",
            )
        yield from _file_records(spec, file, kind)


def _dataset_files(spec: FormatSpec, path: Path) -> list[Path]:
    text = str(path)
    if any(ch in text for ch in "*?[") and not path.exists():
        files = sorted(Path(name) for name in glob.glob(text, recursive=True) if Path(name).is_file())
        if not files:
            raise InputError(path, "no file matches this pattern", field="dataset")
        return files
    if path.is_dir():
        pattern = spec.reader.files or "*"
        files = sorted(p for p in path.glob(pattern) if p.is_file() and not p.name.startswith("."))
        if spec.reader.files is None:  # the reader's own kind of file (any known kind for auto)
            kinds = {kind for kind in _EXTENSIONS.values() if spec.reader.type in ("auto", "hf_disk", kind)}
            files = [p for p in files if _EXTENSIONS.get(p.suffix.lower()) in kinds]
        if not files:
            raise InputError(path, f"no data file in this folder (looked for {pattern!r})", field="dataset")
        return files
    if not path.exists():
        raise InputError(path, "no such file")
    return [path]


def _file_records(spec: FormatSpec, file: Path, kind: str) -> Iterator[Record]:
    from distill.data.loaders import _decode_json_file, _read_csv
    from distill.io import iter_jsonl, load_json_text

    if kind in ("csv", "tsv"):
        # a .tsv under `auto` is tab-separated; a csv/tsv reader says its own delimiter
        delimiter = "\t" if kind == "tsv" and spec.reader.type != "tsv" else spec.reader.delimiter
        if delimiter == "auto":
            delimiter = _sniff_delimiter(file, spec.reader.encoding)
        encoding = None if spec.reader.encoding == "auto" else spec.reader.encoding
        table = _read_csv(file, delimiter=delimiter, encoding=encoding)
        for position, (row, cells) in enumerate(table.records, start=1):
            yield Record({table.columns[k]: v for k, v in cells.items()}, file, row, position, tabular=True)
    elif kind == "jsonl":
        position = 0
        for row, data in iter_jsonl(file):
            # with `records`, each line is a nested object walked like a JSON file; faults name the line
            for leaf, parents in _walk(spec, file, data, (), 0, [row - 1]) if spec.records else [(data, ())]:
                position += 1
                yield Record(leaf, file, row, position, parents)
        if not position:
            raise InputError(file, "the file has no items", row=1)
    elif kind == "json":
        text = _decode_json_file(file)
        if not text.strip():
            raise InputError(file, "the file is empty", row=1)
        try:
            root = load_json_text(text, file, None)
        except json.JSONDecodeError as exc:
            raise InputError(
                file, f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})", row=exc.lineno
            ) from None
        count = [0]
        for data, parents in _walk(spec, file, root, (), 0, count):
            count[0] += 1
            yield Record(data, file, count[0], count[0], parents)
        if not count[0]:
            raise InputError(file, "no records in the file", row=1, field=spec.records[-1] if spec.records else None)
    else:  # parquet
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(file).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise InputError(file, f"not a readable Parquet file ({type(exc).__name__}: {exc})", row=1) from None
        yield from _rows_records(file, rows)


def _walk(spec: FormatSpec, file: Path, value: Any, parents: tuple, depth: int, count: list[int], where: str = ""):
    """Leaves of the records path: lists on the way are iterated, dicts descended by key.

    `count` is how many records were yielded so far: a fault is blamed on the row the next
    record would have had (for KICE, the question number), as the built-in loader does.
    `where` names the element being read (`passage 2`, from the spec's `names`)."""
    segments = spec.records[depth:]
    if isinstance(value, list):
        label = spec.names[depth] if depth < len(spec.names) else "record"
        for index, element in enumerate(value, start=1):
            yield from _walk(spec, file, element, parents, depth, count, f"{label} {index}")
        return
    if not segments:
        yield value, parents
        return
    step = segments[0]
    child = _lookup(value, step) if isinstance(value, dict) else _MISSING
    if not isinstance(child, (list, dict)) or not child:
        fault = "is not an object" if not isinstance(value, dict) else f"{step} must be a non-empty list"
        if isinstance(value, dict) and "id" in value:
            where += f" ({value['id']})"
        raise InputError(
            file, f"{where}: {fault} (records path {'.'.join(spec.records)!r} of {spec.path.name})", count[0] + 1, step
        )
    yield from _walk(spec, file, child, (*parents, value), depth + 1, count, where)


def _sniff_delimiter(file: Path, encoding: str) -> str:
    from distill.data.loaders import decode_as, decode_text

    raw = file.read_bytes()
    text = decode_text(file, raw) if encoding == "auto" else decode_as(file, raw, encoding)
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: header.count(sep) for sep in ",\t;|"}
    best = max(counts, key=lambda sep: counts[sep])
    if not counts[best]:
        raise InputError(file, "cannot tell the delimiter: the header has no comma, tab, ';' or '|'", row=1)
    return best


def _is_saved_dataset(path: Path) -> bool:
    return any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _saved_rows(spec: FormatSpec, path: Path) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... for a bad folder
        raise InputError(path, f"not a dataset saved with save_to_disk ({exc})", row=1) from None
    return _split_rows(spec, path, loaded)


def _split_rows(spec: FormatSpec, where: Any, loaded: Any) -> list[dict[str, Any]]:
    if hasattr(loaded, "keys") and not hasattr(loaded, "features"):  # a DatasetDict
        splits = list(loaded.keys())
        split = spec.reader.split or (splits[0] if len(splits) == 1 else None)
        if split not in splits:
            raise InputError(
                where, f"the dataset has splits {', '.join(splits)}: set reader.split in {spec.path}", field="split"
            )
        loaded = loaded[split]
    return loaded.to_list()


def _hub_records(spec: FormatSpec, dataset_id: str | None) -> Iterator[Record]:
    import datasets

    reader = spec.reader
    dataset_id = dataset_id or ""
    try:
        loaded = datasets.load_dataset(dataset_id, reader.config, split=reader.split)
    except Exception as exc:  # offline, unknown id or config: datasets raises many types
        raise InputError(
            dataset_id,
            f"cannot load from the hub (config {reader.config}, split {reader.split}): {exc}",
            field="dataset",
        ) from None
    name = Path(dataset_id.rstrip("/")).name + (f"-{reader.config}" if reader.config else "")
    yield from _rows_records(Path(name), _split_rows(spec, dataset_id, loaded))


def _rows_records(where: Path, rows: list[dict[str, Any]]) -> Iterator[Record]:
    if not rows:
        raise InputError(where, "the dataset has no rows", row=1)
    for position, data in enumerate(rows, start=1):
        yield Record(data, where, position, position, tabular=True)


# --------------------------------------------------------------------------- values


def _lookup(data: Any, key: str) -> Any:
    if isinstance(data, dict):
        if key in data:
            return data[key]
        lowered = key.lower()
        for name, value in data.items():
            if str(name).lower() == lowered:
                return value
        return _MISSING
    if isinstance(data, (list, tuple)) and key.isdigit():
        index = int(key)
        return data[index] if index < len(data) else _MISSING
    return _MISSING


def _parsed_cell(record: Record, value: str, name: str) -> Any:
    """A text cell that holds a JSON object/list or a Python literal, parsed (never `eval`)."""
    if id(value) in record.parsed:
        return record.parsed[id(value)]
    from distill.io import json_nesting_fault, load_json_text, nesting_message

    text = value.strip()
    fault = json_nesting_fault(text)
    if fault is not None:
        raise InputError(record.file, f"{name} is {nesting_message()}", record.row, fault[1] or name)
    try:
        parsed = load_json_text(text, record.file, record.row, name, what=name)
    except json.JSONDecodeError as json_error:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise InputError(
                record.file, f"{name} is neither JSON ({json_error.msg}) nor a Python literal", record.row, name
            ) from None
    record.parsed[id(value)] = parsed
    return parsed


def _path_value(record: Record, path: str) -> Any:
    """The value at a dotted path; `../` steps to the parent record; a literal cell is parsed."""
    data, parents = record.data, record.parents
    while path.startswith("../"):
        if not parents:
            return _MISSING
        data, parents, path = parents[-1], parents[:-1], path[3:]
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if isinstance(data, str) and depth and data.strip():
            data = _parsed_cell(record, data, parts[depth - 1])
            if not part.isdigit() and not isinstance(data, dict):
                raise InputError(
                    record.file,
                    f"{parts[depth - 1]} must be an object with {part}, got {type(data).__name__}",
                    record.row,
                    parts[depth - 1],
                )
        data = _lookup(data, part)
        if data is _MISSING:
            return _MISSING
    return data


def _variable(record: Record, name: str) -> Any:
    return {
        "file": record.file.stem,
        "filename": record.file.name,
        "position": record.position,
        "row": record.row,
    }[name]


def _is_blank(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, str) and not value.strip()) or _is_nan(value)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def evaluate(record: Record, value: Value, *, field_name: str) -> Any:
    """The raw value a mapping gives for this record (_MISSING when absent)."""
    if value.unless is not None and _path_value(record, value.unless) not in (_MISSING, None, False, "", 0):
        return ""
    if value.form == "const":
        result = value.arg
    elif value.form == "var":
        result = _variable(record, value.arg)
    elif value.form == "template":
        result = re.sub(r"\{([^{}]*)\}", lambda m: _placeholder_text(record, m.group(1).strip()), value.arg)
    elif value.form == "first":
        result = next(
            (r for part in value.arg if not _is_blank(r := evaluate(record, part, field_name=field_name))), _MISSING
        )
    else:
        result = _path_value(record, value.arg)
        if value.regex is not None and not _is_blank(result):
            match = value.regex.search(str(result))
            if match is None:
                if value.default is not _MISSING:
                    return value.default
                raise InputError(
                    record.file,
                    f"the pattern of {value.key} does not match {value.arg!r} ({str(result)[:60]!r}...)",
                    record.row,
                    field_name,
                )
            groups = match.groupdict()
            result = groups["value"] if "value" in groups else (match.group(1) if match.re.groups else match.group(0))
    if value.mapping is not None and not _is_blank(result):
        key = str(result).strip()
        if key in value.mapping:
            result = value.mapping[key]
        elif value.default is not _MISSING:
            result = value.default
        else:
            known = ", ".join(list(value.mapping)[:8])
            raise InputError(
                record.file, f"{key!r} is not in the map of {value.key} (it has {known})", record.row, field_name
            )
    if _is_blank(result) and value.default is not _MISSING:
        result = value.default
    return _typed(record, value, result, field_name)


def _typed(record: Record, value: Value, result: Any, field_name: str) -> Any:
    if value.type is None or (value.type != "flag" and _is_blank(result)):
        return result
    if value.type == "flag":
        return True if result not in (_MISSING, None, False, "", 0) and not _is_nan(result) else _MISSING
    if value.type == "text":
        if not isinstance(result, str):
            raise InputError(
                record.file, f"{field_name} must be text, got {type(result).__name__}", record.row, field_name
            )
        return result
    try:
        number = float(str(result).strip().rstrip("%"))
    except ValueError:
        raise InputError(record.file, f"{result!r} is not a number ({value.key})", record.row, field_name) from None
    if value.type == "float":
        return number
    if not number.is_integer():
        raise InputError(record.file, f"{result!r} is not a whole number ({value.key})", record.row, field_name)
    return int(number)


def _placeholder_text(record: Record, name: str) -> str:
    result = _variable(record, name[1:]) if name.startswith("$") else _path_value(record, name)
    return "" if _is_blank(result) else str(result)


# --------------------------------------------------------------------------- items


def text_of(record: Record, raw: Any, name: str, *, numbers: bool = True) -> str:
    """Normalised text of a text field: text, a list of texts joined by lines, or (`numbers`:
    ids, subjects, sources) a number. A number as a passage or question is a mapping fault."""
    if _is_blank(raw):
        return ""
    if isinstance(raw, bool) or (not numbers and isinstance(raw, (int, float))):
        raise InputError(record.file, f"{name} must be text, got {type(raw).__name__}", record.row, name)
    if isinstance(raw, (str, int, float)):
        return normalize_text(str(raw))
    if isinstance(raw, (list, tuple)) and all(isinstance(part, str) for part in raw):
        return normalize_text("\n".join(raw))
    raise InputError(record.file, f"{name} must be text, got {type(raw).__name__}", record.row, name)


def _choices_of(spec: FormatSpec, record: Record) -> Any:
    choices = spec.choices
    if choices.columns:
        values = []
        for index, column in enumerate(choices.columns):
            cell = _path_value(record, column)
            if cell is _MISSING:
                if index < choices.required:
                    raise InputError(record.file, "missing column (a required choice)", record.row, column)
                continue
            values.append("" if _is_blank(cell) else cell)
        while len(values) > choices.required and not normalize_text(str(values[-1])):
            values.pop()
        return values
    raw = evaluate(record, choices.value, field_name="choices")
    if raw is _MISSING:
        raise InputError(record.file, f"missing field {choices.value.arg!r}", record.row, "choices")
    if choices.regex is not None:
        text = "" if _is_blank(raw) else str(raw)
        if choices.within is not None:
            region = choices.within.search(text)
            if region is None:
                raise InputError(
                    record.file, f"the pattern of {choices.key}.within does not match", record.row, "choices"
                )
            text = region.group(1) if region.re.groups else region.group(0)
        found = []
        for match in choices.regex.finditer(text):
            groups = match.groupdict()
            found.append(
                groups["choice"] if "choice" in groups else (match.group(1) if match.re.groups else match.group(0))
            )
        if not found:
            raise InputError(record.file, f"the pattern of {choices.key}.regex found no choice", record.row, "choices")
        raw = found
    elif isinstance(raw, str) and raw.lstrip().startswith("["):
        raw = _parsed_cell(record, raw, "choices")
    if hasattr(raw, "tolist"):  # a numpy array from a Parquet / datasets column
        raw = raw.tolist()
    if choices.item is not None and isinstance(raw, (list, tuple)):
        raw = [_lookup(element, choices.item) if isinstance(element, dict) else element for element in raw]
        if any(element is _MISSING for element in raw):
            raise InputError(record.file, f"a choice has no {choices.item!r}", record.row, "choices")
    return raw


def answer_number(record: Record, raw: Any, style: str, choices: list[Any]) -> Any:
    """The answer as the 1-based number (or raw text) `validate_item_fields` checks."""
    if _is_blank(raw) and not _is_nan(raw):
        return None
    if style == "one_based":
        return raw
    text = str(raw).strip()
    if style == "zero_based":
        if isinstance(raw, float) and raw.is_integer():
            text = str(int(raw))
        if not text.isdigit():
            raise InputError(record.file, f"answer {text!r} is not a 0-based number", record.row, "answer")
        return int(text) + 1
    if style == "letter":
        letter = text.strip("()[]. ").upper()
        if len(letter) != 1 or letter not in LETTERS:
            raise InputError(record.file, f"answer {text!r} is not a letter A-J", record.row, "answer")
        return LETTERS.index(letter) + 1
    if style == "circled":
        if len(text) != 1 or text not in CIRCLED:
            raise InputError(record.file, f"answer {text!r} is not a circled number ①-⑩", record.row, "answer")
        return CIRCLED.index(text) + 1
    wanted = " ".join(normalize_text(text).split())
    for position, choice in enumerate(choices, start=1):
        if isinstance(choice, str) and " ".join(normalize_text(choice).split()) == wanted:
            return position
    raise InputError(record.file, f"answer {text[:40]!r} is not the text of any choice", record.row, "answer")


def _json_safe(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    try:
        return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)


def spec_items(spec: FormatSpec, dataset: str | Path, checks, *, rules_required: bool):
    """Items and their rows (for duplicate-id messages) from every record of the dataset."""
    from distill.data.loaders import _checked_choices

    items, rows = [], []
    kice = _KiceRules(spec, rules_required)
    for record in iter_records(spec, dataset):
        if record.tabular and record.position == 1:
            _check_columns(spec, record)
        item_id = _item_id(spec, record)
        question = text_of(record, _required(spec, record, "question"), "question", numbers=False)
        if not question:
            raise InputError(record.file, "question is empty", record.row, "question")
        raw_choices = _choices_of(spec, record)  # normalised and checked by _checked_choices
        raw_answer = evaluate(record, spec.answer, field_name="answer") if spec.answer is not None else None
        listed = list(raw_choices) if isinstance(raw_choices, (list, tuple)) else []
        answer = answer_number(record, raw_answer, spec.answer_style, listed)
        choices, answer, flags = _checked_choices(record.file, record.row, item_id, raw_choices, answer, checks)
        subject = ""
        if spec.kice_rules:
            subject = kice.subject(record)
        elif spec.subject is not None:
            subject = text_of(record, evaluate(record, spec.subject, field_name="subject"), "subject")
        source_value = spec.fields.get("source")
        source = text_of(record, evaluate(record, source_value, field_name="source"), "source") if source_value else ""
        extra = _extra(spec, record)
        extra.update(flags)
        items.append(
            MCQItem(
                id=item_id,
                paragraph=_optional_text(spec, record, "paragraph"),
                question=question,
                choices=choices,
                answer=answer,
                question_plus=_optional_text(spec, record, "question_plus"),
                subject=subject or "unknown",
                source=source or record.file.name,
                extra=extra,
            )
        )
        rows.append(record.row)
    return items, rows


class _KiceRules:
    """`subject: {rules: kice}`: subjects by question number (the record's position in its file)
    in the exam layout of the year in the file name. Counting makes one missing question shift
    every later subject, so with `passage_id` each passage whose id ends in a range
    (`2019_11_KICE_18-21`) is checked to hold every question of it."""

    def __init__(self, spec: FormatSpec, rules_required: bool):
        self.spec = spec
        self.rules_required = rules_required
        self.passages: dict[Path, list[int]] = {}  # file -> ids of the passages seen, in order

    def subject(self, record: Record) -> str:
        from distill.data.loaders import _check_passage_range, passage_range
        from distill.data.subjects import exam_year_from_name, kice_layout, kice_subject

        year = exam_year_from_name(record.file.name)
        layout = kice_layout(year) if year is not None else None
        if layout is None and self.rules_required:
            raise InputError(
                record.file,
                "no KICE subject rule for this file: its name must carry the exam year, 2015 or later "
                "(e.g. 2019_11_KICE.json), or pass --subject_map",
                field="subject",
            )
        seen = self.passages.setdefault(record.file, [])
        if self.spec.passage_id is not None and record.parents and id(record.parents[-1]) not in seen:
            seen.append(id(record.parents[-1]))
            passage_key = evaluate(record, self.spec.passage_id, field_name="id")
            if passage_range(passage_key) is not None:
                size = len(_lookup(record.parents[-1], self.spec.records[-1]) or [])
                _check_passage_range(record.file, len(seen), passage_key, record.position, size)
        if layout is None:
            return ""
        subject = kice_subject(year, record.position)
        if subject is None:
            raise InputError(
                record.file,
                f"question {record.position} is past the {layout.n_questions} questions of the {year} exam layout",
                record.row,
                self.spec.records[-1] if self.spec.records else "subject",
            )
        return subject


def _required(spec: FormatSpec, record: Record, name: str) -> Any:
    raw = evaluate(record, spec.fields[name], field_name=name)
    if raw is _MISSING:
        source = spec.fields[name].arg if spec.fields[name].form == "field" else spec.fields[name].key
        raise InputError(record.file, f"missing field {source!r} ({name} comes from it)", record.row, name)
    return raw


def _optional_text(spec: FormatSpec, record: Record, name: str) -> str:
    if name not in spec.fields:
        return ""
    return text_of(record, evaluate(record, spec.fields[name], field_name=name), name, numbers=False)


def _item_id(spec: FormatSpec, record: Record) -> str:
    if "id" not in spec.fields:
        return f"{record.file.stem}-{record.position}"
    raw = _required(spec, record, "id")
    item_id = normalize_text(check_id_text(record.file, record.row, "" if _is_blank(raw) else str(raw)))
    if not item_id:
        raise InputError(record.file, "id is empty", record.row, "id")
    return item_id


def _extra(spec: FormatSpec, record: Record) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for name, value in spec.extra.items():
        raw = evaluate(record, value, field_name=name)
        if not _is_blank(raw):
            extra[name] = _json_safe(raw)
    if not spec.keep_unmapped or not isinstance(record.data, dict):
        return extra
    used = _read_columns(spec)
    for key, value in record.data.items():
        lowered = str(key).lower()
        if lowered in used:
            # a parsed cell some mapping read into (competition's `problems`): keep its other keys
            parsed = record.parsed.get(id(value))
            if isinstance(parsed, dict):
                read = _read_subkeys(spec, str(key))
                extra.update({str(k): _json_safe(v) for k, v in parsed.items() if str(k).lower() not in read})
            continue
        if lowered == "extra" and isinstance(value, dict):
            extra.update({str(k): _json_safe(v) for k, v in value.items()})
        elif not _is_blank(value):
            extra[str(key)] = _json_safe(value)
    return extra


def _read_subkeys(spec: FormatSpec, column: str) -> set[str]:
    """Keys inside a parsed cell that some mapping reads (`problems.question` → question)."""
    keys = set()
    for value in _all_values(spec):
        if value.form == "field":
            head, _, rest = value.arg.partition(".")
            if head.lower() == column.lower() and rest:
                keys.add(rest.split(".")[0].lower())
    return keys


@cache
def _read_columns(spec: FormatSpec) -> frozenset[str]:
    """Top-level names any mapping reads (lower-cased): what `keep_unmapped` leaves out of extra."""
    paths = []
    for value in _all_values(spec):
        if value.form == "field":
            paths.append(value.arg)
        elif value.form == "template":
            paths += [
                name.strip() for name in re.findall(r"\{([^{}]*)\}", value.arg) if not name.strip().startswith("$")
            ]
        if value.unless:
            paths.append(value.unless)
    return frozenset(path.split(".")[0].lower() for path in paths if not path.startswith("../"))


def _all_values(spec: FormatSpec) -> Iterator[Value]:
    pending = [*spec.fields.values(), *spec.extra.values(), spec.answer, spec.subject, spec.choices.value]
    pending += [spec.passage_id, *(Value("choices", "field", c) for c in spec.choices.columns)]
    while pending:
        value = pending.pop()
        if value is None:
            continue
        if value.form == "first":
            pending.extend(value.arg)
        else:
            yield value


def _needed_columns(spec: FormatSpec) -> list[tuple[str, str]]:
    """(spec key, column) for every column a record must have: mappings without a default or an
    alternative (`first`), and the required choice columns."""
    needed = []
    values = [*spec.fields.values(), *spec.extra.values(), spec.answer, spec.subject, spec.choices.value]
    for value in values:
        if value is None or value.form != "field" or value.default is not _MISSING or value.arg.startswith("../"):
            continue
        needed.append((value.key, value.arg.split(".")[0]))
    needed += [(spec.choices.key, column) for column in spec.choices.columns[: spec.choices.required]]
    return needed


def _check_columns(spec: FormatSpec, record: Record) -> None:
    """A column a mapping names but the table lacks is a header fault (a typo in the spec, or
    the wrong file), not an empty value on every row."""
    for key, column in _needed_columns(spec):
        if _lookup(record.data, column) is _MISSING:
            columns = ", ".join(map(str, record.data))[:200]
            raise InputError(
                record.file, f"missing column (header has: {columns}); {key} in {spec.path.name} reads it", 1, column
            )


_ITEM_KEYS = ("fields.id", "fields.question", "fields.choices")
"""The spec keys whose value every record must have (a missing answer is "no gold", not a fault)."""


def fit_report(spec: FormatSpec, dataset: str | Path) -> tuple[float, str]:
    """How far a spec is from a dataset, and why: the share of the columns it needs that the
    first record lacks (0: all present; 2: it cannot even read a record)."""
    try:
        first = next(iter_records(spec, dataset))
    except InputError as exc:
        return 2.0, exc.message
    except StopIteration:
        return 2.0, "no records"
    if not isinstance(first.data, dict):
        return 2.0, f"a record is {type(first.data).__name__}, not an object"
    needed_columns = _needed_columns(spec)
    if not first.tabular:  # a JSON record may leave out any key but those every item needs
        needed_columns = [(key, column) for key, column in needed_columns if key in _ITEM_KEYS]
    needed = list(dict.fromkeys(column for _, column in needed_columns))
    missing = [column for column in needed if _lookup(first.data, column) is _MISSING]
    if missing:
        return len(missing) / len(needed), "no column " + ", ".join(repr(name) for name in missing)
    return 0.0, "its columns are all present"
