"""MLproject entry point `sweep`: parameters → SweepConfig → distill.sweep.run."""

from distill.cli import main_guard, parse_config
from distill.sweep import SweepConfig


def main() -> None:
    from distill.sweep import run

    run(parse_config(SweepConfig))


if __name__ == "__main__":
    main_guard(main)
