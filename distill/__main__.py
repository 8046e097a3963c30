"""`python -m distill` (or the `distill` console script): one command line for every stage.

    python -m distill <stage> [--config run.yaml] [--<field> value ...]
    python -m distill data {check,convert} --dataset FILE ...
    python -m distill generate [--check]      # MLproject + README tables from the registry
    python -m distill llm {jobs,import-batch} ...   # provider batch jobs, vllm run-batch output
    python -m distill world {data,student} ...      # the synthetic known-truth world of the demo

The stages come from `distill.stages.STAGES`, the only list of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from distill.cli import main_guard, parse_config
from distill.stages import STAGES, get

TOOLS = {
    "data": "Check or convert a multiple-choice file (python -m distill data --help).",
    "llm": "Provider batch jobs of a response cache; import vllm run-batch output (python -m distill llm --help).",
    "world": "The synthetic known-truth world: its data files and its student (python -m distill world --help).",
    "generate": "Regenerate MLproject and the README's parameter tables from the stage registry (--check: only compare).",
}


def usage() -> str:
    width = max(map(len, [*STAGES, *TOOLS]))
    lines = ["usage: python -m distill <command> [--config run.yaml] [--<parameter> value ...]", "", "stages:"]
    lines += [f"  {name:<{width}}  {stage.summary}" for name, stage in STAGES.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in TOOLS.items()]
    lines += ["", "`python -m distill <stage> --help` lists a stage's parameters."]
    return "\n".join(lines)


def _generate(argv: list[str]) -> None:
    import argparse

    from distill.project_files import generate

    parser = argparse.ArgumentParser(prog="python -m distill generate", description=TOOLS["generate"])
    parser.add_argument("--check", action="store_true", help="Exit 1 when MLproject or README.md is out of date.")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="The repository root.")
    args = parser.parse_args(argv)
    stale = generate(Path(args.repo), check=args.check)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run `python -m distill generate`", file=sys.stderr)
        sys.exit(1)
    if not args.check:
        print(f"regenerated: {', '.join(stale) or 'nothing (all up to date)'}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command = argv.pop(0)
    if command == "data":
        from distill.data.__main__ import main as data_main

        data_main(argv)
        return
    if command == "generate":
        _generate(argv)
        return
    if command == "world":
        from distill.world.cli import main as world_main

        world_main(argv)
        return
    if command == "llm":
        from distill.llm.cli import main as llm_main

        llm_main(argv)
        return
    stage = get(command)
    cfg = parse_config(stage.config_class(), argv, prog=f"python -m distill {stage.name}")
    stage.run(cfg)


def console() -> None:
    """The `distill` console script."""
    main_guard(main)


if __name__ == "__main__":
    console()
