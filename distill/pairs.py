"""Preference pairs: load them from wherever they live, check them, pick the ones a run trains on.

A pair (docs/design.md, "Data flow and contracts") is one JSON object:
`id, seed_id, problem, prompt, chosen, rejected, gold, rejected_choice, subject, transfer,
logic_structure, error_type, prompt_version`.

Required here: `id, prompt, chosen, rejected, gold, rejected_choice, subject`. `prompt` is a
list of chat messages (`[{"role": ..., "content": ...}]`) or a plain string, which is taken as
the user message so the chat template (and its thinking decision) still applies. `problem`,
when present, is the canonical MCQ item the pair was written for: it bounds `gold` and
`rejected_choice` by its number of choices and gives the dev split its MCQ metrics.
`chosen` and `rejected` end with the answer line `정답: N` (`format_final_answer`), N being
`gold` and `rejected_choice`: the training stage places the reasoning before that line
(inside a think block when thinking is on), so the line must be there and must agree.

Sources: a `.jsonl` file; a directory holding `pairs.jsonl` or an HF `save_to_disk` dataset;
an MLflow artifact URI (`runs:/<run_id>/pairs`, `mlflow-artifacts:/...`, `models:/...`), which
is downloaded first and then read as a file or directory.

Selection (both seeded, both stratified by subject): the dev split is taken first from all
pairs, grouped by `seed_id` so that pairs written from the same seed problem never sit on
both sides; `n_pairs` then subsamples the remaining training pairs. The dev split therefore
does not move when a sweep varies `n_pairs`, and dev metrics stay comparable across trials.
"""

from __future__ import annotations

import random
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.contracts import PreferencePair, pair_from_dict
from distill.errors import ConfigError, InputError

REQUIRED_FIELDS = ("id", "prompt", "chosen", "rejected", "gold", "rejected_choice", "subject")
META_FIELDS = ("seed_id", "transfer", "logic_structure", "error_type", "prompt_version")

_URI = re.compile(r"^(runs|models|mlflow-artifacts|dbfs|s3|gs|wasbs|hdfs|https?):/", re.IGNORECASE)


@dataclass(frozen=True)
class PairSet:
    """The pairs of one source, and where they came from (a local file or folder)."""

    pairs: list[PreferencePair]
    path: Path
    """The local file or folder actually read (after any download)."""
    source: str
    """What the user gave (path or URI), for lineage."""
    digest: str = ""
    """`tracking.rows_digest` of the rows as read (the JSON objects, in order): the digest the
    run that wrote them recorded (`tracking.record_output`), so producer and consumer agree."""

    @property
    def lineage_source(self) -> str:
        """Where the pairs can be found again: the MLflow URI given, else the file read."""
        return self.source if is_mlflow_uri(self.source) else str(self.path)


# ---------------------------------------------------------------- answer lines


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer line): everything before the final `정답: N` line, and that line."""
    stripped = text.strip()
    cut = stripped.rfind("\n")
    reasoning, last = (stripped[:cut], stripped[cut + 1 :]) if cut >= 0 else ("", stripped)
    return reasoning.strip(), last.strip()


# ---------------------------------------------------------------- validation


def validate_pairs(path, rows: Iterable[tuple[int, dict[str, Any]]]) -> list[PreferencePair]:
    """Check (row number, raw dict) rows; ids must be unique."""
    pairs: list[PreferencePair] = []
    first_row: dict[str, int] = {}
    for row, data in rows:
        if not isinstance(data, dict):
            raise InputError(path, "each pair must be a JSON object", row)
        pair = pair_from_dict(path, row, data)
        if pair.id in first_row:
            raise InputError(path, f"duplicate id {pair.id!r} (first seen at row {first_row[pair.id]})", row, "id")
        first_row[pair.id] = row
        pairs.append(pair)
    if not pairs:
        raise InputError(path, "no pairs found")
    return pairs


# ---------------------------------------------------------------- reading


def _jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    from distill.io import iter_jsonl

    return list(iter_jsonl(path))


def _is_hf_dataset_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _hf_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise InputError(path, f"dataset has splits {sorted(dataset)}; expected a 'train' split")
        dataset = dataset["train"]
    return [(index, dict(row)) for index, row in enumerate(dataset, start=1)]


def _rows_from_local(path: Path) -> tuple[Path, list[tuple[int, dict[str, Any]]]]:
    if path.is_file():
        if path.suffix not in {".jsonl", ".json"}:
            raise InputError(path, "expected a .jsonl file of pairs")
        return path, _jsonl_rows(path)
    if path.is_dir():
        if (path / "pairs.jsonl").is_file():
            return path / "pairs.jsonl", _jsonl_rows(path / "pairs.jsonl")
        if _is_hf_dataset_dir(path):
            return path, _hf_rows(path)
        nested = sorted(path.rglob("pairs.jsonl"))
        if len(nested) == 1:  # a downloaded artifact folder wraps the file one level down
            return nested[0], _jsonl_rows(nested[0])
        raise InputError(path, "folder holds neither pairs.jsonl nor a saved HF dataset")
    raise InputError(path, "no such file or folder")


def is_mlflow_uri(text: str) -> bool:
    return bool(_URI.match(text.strip()))


def load_pairs(source: str | Path, download_dir: str | Path | None = None) -> PairSet:
    """Read and check the pairs at `source` (file, folder or MLflow artifact URI)."""
    text = str(source).strip()
    if not text:
        raise ConfigError("pairs: no source given")
    local = Path(text)
    if not local.exists() and is_mlflow_uri(text):
        from distill import tracking

        target = Path(download_dir) if download_dir else Path(tempfile.mkdtemp(prefix="distill-pairs-"))
        try:
            local = Path(tracking.download_artifacts(artifact_uri=text, dst_path=str(target)))
        except Exception as exc:  # mlflow raises several types for a missing run or path
            raise ConfigError(f"pairs: cannot download {text}: {exc}") from None
    from distill.tracking import rows_digest

    read_path, rows = _rows_from_local(local)
    pairs = validate_pairs(read_path, rows)
    return PairSet(pairs=pairs, path=read_path, source=text, digest=rows_digest(row for _, row in rows))


# ---------------------------------------------------------------- selection


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` over keys in proportion to `sizes` (largest remainder, ties by key)."""
    whole = sum(sizes.values())
    if whole == 0 or total <= 0:
        return {key: 0 for key in sizes}
    exact = {key: total * size / whole for key, size in sizes.items()}
    quota = {key: int(value) for key, value in exact.items()}
    left = total - sum(quota.values())
    for key in sorted(sizes, key=lambda k: (-(exact[k] - quota[k]), k))[:left]:
        quota[key] += 1
    return quota


