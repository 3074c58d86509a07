"""Ascend's fp16 recurrence for ONNX GRU and LSTM, emulated with standard ONNX ops (docs/fp16-recurrence.md).

ATC fuses ONNX GRU into DynamicGRUV2 and LSTM into DynamicRNN: fp16 x, weights and hidden state, fp32 matmul
accumulation and fp32 gate arithmetic, with the gate activations and the states rounded to fp16 at every step.
onnxruntime's GRU/LSTM only run in fp32, so `emulate_recurrences` replaces each node by a Scan (or
`unroll_recurrences` by plain per-step ops) that computes in fp32 but rounds (Cast fp16 -> fp32) exactly where the
kernels store fp16. The new nodes round by themselves, so an fp16 pass may keep them fp32 by name (`is_emulated`);
outside the Scan bodies they only carry fp16-representable values, so rounding around them changes nothing either.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RECURRENT_OPS = ("GRU", "LSTM")
EMULATED_TAG = "/fp16_recurrence/"
UNROLLED_TAG = "/unrolled/"
GATES = {"GRU": ("z", "r", "h"), "LSTM": ("i", "o", "f", "c")}  # ONNX weight order
DEFAULT_ACTIVATIONS = {"GRU": ("sigmoid", "tanh"), "LSTM": ("sigmoid", "tanh", "tanh")}
UNROLL_OPS = ("Slice", "Squeeze", "MatMul", "Add", "Sigmoid", "Tanh", "Mul", "Sub", "Concat", "Unsqueeze")

ROUNDING_POINTS = {
    "GRU": ["x", "W", "R", "B: bias_input (Wb) and bias_hidden (Rb), each", "initial_h",
            "z = sigmoid(.)", "r = sigmoid(.)",
            "hn = h.Rh^T + Rbh (linear_before_reset=1) / r*h, the matmul operand (linear_before_reset=0)",
            "n = tanh(.)", "h_t (Y, Y_h and the next step's state)"],
    "LSTM": ["x", "W", "R", "B = Wb + Rb (summed in fp32, then rounded)", "initial_h", "initial_c",
             "i, f, o = sigmoid(.)", "g = tanh(.)", "c_t (Y_c and the next step's state)", "tanh(c_t)",
             "h_t (Y, Y_h and the next step's state)"],
}
ASSUMPTIONS = {
    "GRU": "DynamicGRUV2 (TBE, canndev tbe/impl/dynamic/dynamic_gru_v2.py) with y in fp16 (force_fp16): fp16 matmul "
           "operands, fp32 accumulation and fp32 results, fp32 bias add, sigmoid, tanh and update; the gate outputs "
           "(update, reset, new, hidden_new) are mandatory outputs set by the fusion pass, so they are written as "
           "fp16 and read back; vexp in fp32 is assumed (Ascend310P/910; chips without it compute exp in fp16)",
    "LSTM": "DynamicRNN (TBE, canndev tbe/impl/dynamic/dynamic_rnn.py) with bias in fp16 (force_fp16): one fp16 "
            "matmul of [x, h] by [W; R] with fp32 accumulation, fp32 gate arithmetic, gates always written as fp16 "
            "and read back (is_gate_output is forced true), c stored fp16 between steps; CommonLSTMFusionPass sums "
            "Wb + Rb before the graph is cast (assumed fp32); 910B's Ascend C kernel rounds only c and h",
}
LBR0_WARNING = ("linear_before_reset=0: ATC's parser drops the attribute and DynamicGRUV2 only implements "
                "reset_after=True, so the device computes linear_before_reset=1 math; the rounding points of this "
                "node are a guess (no kernel computes it)")


def is_emulated(node_name: str) -> bool:
    """A node made by `emulate_recurrences` (or `unroll_recurrences(rounding=True)`): keep it fp32."""
    return EMULATED_TAG in node_name


def is_unrolled(node_name: str) -> bool:
    return UNROLLED_TAG in node_name


@dataclass
class _Rnn:
    node: onnx.NodeProto
    op: str
    direction: str
    hidden: int
    lbr: int
    w: np.ndarray  # [D, G*H, I]
    r: np.ndarray  # [D, G*H, H]
    b: np.ndarray | None  # [D, 2*G*H]
    x: str
    init_h: str
    init_c: str

    @property
    def reverse(self) -> list[bool]:
        return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[self.direction]

    def entry(self) -> dict:
        return {"node": self.node.name, "op_type": self.op, "direction": self.direction, "hidden_size": self.hidden}


def recurrent_nodes(model) -> list[dict]:
    """The GRU/LSTM nodes of the main graph: name, op_type, direction, hidden_size."""
    out = []
    for node in model.graph.node:
        if node.op_type in RECURRENT_OPS:
            attrs = _attrs(node)
            hidden = attrs.get("hidden_size") or _r_hidden(model, node)
            out.append({"name": node.name, "op_type": node.op_type,
                        "direction": _str(attrs.get("direction", "forward")), "hidden_size": hidden})
    return out


def emulate_recurrences(model, rounding=True):
    """Each GRU/LSTM node becomes a Scan over time with the kernels' fp16 rounding (none if `rounding=False`)."""
    return _replace_all(model, rounding, seq_len=None, unroll=False)


