"""Glue from `make om` to the Ascend modules: pre-flight, atc.sh, ATC run."""
from __future__ import annotations

from pipeline.errors import PipelineError


def preflight(cfg, paths, log):
    return None


def write_script(cfg, paths, soc, log):
    return None


def build_om(cfg, paths, soc, log) -> dict:
    raise PipelineError("om build not wired yet")
