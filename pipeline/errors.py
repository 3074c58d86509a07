"""User-facing errors: one line saying what went wrong and how to fix it."""
from __future__ import annotations

import functools
import json
import os
import sys
import traceback

ERROR_FILE_ENV = "PIPELINE_ERROR_FILE"     # set by a tool that runs stages (make zoo): where cli() records a failure


class PipelineError(Exception):
    """An expected failure. The message is one line: what is wrong, then how to fix it.

    `code` classifies it for tools that run stages (make zoo reads it, never the message); `details` are figures
    that go with it (JSON-able)."""
    code = "error"

    def __init__(self, message: str = "", **details):
        super().__init__(message)
        self.details = details


class ConfigError(PipelineError):
    """A config file, a make variable or a command-line option is wrong."""
    code = "config"


class UnknownModelError(ConfigError):
    """A model name (timm, torchvision, ...) that the library does not know."""
    code = "unknown-model"


class InputError(PipelineError):
    """An input file or folder (INPUT=, a sample) is missing, unreadable or unfit for the model."""
    code = "input"


class WeightsError(PipelineError):
    """A checkpoint is missing, unreadable or belongs to another model."""
    code = "weights"


class ToolchainError(PipelineError):
    """A tool or runtime (ATC, ais_bench, onnxruntime, an NPU) is missing or failed."""
    code = "toolchain"


class ExportError(PipelineError):
    """PyTorch -> ONNX (or onnxsim) failed. details: failing_call (pipeline.errors.failing_call)."""
    code = "export-failed"


class ParityError(ExportError):
    """The exported ONNX differs from PyTorch beyond the limit. details: worst, limit."""
    code = "parity"


def record_failure(exc: BaseException) -> None:
    """Write {code, type, message, details, argv} to $PIPELINE_ERROR_FILE when a stage runner asked for it."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    rec = {"code": getattr(exc, "code", "crash"), "type": type(exc).__name__, "message": " ".join(str(exc).split()),
           "details": getattr(exc, "details", {}), "argv": sys.argv}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f, default=str)
        os.replace(tmp, path)
    except OSError:
        pass


def failing_call(exc: BaseException) -> dict:
    """Where an exception was raised: the innermost Python frame's function, file and source line (the call that
    failed, e.g. `F.scaled_dot_product_attention(...)` inside a model's forward)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return {}
    f = frames[-1]
    return {"function": f.name, "file": f.filename.replace(os.sep, "/"), "line": (f.line or "").strip()}


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
            record_failure(exc)
            sys.exit(2)
        except KeyboardInterrupt:
            print("ERROR | interrupted; run the same command again: make infer and make dataset resume where they "
                  "stopped", file=sys.stderr)
            _discard_reads()
            sys.exit(130)
        except Exception as exc:              # a bug: the traceback stays; a stage runner still learns its type
            record_failure(exc)
            raise

    return wrapper
