"""convert.compute: flops per node from ONNX shape inference, the unit each op runs on, and fp32 shares."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from convert.compute import node_costs, shares, unit_of


def tiny():
    """x[N,3,8,8] -> Conv 3x3 (4 filters, pad 1) -> Relu -> Flatten -> MatMul [256,10] -> ReduceMean -> y[N,1]"""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(256, 10)).astype(np.float32), "m")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "m"], ["z"], name="mm"),
             helper.make_node("ReduceMean", ["z"], ["y"], name="mean", axes=[1])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_exact_flops_and_units():
    c = node_costs(tiny())                                           # symbolic N counts as 1
    assert c["conv"] == {"op_type": "Conv", "flops": 2.0 * (4 * 8 * 8) * (3 * 3 * 3), "unit": "cube", "kind": "Conv"}
    assert c["relu"] == {"op_type": "Relu", "flops": 256.0, "unit": "vector", "kind": "Relu"}
    assert c["flat"] == {"op_type": "Flatten", "flops": 0.0, "unit": "none", "kind": "Flatten"}
    assert c["mm"] == {"op_type": "MatMul", "flops": 2.0 * 10 * 256, "unit": "cube", "kind": "MatMul"}
    assert c["mean"] == {"op_type": "ReduceMean", "flops": 10.0, "unit": "vector", "kind": "ReduceMean"}    # the input's elements
    doubled = node_costs(tiny(), {"x": [2, 3, 8, 8]})
    assert all(doubled[n]["flops"] == 2 * c[n]["flops"] for n in c)


def test_shares_split_cube_and_vector():
    c = node_costs(tiny())
    total = 13824 + 256 + 5120 + 10
    s = shares(c, ["relu", "mm", "flat"])
    assert s["fp32_cube_share"] == pytest.approx(5120 / total)
    assert s["fp32_vector_share"] == pytest.approx(256 / total)
    assert s["fp32_share"] == pytest.approx((5120 + 256) / total)
    assert shares(c, []) == {"fp32_share": 0.0, "fp32_cube_share": 0.0, "fp32_vector_share": 0.0}
    assert shares(c, list(c))["fp32_share"] == pytest.approx(1.0)


def test_gemm_gru_and_einsum():
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "g"),
             numpy_helper.from_array(rng.normal(size=(2, 9, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(2, 9, 3)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(size=(5, 7)).astype(np.float32), "e")]
    nodes = [helper.make_node("Gemm", ["a", "g"], ["ga"], name="gemm", transB=1),                 # [3,4] x [6,4]^T
             helper.make_node("GRU", ["s", "W", "R"], ["gy", "gh"], name="gru", hidden_size=3,
                              direction="bidirectional"),                                            # s [5,2,4]
             helper.make_node("Einsum", ["b", "e"], ["eo"], name="ein", equation="bij,jk->bik")]      # b [2,3,5]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4]),
                     helper.make_tensor_value_info("s", TensorProto.FLOAT, [5, 2, 4]),
                     helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("ga", "gy", "eo")], inits)
    c = node_costs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert c["gemm"]["flops"] == 2.0 * 3 * 6 * 4 and c["gemm"]["unit"] == "cube"
    assert c["gru"]["flops"] == 2.0 * 5 * 2 * (2 * 9 * 4 + 2 * 9 * 3)      # every step, both directions
    assert c["ein"]["flops"] == 2.0 * 2 * 3 * 5 * 7


def test_unit_rule():
    assert [unit_of(t) for t in ("Conv", "ConvTranspose", "Gemm", "LSTM", "Einsum")] == ["cube"] * 5
    assert [unit_of(t) for t in ("Reshape", "Transpose", "Cast", "Constant", "Gather", "Squeeze")] == ["none"] * 6
    assert [unit_of(t) for t in ("Add", "Pow", "Softmax", "LayerNormalization", "MaxPool", "Erf")] == ["vector"] * 6


def test_layerwise_flops_is_node_costs():
    from precision.layerwise import flops

    m = tiny()
    rows = [{"node": n} for n in ("conv", "relu", "mm")]
    assert flops(m, rows) == {n: node_costs(m)[n]["flops"] for n in ("conv", "relu", "mm")}


def test_a_depthwise_conv_is_its_own_kind_and_unverified_even_where_conv2d_runs_fp32():
    """Ascend may give a depthwise Conv DepthwiseConv2D, whose kernel is fp16 only: never 'compiles' for certain."""
    from onnx import TensorProto, helper, numpy_helper

    from convert.compute import node_costs
    from convert.soc_precision import fp32_capable

    dw = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "dw")
    full = numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "full")
    nodes = [helper.make_node("Conv", ["x", "dw"], ["a"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "full"], ["y"], name="pointwise")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], [dw, full])
    costs = node_costs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert costs["depthwise"]["kind"] == "Conv(depthwise)" and costs["pointwise"]["kind"] == "Conv"
    assert costs["depthwise"]["flops"] == 2 * 8 * 6 * 6 * 9
    assert fp32_capable("Conv", "Ascend910B2")[0] is True
    assert fp32_capable("Conv(depthwise)", "Ascend910B2")[0] is None
    assert fp32_capable("Conv(depthwise)", "Ascend310P3")[0] is False
