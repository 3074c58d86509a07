"""make zoo: sweep ZOO_LIST (or ZOO=<names>) through every zoo stage -> results/zoo/ZOO.md. The library call is zoo.stage.run_sweep."""
import sys

from pipeline import stages
from pipeline.errors import cli

from .stage import run_sweep


@cli
def main(argv=None) -> int:
    return run_sweep(**stages.parse("zoo", argv))


if __name__ == "__main__":
    sys.exit(main())
