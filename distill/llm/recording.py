"""The one format of recorded responses, and the one importer that puts them into a response cache.

A recording is JSON lines, one response per line, that the replay backend answers from once it
is imported into a run's response cache. The package bundles one per LLM stage
(distill/resources/replay/mine.jsonl and augment.jsonl, written by the project and rebuilt by
scripts/build_mine_replay.py and scripts/build_augment_replay.py); a recording written for one
stage imports into any stage's cache, since a row is found by its request key alone.

One row:

    key           the request key (distill.llm.base.request_key) under `backend` and `model`
    backend       the backend name the key was computed under ("recording" for the bundled ones)
    model         the model name the key was computed under
    role          teacher, student, judge or verifier (for the reader)
    label         the request's label, e.g. "teacher seed-001" or "verify seed-001-aug1"
    sample_index  the k-th sample of the same prompt
    params        the generation parameters the key covers
    schema        the response schema's name, or null
    note          how the project wrote the response (optional)
    response      {text, input_tokens, output_tokens, latency_s, finish_reason}

Only `key`, `backend`, `model` and `response.text` are required; the rest says what was asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RECORDED_BACKEND = "recording"
"""The backend name the bundled recordings are keyed under: their responses were written by the
project, not fetched from any real backend."""
EXAMPLE_MODELS = ("example-teacher", "example-student")
"""The models of the bundled recordings; they exist nowhere else."""
REQUIRED_FIELDS = ("key", "backend", "model", "response")
RESPONSE_FIELDS = ("text", "input_tokens", "output_tokens", "latency_s", "finish_reason")
NOTHING = ("off", "none")
"""What `recording` says to import nothing. The command line reads "none" as unset (the bundled
recording), so "off" is the word there; "none" still works from code and config files."""
"""The word that asks a stage to import no recording at all."""


def bundled_recording(stage: str) -> Path:
    """The recording bundled for `stage` (mine or augment)."""
    from distill.resources import resource_path

    return resource_path(f"replay/{stage}.jsonl")


def recording_to_import(spec: str | None, stage: str) -> Path | None:
    """The recording a replay run imports: the bundled one when `spec` is unset, none for 'off'."""
    if spec is None or not str(spec).strip():
        return bundled_recording(stage)
    if str(spec).strip().lower() in NOTHING:
        return None
    return Path(spec)


def recording_row(
    request, response, *, model: str, role: str, note: str | None = None, backend: str = RECORDED_BACKEND
) -> dict[str, Any]:
    """One row of the format above for `request` answered by `response`, keyed as `backend`/`model`."""
    from distill.llm.base import request_key

    row: dict[str, Any] = {
        "role": role,
        "label": request.label,
        "sample_index": request.sample_index,
        "backend": backend,
        "model": model,
        "params": request.params.to_key_dict(),
        "schema": None if request.schema is None else request.schema.__name__,
    }
    if note is not None:
        row["note"] = note
    row["key"] = request_key(backend, model, request)
    row["response"] = {name: getattr(response, name) for name in RESPONSE_FIELDS}
    return row


def recording_text(rows: Iterable[dict[str, Any]]) -> str:
    """The recording file's text: one JSON object per line, in the order given."""
    import json

    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _checked_response(path, row_number: int, row: dict[str, Any]):
    from distill.errors import InputError
    from distill.llm.base import Response

    for name in REQUIRED_FIELDS:
        if name not in row:
            raise InputError(path, "missing required field", row=row_number, field=name)
    answer = row["response"]
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
        raise InputError(path, "response must be an object with a text", row=row_number, field="response")
    return Response(
        text=answer["text"],
        input_tokens=int(answer.get("input_tokens") or 0),
        output_tokens=int(answer.get("output_tokens") or 0),
        latency_s=float(answer.get("latency_s") or 0.0),
        backend=str(row["backend"]),
        model=str(row["model"]),
        finish_reason=answer.get("finish_reason"),
    )


def read_recording(path: str | os.PathLike) -> list[tuple[str, Any, str]]:
    """(key, Response, request description) per row; a bad row is an InputError naming row and field."""
    from distill.io import iter_jsonl
    from distill.llm.base import canonical_json

    entries = []
    for row_number, row in iter_jsonl(path):
        response = _checked_response(path, row_number, row)
        described = {k: v for k, v in row.items() if k not in ("key", "response")}
        entries.append((str(row["key"]), response, canonical_json(described)))
    return entries


def import_recording(cache, path: str | os.PathLike) -> int:
    """Put every response of a recording into the cache (a key already there keeps its response);
    return how many were new."""
    return sum(bool(cache.put(key, response, request=request)) for key, response, request in read_recording(path))
