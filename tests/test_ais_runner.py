"""AisBenchRunner against the ais_bench test double (tests/ais_bench_double.py) in each generation (2023-early,
2023-late, 2024, 2025): list feeds cast to the descriptor dtype, per-batch / dymbatch / dymdims .om files at every
accepted batch size (the 2023-early dymbatch through set_dynamic_batchsize), both timing forms and summary
spellings, free_resource, output naming, one-line errors, ais_bench's path rules; and the double's own rules."""
import hashlib
import json
import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ais_bench_double as double
from pipeline.config import SCHEMA
from pipeline.errors import PipelineError
from pipeline.schema import validate
from pipeline import ais_runner
from pipeline.ais_runner import AisBenchRunner, check_om_path, device_ms, numpy_dtype


def cfg_for(in_shape, outputs=("embedding", "peak")):
    raw = {"name": "m", "family": "timm_image", "inputs": [{"name": "x", "shape": in_shape}],
           "outputs": [{"name": o, "shape": ["batch", 3]} for o in outputs], "export": {"parity_cases": []}}
    return {**validate(raw, SCHEMA, "", "t.yaml"), "_source": "t.yaml"}


def write_om(folder, name, in_shape, elem=TensorProto.FLOAT, mode="static", desc_shape=None, gears=(),
             dims_gears=(), dtype="float32"):
    """What `make om` + ATC would leave: <name>.om (the companion ONNX for the double) and <name>.om.json."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[2, 3], keepdims=0, name="ReduceMean_7"),
             helper.make_node("ReduceMax", ["x"], ["mx"], axes=[2, 3], keepdims=0, name="ReduceMax_8")]
    if elem == TensorProto.FLOAT16:
        nodes = [helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="cast")] + nodes
        for n in nodes[1:]:
            n.input[0] = "x32"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, in_shape)],
                          [helper.make_tensor_value_info("mean", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("mx", TensorProto.FLOAT, None)])
    om = folder / f"{name}.om"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(om))
    om.chmod(0o640)
    meta = {"inputs": [{"name": "x", "dtype": dtype, "shape": desc_shape or in_shape}], "mode": mode,
            "gears": list(gears), "dims_gears": [list(g) for g in dims_gears]}
    (folder / f"{name}.om.json").write_text(json.dumps(meta))
    return om


def record(om, batch, mode="static", gears=()):
    return {"batch": batch, "mode": mode, "gears": list(gears), "path": str(om),
            "sha256": hashlib.sha256(om.read_bytes()).hexdigest()}


@pytest.fixture(autouse=True)
def double_session(monkeypatch):
    monkeypatch.setattr(ais_runner, "session_factory", double.FakeInferSession)
    double.FakeInferSession.calls.clear()
    yield
    double.FakeInferSession.calls.clear()


@pytest.fixture
def per_batch(tmp_path):
    oms = [record(write_om(tmp_path / "om", f"m_bs{b}", [b, 3, 4, 4]), b) for b in (1, 2)]
    return cfg_for(["batch", 3, 4, 4]), {"backend": "om", "oms": oms, "soc_version": "Ascend310P3",
                                         "cann_version": "8.0.RC3", "precision": "force_fp16"}


@pytest.mark.parametrize("flavour", double.GENERATIONS)
def test_per_batch_oms_in_every_flavour(per_batch, flavour, monkeypatch):
    monkeypatch.setitem(double.FLAVOUR, "name", flavour)
    cfg, target = per_batch
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4))                  # float64 in: cast on the host
    with AisBenchRunner(target, device_id=5, cfg=cfg) as r:
        assert r.device == "npu:5" and r.backend == "om"
        assert [(m.name, m.dtype, m.shape) for m in r.get_input_metadata()] == [("x", "float32", [1, 3, 4, 4])]
        out = r.infer({"x": x})
        first_ms = r.last_device_ms
        r.infer({"x": x[:1]})
        assert r.get_output_names() == ["embedding", "peak"]
        assert r.describe()["om_output_names"] == ["ReduceMean_7:0", "ReduceMax_8:0"]   # ATC-style names
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(out["embedding"], x32.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(out["peak"], x32.max(axis=(2, 3)))
    assert isinstance(first_ms, float) and first_ms >= 0 and r.last_device_ms >= 0
    calls = double.FakeInferSession.calls
    frees = [] if flavour == "2023-early" else ["free", "free"]               # free_resource since 2023-09-11
    assert [c[0] for c in calls] == ["init", "init", "infer", "infer"] + frees
    assert [c[1:] for c in calls if c[0] == "infer"] == [("static", [[2, 3, 4, 4]]), ("static", [[1, 3, 4, 4]])]
    assert [c[1] for c in calls if c[0] == "init"] == [5, 5]
    assert ("finalize",) not in calls


def test_both_timing_forms():
    assert device_ms(double.Summary([(10.0, 12.5), (20.0, 23.25)])) == 3.25
    assert device_ms(double.Summary([4.0, 3.25])) == 3.25
    assert device_ms(double.Summary([])) is None and device_ms(object()) is None


UNSUPPORTED_FIX = AisBenchRunner.unsupported_fix


def test_missing_batch_and_static_size_errors(per_batch):
    cfg, target = per_batch
    with AisBenchRunner(target, cfg=cfg) as r:
        with pytest.raises(PipelineError) as e:
            r.infer({"x": np.zeros((4, 3, 4, 4), np.float32)})
        assert str(e.value) == ("om cannot run these inputs: no .om for batch 4 (built: [1, 2]); " + UNSUPPORTED_FIX)
        with pytest.raises(PipelineError) as e:
            r.infer({"x": np.zeros((1, 3, 4, 5), np.float32)})
        assert str(e.value) == ("om cannot run these inputs: input x [1, 3, 4, 5] does not fit the .om's [1, 3, 4, 4]; "
                                + UNSUPPORTED_FIX)      # the shared feed check (Runner.check_feeds) asks unsupported()
        assert r.unsupported({"x": [4, 3, 4, 4]}) == "no .om for batch 4 (built: [1, 2])"
        assert r.unsupported({"x": [1, 3, 8, 8]}) == "input x [1, 3, 8, 8] does not fit the .om's [1, 3, 4, 4]"
        assert r.unsupported({"x": [2, 3, 4, 4]}) is None


def test_fp16_input_descriptor_gets_fp16(tmp_path):
    om = write_om(tmp_path / "om", "h_bs1", [1, 3, 4, 4], elem=TensorProto.FLOAT16, dtype="float16")
    cfg = cfg_for(["batch", 3, 4, 4])
    x = np.linspace(-2, 2, 48).reshape(1, 3, 4, 4)                         # float64 in
    with AisBenchRunner({"oms": [record(om, 1)]}, cfg=cfg) as r:
        assert [m.dtype for m in r.get_input_metadata()] == ["float16"]
        out = r.infer({"x": x})
    # the double's ReduceMean (onnxruntime) and NumPy's mean may sum in another order (fp32, ~1e-7); had the input
    # not gone in as fp16, the mean would move by 4e-5 relative (5e-5 absolute), far outside this tolerance
    np.testing.assert_allclose(out["embedding"], x.astype(np.float16).astype(np.float32).mean(axis=(2, 3)),
                               rtol=1e-6, atol=1e-6)
    infer = [c for c in double.FakeInferSession.calls if c[0] == "infer"]
    assert infer == [("infer", "static", [[1, 3, 4, 4]])]


def test_dymbatch_one_om_and_gears(tmp_path):
    om = write_om(tmp_path / "om", "m_dynbs", ["batch", 3, 4, 4], mode="dymbatch", desc_shape=[-1, 3, 4, 4],
                  gears=[1, 4, 8])
    target = {"oms": [record(om, None, "dymbatch", [1, 4, 8])]}
    with AisBenchRunner(target, cfg=cfg_for(["batch", 3, 4, 4])) as r:
        assert r.get_input_metadata()[0].shape == [None, 3, 4, 4]
        out = r.infer({"x": np.ones((4, 3, 4, 4), np.float32)})
        assert out["embedding"].shape == (4, 3)
        with pytest.raises(PipelineError) as e:
            r.infer({"x": np.ones((3, 3, 4, 4), np.float32)})
        assert str(e.value) == ("om cannot run these inputs: batch 3 is not a gear of the .om ([1, 4, 8]); "
                                + UNSUPPORTED_FIX)
        assert r.unsupported({"x": [3, 3, 4, 4]}) == "batch 3 is not a gear of the .om ([1, 4, 8])"
    assert [c[1:] for c in double.FakeInferSession.calls if c[0] == "infer"] == [("dymbatch", [[4, 3, 4, 4]])]


def test_dymdims_per_batch_om(tmp_path):
    om = write_om(tmp_path / "om", "a_bs1", [1, 1, "frames", 8], mode="dymdims", desc_shape=[1, 1, -1, 8],
                  dims_gears=[[11], [21]])
    cfg = cfg_for(["batch", 1, "frames", 8])
    with AisBenchRunner({"oms": [record(om, 1, "dymdims", [[11], [21]])]}, cfg=cfg) as r:
        assert r.get_input_metadata()[0].shape == [1, 1, None, 8]
        x = np.arange(21 * 8, dtype=np.float32).reshape(1, 1, 21, 8)
        np.testing.assert_allclose(r.infer({"x": x})["embedding"], x.mean(axis=(2, 3)), rtol=1e-6)
        with pytest.raises(PipelineError, match=r"^om cannot run these inputs: dims \[15\] match no gear of the .om "
                                                r"\(\[\[11\], \[21\]\]\); use infer.batch_size"):
            r.infer({"x": np.zeros((1, 1, 15, 8), np.float32)})
        assert r.unsupported({"x": [1, 1, 15, 8]}) == "dims [15] match no gear of the .om ([[11], [21]])"
        assert r.unsupported({"x": [1, 1, 11, 8]}) is None
    assert [c[1] for c in double.FakeInferSession.calls if c[0] == "infer"] == ["dymdims"]


def test_dymshape_gets_custom_sizes(tmp_path):
    om = write_om(tmp_path / "om", "s_bs1", [1, 3, 4, 4], mode="dymshape")
    target = {"oms": [record(om, 1, "dymshape")], "custom_sizes": [4096, 4096]}
    with AisBenchRunner(target, cfg=cfg_for(["batch", 3, 4, 4])) as r:
        assert r.infer({"x": np.ones((1, 3, 4, 4), np.float32)})["embedding"].shape == (1, 3)


class HiddenInputSession:
    """A session listing ATC's dynamic-batch input (older descriptors may expose it)."""

    def __init__(self, device_id, path):
        self.inputs = [double.Desc("x", "float32", [-1, 3]), double.Desc("ascend_mbatch_shape_data", "int64", [1])]

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return []


