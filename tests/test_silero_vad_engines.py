"""silero-vad (the real stateful model) on every engine and target: the static .om (fake ATC, the ais_bench double,
state as an ordinary input/output pair) and ENGINE=ray give the local dynamic run's probabilities and segments.
Skips when the silero-vad wheel cannot be downloaded."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, pipeline_dirs, use_fake_ascend
from pipeline.errors import WeightsError

MODEL = "silero_vad_16k"
SPEECH = sorted((ROOT / "tests" / "data" / "speech").glob("*.wav"))[:2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """silero exported and run locally (ort-cpu) over two speech clips, in a build tree of its own."""
    tmp = tmp_path_factory.mktemp("vad")
    inputs = tmp / "speech"
    inputs.mkdir()
    for f in SPEECH:
        shutil.copy(f, inputs / f.name)
    with pipeline_dirs(tmp):
        from convert.stage import build_targets
        from export.stage import export_model
        from run.infer import infer

        try:
            export_model(MODEL)
        except WeightsError as exc:
            pytest.skip(f"silero-vad wheel not available: {exc}")
        assert build_targets(MODEL, "ort-cpu") == 0 and infer(MODEL, "ort-cpu", input=str(inputs)) == 0
        yield {"root": tmp, "inputs": inputs, "local": outputs(tmp, "ort-cpu")}


def outputs(tmp: Path, backend: str) -> dict:
    post = tmp / "build" / MODEL / "outputs" / backend / "post"
    return {p.name: np.load(p) for p in sorted(post.glob("*.npy"))} | \
        {p.name: p.read_text() for p in sorted(post.glob("*.csv"))}


def test_the_static_om_gives_the_local_probabilities_and_segments(tree, monkeypatch):
    from compare.stage import compare
    from convert.stage import build_targets
    from run.infer import infer

    double = use_fake_ascend(tree["root"] / "bin", monkeypatch)
    assert build_targets(MODEL, "om", soc="Ascend310P3") == 0
    script = (tree["root"] / "build" / MODEL / "atc.sh").read_text()
    assert "--input_shape=input:1,576;state:2,1,128" in script
    assert infer(MODEL, "om", input=str(tree["inputs"])) == 0 and compare(MODEL, "om") == 0
    om, local = outputs(tree["root"], "om"), tree["local"]
    assert om.keys() == local.keys() and any(k.endswith(".segments.csv") for k in om)
    for name, arr in local.items():
        if isinstance(arr, str):
            assert om[name] == arr, name                      # the same segments, to the printed digit
        else:
            np.testing.assert_allclose(om[name], arr, atol=1e-6, err_msg=name)
    runs = [c for c in double.FakeInferSession.calls if c[0] == "infer"]
    chunks = sum(len(v) for k, v in local.items() if k.endswith(".prob.npy"))
    assert len(runs) == chunks                                 # one device run per 32 ms chunk, in order


def test_ray_gives_the_local_bytes(tree):
    ray = pytest.importorskip("ray")
    from run.infer import infer

    env = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
    env["PYTHONPATH"] = str(ROOT)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False, runtime_env={"env_vars": env})
    try:
        shutil.rmtree(tree["root"] / "build" / MODEL / "outputs" / "ort-cpu")
        assert infer(MODEL, "ort-cpu", input=str(tree["inputs"]), engine="ray", workers="2") == 0
    finally:
        ray.shutdown()
    got = outputs(tree["root"], "ort-cpu")
    assert got.keys() == tree["local"].keys()
    for name, arr in tree["local"].items():
        assert (got[name] == arr) if isinstance(arr, str) else np.array_equal(got[name], arr), name
