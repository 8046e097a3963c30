"""`python -m distill world <command>`: the synthetic known-truth world from the shell.

    python -m distill world data --out outputs/world     # seeds, test and guard sets
    python -m distill world student [--seed 0]           # build (once) the world's student

`data` writes `seeds.jsonl` (what mine reads), `test.jsonl` (the held-out test set) and
`guard.jsonl` (register's forgetting guard: the sound structures only) in the canonical JSONL form, each on its own content
pool, so no two files share a content word; a file is written beside its target and renamed, so
a killed run leaves no half-written file. `student` prints the cached build's folder.
Everything the world produces is synthetic (items.SYNTHETIC_NOTE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from distill.world import items as world

FILES = {"seeds": "seed", "test": "test", "guard": "guard"}
"""Output file stem → content pool."""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def write_data(out: Path, *, seeds: int, test: int, guard: int, seed: int = 0) -> dict[str, Path]:
    """The world's three files under `out`; `seeds`/`test`/`guard` are items per structure."""
    sizes = {"seeds": seeds, "test": test, "guard": guard}
    written = {}
    for stem, pool in FILES.items():
        path = out / f"{stem}.jsonl"
        # The guard holds the structures no pair targets: what the training must not break.
        structures = [s for s in world.STRUCTURES if s not in world.DEFECTIVE] if stem == "guard" else world.STRUCTURES
        rows = [
            item.to_dict() for item in world.generate(pool, sizes[stem], seed=seed, prefix=stem, structures=structures)
        ]
        write_jsonl(path, rows)
        written[stem] = path
    return written


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m distill world", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="Write the world's seeds, test and guard sets (JSONL).")
    data.add_argument("--out", default="outputs/world", help="Folder for seeds.jsonl, test.jsonl, guard.jsonl.")
    data.add_argument("--seeds", type=int, default=24, help="Seed items per structure (what mine reads).")
    data.add_argument("--test", type=int, default=50, help="Held-out test items per structure.")
    data.add_argument("--guard", type=int, default=75, help="Guard items per structure (register's forgetting guard).")
    data.add_argument("--seed", type=int, default=0, help="Seed of the generator.")
    student = commands.add_parser("student", help="Build the world's student once (cached) and print its folder.")
    student.add_argument("--seed", type=int, default=0, help="Seed of the build (world-student@SEED).")
    args = parser.parse_args(argv)

    if args.command == "data":
        for name in ("seeds", "test", "guard"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be at least 1")
        written = write_data(Path(args.out), seeds=args.seeds, test=args.test, guard=args.guard, seed=args.seed)
        print(f"world data ({world.SYNTHETIC_NOTE}):\n" + "\n".join(f"  {path}" for path in written.values()))
        return
    from distill.world.student import world_student_path

    print(world_student_path(args.seed))
