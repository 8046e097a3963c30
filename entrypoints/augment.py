"""MLproject entry point `augment`: parameters → AugmentConfig → distill.blueprint.stage.run."""

from distill.blueprint.stage import AugmentConfig
from distill.cli import main_guard, parse_config


def main() -> None:
    from distill.blueprint.stage import run

    run(parse_config(AugmentConfig))


if __name__ == "__main__":
    main_guard(main)
