"""make export: PyTorch -> ONNX -> onnxsim, parity-checked. The library call is export.stage.export_model."""
import sys

from pipeline import stages
from pipeline.errors import cli

from .stage import export_model


@cli
def main(argv=None) -> int:
    return export_model(**stages.parse("export", argv))


if __name__ == "__main__":
    sys.exit(main())