def unroll_recurrences(model, seq_len: int | None = None, rounding=False):
    """Each GRU/LSTM node becomes per-step Slice/MatMul/Add/Sigmoid/Tanh/Mul/Sub/... nodes (static length only)."""
    return _replace_all(model, rounding, seq_len=seq_len, unroll=True)


# --- parsing -------------------------------------------------------------------------------------------------------

def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _const(model, name: str):
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            return numpy_helper.to_array(_attrs(node)["value"])
    return None


def _r_hidden(model, node):
    r = _const(model, _input(node, 2))
    return int(r.shape[-1]) if r is not None else None


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _check_attrs(node, attrs):
    who = f"{node.op_type} node {node.name!r}"
    if attrs.get("layout", 0) != 0:
        raise ValueError(f"{who}: layout=1 (batch first) is not supported")
    acts = [_str(a).lower() for a in attrs.get("activations", [])]
    default = DEFAULT_ACTIVATIONS[node.op_type]
    if acts and any(a != default[i % len(default)] for i, a in enumerate(acts)):
        raise ValueError(f"{who}: only the default activations {default} are supported, got {acts}")
    for name in ("activation_alpha", "activation_beta", "clip"):
        if name in attrs:
            raise ValueError(f"{who}: attribute {name} is not supported (ATC's parser ignores it)")
    if attrs.get("input_forget", 0):
        raise ValueError(f"{who}: input_forget=1 is not supported")


def _spec(model, node) -> _Rnn:
    attrs = _attrs(node)
    _check_attrs(node, attrs)
    who = f"{node.op_type} node {node.name!r}"
    if _input(node, 4):
        raise ValueError(f"{who}: sequence_lens is not supported (pass every sequence at full length)")
    if node.op_type == "LSTM" and _input(node, 7):
        raise ValueError(f"{who}: peephole weights P are not supported")
    w, r = _const(model, _input(node, 1)), _const(model, _input(node, 2))
    b = _const(model, _input(node, 3)) if _input(node, 3) else None
    if w is None or r is None or (_input(node, 3) and b is None):
        raise ValueError(f"{who}: W, R and B must be constants (initializers or Constant nodes)")
    direction = _str(attrs.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"{who}: unknown direction {direction!r}")
    return _Rnn(node, node.op_type, direction, int(attrs.get("hidden_size") or r.shape[-1]),
                int(attrs.get("linear_before_reset", 0)), w.astype(np.float32), r.astype(np.float32),
                None if b is None else b.astype(np.float32), node.input[0], _input(node, 5), _input(node, 6))


def _static_len(model, x: str):
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name == x and vi.type.tensor_type.HasField("shape") and vi.type.tensor_type.shape.dim:
            d0 = vi.type.tensor_type.shape.dim[0]
            return d0.dim_value if d0.HasField("dim_value") else None
    return None


# --- graph building ------------------------------------------------------------------------------------------------

class _Builder:
    """Nodes named `prefix + tag` (outputs too); constants as initializers, or Constant nodes inside a Scan body."""

    def __init__(self, prefix: str, opset: int, rounding: bool, body=False):
        self.prefix, self.opset, self.rounding, self.body = prefix, opset, rounding, body
        self.nodes, self.inits, self._ints = [], [], {}

    def op(self, op_type, inputs, tag, out=None, **attrs) -> str:
        out = out or self.prefix + tag
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.prefix + tag, **attrs))
        return out

    def const(self, tag, arr) -> str:
        name = self.prefix + tag
        tensor = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        if self.body:
            self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def ints(self, values) -> str:
        key = tuple(int(v) for v in values)
        if key not in self._ints:
            self._ints[key] = self.const("const/" + "_".join(map(str, key)), np.asarray(key, np.int64))
        return self._ints[key]

    def rnd(self, x, tag) -> str:
        if not self.rounding:
            return x
        half = self.op("Cast", [x], tag + "/to_fp16", to=TensorProto.FLOAT16)
        return self.op("Cast", [half], tag + "/to_fp32", to=TensorProto.FLOAT)

    def add(self, a, b, tag):
        return a if b is None else b if a is None else self.op("Add", [a, b], tag)

    def squeeze(self, x, axes, tag, out=None):
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(axes)], tag, out)
        return self.op("Squeeze", [x], tag, out, axes=list(axes))

    def unsqueeze(self, x, axes, tag, out=None):
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes)], tag, out)
        return self.op("Unsqueeze", [x], tag, out, axes=list(axes))

    def slice0(self, x, start, tag):
        """x[start:start+1] along axis 0, squeezed."""
        s = self.op("Slice", [x, self.ints([start]), self.ints([start + 1]), self.ints([0])], tag + "/slice")
        return self.squeeze(s, [0], tag)