def test_atc_added_input_is_hidden(tmp_path):
    om = tmp_path / "om" / "m_dynbs.om"
    om.parent.mkdir()
    om.write_bytes(b"x")
    target = {"oms": [record(om, None, "dymbatch", [1, 2])]}
    for cfg in (cfg_for(["batch", 3]), None):
        r = AisBenchRunner(target, cfg=cfg, session_factory=HiddenInputSession)
        r.activate()
        assert [(m.name, m.shape) for m in r.get_input_metadata()] == [("x", [None, 3])]


class NamedOutputsSession:
    """OM outputs in another order than the config, named `<node>:<index>:<onnx name>`."""

    def __init__(self, device_id, path):
        self.times = []

    def get_inputs(self):
        return [double.Desc("x", "float32", [1, 3])]

    def get_outputs(self):
        return [double.Desc("ReduceMax_8:0:peak", "float32", [1]), double.Desc("ReduceMean_7:0:embedding", "float32", [1])]

    def infer(self, feeds, mode="static", custom_sizes=100000, out_array=True):
        assert isinstance(feeds, list) and mode == "static"
        self.times.append((1.0, 1.5))
        return [feeds[0].max(axis=1), feeds[0].mean(axis=1)]

    def summary(self):
        return double.Summary(self.times)