def subsample_pairs(pairs: list[PreferencePair], n_pairs: int | None, seed: int) -> list[PreferencePair]:
    """`n_pairs` pairs drawn per subject in proportion to its share; all when n_pairs is 0/None/too big.

    The result keeps the input order, so the same seed gives the same list.
    """
    if not n_pairs or n_pairs >= len(pairs):
        return list(pairs)
    if n_pairs < 0:
        raise ConfigError(f"n_pairs must be >= 0, got {n_pairs}")
    by_subject: dict[str, list[int]] = defaultdict(list)
    for index, pair in enumerate(pairs):
        by_subject[pair.subject].append(index)
    quota = _allocate({s: len(ix) for s, ix in by_subject.items()}, n_pairs)
    rng = random.Random(seed)
    keep: set[int] = set()
    for subject in sorted(by_subject):
        indices = list(by_subject[subject])
        rng.shuffle(indices)
        keep.update(indices[: quota[subject]])
    return [pair for index, pair in enumerate(pairs) if index in keep]


def split_dev(
    pairs: list[PreferencePair], fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, dev): about `fraction` of the pairs held out, whole seed groups at a time.

    Groups (pairs sharing a `seed_id`) are visited in a seeded random order; a group goes to
    dev when it fits in its subject's share of the dev target (a group's subject is its first
    pair's), then, on a second pass, when it fits in what is left of the total. The dev set
    therefore never exceeds round(fraction * n) pairs, no seed problem sits on both sides, and
    a positive fraction holds out at least one group while leaving at least one to train on.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"dev_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(pairs), []
    groups: dict[str, list[int]] = defaultdict(list)
    for index, pair in enumerate(pairs):
        groups[pair.group].append(index)
    if len(groups) < 2:
        raise ConfigError(f"dev_fraction={fraction} needs at least 2 seed groups, found {len(groups)}")
    subject_of = {key: pairs[indices[0]].subject for key, indices in groups.items()}
    sizes: dict[str, int] = defaultdict(int)
    for key, indices in groups.items():
        sizes[subject_of[key]] += len(indices)
    total_target = max(1, round(fraction * len(pairs)))
    quota = _allocate(dict(sizes), total_target)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    dev_groups: list[str] = []
    taken = 0
    for key in order:  # pass 1: per-subject shares
        size = len(groups[key])
        if size <= quota[subject_of[key]] and taken + size <= total_target:
            dev_groups.append(key)
            quota[subject_of[key]] -= size
            taken += size
    for key in order:  # pass 2: fill the total with whatever still fits
        size = len(groups[key])
        if key not in dev_groups and taken + size <= total_target:
            dev_groups.append(key)
            taken += size
    if not dev_groups:
        dev_groups.append(min(order, key=lambda k: len(groups[k])))
    if len(dev_groups) == len(groups):
        dev_groups.pop()
    dev_index = {i for key in dev_groups for i in groups[key]}
    train = [p for i, p in enumerate(pairs) if i not in dev_index]
    dev = [p for i, p in enumerate(pairs) if i in dev_index]
    return train, dev


def select_pairs(
    pairs: list[PreferencePair], *, n_pairs: int | None, dev_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Dev split first (fixed for a seed), then the `n_pairs` subsample of what is left."""
    train, dev = split_dev(pairs, dev_fraction, seed)
    return subsample_pairs(train, n_pairs, seed), dev
