"""make om: the deployable targets BACKEND needs here (.om via ATC, else ort-fp16). The library call is
convert.stage.build_targets."""
import sys

from pipeline import stages
from pipeline.errors import cli

from .stage import build_targets


@cli
def main(argv=None) -> int:
    return build_targets(**stages.parse("om", argv))


if __name__ == "__main__":
    sys.exit(main())
