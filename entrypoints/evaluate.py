"""MLproject entry point `evaluate`: parameters → EvaluateConfig → distill.evaluation.run."""

from distill.cli import main_guard, parse_config
from distill.evaluation import EvaluateConfig


def main() -> None:
    from distill.evaluation import run

    run(parse_config(EvaluateConfig))


if __name__ == "__main__":
    main_guard(main)
