import contextlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture
def isolated_dirs(tmp_path, monkeypatch):
    """Point build/, results/ and logs/ at a temp folder so tests never touch the repo's evidence."""
    dirs = {"PIPELINE_BUILD_DIR": tmp_path / "build", "PIPELINE_RESULTS_DIR": tmp_path / "results",
            "PIPELINE_LOGS_DIR": tmp_path / "logs"}
    for k, v in dirs.items():
        monkeypatch.setenv(k, str(v))
    return tmp_path


@pytest.fixture
def copy_of(tmp_path_factory):
    """copy_of(tree): a copy of a make tree (build/, results/, logs/, mtimes kept) in a new temp folder. A test
    that changes what make sees (WEIGHTS, a failed export) works there, so a module's shared tree stays as the next
    test expects it (else the next make re-exports and re-benches: minutes). The copies go when the test ends."""
    import shutil

    made = []

    def copy(tree: Path) -> Path:
        dst = tmp_path_factory.mktemp("tree")
        made.append(dst)
        for d in ("build", "results", "logs"):
            if (tree / d).exists():
                shutil.copytree(tree / d, dst / d, symlinks=True)
        return dst
    yield copy
    for dst in made:                     # a convnext tree is ~850 MB
        shutil.rmtree(dst, ignore_errors=True)


@contextlib.contextmanager
def pipeline_dirs(tmp: Path):
    """build/, results/ and logs/ under `tmp` for this process while the block runs (a module-scoped tree)."""
    env = {"PIPELINE_BUILD_DIR": tmp / "build", "PIPELINE_RESULTS_DIR": tmp / "results",
           "PIPELINE_LOGS_DIR": tmp / "logs"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield tmp
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def run_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update({"PIPELINE_BUILD_DIR": str(tmp_path / "build"), "PIPELINE_RESULTS_DIR": str(tmp_path / "results"),
                "PIPELINE_LOGS_DIR": str(tmp_path / "logs")})
    for k in ("WEIGHTS", "INPUT", "BACKEND", "MODEL", "SOC", "DEVICE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(k, None)
    return env


def use_fake_ascend(bin_dir: Path, monkeypatch):
    """tests/fake_atc.py as `atc` on PATH and the ais_bench double as the session; returns the double."""
    import ais_bench_double as double

    from pipeline import ais_runner

    bin_dir.mkdir(parents=True, exist_ok=True)
    atc = bin_dir / "atc"
    atc.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'fake_atc.py'} \"$@\"\n")
    atc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(ais_runner, "session_factory", double.FakeInferSession)
    double.FakeInferSession.calls.clear()
    return double
