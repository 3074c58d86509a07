"""Precision doctor on a model built to fail in fp16: a LayerNorm (opset 13, decomposed) over large activations."""
import copy
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compare.stage import check_sample
from pipeline.config import gate_for
from precision.stage import gate_lines
from precision.emulate import round_fp16
from precision.fix import candidates, evaluate, search
from precision.layerwise import flops, layer_compare, node_origin, session
from precision.mixlist import mix_option

CFG = {"compare": {"gate": {"max_rel_l2": 0.01, "min_cosine": 0.9999, "max_violation_fraction": None},
                   "per_output": {}, "rtol": 0.01, "atol_scale": 0.01}}


class LoudNorm(torch.nn.Module):
    """Activations around 300: (x - mean)^2 reaches 1e5, beyond fp16's 65504, in the variance path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(64, 256)
        self.norm = torch.nn.LayerNorm(256)
        self.out = torch.nn.Linear(256, 32)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.inp(x) * 300.0)))


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    path = tmp_path_factory.mktemp("prec") / "loud.onnx"
    x = torch.randn(4, 64)
    torch.onnx.export(LoudNorm().eval(), (x,), str(path), input_names=["x"], output_names=["y"], opset_version=13,
                      dynamo=False)
    model = onnx.load(str(path))
    feeds = [{"x": np.random.default_rng(i).normal(size=(4, 64)).astype(np.float32)} for i in range(2)]
    return model, feeds


def test_fp16_fails_and_the_culprit_ranks_first(loud):
    model, feeds = loud
    assert not evaluate(model, feeds, CFG)["passed"]
    rows = layer_compare(model, feeds)
    pow_node = next(r for r in rows if r["op_type"] == "Pow")
    assert pow_node["overflow"] > 0                                   # the fp32 reference exceeds 65504 here
    assert candidates(rows)[0] == pow_node["node"]                    # first culprit in topological order
    assert node_origin(pow_node["node"]) == "norm"


def test_generated_keep_list_turns_failed_into_passed(loud):
    model, feeds = loud
    rows = layer_compare(model, feeds)
    result = search(model, feeds, CFG, rows)
    assert not result["before"]["passed"] and result["passed"] and result["after"]["passed"]
    names = {n.name for n in model.graph.node}
    assert result["keep"] and set(result["keep"]) <= names          # ATC would find every name
    kept_types = {n.op_type for n in model.graph.node if n.name in set(result["keep"])}
    assert "Pow" in kept_types and kept_types <= {"Pow", "ReduceMean", "Add", "Sqrt", "Sub", "Div"}
    for node in result["keep"]:                                      # minimal: no kept node can be dropped
        trial = [n for n in result["keep"] if n != node]
        assert not evaluate(model, feeds, CFG, trial)["passed"]
    after = layer_compare(model, feeds, keep_nodes=result["keep"])
    assert max(r["rel_l2"] for r in after) < 0.01


def test_compute_share_estimate(loud):
    model, feeds = loud
    rows = layer_compare(model, feeds)
    fl = flops(model, rows)
    gemms = [fl[r["node"]] for r in rows if r["op_type"] in ("Gemm", "MatMul")]
    assert max(gemms) == pytest.approx(2 * 4 * 256 * 64) or max(gemms) == pytest.approx(2 * 4 * 32 * 256)
    assert sum(fl.values()) > sum(gemms)


@pytest.fixture(scope="module")
def linear():
    """y = x W + b: fp16 rounding gives relative errors near 5e-4 per element, far inside rel L2 1%."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(64, 32)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(32,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
         helper.make_node("Add", ["xw", "b"], ["y"], name="add")],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": np.random.default_rng(10 + i).normal(size=(4, 64)).astype(np.float32)} for i in range(2)]
    return model, feeds


def compare_verdict(model, feeds, cfg) -> bool:
    """What `make compare` decides for the fp16 emulation's outputs: every sample of every output passes."""
    s16, s32 = session(round_fp16(model)), session(model)
    names = [o.name for o in s32.get_outputs()]
    passed = True
    for f in feeds:
        for name, t, r in zip(names, s16.run(None, f), s32.run(None, f)):
            _, fails = check_sample(t, r, gate_for(cfg, name), cfg["compare"])
            passed &= not fails
    return passed


