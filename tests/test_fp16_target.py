"""The ort-fp16 target (convert/fp16.py) and what it reports it computes in fp16 (convert/fp16_truth.py)."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from convert.fp16 import emulate_fp16, round_fp16
from convert.fp16_truth import CLASSES, cpu_fp16_kernel_ops, label, node_classes, short_line, truth
from pipeline.errors import ConfigError


def model_of(nodes, inits=(), n_in=8, n_out=8, inputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n_out])],
                              list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, **feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def matmul_add_matmul():
    w = numpy_helper.from_array(np.full((8, 8), 1.0 / 3.0, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm1"),
             helper.make_node("Add", ["a", "x"], ["b"], name="add"),
             helper.make_node("MatMul", ["b", "w"], ["y"], name="mm2")]
    return model_of(nodes, [w])


X = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32) * 1.001


def test_every_tensor_between_ops_is_rounded_to_fp16():
    """The result equals a NumPy chain that rounds inputs, weights and every intermediate to fp16."""
    h = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
    w = h(np.full((8, 8), 1.0 / 3.0, np.float32))
    expected = h(h(h(h(X) @ w) + h(X)) @ w)
    m16, _ = emulate_fp16(matmul_add_matmul())
    np.testing.assert_allclose(run(m16, x=X), expected, rtol=2e-3)         # fp32 accumulation order only
    assert np.abs(run(m16, x=X) - run(matmul_add_matmul(), x=X)).max() > 1e-4   # it does round


def test_kept_nodes_pass_fp32_to_each_other_and_to_the_output():
    model = matmul_add_matmul()
    np.testing.assert_array_equal(run(round_fp16(model, keep_nodes=["mm1", "add", "mm2"]), x=X), run(model, x=X))
    middle = round_fp16(model, keep_nodes=["mm1", "mm2"])
    assert not np.array_equal(run(middle, x=X), run(model, x=X))


def test_a_constant_shared_by_a_kept_node_stays_fp32_for_it():
    w = numpy_helper.from_array(np.full((8,), 0.1, np.float32), "w")          # 0.1 is not an fp16 value
    nodes = [helper.make_node("Mul", ["x", "w"], ["a"], name="kept_mul"),
             helper.make_node("Add", ["a", "w"], ["y"], name="fp16_add")]
    m16 = round_fp16(model_of(nodes, [w]), keep_nodes=["kept_mul"])
    inits = {i.name: numpy_helper.to_array(i) for i in m16.graph.initializer}
    assert inits["w"][0] == np.float32(0.1) and inits["w__fp16"][0] == np.float32(np.float16(0.1))
    kept = next(n for n in m16.graph.node if n.name == "kept_mul")
    assert "w" in kept.input


def test_shape_arithmetic_is_left_alone():
    """x / sqrt(float(shape[-1])): the shape path is integer work, never rounded, and the model loads."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "start", "end"], ["d"], name="slice"),
             helper.make_node("Cast", ["d"], ["df"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Sqrt", ["df"], ["r"], name="sqrt"),
             helper.make_node("Div", ["x", "r"], ["y"], name="div")]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "start"),
             numpy_helper.from_array(np.array([2**62], np.int64), "end")]
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    m16, _ = emulate_fp16(model_of(nodes, inits, 16, 16))
    np.testing.assert_allclose(run(m16, x=x), x / 4.0, rtol=1e-3)


def gru_model(t=12, hidden=8, seed=0):
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.4, (2, 3 * hidden, 8)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.normal(0, 0.4, (2, 3 * hidden, hidden)).astype(np.float32), "R")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (2, 6 * hidden)).astype(np.float32), "B")
    nodes = [helper.make_node("GRU", ["x", "W", "R", "B"], ["yy", "yh"], name="rnn", hidden_size=hidden,
                              direction="bidirectional", linear_before_reset=1),
             helper.make_node("ReduceMean", ["yy"], ["y"], name="mean", axes=[1], keepdims=0)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [t, 2, 8])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, r, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_truth_classes_and_shares():
    """Plain nodes: fp32 kernels between fp16-rounded tensors; kept: fp32; a GRU: rounded per step; no fp16
    kernel is claimed, and the shares add up to one."""
    model = gru_model()
    m16, report = emulate_fp16(model, keep_nodes=["mean"])
    assert [n["node"] for n in report["nodes"]] == ["rnn"] and report["rounding"]
    classes = node_classes(m16)
    assert classes["mean"] == "fp32"
    assert {c for n, c in classes.items() if "/fp16_recurrence/" in n} == {"fp16-emulated"}
    t = truth(m16, model, {"x": [12, 2, 8]})
    assert set(t["shares"]) == set(CLASSES) and sum(t["shares"].values()) == pytest.approx(1.0)
    assert t["shares"]["fp16"] == 0.0 and t["fp16_kernel_share"] == 0.0
    assert t["shares"]["fp16-emulated"] > 0.9            # the GRU is nearly all the compute
    assert t["fp32_unrounded_op_types"] == ["ReduceMean"]
    assert "GRU" in t["cpu_without_fp16_kernel"]
    assert "float16 inside" not in t["label"] and "recurrences rounded to fp16 per step" in t["label"]
    assert "fp32 not rounded" in short_line(t)


