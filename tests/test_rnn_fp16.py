"""convert.rnn_fp16: ONNX GRU/LSTM replaced by a Scan (or unrolled ops) with Ascend's fp16 recurrence rounding."""
import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from convert import rnn_fp16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CNN8RNN = ROOT / "build" / "cnn8rnn_audioset_sed" / "model.sim.onnx"
OPSET, INPUT, BATCH = 17, 6, 2
FP16_ULP_AT_1 = 2.0 ** -10

# (op, direction, hidden, T, linear_before_reset, bias, initial_h, initial_c)
CASES = [
    ("GRU", "forward", 8, 12, 1, True, True, False),
    ("GRU", "forward", 16, 20, 0, True, False, False),
    ("GRU", "reverse", 12, 7, 1, False, False, False),
    ("GRU", "reverse", 8, 9, 0, False, True, False),
    ("GRU", "bidirectional", 16, 15, 1, True, False, False),
    ("GRU", "bidirectional", 8, 5, 0, True, True, False),
    ("LSTM", "forward", 16, 20, 0, True, True, True),
    ("LSTM", "reverse", 8, 10, 0, False, False, False),
    ("LSTM", "bidirectional", 12, 13, 0, True, True, False),
    ("LSTM", "bidirectional", 8, 6, 0, False, False, True),
]
IDS = [f"{c[0]}-{c[1]}-lbr{c[4]}-{'B' if c[5] else 'noB'}-{'h0' if c[6] else ''}{'c0' if c[7] else ''}" for c in CASES]


