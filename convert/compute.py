"""Compute per ONNX node, and on which Ascend AI Core unit it runs: the price of keeping nodes in fp32.

An Ascend AI Core has a cube unit (matrix multiply: Conv, MatMul, Gemm, the gate matmuls of GRU/LSTM) and a vector
unit (element-wise ops, normalisation, activations, reductions, Softmax, pooling); shape and data-movement ops
compute nothing. `node_costs` counts floating-point operations from ONNX shape inference: 2 * multiply-accumulates
for cube ops, one operation per output element for vector ops (per input element for reductions), zero for data
movement. These are counts, not run times: an fp32 cube op on a chip without an fp32 cube costs far more than its
count suggests (docs/fp16-fixes.md).

onnx and NumPy only (no onnxruntime): usable on any host.
"""
from __future__ import annotations

import copy
import math

CUBE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "GRU", "LSTM", "RNN", "Einsum"})
# data movement, shapes, constants and casts: no arithmetic
NONE = frozenset({
    "Reshape", "Transpose", "Concat", "Slice", "Shape", "Size", "Gather", "GatherElements", "GatherND", "Flatten",
    "Squeeze", "Unsqueeze", "Identity", "Cast", "CastLike", "Constant", "ConstantOfShape", "Split", "Expand", "Tile",
    "Pad", "Range", "Dropout", "NonZero", "ScatterND", "ScatterElements", "SpaceToDepth", "DepthToSpace",
    "Optional", "OptionalGetElement", "SequenceConstruct", "SplitToSequence", "ConcatFromSequence", "EyeLike",
    "Trilu", "ReverseSequence", "Compress", "OneHot",
})
# vector ops whose work is proportional to their input (they shrink it)
REDUCE = frozenset({
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "TopK",
})


