"""User-facing errors: one line saying what went wrong and how to fix it."""
from __future__ import annotations

import functools
import sys


class PipelineError(Exception):
    """An expected failure. The message is one line: what is wrong, then how to fix it."""


class ConfigError(PipelineError):
    """A config file, a make variable or a command-line option is wrong."""


class InputError(PipelineError):
    """An input file or folder (INPUT=, a sample) is missing, unreadable or unfit for the model."""


class WeightsError(PipelineError):
    """A checkpoint is missing, unreadable or belongs to another model."""


class ToolchainError(PipelineError):
    """A tool or runtime (ATC, ais_bench, onnxruntime, an NPU) is missing or failed."""


def _discard_reads():
    """A stage that stops with an expected error records no config reads (pipeline.config)."""
    config = sys.modules.get("pipeline.config")
    if config is not None:
        config.discard_reads()


def cli(main):
    """Wrap a stage entry point: expected errors print one `ERROR | ...` line and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as exc:
            msg = " ".join(str(exc).split())
            print(f"ERROR | {msg}", file=sys.stderr)
            _discard_reads()
            sys.exit(2)
        except KeyboardInterrupt:
            print("ERROR | interrupted; run the same command again: make infer and make dataset resume where they "
                  "stopped", file=sys.stderr)
            _discard_reads()
            sys.exit(130)

    return wrapper
