"""make om: build the deployable targets that BACKEND needs here (convert/backends decides which)."""
from __future__ import annotations

from pipeline.config import load_config
from pipeline.log import StageLog
from pipeline.paths import ModelPaths

from . import backends


def build_targets(model: str, backend: str = "auto", soc: str = "") -> int:
    """The `make om` stage as a library call: every target the registry's plan builds for BACKEND on this machine."""
    backends.check_name(backend)
    cfg = load_config(model, stage="om")
    log = StageLog(ModelPaths(cfg["name"]).logs / "om.log")
    backends.build_targets(cfg, backend, soc, log)
    log.save()
    return 0
