"""MLproject entry point `train`: parameters → TrainConfig → distill.training.run."""

from distill.cli import main_guard, parse_config
from distill.training import TrainConfig


def main() -> None:
    from distill.training import run

    run(parse_config(TrainConfig))


if __name__ == "__main__":
    main_guard(main)