@pytest.mark.parametrize("max_violation_fraction, expected", [(0.01, False), (None, True)])
def test_doctor_and_compare_give_the_same_verdict(linear, max_violation_fraction, expected):
    model, feeds = linear
    cfg = copy.deepcopy(CFG)
    cfg["compare"].update(rtol=1e-4, atol_scale=1e-6)                 # tighter than fp16's 4.9e-4 rounding
    cfg["compare"]["gate"]["max_violation_fraction"] = max_violation_fraction
    doc = evaluate(model, feeds, cfg)
    y = doc["outputs"]["y"]
    assert y["rel_l2"] < 0.01 and y["cosine"] > 0.9999                # rel L2 and cosine alone would pass
    assert y["violation_fraction"] > 0.5                              # most elements are outside 1e-4 relative
    assert doc["passed"] is expected
    assert compare_verdict(model, feeds, cfg) is expected
    if not expected:
        assert y["failed_samples"] == len(feeds) and y["failures"]
        assert all(f.startswith("violation fraction") for f in y["failures"])


def test_doctor_uses_the_per_output_gate(linear):
    model, feeds = linear
    cfg = copy.deepcopy(CFG)
    assert evaluate(model, feeds, cfg)["passed"]
    cfg["compare"]["per_output"]["y"] = {"max_rel_l2": 1e-5, "min_cosine": 0.9999, "max_violation_fraction": None}
    doc = evaluate(model, feeds, cfg)
    assert not doc["passed"] and doc["outputs"]["y"]["failures"][0].startswith("rel_l2")
    assert doc["passed"] == compare_verdict(model, feeds, cfg)


def test_plot_gate_lines_follow_the_config():
    same = {"a": {"max_rel_l2": 0.02}, "b": {"max_rel_l2": 0.02}}
    assert gate_lines(same) == [(0.02, "gate: relative L2 0.02")]
    differ = {"a": {"max_rel_l2": 0.02}, "b": {"max_rel_l2": 0.005}}
    assert gate_lines(differ) == [(0.005, "gate of b: relative L2 0.005"), (0.02, "gate of a: relative L2 0.02")]


NODE_TYPES = {"p": "Pow", "s": "Softmax", "m": "ReduceMean"}


def test_mixlist_without_a_mapping_suggests_keep_dtype(monkeypatch):
    monkeypatch.setitem(sys.modules, "convert.ascend_ops", None)     # import fails: no mapping known
    mix = mix_option(["p", "m"], NODE_TYPES, 17)
    assert not mix["usable"] and mix["unmapped_onnx_types"] == ["Pow", "ReduceMean"]
    assert "no ONNX-to-Ascend op-type mapping known" in mix["note"] and "--keep_dtype (2 node(s))" in mix["note"]
    assert mix_option([], NODE_TYPES, 17) is None


def test_mixlist_black_lists_ascend_types_and_keeps_the_rest_by_name(monkeypatch):
    fake = types.ModuleType("convert.ascend_ops")

    def mixlist_for(onnx_types, opset):
        known = {"Softmax": ["SoftmaxV2"], "ReduceMean": ["ReduceMeanD", "ReduceMean"]}
        mapped = sorted({a for t in onnx_types for a in known.get(t, [])})
        return {"black-list": {"to-add": mapped}}, [t for t in onnx_types if t not in known]

    fake.mixlist_for = mixlist_for
    monkeypatch.setitem(sys.modules, "convert.ascend_ops", fake)
    mix = mix_option(["p", "s", "m"], NODE_TYPES, 17)
    assert mix["usable"] and mix["onnx_types"] == ["ReduceMean", "Softmax"] and mix["keep_nodes"] == ["p"]
    assert mix["atc"] == {"precision_mode": "allow_mix_precision", "keep_dtype": ["p"],
                          "modify_mixlist": {"black-list": {"to-add": ["ReduceMean", "ReduceMeanD", "SoftmaxV2"]}}}
    assert "Pow" in mix["note"] and "--keep_dtype (1 node(s))" in mix["note"]
    assert mix["option"].startswith("allow_mix_precision + modify_mixlist black-list ['ReduceMean', 'ReduceMeanD'")


