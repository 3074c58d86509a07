"""The fp16 emulation of ATC's force_fp16 on the CPU: one model, used by the ort-fp16 target and the precision doctor.

Under force_fp16 every tensor between ops is fp16: the cube unit takes fp16 in and accumulates in fp32, the vector
unit computes in fp16, and graph inputs/outputs keep their fp32 type. onnxruntime's CPU provider has fp16 kernels
for few ops (convert/fp16_truth.py lists them), and a model converted to fp16 runs the rest in fp32 with the
rounding between them removed. So the emulation is explicit instead: every node that is not kept computes in fp32
on fp16-rounded inputs and rounds its float outputs to fp16 (Cast to fp16 and back, which onnxruntime never
removes; values beyond 65504 become inf, as a device cast does). Constants are stored in fp16. GRU and LSTM, which
Ascend runs in fp16 only, are first rewritten by convert/rnn_fp16.py to round their state at every step.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np

FP16_MAX = 65504.0
FP16_MIN_SUBNORMAL = 5.960464477539063e-08
UNROUNDED_OPS = ("Constant", "Shape", "Size")
METHOD = ("fp32 arithmetic on fp16-rounded inputs, outputs rounded to fp16 (Cast pairs around every node not kept "
          "in fp32); GRU/LSTM rounded to fp16 at every step (convert/rnn_fp16.py)")


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


def _float_names(model) -> set[str]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    names = {v.name for v in vis if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names |= {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return names


def _round_pair(name: str, out: str):
    from onnx import TensorProto, helper

    return [helper.make_node("Cast", [name], [out + "__half"], to=TensorProto.FLOAT16, name=out + "__to_fp16"),
            helper.make_node("Cast", [out + "__half"], [out], to=TensorProto.FLOAT, name=out + "__to_fp32")]


def round_fp16(model, keep_nodes=(), keep_op_types=()):
    """A copy of the fp32 model with fp16 rounding around every node that is not kept in fp32.

    A kept node reads its inputs as the producers wrote them (fp16 values from fp16 nodes) and writes fp32; a
    constant read by a kept node and an fp16 node is rounded for the fp16 node only."""
    from onnx import numpy_helper

    m = copy.deepcopy(model)
    floats = _float_names(m)
    kept, keep_types = set(keep_nodes), set(keep_op_types)
    is_kept = lambda n: n.name in kept or n.op_type in keep_types  # noqa: E731
    inits = {i.name: i for i in m.graph.initializer}
    read_by_kept = {i for n in m.graph.node if is_kept(n) for i in n.input}
    rounded: dict[str, str] = {}           # tensor -> its fp16-rounded twin
    produced_rounded = set()
    nodes = []
    for node in m.graph.node:
        if is_kept(node) or node.op_type in UNROUNDED_OPS:
            nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if name not in floats or name in produced_rounded:
                continue
            if name in inits:                                      # constants: stored in fp16
                arr = numpy_helper.to_array(inits[name]).astype(np.float16).astype(np.float32)
                if name in read_by_kept:
                    twin = rounded.setdefault(name, name + "__fp16")
                    if twin not in inits:
                        inits[twin] = numpy_helper.from_array(arr, twin)
                        m.graph.initializer.append(inits[twin])
                    node.input[k] = twin
                else:
                    inits[name].CopyFrom(numpy_helper.from_array(arr, name))
                continue
            if name not in rounded:
                rounded[name] = f"{name}__fp16in"
                nodes += _round_pair(name, rounded[name])
            node.input[k] = rounded[name]
        tail = []
        for k, name in enumerate(list(node.output)):
            if name not in floats:
                continue
            node.output[k] = f"{name}__fp32"
            tail += _round_pair(node.output[k], name)
            produced_rounded.add(name)
        nodes += [node, *tail]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.value_info[:]
    return m


def emulate_fp16(model, keep_nodes=(), keep_op_types=()) -> tuple:
    """(the emulation model, the recurrence report): recurrences rounded per step, then rounding around every node."""
    from convert.rnn_fp16 import emulate_recurrences

    kept_rnn = [n.name for n in model.graph.node if n.op_type in ("GRU", "LSTM")
                and (n.name in set(keep_nodes) or n.op_type in set(keep_op_types))]
    if kept_rnn:
        from pipeline.errors import ConfigError

        raise ConfigError(f"fp16 keep lists name recurrent node(s) {kept_rnn[:3]}: Ascend runs GRU/LSTM in fp16 only "
                          "(DynamicGRUV2 / DynamicRNN); remove them from fp16.keep_nodes / keep_op_types")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emulated, report = emulate_recurrences(model, rounding=True)
    return round_fp16(emulated, keep_nodes, keep_op_types), report


def convert_fp16(src: Path, dst: Path, keep_op_types: list[str], keep_nodes: list[str] = (),
                 input_shapes: dict | None = None) -> dict:
    """Write the ort-fp16 target and report what it computes in fp16 (convert/fp16_truth.py)."""
    import onnx

    from convert.fp16_truth import truth
    from pipeline.atomic import atomic_path
    from pipeline.errors import PipelineError

    model = onnx.load(str(src))
    report = initializer_range_report(model)
    names = {n.name for n in model.graph.node}
    missing = [n for n in keep_nodes if n not in names]
    if missing:
        raise PipelineError(f"fp16.keep_nodes names {missing[:3]}, not in {src.name}; use names from `make precision`")
    m16, recurrences = emulate_fp16(model, keep_nodes, keep_op_types)
    with atomic_path(dst) as tmp:
        onnx.save(m16, str(tmp))
    kept = sum(1 for n in model.graph.node if n.op_type in set(keep_op_types) or n.name in set(keep_nodes))
    t = truth(m16, model, input_shapes)
    report.update({"keep_op_types": sorted(keep_op_types), "keep_nodes": list(keep_nodes), "nodes_kept_fp32": kept,
                   "method": METHOD, "recurrences": recurrences, "truth": {k: v for k, v in t.items() if k != "nodes"}})
    return report
