"""Where distill keeps its own caches (built models, reused stage outputs)."""

from __future__ import annotations

import os
from pathlib import Path


def distill_home() -> Path:
    """`$DISTILL_HOME`, else `~/.cache/distill`. Tests point it at a temporary folder."""
    root = os.environ.get("DISTILL_HOME") or os.path.join(Path.home(), ".cache", "distill")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
