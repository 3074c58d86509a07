"""Backend names and how `auto` resolves."""
from __future__ import annotations

import shutil

from pipeline.errors import PipelineError

BACKENDS = ("auto", "om", "ort-fp16", "ort-cpu")
CANN_HINT = ("install the CANN toolkit (hiascend.com, 'Ascend-cann-toolkit_<ver>_linux-<arch>.run --install') and "
             "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` so that `atc` is on PATH; "
             "without an Ascend toolchain use BACKEND=ort-fp16")


def atc_available() -> bool:
    return shutil.which("atc") is not None


def resolve_backend(requested: str) -> tuple[str, str]:
    """Return (backend, one-line explanation or '')."""
    if requested not in BACKENDS:
        raise PipelineError(f"unknown BACKEND '{requested}'; use one of: {', '.join(BACKENDS)}")
    if requested == "auto":
        if atc_available():
            return "om", "ATC found: building the Ascend .om target"
        return "ort-fp16", ("no ATC (CANN toolkit) found: building the ort-fp16 target instead, the fp16 "
                            "computation of ATC's default force_fp16 emulated on the CPU with onnxruntime")
    if requested == "om" and not atc_available():
        raise PipelineError(f"BACKEND=om needs ATC, which is not on PATH: {CANN_HINT}")
    return requested, ""


def resolved_name(requested: str) -> str:
    """Backend whose artifacts a later stage should use (`auto` -> what `make om` would build)."""
    return resolve_backend(requested)[0]
