"""Provenance for every result file: hashes, versions, host, command line, time."""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path

from . import SCHEMA_VERSION
from .paths import ROOT

_HASH_CACHE: dict[tuple, str] = {}


def sha256_file(path) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def file_record(path) -> dict:
    path = Path(path)
    rel = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return {"path": str(rel), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def package_versions(names=("numpy", "onnx", "onnxruntime", "onnxsim", "torch", "torchaudio", "timm",
                            "onnxconverter-common", "ais_bench", "aclruntime", "torch_npu")) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            continue
    return out


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5)
        # results/ and logs/ are the evidence the stages themselves rewrite: not a change of the code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)logs"], cwd=ROOT, capture_output=True, text=True,
                               timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def host_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"hostname": platform.node(), "os": platform.platform(), "machine": platform.machine(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}


def command_line() -> list[str]:
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        p = Path(argv[0]).resolve()
        if p.is_relative_to(ROOT):
            mod = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            argv[0:1] = ["-m", mod[: -len(".__main__")] if mod.endswith(".__main__") else mod]
    return ["python", *argv]


def header(stage: str, cfg: dict | None = None) -> dict:
    """Common head of every results JSON."""
    h = {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "git": git_revision(),
        "host": host_info(),
        "versions": package_versions(),
    }
    if cfg is not None:
        h["model"] = cfg["name"]
        h["config"] = file_record(cfg["_path"])
    return h
