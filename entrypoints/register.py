"""MLproject entry point `register`: parameters → RegisterConfig → distill.registry.run.

A refusal by the gate is an outcome, not an error: it exits 0 (see distill.registry)."""

from distill.cli import main_guard, parse_config
from distill.registry import RegisterConfig


def main() -> None:
    from distill.registry import run

    run(parse_config(RegisterConfig))


if __name__ == "__main__":
    main_guard(main)
