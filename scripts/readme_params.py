"""Write each entry point's parameter table into README.md from its config dataclass.

The help text lives once, next to each field (`metadata={"help": ...}`); this script copies it
between the `<!-- params:<entry> -->` and `<!-- /params:<entry> -->` markers of the README.
`--check` exits 1 when the README is out of date (a test runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit"))


def table(entry: str, spec: dict, config_path: str) -> str:
    module, name = config_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    rows = ["| parameter | default | what it does |", "|---|---|---|"]
    for param, declared in (spec.get("parameters") or {}).items():
        default = declared.get("default", "(required)") if isinstance(declared, dict) else ""
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        help_text = fields[param].metadata.get("help", "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{param}` | {shown} | {help_text} |")
    return "\n".join(rows)


def render(readme: str) -> str:
    from test_project_files import CONFIGS  # one map of entry point -> config class

    entries = yaml.safe_load((REPO / "MLproject").read_text(encoding="utf-8"))["entry_points"]
    for entry, spec in entries.items():
        pattern = re.compile(rf"(<!-- params:{entry} -->\n).*?(<!-- /params:{entry} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- params:{entry} --> block")
        readme = pattern.sub(lambda m: m.group(1) + table(entry, spec, CONFIGS[entry]) + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    path = REPO / "README.md"
    current = path.read_text(encoding="utf-8")
    updated = render(current)
    if args.check:
        if updated != current:
            print("README.md parameter tables are out of date: python scripts/readme_params.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
