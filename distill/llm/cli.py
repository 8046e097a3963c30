"""`python -m distill llm <command>`: the response cache's provider batch jobs from the shell.

    python -m distill llm jobs --cache outputs/mine/cache.sqlite
    python -m distill llm import-batch results.jsonl --cache outputs/mine/cache.sqlite

`jobs` lists the batch jobs the cache remembers (name, backend, model, requests, state, open or
closed). `import-batch` reads an OpenAI batch output file (what `vllm run-batch -o` writes, or an
OpenAI Batch API output file) whose `custom_id`s are requests of a stage's export (`<role>_mode=
export`); the stage's rerun turns the lines into cached responses. A bad line is one error line
naming the file, the line and the field, and nothing is imported.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "jobs": "List the provider batch jobs a response cache remembers.",
    "import-batch": "Import a batch output file (vllm run-batch, OpenAI Batch API) for the requests a stage exported.",
}


def main(argv: list[str] | None = None) -> None:
    from distill.errors import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m distill llm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    jobs = commands.add_parser("jobs", help=COMMANDS["jobs"])
    jobs.add_argument("--cache", required=True, help="The response cache (SQLite) of the stage.")
    imported = commands.add_parser("import-batch", help=COMMANDS["import-batch"])
    imported.add_argument("file", help="The batch output JSONL.")
    imported.add_argument("--cache", required=True, help="The response cache (SQLite) the stage exported from.")
    args = parser.parse_args(argv)

    from pathlib import Path

    from distill.llm.cache import ResponseCache

    if not Path(args.cache).is_file():
        raise ConfigError(f"response cache {args.cache} does not exist")
    with ResponseCache(args.cache) as cache:
        if args.command == "jobs":
            for job in cache.batch_jobs():
                status = "closed" if job.closed else "open"
                print(
                    f"{job.name}\t{job.backend}/{job.model}\t{len(job.keys)} requests\t{job.state}\t{job.kind}\t{status}"
                )
            return
        from distill.llm.batch import import_batch

        lines, missing = import_batch(cache, args.file)
        print(
            f"imported {lines} result lines into {args.cache}; {missing} exported requests still without a result. "
            "Rerun the stage to turn them into responses."
        )
