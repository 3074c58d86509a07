"""What the ort-fp16 target really computes in fp16, per node, as onnxruntime's CPU provider runs it.

The fp16 model asks for fp16 everywhere, but onnxruntime's CPU provider has no fp16 kernel for most ops (Conv,
Gemm, GRU, ...): it inserts Casts and runs them in fp32 (its InsertCastTransformer). Here the model is loaded with
graph optimisations off (node names stay; the Casts are inserted whatever the level) and saved as onnxruntime
placed it. Per node of the fp16 model:

  fp16           an fp16 kernel ran it: fp16 arithmetic
  fp32-rounded   an fp32 kernel on fp16-rounded inputs, its outputs rounded to fp16: the cube unit's fp16 in,
                 fp32 accumulate, fp16 out; for a vector op one rounding of the exact result (Ascend's fp16
                 vector arithmetic may lose a few more ulps)
  fp16-emulated  a recurrence rewritten by convert/rnn_fp16.py: fp32 arithmetic, rounded to fp16 at every step
  fp32           fp32 arithmetic whose inputs or outputs are not fp16 (kept in fp32, or the converter's block list)

Compute shares weigh nodes by convert.compute.node_costs (2*MACs for cube ops, elements for vector ops).
"""
from __future__ import annotations

import os
import tempfile

FLOAT, FLOAT16 = 1, 10
CLASSES = ("fp16", "fp32-rounded", "fp16-emulated", "fp32")
EMULATED_MARK = "/fp16_recurrence/"


def placed_graph(model):
    """The model as onnxruntime's CPU provider places it (Casts inserted for ops without fp16 kernels)."""
    import onnx
    import onnxruntime as ort

    fd, path = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.optimized_model_filepath = path
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(path).graph
    finally:
        os.unlink(path)


def _elem_types(graph) -> dict[str, int]:
    """Element type of every tensor, propagated through the placed graph (Cast: `to`; other ops: their float
    input's type; shape ops: int64)."""
    ty = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    ty.update({i.name: i.data_type for i in graph.initializer})
    for n in graph.node:
        if n.op_type == "Cast":
            ty[n.output[0]] = next(a.i for a in n.attribute if a.name == "to")
        elif n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            ty[n.output[0]] = value.data_type if value is not None else None
        elif n.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
            ty.update({o: 7 for o in n.output})
        else:
            floats = [ty.get(i) for i in n.input if ty.get(i) in (FLOAT, FLOAT16)]
            for o in n.output:
                ty[o] = floats[0] if floats else ty.get(n.input[0]) if n.input else None
    return ty


def _is_fp16_value(name: str, ty: dict, producer: dict) -> bool:
    """The tensor `name` holds fp16 values: an fp16 tensor, or one cast up from fp16."""
    if ty.get(name) == FLOAT16:
        return True
    src = producer.get(name)
    return src is not None and src.op_type == "Cast" and ty.get(src.input[0]) == FLOAT16


def node_classes(fp16_model) -> dict[str, str]:
    """{node name of the fp16 model: class} for every compute node (not Cast, Constant or shape ops)."""
    graph = placed_graph(fp16_model)
    ty = _elem_types(graph)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type in ("Cast", "Constant", "Shape", "Size") or n.name.startswith("InsertedPrecisionFreeCast"):
            continue
        floats_in = [i for i in n.input if ty.get(i) in (FLOAT, FLOAT16)]
        floats_out = [o for o in n.output if ty.get(o) in (FLOAT, FLOAT16)]
        if not floats_in and not floats_out:
            continue
        if EMULATED_MARK in n.name:
            out[n.name] = "fp16-emulated"
        elif any(ty.get(i) == FLOAT16 for i in floats_in):
            out[n.name] = "fp16"
        else:
            ins = all(_is_fp16_value(i, ty, producer) for i in floats_in if i not in inits)
            outs = all(c.op_type == "Cast" and ty.get(c.output[0]) == FLOAT16
                       for o in floats_out for c in consumers.get(o, [])) and all(consumers.get(o) for o in floats_out)
            out[n.name] = "fp32-rounded" if ins and outs else "fp32"
    return out