def _q(a, rounding):
    a = np.asarray(a, np.float32)
    return a.astype(np.float16).astype(np.float32) if rounding else a


def _weights(rnn: _Rnn, d: int, rounding: bool) -> dict:
    """Per gate: W^T [I,H], R^T [H,H], the input-side bias and (GRU) the hidden-side bias, rounded like the kernel."""
    gates, hs = GATES[rnn.op], rnn.hidden
    g = len(gates)
    blk = {k: slice(i * hs, (i + 1) * hs) for i, k in enumerate(gates)}
    wt = {k: _q(rnn.w[d, blk[k]].T, rounding) for k in gates}
    rt = {k: _q(rnn.r[d, blk[k]].T, rounding) for k in gates}
    if rnn.b is None:
        return {"W": wt, "R": rt, "Wb": dict.fromkeys(gates), "Rb": dict.fromkeys(gates)}
    wb = {k: rnn.b[d, blk[k]] for k in gates}
    rb = {k: rnn.b[d, g * hs:][blk[k]] for k in gates}
    if rnn.op == "LSTM":  # CommonLSTMFusionPass folds both halves into one bias
        return {"W": wt, "R": rt, "Wb": {k: _q(wb[k] + rb[k], rounding) for k in gates}, "Rb": dict.fromkeys(gates)}
    return {"W": wt, "R": rt, "Wb": {k: _q(wb[k], rounding) for k in gates},
            "Rb": {k: _q(rb[k], rounding) for k in gates}}


def _register(b: _Builder, wts: dict, tag="") -> dict:
    return {key: {g: None if a is None else b.const(f"{tag}{key}_{g}", a) for g, a in per_gate.items()}
            for key, per_gate in wts.items()}


def _hterm(b, h, w, gate, tag):
    """h . R_gate^T + Rb_gate; None when both are absent (zero state, no bias)."""
    hr = None if h is None else b.op("MatMul", [h, w["R"][gate]], f"{tag}/hR_{gate}")
    return b.add(hr, w["Rb"][gate], f"{tag}/hR_{gate}_bias")


def _gru_step(b, h, xw, w, lbr, tag):
    z = b.rnd(b.op("Sigmoid", [b.add(xw["z"], _hterm(b, h, w, "z", tag), f"{tag}/z_pre")], f"{tag}/z"), f"{tag}/z")
    r = b.rnd(b.op("Sigmoid", [b.add(xw["r"], _hterm(b, h, w, "r", tag), f"{tag}/r_pre")], f"{tag}/r"), f"{tag}/r")
    if lbr:
        hn = _hterm(b, h, w, "h", tag)
        rn = None if hn is None else b.op("Mul", [r, b.rnd(hn, f"{tag}/hn")], f"{tag}/r_hn")
    else:
        rh = None if h is None else b.rnd(b.op("Mul", [r, h], f"{tag}/r_h"), f"{tag}/r_h")
        rn = _hterm(b, rh, w, "h", f"{tag}/rh")
    n = b.rnd(b.op("Tanh", [b.add(xw["h"], rn, f"{tag}/n_pre")], f"{tag}/n"), f"{tag}/n")
    if h is None:  # zero state: h' = n - z*n
        new = b.op("Sub", [n, b.op("Mul", [z, n], f"{tag}/z_n")], f"{tag}/h_new")
    else:  # the kernel's order: (h - n) * z + n
        new = b.op("Add", [b.op("Mul", [b.op("Sub", [h, n], f"{tag}/h_n"), z], f"{tag}/dz"), n], f"{tag}/h_new")
    return b.rnd(new, f"{tag}/h_new")


