"""MLproject entry point `mine`: parameters → MineConfig → distill.mining.run."""

from distill.cli import main_guard, parse_config
from distill.mining import MineConfig


def main() -> None:
    from distill.mining import run

    run(parse_config(MineConfig))


if __name__ == "__main__":
    main_guard(main)
