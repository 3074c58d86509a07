"""make dataset: infer + compare over COUNT generated inputs, memory and speed. The library call is dataset.stage.run_dataset."""
import sys

from pipeline import stages
from pipeline.errors import cli

from .stage import run_dataset


@cli
def main(argv=None) -> int:
    return run_dataset(**stages.parse("dataset", argv))


if __name__ == "__main__":
    sys.exit(main())