def test_outputs_named_by_onnx_name_when_the_om_carries_it(tmp_path):
    om = tmp_path / "om" / "m_bs1.om"
    om.parent.mkdir()
    om.write_bytes(b"x")
    r = AisBenchRunner({"oms": [record(om, 1)]}, cfg=cfg_for(["batch", 3]), session_factory=NamedOutputsSession)
    with r:
        out = r.infer({"x": np.array([[1.0, 2.0, 6.0]])})
    assert {k: v.tolist() for k, v in out.items()} == {"peak": [6.0], "embedding": [3.0]}
    assert r.last_device_ms == 0.5


def test_dtype_names():
    class Enum:
        name = "int64"

    assert [numpy_dtype(v) for v in ("dtype.float32", "float16", "dtype.double", 1, 9, Enum(),
                                     "TENSOR_DTYPE_FLOAT16", "3")] == [
        "float32", "float16", "float64", "float16", "int64", "int64", "float16", "int32"]
    with pytest.raises(PipelineError, match=r"unknown ais_bench tensor dtype 'dtype.bfloat16'"):
        numpy_dtype("dtype.bfloat16")


def test_missing_ais_bench_is_one_line(per_batch, monkeypatch):
    monkeypatch.setattr(ais_runner, "session_factory", None)
    monkeypatch.setitem(__import__("sys").modules, "ais_bench", None)
    cfg, target = per_batch
    with pytest.raises(PipelineError) as e:
        AisBenchRunner(target, cfg=cfg).activate()
    msg = str(e.value)
    assert msg.startswith("ais_bench is not installed (it is not on PyPI): install from source: pip3 install -v "
                          "'git+https://gitee.com/ascend/tools.git#egg=aclruntime&subdirectory=")
    assert msg.endswith("; or use BACKEND=ort-fp16 on a machine without an NPU") and "\n" not in msg


