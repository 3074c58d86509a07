"""The doctor's fp16 emulation is the ort-fp16 target's (convert/fp16.py), so a verdict here is make compare's."""
from __future__ import annotations


def round_fp16(model, keep_nodes=(), keep_op_types=()):
    """The fp32 model as force_fp16 computes it: recurrences rounded per step, fp16 tensors between the other
    nodes; nodes kept in fp32 compute and pass on fp32."""
    from convert.fp16 import emulate_fp16

    return emulate_fp16(model, keep_nodes, keep_op_types)[0]
