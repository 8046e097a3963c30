"""Helpers for the sweep, register and pipeline tests: a small synthetic task and space files.

The synthetic task comes from `tests/train_helpers.py` (short prompts, so a tiny-qwen3 trial
trains and scores in seconds). A space file here is `sweeps/quick.yaml` with the changes a
test names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
QUICK_SPACE = REPO / "sweeps" / "quick.yaml"


def synthetic_task(folder: Path, *, n_train: int = 24, n_heldout: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """(pairs file, held-out items file) of the synthetic fact task."""
    from tests.train_helpers import write_synthetic_task

    return write_synthetic_task(folder, n_train=n_train, n_heldout=n_heldout, seed=seed)


def space_file(folder: Path, name: str = "space.yaml", **changes: Any) -> Path:
    """sweeps/quick.yaml with top-level keys replaced (`fixed_update`/`space_update` merge)."""
    data = yaml.safe_load(QUICK_SPACE.read_text(encoding="utf-8"))
    data["fixed"].update(changes.pop("fixed_update", {}))
    data["space"].update(changes.pop("space_update", {}))
    data.update(changes)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