def test_mixlist_with_the_real_mapping():
    ops = pytest.importorskip("convert.ascend_ops")
    mix = mix_option(["s"], {"s": "Softmax"}, 17)
    expected = ops.ascend_op_types("Softmax", 17)
    if expected:
        assert mix["usable"] and set(expected) <= set(mix["atc"]["modify_mixlist"]["black-list"]["to-add"])
    else:
        assert not mix["usable"] and mix["unmapped_onnx_types"] == ["Softmax"]


def test_fp16_target_casts_shape_arithmetic_to_fp16():
    """x / sqrt(float(shape[-1])): the int64 -> float Cast must become an fp16 Cast in the fp16 target (as the
    converter types its output), or onnxruntime cannot load the model (BEiT's attention scale)."""
    import onnxruntime as ort

    from convert.fp16 import to_fp16

    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "start", "end"], ["d"], name="slice"),
             helper.make_node("Cast", ["d"], ["df"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Sqrt", ["df"], ["r"], name="sqrt"),
             helper.make_node("Div", ["x", "r"], ["y"], name="div")]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "start"),
             numpy_helper.from_array(np.array([2**62], np.int64), "end")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m16 = to_fp16(model)
    cast = next(n for n in m16.graph.node if n.name == "cast")
    assert next(a.i for a in cast.attribute if a.name == "to") == TensorProto.FLOAT16
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    sess = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x / 4.0, rtol=1e-3)


def test_fp16_target_keeps_tensors_between_kept_nodes_in_fp32():
    """Nodes kept in fp32 pass fp32 tensors to each other, and to a graph output, as ATC's keep_dtype does: a chain
    of kept nodes gives the fp32 result to the bit; the converter alone rounded every tensor between them to fp16."""
    import onnxruntime as ort

    from convert.fp16 import to_fp16

    w = numpy_helper.from_array(np.full((8, 8), 1.0 / 3.0, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm1"),
             helper.make_node("Add", ["a", "x"], ["b"], name="add"),
             helper.make_node("MatMul", ["b", "w"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32) * 1.001
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    ref = run(model)
    all_kept = to_fp16(model, keep_nodes=["mm1", "add", "mm2"])
    assert [n.op_type for n in all_kept.graph.node] == ["MatMul", "Add", "MatMul"]
    assert all_kept.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    np.testing.assert_array_equal(run(all_kept), ref)
    middle = to_fp16(model, keep_nodes=["mm1", "mm2"])          # add in fp16: casts to fp16 and back around it
    casts = [n for n in middle.graph.node if n.op_type == "Cast"]
    assert len(casts) >= 3 and run(middle).dtype == np.float32
    assert {next(a.i for a in n.attribute if a.name == "to") for n in casts} == {TensorProto.FLOAT, TensorProto.FLOAT16}


def test_fp16_target_gives_kept_nodes_their_own_copy_of_a_shared_constant():
    """A constant read by a kept node and by an fp16 node: without its own fp32 copy for the kept node, the
    converter leaves it fp32 for both and onnxruntime refuses the fp16 node (Magika's LayerNorm scale)."""
    import onnxruntime as ort

    from convert.fp16 import to_fp16

    w = numpy_helper.from_array(np.full((8,), 0.5, np.float32), "w")
    nodes = [helper.make_node("Mul", ["x", "w"], ["a"], name="kept_mul"),
             helper.make_node("Add", ["a", "w"], ["y"], name="fp16_add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m16 = to_fp16(model, keep_nodes=["kept_mul"])
    inits = {i.name: i.data_type for i in m16.graph.initializer}
    assert inits == {"w": TensorProto.FLOAT16, "w__fp32": TensorProto.FLOAT}
    x = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)
    got = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x * 0.5 + 0.5, rtol=2e-3, atol=2e-3)
