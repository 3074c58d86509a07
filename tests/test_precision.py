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


# ---- the price of a fix: vector before cube, never what the SoC cannot run in fp32, never a recurrence ----------

def conv_then_layernorm():
    """A 1x1 Conv whose outputs reach ~300, then a LayerNorm over channels written out (opset 13): the variance
    path (Pow, ReduceMean, Add, Sqrt) goes beyond 65504 in fp16."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.normal(size=(8, 8, 1, 1)) * 100).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("ReduceMean", ["c"], ["m"], name="mean", axes=[1]),
             helper.make_node("Sub", ["c", "m"], ["d"], name="sub"),
             helper.make_node("Pow", ["d", "two"], ["p"], name="pow"),
             helper.make_node("ReduceMean", ["p"], ["v"], name="var", axes=[1]),
             helper.make_node("Add", ["v", "eps"], ["ve"], name="add"),
             helper.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
             helper.make_node("Div", ["d", "s"], ["y"], name="div")]
    graph = helper.make_graph(nodes, "conv_ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = [{"x": np.random.default_rng(20 + i).normal(size=(1, 8, 4, 4)).astype(np.float32)} for i in range(2)]
    return model, feeds


def test_search_prefers_a_vector_keep_over_a_conv_keep():
    from convert.compute import node_costs, shares

    model, feeds = conv_then_layernorm()
    costs = node_costs(model)
    result = search(model, feeds, CFG, layer_compare(model, feeds), costs=costs)
    assert not result["before"]["passed"] and result["passed"] and result["tier"] == "vector"
    kept = {n.op_type for n in model.graph.node if n.name in result["keep"]}
    assert "Pow" in kept and "Conv" not in kept
    assert result["fp32_cube_share"] == 0.0 and result["fp32_share"] == result["fp32_vector_share"] > 0
    with_conv = result["keep"] + ["conv"]                      # keeping the Conv as well passes too, at a higher price
    assert evaluate(model, feeds, CFG, with_conv)["passed"]
    assert shares(costs, with_conv)["fp32_share"] > result["fp32_share"]


def tiny_weight_conv():
    """Conv weights around 2e-7, in fp16's subnormal range: only keeping the Conv in fp32 passes the gate."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array((rng.normal(size=(4, 3, 3, 3)) * 2e-7).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "tiny_w",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = [{"x": (np.random.default_rng(30 + i).normal(size=(1, 3, 8, 8)) * 1000).astype(np.float32)}
             for i in range(2)]
    return model, feeds


def test_a_soc_without_fp32_cube_never_gets_a_conv_keep():
    from convert.soc_precision import fp32_capable

    model, feeds = tiny_weight_conv()
    rows = layer_compare(model, feeds)
    on = lambda soc: (lambda name, op: fp32_capable(op, soc)[0] is not False)  # noqa: E731
    a2 = search(model, feeds, CFG, rows, allowed=on("Ascend910B2"))
    assert not a2["before"]["passed"] and a2["passed"] and a2["keep"] == ["conv"] and a2["fp32_cube_share"] == 1.0
    for soc in ("Ascend310", "Ascend310P3", "Ascend910A"):
        r = search(model, feeds, CFG, rows, allowed=on(soc))
        assert not r["passed"] and r["keep"] == [] and "conv" in r["excluded"]


def gru_model(extra_mul_name="/head/fp16_recurrence/Mul"):
    """x[6,1,4] -> GRU (hidden 8) -> Squeeze -> MatMul -> Mul by 1 named like an emulated-recurrence node."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(size=(1, 24, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 24, 8)).astype(np.float32), "R"),
             numpy_helper.from_array(np.array([1], np.int64), "ax"),
             numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "m"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("GRU", ["x", "W", "R"], ["Y", "Yh"], name="gru", hidden_size=8, linear_before_reset=1),
             helper.make_node("Squeeze", ["Y", "ax"], ["s"], name="squeeze"),
             helper.make_node("MatMul", ["s", "m"], ["z"], name="mm"),
             helper.make_node("Mul", ["z", "one"], ["y"], name=extra_mul_name)]
    graph = helper.make_graph(nodes, "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    feeds = [{"x": np.random.default_rng(40 + i).normal(size=(6, 1, 4)).astype(np.float32)} for i in range(2)]
    return model, feeds


def test_a_gru_node_is_never_offered():
    model, feeds = gru_model()
    cfg = copy.deepcopy(CFG)
    cfg["compare"]["gate"].update(max_rel_l2=1e-9, min_cosine=1.0)      # nothing short of fp32 everywhere passes
    result = search(model, feeds, cfg, layer_compare(model, feeds))
    assert not result["passed"] and result["keep"] == []
    assert result["excluded"]["gru"].startswith("recurrent")
    assert result["excluded"]["/head/fp16_recurrence/Mul"].startswith("recurrent")
    assert "mm" not in result["excluded"]                               # the MatMul after it was a candidate


def test_the_recurrence_is_offered_unrolled_instead():
    pytest.importorskip("convert.rnn_fp16")
    from convert.compute import node_costs
    from precision.stage import unroll_option

    model, feeds = gru_model(extra_mul_name="mul")
    option, why = unroll_option(model, feeds, CFG, lambda name, op: True, node_costs)
    assert why == "" and option["export"] == {"unroll_recurrence": True}
    assert option["option"].startswith("unroll the recurrence at export (export.unroll_recurrence: true)")
    assert not any(n == "gru" for n in option["keep"]) and "fp32_cube_share" in option and "compiles" in option


def test_the_recommendation_is_the_cheapest_passing_option_the_soc_compiles():
    from precision.stage import recommend

    opts = [{"option": "fp16", "passed": False, "fp32_compute_share": 0.0, "compiles": {"Ascend310P": True}},
            {"option": "conv keep", "passed": True, "fp32_compute_share": 0.2, "compiles": {"Ascend310P": False}},
            {"option": "vector keep", "passed": True, "fp32_compute_share": 0.5, "compiles": {"Ascend310P": None}},
            {"option": "origin", "passed": True, "fp32_compute_share": 1.0, "compiles": {"Ascend310P": False}}]
    assert recommend(opts, "Ascend310P")["option"] == "vector keep"        # unverified counts as compiling
    assert recommend(opts, None)["option"] == "conv keep"
    assert recommend(opts[:1], None) is None