def test_load_failure_is_one_line(per_batch):
    def broken(device_id, path):
        raise RuntimeError("aclmdlLoadFromFile failed, ret=507011\nmore details")

    cfg, target = per_batch
    with pytest.raises(PipelineError) as e:
        AisBenchRunner(target, device_id=1, cfg=cfg, session_factory=broken).activate()
    assert str(e.value).startswith("ais_bench cannot load ")
    assert ("on device 1: RuntimeError: aclmdlLoadFromFile failed, ret=507011; check `npu-smi info`" in str(e.value))


def test_om_path_rules(tmp_path):
    om = tmp_path / "d" / "m.om"
    om.parent.mkdir()
    om.write_bytes(b"x")
    om.chmod(0o666)
    om.parent.chmod(0o777)
    assert check_om_path(om) == om.resolve()
    assert stat.S_IMODE(om.stat().st_mode) == 0o644                         # our own file: go-w removed
    assert stat.S_IMODE(om.parent.stat().st_mode) == 0o755
    link = tmp_path / "link.om"
    link.symlink_to(om)
    with pytest.raises(PipelineError, match=r"link.om is a symlink; ais_bench refuses symlinked models"):
        check_om_path(link)
    spaced = tmp_path / "my model.om"
    spaced.write_bytes(b"x")
    with pytest.raises(PipelineError, match=r"has characters ais_bench refuses \(allowed: A-Z a-z 0-9 _ . / -\)"):
        check_om_path(spaced)
    other = tmp_path / "m.onnx"
    other.write_bytes(b"x")
    with pytest.raises(PipelineError, match=r"m.onnx does not end in .om"):
        check_om_path(other)
    with pytest.raises(PipelineError, match=r"gone.om does not exist; run `make om BACKEND=om` first"):
        check_om_path(tmp_path / "gone.om")


def test_describe_reports_files_and_versions(per_batch):
    cfg, target = per_batch
    with AisBenchRunner(target, device_id=2, cfg=cfg) as r:
        d = r.describe()
    assert (d["backend"], d["device"], d["soc_version"], d["cann_version"], d["precision"]) == (
        "om", "npu:2", "Ascend310P3", "8.0.RC3", "force_fp16")
    assert [(o["batch"], o["sha256"]) for o in d["oms"]] == [(o["batch"], o["sha256"]) for o in target["oms"]]
    assert d["runtime"].startswith("ais_bench ? / aclruntime ?")           # not installed here: the double ran
    assert os.path.basename(d["oms"][0]["path"]) == "m_bs1.om"


