"""make precision: where fp16 loses precision, and the keep_dtype fix. The library call is precision.stage.diagnose."""
import sys

from pipeline import stages
from pipeline.errors import cli

from .stage import diagnose


@cli
def main(argv=None) -> int:
    return diagnose(**stages.parse("precision", argv))


if __name__ == "__main__":
    sys.exit(main())