def test_the_gru_state_is_rounded_between_steps():
    """The emulated GRU moves further from fp32 than rounding its inputs and outputs alone would."""
    model = gru_model(t=40)
    x = np.random.default_rng(3).normal(size=(40, 2, 8)).astype(np.float32)
    ref = run(model, x=x)
    io_only = run(round_fp16(model), x=x)
    stepwise = run(emulate_fp16(model)[0], x=x)
    rel = lambda a: float(np.linalg.norm(a - ref) / np.linalg.norm(ref))  # noqa: E731
    assert rel(stepwise) > rel(io_only) and rel(stepwise) < 0.05


def test_keeping_a_recurrence_in_fp32_is_refused():
    with pytest.raises(ConfigError, match="Ascend runs GRU/LSTM in fp16 only"):
        emulate_fp16(gru_model(), keep_op_types=["GRU"])


def test_float16_inside_only_when_it_is_true():
    assert label({"fp16": 1.0, "fp32-rounded": 0.0, "fp16-emulated": 0.0, "fp32": 0.0}).startswith("float16 inside")
    mixed = label({"fp16": 0.2, "fp32-rounded": 0.7, "fp16-emulated": 0.0, "fp32": 0.1})
    assert "float16 inside" not in mixed and "20.0% in fp16 kernels" in mixed and "10.0% fp32 not rounded" in mixed


def test_the_kernel_registry_knows_cpu_fp16_gaps():
    ops = cpu_fp16_kernel_ops()
    assert "Transpose" in ops and "Conv" not in ops and "GRU" not in ops


def test_export_unrolls_a_static_recurrence_and_refuses_a_dynamic_one(tmp_path):
    """export.unroll_recurrence: the GRU becomes per-step MatMul/Sigmoid/Tanh nodes with the same outputs; a
    dynamic sequence length is one ConfigError line."""
    import onnx

    from export.stage import unroll
    from pipeline.log import StageLog

    model = gru_model(t=6)
    x = np.random.default_rng(4).normal(size=(6, 2, 8)).astype(np.float32)
    got, report = unroll(model, tmp_path / "u.onnx", StageLog(tmp_path / "export.log"))
    ops = {n.op_type for n in got.graph.node}
    assert not ops & {"GRU", "LSTM", "Scan", "Loop"} and {"MatMul", "Sigmoid", "Tanh"} <= ops
    np.testing.assert_allclose(run(onnx.load(str(tmp_path / "u.onnx")), x=x), run(model, x=x), rtol=1e-5, atol=1e-6)
    dynamic = gru_model()
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "frames"
    with pytest.raises(ConfigError, match="export.unroll_recurrence: .*static"):
        unroll(dynamic, tmp_path / "d.onnx", StageLog(tmp_path / "export.log"))
    plain = model_of([helper.make_node("Relu", ["x"], ["y"], name="relu")])
    with pytest.raises(ConfigError, match="has no GRU or LSTM node"):
        unroll(plain, tmp_path / "p.onnx", StageLog(tmp_path / "export.log"))


def test_standard_output_names_do_not_clash_with_the_rounding_casts():
    """A tensor named Y beside one named Y_h (the ONNX names of a GRU's outputs) still loads and runs."""
    nodes = [helper.make_node("Relu", ["x"], ["Y"], name="relu"),
             helper.make_node("Neg", ["Y"], ["Y_h"], name="neg"),
             helper.make_node("Abs", ["Y_h"], ["y"], name="abs")]
    m16, _ = emulate_fp16(model_of(nodes))
    np.testing.assert_allclose(run(m16, x=X), np.abs(np.maximum(X, 0)), rtol=1e-3)