def _lstm_step(b, h, c, xw, w, tag):
    pre = {g: b.add(xw[g], _hterm(b, h, w, g, tag), f"{tag}/{g}_pre") for g in GATES["LSTM"]}
    act = {g: b.rnd(b.op("Tanh" if g == "c" else "Sigmoid", [pre[g]], f"{tag}/{g}"), f"{tag}/{g}")
           for g in GATES["LSTM"]}
    ig = b.op("Mul", [act["i"], act["c"]], f"{tag}/i_g")
    fc = None if c is None else b.op("Mul", [c, act["f"]], f"{tag}/f_c")
    c_new = b.rnd(b.add(fc, ig, f"{tag}/c_new"), f"{tag}/c_new")
    tc = b.rnd(b.op("Tanh", [c_new], f"{tag}/tanh_c"), f"{tag}/tanh_c")
    return b.rnd(b.op("Mul", [tc, act["o"]], f"{tag}/h_new"), f"{tag}/h_new"), c_new


def _step(b, rnn, h, c, xw, w, tag):
    if rnn.op == "GRU":
        return _gru_step(b, h, xw, w, rnn.lbr, tag), None
    return _lstm_step(b, h, c, xw, w, tag)


def _projection(b, rnn, x, w, tag):
    """x . W_gate^T + input-side bias per gate (x: one step [B, I] or all steps [T, B, I])."""
    return {g: b.add(b.op("MatMul", [x, w["W"][g]], f"{tag}/xW_{g}"), w["Wb"][g], f"{tag}/xW_{g}_bias")
            for g in GATES[rnn.op]}


def _initial(b, name, d, tag):
    """Direction d of initial_h/initial_c ([D, B, H] -> [B, H]), rounded; None when absent."""
    return b.rnd(b.slice0(name, d, tag), tag) if name else None


def _zeros(b, x, hidden, tag):
    batch = b.op("Slice", [b.op("Shape", [x], f"{tag}/x_shape"), b.ints([1]), b.ints([2]), b.ints([0])],
                 f"{tag}/batch")
    shape = b.op("Concat", [batch, b.ints([hidden])], f"{tag}/shape", axis=0)
    return b.op("ConstantOfShape", [shape], tag, value=numpy_helper.from_array(np.zeros(1, np.float32)))


def _scan_direction(b, rnn, xq, d, reverse):
    """One direction as a Scan over time; the weights live in the body, so every node outside it passes fp16 values."""
    body = _Builder(f"{b.prefix}d{d}/body/", b.opset, b.rounding, body=True)
    w = _register(body, _weights(rnn, d, b.rounding))
    states = ["h"] + (["c"] if rnn.op == "LSTM" else [])
    ins = [body.prefix + s + "_prev" for s in states] + [body.prefix + "x"]
    h_new, c_new = _step(body, rnn, ins[0], ins[1] if rnn.op == "LSTM" else None,
                         _projection(body, rnn, ins[-1], w, "step"), w, "step")
    outs = [body.op("Identity", [v], k + "_out") for k, v in (("h", h_new), ("c", c_new), ("y", h_new)) if v]
    width = [rnn.hidden] * len(states) + [rnn.w.shape[-1]]
    graph = helper.make_graph(
        body.nodes, f"{rnn.node.name}_fp16_recurrence_d{d}",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, k]) for n, k in zip(ins, width)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, rnn.hidden]) for n in outs])
    init = {"h": rnn.init_h, "c": rnn.init_c}
    s0 = [_initial(b, init[s], d, f"d{d}/{s}0") or _zeros(b, rnn.x, rnn.hidden, f"d{d}/{s}0_zeros") for s in states]
    outputs = [f"{b.prefix}d{d}/scan_{k}" for k in states + ["y"]]
    b.nodes.append(helper.make_node("Scan", s0 + [xq], outputs, name=f"{b.prefix}d{d}/scan", body=graph,
                                    num_scan_inputs=1, scan_input_directions=[int(reverse)],
                                    scan_output_directions=[int(reverse)]))
    return {"y": outputs[-1], "h": outputs[0], "c": outputs[1] if rnn.op == "LSTM" else None}


