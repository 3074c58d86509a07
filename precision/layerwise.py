"""Run the fp32 model and its fp16 emulation with every intermediate float tensor exposed; compare per node."""
from __future__ import annotations

import copy

import numpy as np

from .emulate import round_fp16
from pipeline.metrics import FP16_MIN_NORMAL, cosine, rel_l2

FP16_MAX = 65504.0


def float_tensors(model) -> dict[str, int]:
    """Node output name -> ONNX elem type, for float outputs (after shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    return {o: types[o] for n in model.graph.node for o in n.output[:1]
            if types.get(o) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}


def expose(model, names: list[str]):
    """A copy of `model` whose graph outputs also include `names` (type left to onnxruntime)."""
    import onnx

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for n in names:
        if n not in have and n in types:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, types[n], None))
    return m


def session(model, threads: int = 0, graph_optimization: str = "disable"):
    """An onnxruntime CPU session; layer_compare disables graph optimisation (every intermediate tensor is an
    output), evaluate uses the config's onnxruntime settings, as the ort-fp16 target and the fp32 reference do."""
    import onnxruntime as ort

    from pipeline.runners import ort_session_options

    return ort.InferenceSession(model.SerializeToString(), ort_session_options(threads, graph_optimization),
                                providers=["CPUExecutionProvider"])


def node_origin(name: str) -> str:
    """PyTorch module path from a TorchScript node name: /stages/stages.2/blocks/blocks.3/norm/Op -> stages.2.blocks.3.norm."""
    path: list[str] = []
    for p in [p for p in name.split("/") if p][:-1]:
        if path and p.startswith(path[-1] + "."):
            path[-1] = p
        elif not path or not path[-1].startswith(p):
            path.append(p)
    out: list[str] = []
    for p in path:
        out.append(p.split(".", 1)[1] if out and "." in p and p.split(".", 1)[0] == out[-1] else p)
    return ".".join(out)


def layer_compare(model32, feeds_list: list[dict], keep_nodes=(), keep_op_types=()) -> list[dict]:
    """Per node (topological order): error of its first float output, fp16 emulation vs fp32, worst over samples."""
    tensors = float_tensors(model32)
    names = [n.output[0] for n in model32.graph.node if n.output and n.output[0] in tensors]
    s32 = session(expose(model32, names))
    s16 = session(expose(round_fp16(model32, keep_nodes, keep_op_types), names))
    out32_names = [o.name for o in s32.get_outputs()]
    out16_names = [o.name for o in s16.get_outputs()]
    stats: dict[str, dict] = {}
    for feeds in feeds_list:
        r32 = dict(zip(out32_names, s32.run(None, feeds)))
        r16 = dict(zip(out16_names, s16.run(None, feeds)))
        for name in names:
            if name not in r32 or name not in r16:
                continue
            a, b = np.asarray(r16[name], np.float64), np.asarray(r32[name], np.float64)
            finite = np.isfinite(a)
            st = stats.setdefault(name, {"rel_l2": 0.0, "cosine": 1.0, "max_abs": 0.0, "overflow": 0,
                                         "underflow_share": 0.0, "nonfinite": 0, "shape": list(b.shape)})
            st["rel_l2"] = max(st["rel_l2"], rel_l2(np.where(finite, a, 0.0), b) if finite.any() else 1.0)
            st["cosine"] = min(st["cosine"], cosine(np.where(finite, a, 0.0), b))
            st["max_abs"] = max(st["max_abs"], float(np.max(np.abs(np.where(finite, a, 0) - b))) if b.size else 0.0)
            st["overflow"] += int(np.count_nonzero(np.abs(b) > FP16_MAX))
            nz = b[b != 0]
            st["underflow_share"] = max(st["underflow_share"], float(np.mean(np.abs(nz) < FP16_MIN_NORMAL)) if nz.size else 0.0)
            st["nonfinite"] += int(np.count_nonzero(~finite))
            if not finite.all():
                st["rel_l2"] = max(st["rel_l2"], 1.0)
    producer = {o: n for n in model32.graph.node for o in n.output}
    rows = []
    for node in model32.graph.node:
        if not node.output or node.output[0] not in stats:
            continue
        st = stats[node.output[0]]
        upstream = [stats[i]["rel_l2"] for i in node.input if i in stats and i in producer]
        base = max(upstream) if upstream else 2.0 ** -11          # fp16 rounding of an exact input
        rows.append({"node": node.name, "op_type": node.op_type, "output": node.output[0],
                     "origin": node_origin(node.name), **st,
                     "jump": st["rel_l2"] / max(base, 2.0 ** -11)})
    return rows


def flops(model32, rows: list[dict]) -> dict[str, float]:
    """Compute per node of `rows` (convert.compute.node_costs: 2*MACs for cube ops, numel for vector ops, 0 for data
    movement)."""
    from convert.compute import node_costs

    costs = node_costs(model32)
    return {r["node"]: costs[r["node"]]["flops"] if r["node"] in costs else 0.0 for r in rows}