def cpu_fp16_kernel_ops() -> set[str]:
    """ONNX op types this onnxruntime build's CPU provider has an fp16 kernel for (its kernel registry)."""
    from onnxruntime.capi import _pybind_state as C

    return {k.op_name for k in C.get_all_opkernel_def()
            if k.provider == "CPUExecutionProvider" and k.domain in ("", "ai.onnx")
            and any("float16" in t for ts in k.type_constraints.values() for t in ts)}


def truth(fp16_model, model32, input_shapes: dict | None = None) -> dict:
    """Per-node classes, compute shares by class (and cube share apart), the op types the CPU ran in fp32, and the
    one honest label for reports."""
    from convert.compute import node_costs

    classes = node_classes(fp16_model)
    costs = node_costs(model32, input_shapes)
    total = sum(c["flops"] for c in costs.values()) or 1.0
    cube_total = sum(c["flops"] for c in costs.values() if c["unit"] == "cube") or 1.0
    by_class = {k: 0.0 for k in CLASSES}
    cube_by_class = {k: 0.0 for k in CLASSES}
    nodes = []
    for name, cost in costs.items():
        cls = classes.get(name) or _emulated_class(name, classes)
        if cls is None:
            continue                       # folded away by the converter, or a shape op
        by_class[cls] += cost["flops"]
        if cost["unit"] == "cube":
            cube_by_class[cls] += cost["flops"]
        nodes.append({"node": name, "op_type": cost["op_type"], "unit": cost["unit"], "class": cls,
                      "flops": cost["flops"]})
    shares = {k: v / total for k, v in by_class.items()}
    no_kernel = sorted({n["op_type"] for n in nodes if n["unit"] != "none"} - cpu_fp16_kernel_ops())
    kept = sorted({n["op_type"] for n in nodes if n["class"] == "fp32" and n["unit"] != "none"})
    return {"shares": shares, "cube_shares": {k: v / cube_total for k, v in cube_by_class.items()},
            "fp16_kernel_share": shares["fp16"],
            "fp16_emulated_share": shares["fp32-rounded"] + shares["fp16-emulated"],
            "fp32_share": shares["fp32"],
            "cpu_without_fp16_kernel": no_kernel, "fp32_unrounded_op_types": kept,
            "label": label(shares), "nodes": nodes,
            "method": "onnxruntime CPU placement with optimisations off (InsertCastTransformer); shares weigh "
                      "convert.compute.node_costs"}


def _emulated_class(name: str, classes: dict) -> str | None:
    """A recurrence node of the fp32 model lives on in the fp16 model as `<name>/fp16_recurrence/...` nodes."""
    prefix = name + EMULATED_MARK
    return "fp16-emulated" if any(k.startswith(prefix) for k in classes) else None


def label(shares: dict) -> str:
    """What the target computes, in one line: "float16 inside" only when every bit of compute is fp16 kernels."""
    if shares["fp16"] >= 0.9999:
        return "float16 inside (fp16 kernels for all compute)"
    parts = [f"{shares['fp16']:.1%} in fp16 kernels",
             f"{shares['fp32-rounded']:.1%} fp32 kernels between fp16-rounded tensors",
             f"{shares['fp16-emulated']:.1%} recurrences rounded to fp16 per step",
             f"{shares['fp32']:.1%} fp32 not rounded"]
    return "fp16 tensors between ops; compute " + ", ".join(p for p in parts if not p.startswith("0.0%"))


def record(t: dict) -> dict:
    """What a result says of its fp16 compute: the line and the three shares."""
    return {"line": short_line(t), **{k: t[k] for k in ("fp16_kernel_share", "fp16_emulated_share", "fp32_share")}}


def short_line(t: dict) -> str:
    """One line for results and logs: the share of compute done in fp16, emulated in fp16, and left in fp32."""
    s = t["shares"]
    return (f"compute in fp16 kernels {s['fp16']:.1%}; fp16 emulated by rounding {t['fp16_emulated_share']:.1%} "
            f"(fp32 kernels between fp16-rounded tensors {s['fp32-rounded']:.1%}, recurrences rounded per step "
            f"{s['fp16-emulated']:.1%}); fp32 not rounded {s['fp32']:.1%}"
            + (f" ({', '.join(t['fp32_unrounded_op_types'])})" if t["fp32_unrounded_op_types"] else ""))