# ---- every generation, every accepted batch size ------------------------------------------------------
def dynamic_batch(tmp_path, gears=(8, 1, 4)):
    om = write_om(tmp_path / "om", "m_dynbs", ["batch", 3, 4, 4], mode="dymbatch", desc_shape=[-1, 3, 4, 4],
                  gears=gears)
    return cfg_for(["batch", 3, 4, 4]), {"backend": "om", "oms": [record(om, None, "dymbatch", gears)]}


def static_batches(tmp_path, sizes=(4, 1, 2)):
    oms = [record(write_om(tmp_path / "om", f"m_bs{b}", [b, 3, 4, 4]), b) for b in sizes]
    return cfg_for(["batch", 3, 4, 4]), {"backend": "om", "oms": oms}


def test_accepted_batch_sizes_for_both_kinds(tmp_path):
    assert AisBenchRunner(static_batches(tmp_path)[1], cfg=cfg_for(["batch", 3, 4, 4])).accepted_batch_sizes() == [
        1, 2, 4]
    cfg, target = dynamic_batch(tmp_path)
    assert AisBenchRunner(target, cfg=cfg).accepted_batch_sizes() == [1, 4, 8]
    target["oms"][0]["gears"] = []
    assert AisBenchRunner(target, cfg=cfg).accepted_batch_sizes() is None      # gears not recorded: not limited


@pytest.mark.parametrize("kind", ["static", "dymbatch"])
@pytest.mark.parametrize("generation", double.GENERATIONS)
def test_every_generation_runs_every_accepted_size(tmp_path, monkeypatch, generation, kind):
    monkeypatch.setitem(double.FLAVOUR, "name", generation)
    cfg, target = (static_batches if kind == "static" else dynamic_batch)(tmp_path)
    rng = np.random.default_rng(1)
    with AisBenchRunner(target, cfg=cfg) as r:
        sizes = r.accepted_batch_sizes()
        assert sizes == ([1, 2, 4] if kind == "static" else [1, 4, 8])
        for b in sizes:
            x = rng.normal(size=(b, 3, 4, 4)).astype(np.float32)
            out = r.infer({"x": x})
            np.testing.assert_allclose(out["embedding"], x.mean(axis=(2, 3)), rtol=1e-5)
            np.testing.assert_array_equal(out["peak"], x.max(axis=(2, 3)))
            assert r.last_device_ms is not None and r.last_device_ms >= 0
            sess = r.sessions[None if kind == "dymbatch" else b]
            summary = sess.sumary() if generation.startswith("2023") else sess.summary()
            assert len(summary.exec_time_list) == 1                           # reset before every run
        with pytest.raises(PipelineError) as e:                              # a size it has not built: one line
            r.infer({"x": np.zeros((3, 3, 4, 4), np.float32)})
        assert "\n" not in str(e.value) and str(e.value).startswith(
            "om cannot run these inputs: no .om for batch 3 (built: [1, 2, 4])" if kind == "static" else
            "om cannot run these inputs: batch 3 is not a gear of the .om ([8, 1, 4])")
    calls = double.FakeInferSession.calls
    infers = [c[1:] for c in calls if c[0] == "infer"]
    assert [s[0][0] for _, s in infers] == sizes
    assert {m for m, _ in infers} == {kind}
    setter = [c[1] for c in calls if c[0] == "set_dynamic_batchsize"]
    assert setter == ([] if kind == "static" else sizes)     # the runner on 2023-early, infer() itself later
    assert all(type(n) is int for n in setter)


