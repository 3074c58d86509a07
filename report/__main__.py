"""make report: REPORT.md per model and combined, plots (PUBLISH=1: model card). The library call is report.stage.write_reports."""
import sys

from pipeline import stages
from pipeline.errors import cli

from .stage import write_reports


@cli
def main(argv=None) -> int:
    return write_reports(**stages.parse("report", argv))


if __name__ == "__main__":
    sys.exit(main())
