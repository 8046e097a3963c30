"""MLproject entry point `analyze`: error analysis of an evaluate or train run, by run id."""

from distill.cli import main_guard, parse_config
from distill.error_analysis import AnalyzeConfig


def main() -> None:
    from distill.error_analysis import run

    run(parse_config(AnalyzeConfig))


if __name__ == "__main__":
    main_guard(main)