def test_2023_early_without_the_setter_runs_the_largest_gear_only(tmp_path, capsys):
    """What the runner avoids: ais_bench before 2023-09-08 ignores mode='dymbatch' (no branch, no check)."""
    cfg, target = dynamic_batch(tmp_path)
    sess = double.session_class("2023-early")(0, target["oms"][0]["path"])
    assert sess.get_inputs()[0].size == 8 * 48 * 4                           # the descriptor is the largest gear
    assert sess.infer([np.ones((8, 3, 4, 4), np.float32)], mode="dymbatch")[0].shape == (8, 3)
    with pytest.raises(RuntimeError, match=r"^\[-1\]\[ACL: general failure\] "):
        sess.infer([np.ones((4, 3, 4, 4), np.float32)], mode="dymbatch")
    assert "[ERROR] Check i:0 name:x in size:768 needsize:1536 not match" in capsys.readouterr().out
    with pytest.raises(TypeError, match="incompatible function arguments"):
        sess.set_dynamic_batchsize("4")                                      # pybind11 int, as the CLI passes
    with pytest.raises(RuntimeError, match=r"^\[1\]\[ACL: invalid parameter\] "):
        sess.set_dynamic_batchsize(3)
    assert "[ERROR] the dymBatch parameter is not correct" in capsys.readouterr().out
    sess.set_dynamic_batchsize(4)
    assert sess.infer([np.ones((4, 3, 4, 4), np.float32)], mode="anything")[0].shape == (4, 3)
    assert isinstance(sess.sumary().exec_time_list[-1], float)               # durations, not pairs


@pytest.mark.parametrize("generation,has,lacks", [
    ("2023-early", ["sumary", "reset_sumaryinfo", "set_dynamic_batchsize"],
     ["summary", "reset_summaryinfo", "free_resource", "infer_mode_switch"]),
    ("2023-late", ["sumary", "reset_sumaryinfo", "free_resource", "infer_mode_switch"],
     ["summary", "reset_summaryinfo"]),
    ("2024", ["summary", "reset_summaryinfo", "free_resource"], ["sumary", "reset_sumaryinfo"]),
    ("2025", ["summary", "reset_summaryinfo", "free_resource"], ["sumary", "reset_sumaryinfo"])])
def test_double_spells_each_generation(tmp_path, generation, has, lacks):
    om = str(write_om(tmp_path, "m_bs1", [1, 3, 4, 4]))
    sess = double.session_class(generation)(0, om)
    assert all(callable(getattr(sess, n)) or n == "infer_mode_switch" for n in has)
    for name in lacks:
        with pytest.raises(AttributeError):
            getattr(sess, name)()
    x = np.zeros((1, 3, 4, 4), np.float32)
    if generation == "2023-early":
        with pytest.raises(TypeError, match="out_array"):
            sess.infer([x], out_array=True)                                  # 9d6da90 has no out_array
        assert sess.infer([x], mode="dynbatch")[0].shape == (1, 3)           # no mode check at all
    elif generation == "2025":
        with pytest.raises(ValueError, match="the list be checked is not a list!"):
            sess.infer((x,))
        with pytest.raises(ValueError, match="infer mode is illegal, Please check."):
            sess.infer([x], mode="dynbatch")
    else:
        assert sess.infer((x,))[0].shape == (1, 3)                           # tuples pass before 2024-11
        with pytest.raises(RuntimeError, match=r'^wrong infer_mode:dynbatch, only support "static","dymbatch"'):
            sess.infer([x], mode="dynbatch")
    sess.infer([x])
    pairs = generation != "2023-early"
    times = (sess.sumary() if generation.startswith("2023") else sess.summary()).exec_time_list
    assert isinstance(times[-1], tuple) is pairs


class NoBatchSetter:
    """A session whose infer() ignores mode and that has no set_dynamic_batchsize (no known release)."""

    def __init__(self, device_id, path):
        self.inner = double.session_class("2023-early")(device_id, path)

    def get_inputs(self):
        return self.inner.get_inputs()

    def get_outputs(self):
        return self.inner.get_outputs()

    def infer(self, feeds, mode="static", custom_sizes=100000):
        return self.inner.infer(feeds, mode, custom_sizes)

    def sumary(self):
        return self.inner.sumary()