def make_model(op, direction, hidden, steps, lbr=1, bias=True, init_h=False, init_c=False, seed=0,
               outputs=("Y", "Y_h", "Y_c"), suffix="", **attrs):
    """A one-node GRU/LSTM model (torch-like uniform weights) and seeded feeds."""
    rng = np.random.default_rng(seed)
    dirs, gates = (2 if direction == "bidirectional" else 1), (3 if op == "GRU" else 4)
    k = 1.0 / np.sqrt(hidden)
    uni = lambda *shape: rng.uniform(-k, k, shape).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(uni(dirs, gates * hidden, INPUT), "W"),
             numpy_helper.from_array(uni(dirs, gates * hidden, hidden), "R")]
    if bias:
        inits.append(numpy_helper.from_array(uni(dirs, 2 * gates * hidden), "B"))
    t_dim = steps if isinstance(steps, int) else "T"
    graph_in = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [t_dim, BATCH, INPUT])]
    feeds = {"X": rng.normal(0, 1.5, (steps if isinstance(steps, int) else 11, BATCH, INPUT)).astype(np.float32)}
    names = ["X", "W", "R", "B" if bias else "", ""]
    for flag, name in ((init_h, "initial_h"), (init_c and op == "LSTM", "initial_c")):
        names.append(name if flag else "")
        if flag:
            graph_in.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [dirs, BATCH, hidden]))
            feeds[name] = rng.uniform(-0.8, 0.8, (dirs, BATCH, hidden)).astype(np.float32)
    while not names[-1]:
        names.pop()
    outs = [o for o in outputs if op == "LSTM" or o != "Y_c"]
    shapes = {"Y": [t_dim, dirs, BATCH, hidden], "Y_h": [dirs, BATCH, hidden], "Y_c": [dirs, BATCH, hidden]}
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    node = helper.make_node(op, names, [o + suffix for o in outs], name=f"/rnn/{op}", hidden_size=hidden,
                            direction=direction, **attrs)
    graph = helper.make_graph([node], "rnn", graph_in, [
        helper.make_tensor_value_info(o + suffix, TensorProto.FLOAT, shapes[o]) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model, feeds


def run(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


# --- an independent NumPy reference: the ONNX equations, fp16 where the kernels store fp16 --------------------------

def _f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def _sigmoid(x):
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def reference(model, feeds, fp16):
    """Y, Y_h (, Y_c) of the model's single GRU/LSTM node; `fp16` rounds at the documented points."""
    q = _f16 if fp16 else (lambda a: np.asarray(a, np.float32))
    node = model.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    w, r = consts["W"], consts["R"]
    dirs, hidden = w.shape[0], r.shape[-1]
    b = consts.get("B", np.zeros((dirs, 2 * w.shape[1]), np.float32))
    x = q(feeds["X"])
    steps, batch = x.shape[:2]
    h0 = feeds.get("initial_h", np.zeros((dirs, batch, hidden), np.float32))
    c0 = feeds.get("initial_c", np.zeros((dirs, batch, hidden), np.float32))
    direction = attrs["direction"].decode()
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        if node.op_type == "GRU":
            y, h = _gru_ref(x, q(w[d]), q(r[d]), b[d], q(h0[d]), order, attrs["linear_before_reset"], q)
            c = None
        else:
            y, h, c = _lstm_ref(x, q(w[d]), q(r[d]), b[d], q(h0[d]), q(c0[d]), order, q)
        ys.append(y), hs.append(h), cs.append(c)
    out = {"Y": np.stack(ys, 1), "Y_h": np.stack(hs)}
    if node.op_type == "LSTM":
        out["Y_c"] = np.stack(cs)
    return out


def _gru_ref(x, w, r, b, h, order, lbr, q):
    wz, wr, wh = np.split(w, 3)
    rz, rr, rh = np.split(r, 3)
    wbz, wbr, wbh, rbz, rbr, rbh = (q(v) for v in np.split(b, 6))
    y = np.zeros((x.shape[0],) + h.shape, np.float32)
    for t in order:
        z = q(_sigmoid(x[t] @ wz.T + wbz + h @ rz.T + rbz))
        rg = q(_sigmoid(x[t] @ wr.T + wbr + h @ rr.T + rbr))
        if lbr:
            n = q(np.tanh(x[t] @ wh.T + wbh + rg * q(h @ rh.T + rbh)))
        else:
            n = q(np.tanh(x[t] @ wh.T + wbh + q(rg * h) @ rh.T + rbh))
        h = q((1 - z) * n + z * h)
        y[t] = h
    return y, h


def _lstm_ref(x, w, r, b, h, c, order, q):
    wi, wo, wf, wc = np.split(w, 4)
    ri, ro, rf, rc = np.split(r, 4)
    bi, bo, bf, bc = (q(v) for v in np.split(b[: b.size // 2] + b[b.size // 2:], 4))
    y = np.zeros((x.shape[0],) + h.shape, np.float32)
    for t in order:
        i = q(_sigmoid(x[t] @ wi.T + h @ ri.T + bi))
        f = q(_sigmoid(x[t] @ wf.T + h @ rf.T + bf))
        o = q(_sigmoid(x[t] @ wo.T + h @ ro.T + bo))
        g = q(np.tanh(x[t] @ wc.T + h @ rc.T + bc))
        c = q(f * c + i * g)
        h = q(o * q(np.tanh(c)))
        y[t] = h
    return y, h, c


# --- tests ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_without_rounding_equals_onnxruntime(case):
    model, feeds = make_model(*case)
    expected = run(model, feeds)
    emulated, report = rnn_fp16.emulate_recurrences(model, rounding=False)
    onnx.checker.check_model(emulated, full_check=True)
    assert not [n for n in emulated.graph.node if n.op_type in rnn_fp16.RECURRENT_OPS]
    assert all(rnn_fp16.is_emulated(n.name) and n.name.startswith("/rnn/") for n in emulated.graph.node)
    assert not {i.name for i in emulated.graph.initializer} & {"W", "R", "B"}
    got = run(emulated, feeds)
    ref = reference(model, feeds, fp16=False)
    for name, want in expected.items():
        assert got[name].shape == want.shape and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(ref[name], want, rtol=1e-5, atol=1e-6, err_msg="numpy reference " + name)
    assert report["nodes"][0]["rounding_points"] == []


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rounding_equals_numpy_fp16_reference(case):
    """>= 99 % bit-equal to the NumPy fp16 reference and never more than 1 fp16 ulp of 1.0 (2**-10) apart (only the
    fp32 summation order differs; on the development machine all are equal); the fp32 result differs almost
    everywhere. Leaving out any one rounding point drops the bit-equal share to 0.84-0.97 or below."""
    model, feeds = make_model(*case)
    got = run(rnn_fp16.emulate_recurrences(model, rounding=True)[0], feeds)
    ref, fp32 = reference(model, feeds, fp16=True), run(model, feeds)
    for name in got:
        err_ref = np.abs(got[name] - ref[name])
        err_fp32 = np.abs(got[name] - fp32[name])
        assert err_ref.max() <= FP16_ULP_AT_1, name
        assert np.mean(err_ref == 0) >= 0.99, name
        assert np.array_equal(got[name], _f16(got[name])), f"{name} is not fp16-representable"
        assert np.mean(err_fp32 == 0) < 0.5 and err_fp32.max() > FP16_ULP_AT_1 / 8, name


def test_report_and_helpers():
    model, _ = make_model("GRU", "bidirectional", 8, 5, lbr=0)
    assert rnn_fp16.recurrent_nodes(model) == [
        {"name": "/rnn/GRU", "op_type": "GRU", "direction": "bidirectional", "hidden_size": 8}]
    _, report = rnn_fp16.emulate_recurrences(model)
    entry = report["nodes"][0]
    assert json.loads(json.dumps(report)) == report
    assert {"node", "op_type", "direction", "hidden_size", "rounding_points", "assumption"} <= set(entry)
    assert "h_t" in " ".join(entry["rounding_points"]) and "reset_after" in entry["assumption"]
    assert rnn_fp16.is_emulated("/rnn/GRU/fp16_recurrence/d0/scan") and not rnn_fp16.is_emulated("/rnn/GRU")


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[6], CASES[9]], ids=[IDS[1], IDS[4], IDS[6], IDS[9]])
def test_unroll_equals_original(case):
    model, feeds = make_model(*case)
    unrolled, report = rnn_fp16.unroll_recurrences(model)
    onnx.checker.check_model(unrolled, full_check=True)
    assert {n.op_type for n in unrolled.graph.node} <= set(rnn_fp16.UNROLL_OPS)
    assert all(n.name.startswith("/rnn/" + case[0] + "/unrolled/") for n in unrolled.graph.node)
    assert all(not rnn_fp16.is_emulated(n.name) for n in unrolled.graph.node)
    assert any("/unrolled/t0/" in n.name for n in unrolled.graph.node) and report["nodes"][0]["seq_len"] == case[3]
    got, want = run(unrolled, feeds), run(model, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    rounded = run(rnn_fp16.unroll_recurrences(model, rounding=True)[0], feeds)
    scan = run(rnn_fp16.emulate_recurrences(model, rounding=True)[0], feeds)
    for name in want:
        np.testing.assert_allclose(rounded[name], scan[name], atol=2 * FP16_ULP_AT_1, err_msg=name)


def test_unroll_needs_a_static_length():
    model, feeds = make_model("GRU", "bidirectional", 8, "T")
    with pytest.raises(ValueError, match="not static.*seq_len="):
        rnn_fp16.unroll_recurrences(model)
    unrolled, _ = rnn_fp16.unroll_recurrences(model, seq_len=11)
    np.testing.assert_allclose(run(unrolled, feeds)["Y"], run(model, feeds)["Y"], rtol=1e-5, atol=1e-6)
    emulated, _ = rnn_fp16.emulate_recurrences(model, rounding=False)  # Scan: any length
    np.testing.assert_allclose(run(emulated, feeds)["Y"], run(model, feeds)["Y"], rtol=1e-5, atol=1e-6)


def test_only_requested_outputs():
    model, feeds = make_model("LSTM", "forward", 8, 6, outputs=("Y",))
    emulated, _ = rnn_fp16.emulate_recurrences(model)
    assert [o.name for o in emulated.graph.output] == ["Y"]
    np.testing.assert_allclose(run(emulated, feeds)["Y"], reference(model, feeds, True)["Y"], atol=2 * FP16_ULP_AT_1)


@pytest.mark.parametrize("change, match", [
    (lambda n: n.input.extend(["", "", "seq"]) or n.input.__setitem__(4, "seq"), "sequence_lens"),
    (lambda n: n.attribute.append(helper.make_attribute("activations", ["Relu", "Tanh"])), "activations"),
    (lambda n: n.attribute.append(helper.make_attribute("clip", 3.0)), "clip"),
    (lambda n: n.attribute.append(helper.make_attribute("layout", 1)), "layout"),
])
def test_unsupported_nodes_raise(change, match):
    model, _ = make_model("GRU", "forward", 8, 5)
    node = model.graph.node[0]
    change(node)
    del node.input[6:]
    with pytest.raises(ValueError, match=match) as err:
        rnn_fp16.emulate_recurrences(model)
    assert "/rnn/GRU" in str(err.value)


def test_default_activations_spelled_out_are_fine():
    model, feeds = make_model("LSTM", "bidirectional", 8, 5)
    model.graph.node[0].attribute.append(helper.make_attribute("activations", ["Sigmoid", "Tanh", "Tanh"] * 2))
    got = run(rnn_fp16.emulate_recurrences(model, rounding=False)[0], feeds)
    np.testing.assert_allclose(got["Y"], run(model, feeds)["Y"], rtol=1e-5, atol=1e-6)


def test_fp16_pass_leaves_the_emulation_alone():
    """The ort-fp16 target rounds around every top-level node; outside its Scan bodies the emulation only moves
    fp16-representable values, so that rounding changes nothing (standard output names Y, Y_h, Y_c included)."""
    from convert.fp16 import round_fp16

    model, feeds = make_model("LSTM", "bidirectional", 16, 10, bias=True, init_h=True, init_c=True)
    emulated, _ = rnn_fp16.emulate_recurrences(model)
    got, want = run(round_fp16(emulated), feeds), run(emulated, feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_loose_agreement_with_torch_half_gru():
    torch = pytest.importorskip("torch")
    gru = torch.nn.GRU(INPUT, 16, bidirectional=True)
    x = torch.randn(12, BATCH, INPUT)
    try:
        with torch.no_grad():
            y_half = gru.half()(x.half())[0].float().numpy()
    except RuntimeError as err:
        pytest.skip(f"torch has no half GRU on this CPU: {err}")
    sd = {k: v.float().numpy() for k, v in gru.state_dict().items()}
    model, feeds = make_model("GRU", "bidirectional", 16, 12)
    perm = lambda a: np.concatenate([a[16:32], a[:16], a[32:]])  # noqa: E731  torch r,z,n -> ONNX z,r,h
    w = np.stack([perm(sd["weight_ih_l0"]), perm(sd["weight_ih_l0_reverse"])])
    r = np.stack([perm(sd["weight_hh_l0"]), perm(sd["weight_hh_l0_reverse"])])
    b = np.stack([np.concatenate([perm(sd[f"bias_ih_l0{s}"]), perm(sd[f"bias_hh_l0{s}"])]) for s in ("", "_reverse")])
    for init, arr in zip(model.graph.initializer, (w, r, b)):
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    got = run(rnn_fp16.emulate_recurrences(model)[0], {"X": x.numpy()})["Y"]  # [T, D, B, H]
    torch_y = y_half.reshape(12, BATCH, 2, 16).transpose(0, 2, 1, 3)
    assert np.abs(got - torch_y).max() < 2e-2


@pytest.mark.skipif(not CNN8RNN.exists(), reason="build/cnn8rnn_audioset_sed/model.sim.onnx: run make export")
def test_cnn8rnn_bidirectional_gru():
    model = onnx.load(str(CNN8RNN))
    assert [n["op_type"] for n in rnn_fp16.recurrent_nodes(model)] == ["GRU"]
    feeds = {"logmel": np.random.default_rng(0).normal(-20, 10, (1, 1, 301, 64)).astype(np.float32)}
    fp32 = run(model, feeds)
    t0 = time.perf_counter()
    exact = run(rnn_fp16.emulate_recurrences(model, rounding=False)[0], feeds)
    rounded = run(rnn_fp16.emulate_recurrences(model, rounding=True)[0], feeds)
    seconds = time.perf_counter() - t0
    rel = {k: float(np.linalg.norm(rounded[k] - v) / np.linalg.norm(v)) for k, v in fp32.items()}
    print(f"\ncnn8rnn 301 frames, rounding=True vs fp32 rel L2: {rel}; both emulations {seconds:.2f} s")
    for name, want in fp32.items():
        assert np.linalg.norm(exact[name] - want) / np.linalg.norm(want) < 1e-5, name
        assert 1e-5 < rel[name] < 0.05, name
    with pytest.raises(ValueError, match="not static"):  # the frame axis is dynamic
        rnn_fp16.unroll_recurrences(model)
    unrolled = run(rnn_fp16.unroll_recurrences(model, seq_len=301 // 4)[0], feeds)  # the CNN pools time by 4
    for name, want in fp32.items():
        assert np.linalg.norm(unrolled[name] - want) / np.linalg.norm(want) < 1e-5, name