def _dims(vi) -> list | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _fixed_inputs(model, input_shapes: dict | None):
    """A copy whose graph inputs have every dim fixed: input_shapes where given, else symbolic/unknown dims = 1."""
    m = copy.deepcopy(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits or not vi.type.tensor_type.HasField("shape"):
            continue
        want = (input_shapes or {}).get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        for k, d in enumerate(dims):
            value = want[k] if want is not None and k < len(want) and isinstance(want[k], int) and want[k] > 0 \
                else (d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1)
            d.Clear()
            d.dim_value = value
    return m


def shapes_of(model, input_shapes: dict | None = None) -> dict[str, list[int]]:
    """Tensor name -> shape (unknown dims as 1) after ONNX shape inference with fixed input dims."""
    import onnx

    m = _fixed_inputs(model, input_shapes)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:                                    # a graph inference cannot type: what the model declares
        pass
    out: dict[str, list[int]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = _dims(vi)
        if dims is not None:
            out[vi.name] = [d if d else 1 for d in dims]
    for init in m.graph.initializer:
        out[init.name] = list(init.dims)
    for node in m.graph.node:
        if node.op_type == "Constant" and node.output:
            t = next((a.t for a in node.attribute if a.name == "value"), None)
            if t is not None:
                out.setdefault(node.output[0], list(t.dims))
    return out


def _numel(shape) -> float:
    return float(math.prod(shape)) if shape is not None else 0.0


def _attr(node, name, default=None):
    import onnx

    a = next((a for a in node.attribute if a.name == name), None)
    return onnx.helper.get_attribute_value(a) if a is not None else default


def _einsum_macs(node, shapes) -> float | None:
    eq = _attr(node, "equation")
    if eq is None:
        return None
    eq = eq.decode() if isinstance(eq, bytes) else eq
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    batch = 1.0
    for term, name in zip(lhs, node.input):
        shape = shapes.get(name)
        if shape is None:
            return None
        if "..." in term:
            head, tail = term.split("...")
            n_ell = len(shape) - len(head) - len(tail)
            batch = max(batch, _numel(shape[len(head):len(head) + n_ell]))
            letters = list(head) + list(tail)
            dims = shape[:len(head)] + shape[len(shape) - len(tail):] if tail else shape[:len(head)]
        else:
            letters, dims = list(term), shape
        if len(letters) != len(dims):
            return None
        for c, d in zip(letters, dims):
            sizes[c] = max(sizes.get(c, 1), d)
    return batch * _numel(sizes.values())


def _cube_flops(node, shapes) -> float:
    get = lambda k: shapes.get(node.input[k]) if len(node.input) > k and node.input[k] else None  # noqa: E731
    out = shapes.get(node.output[0]) if node.output else None
    op = node.op_type
    if op == "Conv":
        w = get(1)
        return 2.0 * _numel(out) * _numel(w[1:]) if w and out else 0.0
    if op == "ConvTranspose":
        x, w = get(0), get(1)
        return 2.0 * _numel(x) * _numel(w[1:]) if w and x else 0.0
    if op == "MatMul":
        a = get(0)
        return 2.0 * _numel(out) * a[-1] if a and out else 0.0
    if op == "Gemm":
        a = get(0)
        if not a or not out:
            return 0.0
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        return 2.0 * _numel(out) * k
    if op in ("GRU", "LSTM", "RNN"):
        x, w, r = get(0), get(1), get(2)
        if not (x and w and r):
            return 0.0
        steps = x[0] * x[1] if len(x) >= 2 else _numel(x)       # seq_len * batch, either layout
        return 2.0 * steps * (_numel(w) + _numel(r))            # every direction: W and R hold them all
    if op == "Einsum":
        macs = _einsum_macs(node, shapes)
        return 2.0 * macs if macs is not None else _numel(out)
    return 0.0


def node_key(node, index: int) -> str:
    """The name a node is known by: its ONNX name, or <op_type>_<index> when it has none."""
    return node.name or f"{node.op_type}_{index}"


def node_costs(model, input_shapes: dict[str, list[int]] | None = None) -> dict[str, dict]:
    """node name -> {"op_type", "flops", "unit": "cube" | "vector" | "none"}.

    Shapes come from ONNX shape inference with the graph inputs fixed (input_shapes where given, every symbolic or
    unknown dim as 1 otherwise). Cube ops (Conv, ConvTranspose, MatMul, Gemm, GRU, LSTM, Einsum): 2 * MACs (GRU/LSTM
    over every step and direction, from the W and R weights). Vector ops: the output's element count, the input's
    for reductions. Data movement, shape ops, Cast and Constant: unit "none", 0 flops. An op type not listed
    computes on the vector unit. Unnamed nodes are keyed <op_type>_<index>."""
    shapes = shapes_of(model, input_shapes)
    out: dict[str, dict] = {}
    for i, node in enumerate(model.graph.node):
        op = node.op_type
        if op in CUBE:
            unit, fl = "cube", _cube_flops(node, shapes)
        elif op in NONE:
            unit, fl = "none", 0.0
        elif op in REDUCE:
            unit, fl = "vector", _numel(shapes.get(node.input[0])) if node.input else 0.0
        else:
            unit, fl = "vector", _numel(shapes.get(node.output[0])) if node.output else 0.0
        out[node_key(node, i)] = {"op_type": op, "flops": float(fl), "unit": unit, "kind": kind_of(node, shapes)}
    return out


def kind_of(node, shapes: dict) -> str:
    """The op type, or "Conv(depthwise)" for a Conv whose every group has one input channel (Ascend may give it
    another kernel than Conv2D)."""
    if node.op_type == "Conv" and _attr(node, "group", 1) > 1:
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if w and len(w) > 1 and w[1] == 1:
            return "Conv(depthwise)"
    return node.op_type


def shares(costs: dict[str, dict], fp32_nodes) -> dict[str, float]:
    """Fractions of the model's total flops that the given nodes compute in fp32: all of them, on the cube unit,
    on the vector unit (the last two add up to the first)."""
    total = sum(c["flops"] for c in costs.values())
    keep = set(fp32_nodes)
    part = {"cube": 0.0, "vector": 0.0, "none": 0.0}
    for name in keep:
        c = costs.get(name)
        if c is not None:
            part[c["unit"]] += c["flops"]
    if total <= 0:
        return {"fp32_share": 0.0, "fp32_cube_share": 0.0, "fp32_vector_share": 0.0}
    return {"fp32_share": (part["cube"] + part["vector"]) / total, "fp32_cube_share": part["cube"] / total,
            "fp32_vector_share": part["vector"] / total}


def unit_of(op_type: str) -> str:
    """cube | vector | none for an ONNX op type (the rule node_costs applies)."""
    return "cube" if op_type in CUBE else "none" if op_type in NONE else "vector"