def test_dynamic_batch_without_any_way_to_set_it_is_refused(tmp_path):
    cfg, target = dynamic_batch(tmp_path)
    with AisBenchRunner(target, cfg=cfg, session_factory=NoBatchSetter) as r:
        assert r.accepted_batch_sizes() == [8]
        assert r.infer({"x": np.ones((8, 3, 4, 4), np.float32)})["embedding"].shape == (8, 3)   # the largest gear
        with pytest.raises(PipelineError) as e:
            r.infer({"x": np.ones((4, 3, 4, 4), np.float32)})
    msg = str(e.value)
    assert msg.startswith("ais_bench (version unknown) cannot run this dynamic-batch .om at batch 4: its infer() has "
                          "no dymbatch mode and its session has no set_dynamic_batchsize; upgrade ais_bench and "
                          "aclruntime (pip3 install -v --force-reinstall 'git+https://gitee.com/ascend/tools.git")
    assert msg.endswith("or build per-batch .om files (atc.batch_mode: static)") and "\n" not in msg


def test_setter_failure_is_one_line(tmp_path, monkeypatch):
    """Gears not recorded in the target: the 2023 setter itself rejects a batch that is no gear."""
    monkeypatch.setitem(double.FLAVOUR, "name", "2023-early")
    cfg, target = dynamic_batch(tmp_path)
    target["oms"][0]["gears"] = []
    with AisBenchRunner(target, cfg=cfg) as r:
        with pytest.raises(PipelineError) as e:
            r.infer({"x": np.ones((3, 3, 4, 4), np.float32)})
    assert str(e.value) == ("ais_bench set_dynamic_batchsize(3) failed: AclError: [1][ACL: invalid parameter]; use a "
                            "gear of the .om (make om records them in target-om.json)")


@pytest.mark.parametrize("generation", ["2023-early", "2025"])
def test_batching_rule_pads_to_gears(tmp_path, monkeypatch, generation):
    """pipeline.batching.run_rows over the runner's accepted sizes: 6 rows on gears [1, 4, 8] run as one padded 8."""
    from pipeline.batching import run_rows

    monkeypatch.setitem(double.FLAVOUR, "name", generation)
    cfg, target = dynamic_batch(tmp_path)
    x = np.random.default_rng(2).normal(size=(6, 3, 4, 4)).astype(np.float32)
    with AisBenchRunner(target, cfg=cfg) as r:
        out, runs = run_rows(r, {"x": x})
    assert runs == 1 and out["embedding"].shape == (6, 3)
    np.testing.assert_allclose(out["embedding"], x.mean(axis=(2, 3)), rtol=1e-5)
    assert [c[2][0][0] for c in double.FakeInferSession.calls if c[0] == "infer"] == [8]


@pytest.mark.parametrize("generation", double.GENERATIONS)
def test_dymdims_in_every_generation(tmp_path, monkeypatch, generation):
    """Audio .om with --dynamic_dims gears: every generation's infer() sets the dims from the feed shapes."""
    monkeypatch.setitem(double.FLAVOUR, "name", generation)
    om = write_om(tmp_path / "om", "a_bs1", [1, 1, "frames", 8], mode="dymdims", desc_shape=[1, 1, -1, 8],
                  dims_gears=[[11], [21]])
    with AisBenchRunner({"oms": [record(om, 1, "dymdims", [[11], [21]])]}, cfg=cfg_for(["batch", 1, "frames", 8])) as r:
        assert r.accepted_batch_sizes() == [1]
        for frames in (21, 11):
            x = np.arange(frames * 8, dtype=np.float32).reshape(1, 1, frames, 8)
            np.testing.assert_allclose(r.infer({"x": x})["embedding"], x.mean(axis=(2, 3)), rtol=1e-6)
    assert [c[1:] for c in double.FakeInferSession.calls if c[0] == "infer"] == [
        ("dymdims", [[1, 1, 21, 8]]), ("dymdims", [[1, 1, 11, 8]])]


@pytest.mark.parametrize("generation,label", [("2023-early", "sumary, infer without dymbatch"),
                                              ("2024", "summary, dymbatch")])
def test_describe_labels_the_api_by_features(per_batch, monkeypatch, generation, label):
    monkeypatch.setitem(double.FLAVOUR, "name", generation)
    cfg, target = per_batch
    with AisBenchRunner(target, cfg=cfg) as r:
        d = r.describe()
    assert d["runtime"] == f"ais_bench ? / aclruntime ? (API {label})"
    assert d["ais_bench_api"]["reset"] == ("reset_sumaryinfo" if generation == "2023-early" else "reset_summaryinfo")
