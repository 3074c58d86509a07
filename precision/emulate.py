"""Faithful fp16 emulation for the doctor: round every tensor an fp16 op reads or writes to fp16.

onnxruntime's CPU provider runs ops without fp16 kernels (Pow, ReduceMean, ...) in fp32 and removes the
casts between them, so a converted fp16 model can hide an overflow ATC's force_fp16 would hit. Here every
node not kept in fp32 computes in fp32 on fp16-rounded inputs and rounds its outputs to fp16 (values
beyond 65504 become inf), which is how tensors are stored between ops under force_fp16.
"""
from __future__ import annotations

import copy

import numpy as np


def _float_names(model) -> set[str]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    names = {v.name for v in vis if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names |= {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return names


def round_fp16(model, keep_nodes=(), keep_op_types=()):
    """A copy of the fp32 model with fp16 rounding around every node that is not kept in fp32."""
    from onnx import TensorProto, helper, numpy_helper

    m = copy.deepcopy(model)
    floats = _float_names(m)
    kept = set(keep_nodes)
    keep_types = set(keep_op_types)
    is_kept = lambda n: n.name in kept or n.op_type in keep_types  # noqa: E731
    inits = {i.name: i for i in m.graph.initializer}
    rounded_inputs: dict[str, str] = {}
    produced_rounded = set()
    nodes = []
    for node in m.graph.node:
        if is_kept(node) or node.op_type in ("Constant", "Shape"):
            nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if name not in floats or name in produced_rounded:
                continue
            if name in inits:                                        # constants: stored in fp16
                arr = numpy_helper.to_array(inits[name])
                inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float16).astype(np.float32), name))
                continue
            if name not in rounded_inputs:
                r = f"{name}__fp16in"
                nodes += [helper.make_node("Cast", [name], [r + "_h"], to=TensorProto.FLOAT16, name=r + "_c1"),
                          helper.make_node("Cast", [r + "_h"], [r], to=TensorProto.FLOAT, name=r + "_c2")]
                rounded_inputs[name] = r
            node.input[k] = rounded_inputs[name]
        outs = list(node.output)
        new_tail = []
        for k, name in enumerate(outs):
            if name not in floats:
                continue
            raw = f"{name}__fp32"
            node.output[k] = raw
            new_tail += [helper.make_node("Cast", [raw], [raw + "_h"], to=TensorProto.FLOAT16, name=raw + "_c1"),
                         helper.make_node("Cast", [raw + "_h"], [name], to=TensorProto.FLOAT, name=raw + "_c2")]
            produced_rounded.add(name)
        nodes += [node, *new_tail]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.value_info[:]
    return m
