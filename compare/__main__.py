"""make compare: target vs the onnxruntime CPU fp32 reference, with the gate. The library call is compare.stage.compare."""
import sys

from pipeline import stages
from pipeline.errors import cli

from .stage import compare


@cli
def main(argv=None) -> int:
    return compare(**stages.parse("compare", argv))


if __name__ == "__main__":
    sys.exit(main())
