"""Bundled example data shipped as package data (the embedded default)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource_path(name: str) -> Path:
    """Filesystem path of a bundled resource, e.g. `resource_path("eval_sample.jsonl")`."""
    return Path(str(resources.files("distill.resources").joinpath(name)))
