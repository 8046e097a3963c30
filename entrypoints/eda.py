"""MLproject entry point `eda`: embedding map of seeds, pairs and evaluation items, and their overlap."""

from distill.cli import main_guard, parse_config
from distill.eda.stage import EdaConfig, run


def main() -> None:
    run(parse_config(EdaConfig))


if __name__ == "__main__":
    main_guard(main)
