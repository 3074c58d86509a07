"""The ort-fp16 target: the simplified ONNX computed in float16 inside, float32 at the inputs and outputs.

This is how ATC's default `force_fp16` computes, emulated on the CPU with onnxruntime. Constants are cast
straight to fp16 (no clamping beyond fp16's own range), like a device cast.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

FP16_MAX = 65504.0
FP16_MIN_SUBNORMAL = 5.960464477539063e-08


def initializer_range_report(model) -> dict:
    """How many float32 constants fp16 cannot hold: overflow (> 65504) or flush to zero (< 6e-8)."""
    from onnx import numpy_helper

    total = over = under = 0
    for init in model.graph.initializer:
        if init.data_type != 1:  # FLOAT
            continue
        arr = np.abs(numpy_helper.to_array(init))
        total += arr.size
        over += int(np.count_nonzero(arr > FP16_MAX))
        under += int(np.count_nonzero((arr > 0) & (arr < FP16_MIN_SUBNORMAL)))
    return {"float32_constants": total, "overflow_count": over, "flush_to_zero_count": under}


def split_consumed_outputs(model) -> int:
    """Give every graph output that other nodes also read its own Identity.

    The fp16 converter (keep_io_types) casts graph outputs back to fp32, and a node that reads the same
    tensor would then get fp32 in an fp16 graph (onnxruntime refuses to load it).
    """
    from onnx import helper

    consumed = {i for n in model.graph.node for i in n.input}
    count = 0
    for out in model.graph.output:
        if out.name not in consumed:
            continue
        internal = out.name + "__internal"
        for node in model.graph.node:
            node.output[:] = [internal if o == out.name else o for o in node.output]
            node.input[:] = [internal if i == out.name else i for i in node.input]
        model.graph.node.append(helper.make_node("Identity", [internal], [out.name], name=out.name + "__identity"))
        count += 1
    return count


def to_fp16(model, keep_op_types=(), keep_nodes=()):
    """The fp16 model (fp32 inputs/outputs); ops of `keep_op_types` and nodes in `keep_nodes` stay fp32."""
    import copy

    from onnxconverter_common import float16

    model = copy.deepcopy(model)
    split_consumed_outputs(model)
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_op_types))
    unshare_kept_constants(model, set(block), set(keep_nodes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns once per truncated constant
        m16 = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                               node_block_list=list(keep_nodes),
                                               min_positive_val=FP16_MIN_SUBNORMAL, max_finite_val=FP16_MAX)
    retarget_casts(m16)
    drop_round_trips(m16)
    fp32_outputs(m16)
    return m16


def unshare_kept_constants(model, block_ops: set, keep_nodes: set) -> int:
    """A float constant read by a node kept in fp32 and by an fp16 node: the converter leaves it fp32 for both, and
    onnxruntime refuses the fp16 node. The kept nodes get their own copy (`<name>__fp32`)."""
    import copy

    kept = [n for n in model.graph.node if n.op_type in block_ops or n.name in keep_nodes]
    others = {i for n in model.graph.node if n not in kept for i in n.input}
    shared = {init.name: init for init in model.graph.initializer
              if init.data_type == 1 and init.name in others and any(init.name in n.input for n in kept)}
    for name, init in shared.items():
        twin = copy.deepcopy(init)
        twin.name = name + "__fp32"
        model.graph.initializer.append(twin)
    for n in kept:
        n.input[:] = [i + "__fp32" if i in shared else i for i in n.input]
    return len(shared)


def fp32_outputs(model) -> int:
    """A graph output whose node is kept in fp32 comes out of the converter cast to fp16 (despite keep_io_types);
    the kept node writes the output in fp32 itself."""
    from onnx import TensorProto

    count = 0
    for out in model.graph.output:
        cast = next((n for n in model.graph.node if out.name in n.output), None)
        if out.type.tensor_type.elem_type != TensorProto.FLOAT16 or cast is None or cast.op_type != "Cast" \
                or not _inserted_fp16(cast.name):
            continue
        src = cast.input[0]
        for n in model.graph.node:
            n.output[:] = [out.name if o == src else o for o in n.output]
            n.input[:] = [out.name if i == src else i for i in n.input]
        model.graph.node.remove(cast)
        out.type.tensor_type.elem_type = TensorProto.FLOAT
        count += 1
    return count


def _inserted_fp16(name: str) -> bool:
    """A Cast to fp16 the converter inserted: after a node kept in fp32, or at a graph input (keep_io_types)."""
    return "_output_cast" in name or name.startswith("graph_input_cast")


def drop_round_trips(model) -> int:
    """Between two nodes kept in fp32 the converter stores the tensor in fp16 (Cast to fp16, then back to fp32);
    ATC passes it on in fp32. Consumers of such a pair read the fp32 tensor directly; unused casts go."""
    from onnx import TensorProto

    def to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None)

    producer = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    direct = {}
    for n in model.graph.node:
        src = producer.get(n.input[0]) if n.op_type == "Cast" else None
        if (src is not None and src.op_type == "Cast" and to(n) == TensorProto.FLOAT
                and to(src) == TensorProto.FLOAT16 and "_input_cast" in n.name and _inserted_fp16(src.name)
                and n.output[0] not in graph_outputs):
            direct[n.output[0]] = src.input[0]
    if not direct:
        return 0
    for n in model.graph.node:
        n.input[:] = [direct.get(i, i) for i in n.input]
    read = {i for n in model.graph.node if n.output[0] not in direct for i in n.input} | graph_outputs
    keep = [n for n in model.graph.node
            if not (n.op_type == "Cast" and (n.output[0] in direct or
                                             (_inserted_fp16(n.name) and n.output[0] not in read)))]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return len(direct)


def retarget_casts(model) -> int:
    """A Cast to float32 inside the graph (e.g. shape arithmetic: int64 -> float, BEiT's attention scale) gets an
    fp16 output type from the converter but keeps `to=FLOAT`, and onnxruntime refuses the model; cast to fp16."""
    from onnx import TensorProto

    fp16 = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    count = 0
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in fp16:
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
                    count += 1
    return count


def convert_fp16(src: Path, dst: Path, keep_op_types: list[str], keep_nodes: list[str] = ()) -> dict:
    import onnx

    from pipeline.atomic import atomic_path

    model = onnx.load(str(src))
    report = initializer_range_report(model)
    names = {n.name for n in model.graph.node}
    missing = [n for n in keep_nodes if n not in names]
    if missing:
        from pipeline.errors import PipelineError

        raise PipelineError(f"fp16.keep_nodes names {missing[:3]}, not in {src.name}; use names from `make precision`")
    m16 = to_fp16(model, keep_op_types, keep_nodes)
    with atomic_path(dst) as tmp:
        onnx.save(m16, str(tmp))
    kept = sum(1 for n in model.graph.node if n.op_type in set(keep_op_types) or n.name in set(keep_nodes))
    report.update({"keep_op_types": sorted(keep_op_types), "keep_nodes": list(keep_nodes), "nodes_kept_fp32": kept,
                   "converter": "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)"})
    return report