def _unrolled_direction(b, rnn, xq, d, reverse, seq_len):
    w = _register(b, _weights(rnn, d, b.rounding), tag=f"d{d}/")
    xw = _projection(b, rnn, xq, w, f"d{d}")
    h = _initial(b, rnn.init_h, d, f"d{d}/h0")
    c = _initial(b, rnn.init_c, d, f"d{d}/c0")
    ys = [None] * seq_len
    for t in (reversed(range(seq_len)) if reverse else range(seq_len)):
        tag = f"t{t}/d{d}"
        x_t = {g: b.slice0(xw[g], t, f"{tag}/x_{g}") for g in xw}
        h, c = _step(b, rnn, h, c, x_t, w, tag)
        ys[t] = b.unsqueeze(h, [0], f"{tag}/y")
    return {"y": b.op("Concat", ys, f"d{d}/y", axis=0), "h": h, "c": c}


def _outputs(b, rnn, per_dir):
    """Y [T, D, B, H], Y_h and Y_c [D, B, H] under the node's own output names."""
    names = list(rnn.node.output) + [""] * 3
    for k, (key, axis) in enumerate((("y", 1), ("h", 0), ("c", 0))):
        if not names[k]:
            continue
        parts = [b.unsqueeze(p[key], [axis], f"out_{key}/d{d}") for d, p in enumerate(per_dir)]
        b.op("Concat", parts, f"out_{key}", out=names[k], axis=axis)


def _build(model, rnn, rounding, seq_len, unroll) -> _Builder:
    opset = _opset(model)
    if opset < 11:
        raise ValueError(f"{rnn.op} node {rnn.node.name!r}: opset {opset} < 11 is not supported")
    tag = (EMULATED_TAG[1:] if rounding or not unroll else "") + (UNROLLED_TAG[1:] if unroll else "")
    b = _Builder(f"{rnn.node.name}/{tag}", opset, rounding)
    xq = b.rnd(rnn.x, "x")
    per_dir = [(_unrolled_direction(b, rnn, xq, d, rev, seq_len) if unroll else _scan_direction(b, rnn, xq, d, rev))
               for d, rev in enumerate(rnn.reverse)]
    _outputs(b, rnn, per_dir)
    return b


def _report_entry(rnn, rounding, n_nodes) -> dict:
    entry = rnn.entry()
    if rnn.op == "GRU":
        entry["linear_before_reset"] = rnn.lbr
    entry["rounding_points"] = ROUNDING_POINTS[rnn.op] if rounding else []
    entry["assumption"] = ASSUMPTIONS[rnn.op] + ("; " + LBR0_WARNING if rnn.op == "GRU" and not rnn.lbr else "")
    entry["new_nodes"] = n_nodes
    return entry


def _replace_all(model, rounding, seq_len, unroll):
    model = copy.deepcopy(model)
    report = {"mode": "unrolled" if unroll else "scan", "rounding": bool(rounding), "nodes": []}
    replaced = {}
    for k, node in enumerate(model.graph.node):
        if node.op_type not in RECURRENT_OPS:
            continue
        node.name = node.name or f"{node.op_type}_{k}"
        rnn = _spec(model, node)
        length = _unroll_len(model, rnn, seq_len) if unroll else None
        replaced[k] = _build(model, rnn, rounding, length, unroll)
        entry = _report_entry(rnn, rounding, len(replaced[k].nodes))
        report["nodes"].append(entry | ({"seq_len": length} if unroll else {}))
    _splice(model, replaced)
    return model, report


def _unroll_len(model, rnn, seq_len):
    static = _static_len(model, rnn.x)
    if static and seq_len and static != seq_len:
        raise ValueError(f"{rnn.node.name!r}: seq_len={seq_len} but the graph says {static}")
    length = static or seq_len
    if not length:
        raise ValueError(f"unroll_recurrences: the sequence length of {rnn.op} node {rnn.node.name!r} (input "
                         f"{rnn.x!r}) is not static; export with a fixed length or pass seq_len=")
    return int(length)


def _splice(model, replaced: dict):
    """Put each builder's nodes where its recurrent node was; drop W/R/B constants nothing else reads."""
    g = model.graph
    dropped = {i for k in replaced for i in g.node[k].input[1:4] if i}
    nodes = []
    for k, n in enumerate(g.node):
        nodes += replaced[k].nodes if k in replaced else [copy.deepcopy(n)]
        g.initializer.extend(replaced[k].inits if k in replaced else [])
    unused = dropped - _used_names(nodes, g.output)
    inits = [i for i in g.initializer if i.name not in unused]
    del g.initializer[:], g.node[:]
    g.initializer.extend(inits)
    g.node.extend(n for n in nodes if not (n.op_type == "Constant" and n.output[0] in unused))


def _used_names(nodes, outputs) -> set:
    used = {o.name for o in outputs}
    for n in nodes:
        used.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used |= _used_names(sub.node, sub.output)
    return used
