"""MLproject entry point `pipeline`: parameters → PipelineConfig → distill.pipeline.run (`make demo`)."""

from distill.cli import main_guard, parse_config
from distill.pipeline import PipelineConfig


def main() -> None:
    from distill.pipeline import run

    run(parse_config(PipelineConfig))


if __name__ == "__main__":
    main_guard(main)
