"""Which ONNX ops each Ascend SoC family can compute in fp32 on the AI Core: what a keep_dtype or mixlist fix may ask.

A node kept in fp32 (--keep_dtype) whose AI Core kernel has no fp32 variant does not fail the build: ATC falls back
to the highest precision the kernel has (fp16 inputs), so the fix silently does not hold on the chip. Black-listed
by --modify_mixlist, the op goes to an AI CPU kernel if one exists (far slower) or the build fails. Either way the
doctor must not propose it for that chip. Sources (details and the table in words: docs/fp16-fixes.md):

  CD    Ascend canndev, GitHub mirror dengguojie/vue-element-admin, branch stp, commit 7d77ce32d (2022-06-30):
        ops/built-in/tbe/op_info_cfg/ai_core/<soc>/aic-<soc>-ops-info.ini (input dtypes per op and SoC; an op with
        dynamicFormat.flag takes its dtypes from op_select_format in ops/built-in/tbe/impl/<op>.py)
  NN    hicann/ops-nn, commit e5c3fa93 (2026-08-22): <op>/op_host/<op>_def.cpp (AICore().AddConfig(<soc>) with the
        dtypes of that SoC)
  HF    hiascend ATC / AOE docs (URLs in docs/fp16-fixes.md)

"unknown" (None) means not verified in these sources: the doctor then allows the keep and warns. Pure Python.
"""
from __future__ import annotations

import re

CD = "CD ops/built-in/tbe"
INI = CD + "/op_info_cfg/ai_core/<soc>/aic-<soc>-ops-info.ini"

# family -> the --soc_version values it covers and the products (ATC --soc_version page; GE device_capability.cc)
FAMILIES = {
    "Ascend310": "Ascend310 (Atlas 200/300/500 inference, first generation)",
    "Ascend310P": "Ascend310P1/P3/P5/P7 (Atlas inference series, e.g. Atlas 300I Pro/Duo)",
    "Ascend910": "Ascend910, Ascend910A, bare Ascend910B, Ascend910ProA/ProB/PremiumA (Atlas training series)",
    "Ascend910B": "Ascend910B1/B2/B2C/B3/B4/B4-1 (Atlas A2 training/inference)",
    "Ascend910_93": "Ascend910_93xx (Atlas A3 training/inference)",
    "Ascend310B": "Ascend310B1 (Atlas 200I/500 A2 inference)",
}
MAIN = ("Ascend310", "Ascend310P", "Ascend910", "Ascend910B")       # the families every verdict was read for


def soc_family(soc: str | None) -> str | None:
    """The family of a --soc_version value, None when empty or not a known Ascend chip name. A bare Ascend910B
    (no digit) is the first-generation 910, as GE's capability table maps it."""
    if not soc:
        return None
    s = soc.strip().replace(" ", "").lower()
    if re.fullmatch(r"ascend310", s):
        return "Ascend310"
    if re.fullmatch(r"ascend310p\d*", s):
        return "Ascend310P"
    if re.fullmatch(r"ascend310b\d*", s):
        return "Ascend310B"
    if re.fullmatch(r"ascend910_?93\d*", s) or re.fullmatch(r"ascend910_\d{4}", s):
        return "Ascend910_93"
    if re.fullmatch(r"ascend910b\d[a-z0-9-]*", s):
        return "Ascend910B"
    if re.fullmatch(r"ascend910(a|b|proa|prob|premiuma)?", s):
        return "Ascend910"
    return None


def _all(value, source, families=tuple(FAMILIES)) -> dict:
    return {f: (value, source) for f in families}


def _vector(name: str, fp16_only_on=(), note: str = "") -> dict:
    """A vector op whose ini lists float inputs on ascend310/310p/910/910b/310b, except on the families named."""
    src = f"{INI}, [{name}] input0.dtype" + (f"; {note}" if note else "")
    caps = {f: (f not in fp16_only_on, src) for f in (*MAIN, "Ascend310B")}
    caps["Ascend910_93"] = (None, "A3 is not in the 2022 canndev snapshot; not verified")
    return caps


VECTOR_FP32 = ("Abs", "AccumulateNV2", "BatchNorm", "BNInference", "ClipByValue", "Cos", "Erf", "Gelu", "HardSigmoid",
               "HardSwish", "InstanceNorm", "LeakyRelu", "Log", "LogSoftmaxV2", "Maximum", "Minimum", "Neg", "Pow",
               "ReduceMaxD", "ReduceMeanD", "ReduceSum", "ReduceSumD", "Relu", "Relu6", "Rsqrt", "SelectV2",
               "Sigmoid", "Sin", "Softplus", "Softsign", "Sqrt", "Square", "Sub", "Swish", "Tanh", "Floor", "Ceil",
               "Round")
# Ascend op type -> family -> (fp32 on the AI Core: True / False / None = unknown, source)
ASCEND = {t: _vector(t) for t in VECTOR_FP32}
ASCEND.update({
    "Exp": _vector("Exp", ("Ascend310",)),
    "Elu": _vector("Elu", ("Ascend310",)),
    "Mish": _vector("Mish", ("Ascend310",)),
    "ReduceMean": _vector("ReduceMean", ("Ascend310",), "with constant axes ATC uses ReduceMeanD (fp32 everywhere)"),
    "ReduceMax": _vector("ReduceMax", ("Ascend310",), "with constant axes ATC uses ReduceMaxD (fp32 everywhere)"),
    **{t: _vector(t, MAIN + ("Ascend310B",)) for t in ("AvgPoolV2", "AvgPool", "MaxPool", "MaxPoolV3")},
    **{t: {**_vector(t), **{f: (True, f"{CD}/impl/{py}.py op_select_format: the dtype list holds float (only "
                                       "Hi3796CV300/SD3403 lack it)") for f in (*MAIN, "Ascend310B")}}
       for t, py in (("Add", "add"), ("Mul", "mul"), ("Reciprocal", "reciprocal"), ("PRelu", "prelu"),
                     ("LayerNorm", "layer_norm"))},
    "SoftmaxV2": {**_vector("SoftmaxV2"),
                  **{f: (True, f"{CD}/impl/softmax_v2.py op_select_format: float for Ascend310, Ascend310P, "
                               "Ascend910 (by SHORT_SOC_VERSION)") for f in ("Ascend310", "Ascend310P", "Ascend910")},
                  **{f: (None, f"{CD}/impl/softmax_v2.py: float where the platform has tik.vgatherb; not verified "
                               "for this family") for f in ("Ascend910B", "Ascend310B")}},
    "RealDiv": {**_vector("RealDiv"),
                **{f: (None, f"{INI}: dynamic format on this family; the dtype list was not read")
                   for f in ("Ascend910", "Ascend910B", "Ascend310B")}},
    # cube ops
    "Conv2D": {
        **_all(False, f"{CD}/impl/conv2d.py op_select_format: x and filter float16/int8 (int4) only where the chip "
                      "has no fixpipe; fp32 is at most the output (and not on Ascend310)", MAIN[:3]),
        "Ascend910B": (True, f"{CD}/impl/util/util_conv2d.py v220_gen_param (fixpipe chips): float32 fmap and filter; "
                             "A2 may compute fp32 cube ops as HF32 unless op_precision_mode sets "
                             "enable_float_32_execution"),
        "Ascend910_93": (None, "not in the 2022 canndev snapshot; not verified"),
        "Ascend310B": (None, "whether ATC takes conv2d.py's fixpipe path on 310B was not verified"),
    },
    "Conv3D": _vector("Conv3D", MAIN + ("Ascend310B",), "x float16/int8 only"),
    "DepthwiseConv2D": _vector("DepthwiseConv2D", MAIN + ("Ascend310B",), "x float16/int8 only"),
    "MatMulV2": {
        **_all(False, f"{CD}/impl/dynamic/mat_mul.py base_op_select_format: no fp32 on the cube; float32 only as "
                      "an ND 'Vector Logic' fallback that multiplies on the vector unit", MAIN[:3]),
        "Ascend910B": (True, f"{INI} (ascend910b): [MatMulV2] input0.dtype lists float; NN matmul/mat_mul_v3/op_host/"
                             "mat_mul_v3_def.cpp: DT_FLOAT for ascend910b"),
        "Ascend910_93": (True, "NN matmul/mat_mul_v3/op_host/mat_mul_v3_def.cpp: DT_FLOAT x1/x2 for ascend910_93"),
        "Ascend310B": (True, f"{INI} (ascend310b): [MatMulV2] input0.dtype lists float"),
    },
    "BatchMatMulV2": {
        **_all(False, f"{CD}/impl/dynamic/batch_matmul_v2.py base_op_select_format: no fp32 on the cube; float32 "
                      "only as a 'Vector Logic' fallback for some shapes", MAIN[:3]),
        "Ascend910B": (True, f"{CD}/impl/dynamic/batch_matmul_v2.py: float32 FRACTAL_NZ on chips with "
                             "Intrinsic_fix_pipe_l0c2out; NN matmul/batch_mat_mul_v3/op_host/batch_mat_mul_v3_def.cpp: "
                             "DT_FLOAT for ascend910b"),
        "Ascend910_93": (True, "NN matmul/batch_mat_mul_v3/op_host/batch_mat_mul_v3_def.cpp: DT_FLOAT for "
                               "ascend910_93"),
        "Ascend310B": (None, "not verified"),
    },
    "Conv2DTranspose": _vector("Conv2DTranspose", MAIN + ("Ascend310B",), "x (input1) float16 only"),
    "DynamicGRUV2": _all(False, f"{CD}/impl/dynamic/dynamic_gru_v2.py _check_dtype: x, weight_input and "
                                "weight_hidden float16 only (bias and output may be fp32)"),
    "DynamicRNN": _all(False, f"{INI}: [DynamicRNN] x and w float16 only on every SoC of the snapshot (NN rnn/"
                              "dynamic_rnn/op_host/dynamic_rnn_def.cpp adds a DT_FLOAT config for ascend910b/"
                              "ascend910_93 in 2026 toolkits; the doctor still does not offer it: unverified through "
                              "ATC's ONNX LSTM path)"),
})

# ONNX op type -> the Ascend types ATC ends up with, where the doctor needs more than convert/ascend_ops.py gives
ONNX = {
    "Conv": ("Conv2D",),                     # 1-D and 2-D; a depthwise Conv may become DepthwiseConv2D (fp16 only)
    "ConvTranspose": ("Conv2DTranspose",),
    "MatMul": ("BatchMatMulV2", "MatMulV2"),
    "Gemm": ("MatMulV2",),
    "Einsum": ("BatchMatMulV2",),            # EinsumFusionPass: matmuls plus transposes/reshapes
    "GRU": ("DynamicGRUV2",),
    "LSTM": ("DynamicRNN",),                 # CD fusion_pass/graph_fusion/ai_core/common_lstm_fusion_pass.cc
    "AveragePool": ("AvgPoolV2",),
    "MaxPool": ("MaxPool", "MaxPoolV3"),
    "GlobalAveragePool": ("ReduceMeanD",),
    "Div": ("RealDiv",),
    "Relu6": ("Relu6",),
}
NEVER = {"GRU": "Ascend's GRU kernel (DynamicGRUV2) takes fp16 inputs and weights only",
         "LSTM": "Ascend's LSTM kernel (DynamicRNN) takes fp16 inputs and weights in the toolkits verified",
         "RNN": "ATC has no ONNX RNN parser"}


def ascend_types(onnx_op_type: str) -> tuple[str, ...]:
    if onnx_op_type in ONNX:
        return ONNX[onnx_op_type]
    try:
        from convert.ascend_ops import ROWS
    except ImportError:
        return ()
    for row in ROWS:
        if row[0] == onnx_op_type and row[4]:
            return tuple(row[4])
    return ()


DEPTHWISE = "Conv(depthwise)"     # convert.compute.kind_of: a Conv with one input channel per group


def _one(onnx_op_type: str, family: str) -> tuple[bool | None, str]:
    if onnx_op_type == DEPTHWISE:
        ok, why = _one("Conv", family)
        if ok is not True:
            return ok, why
        return None, ("depthwise Conv: may become DepthwiseConv2D, whose kernel takes float16 x only ("
                      f"{ASCEND['DepthwiseConv2D'][family][1] if family in ASCEND['DepthwiseConv2D'] else INI}); "
                      "not verified that ATC keeps it a grouped Conv2D here")
    if onnx_op_type in NEVER:
        return False, NEVER[onnx_op_type]
    types = ascend_types(onnx_op_type)
    if not types:
        return None, f"{onnx_op_type}: no Ascend op type known here; fp32 support unknown"
    got = [(t, *ASCEND[t].get(family, (None, "not verified"))) if t in ASCEND else (t, None, "not in the table")
           for t in types]
    ok = next((g for g in got if g[1] is True), None)
    if ok:
        return True, f"{onnx_op_type} -> {ok[0]}: {ok[2]}"
    unknown = next((g for g in got if g[1] is None), None)
    if unknown:
        return None, f"{onnx_op_type} -> {unknown[0]}: {unknown[2]}"
    return False, f"{onnx_op_type} -> {', '.join(g[0] for g in got)}: {got[0][2]}"


def fp32_capable(onnx_op_type: str, soc: str | None) -> tuple[bool | None, str]:
    """Can a node of this ONNX type compute in fp32 on the AI Core of `soc`: True, False, or None (unknown), and the
    reason with its source. Without a SoC: True only if every family can, False if none can, None otherwise."""
    if soc:
        family = soc_family(soc)
        if family is None:
            return None, f"unknown SoC {soc!r}: not one of {', '.join(FAMILIES)}"
        ok, why = _one(onnx_op_type, family)
        return ok, f"{family}: {why}"
    per = {f: _one(onnx_op_type, f) for f in FAMILIES}
    values = {v for v, _ in per.values()}
    if values == {True}:
        return True, f"{onnx_op_type}: fp32 on every family"
    if values == {False}:
        return False, next(iter(per.values()))[1]
    no = [f for f, (v, _) in per.items() if v is False]
    unk = [f for f, (v, _) in per.items() if v is None]
    return None, (f"{onnx_op_type}: " + "; ".join(p for p in (f"not on {', '.join(no)}" if no else "",
                                                              f"unverified on {', '.join(unk)}" if unk else "") if p))


def compiles_on(onnx_op_types) -> dict[str, dict]:
    """family -> {"ok": True | False | None, "blocked": {op: reason}, "unknown": {op: reason}} for a set of ONNX op
    types that a fix computes in fp32: ok is False when one of them has no fp32 kernel there, None when one is
    unverified and none is blocked."""
    out = {}
    for family in FAMILIES:
        blocked, unknown = {}, {}
        for op in sorted(set(onnx_op_types)):
            ok, why = _one(op, family)
            if ok is False:
                blocked[op] = why
            elif ok is None:
                unknown[op] = why
        out[family] = {"ok": False if blocked else None if unknown else True, "blocked": blocked, "unknown": unknown}
    return out


def compiles_text(per_family: dict[str, dict]) -> str:
    """compiles on: A, B; not on: C (Conv), D (Conv); unverified: E"""
    yes = [f for f, v in per_family.items() if v["ok"] is True]
    no = [f"{f} ({', '.join(v['blocked'])})" for f, v in per_family.items() if v["ok"] is False]
    unk = [f for f, v in per_family.items() if v["ok"] is None]
    parts = [f"compiles on: {', '.join(yes) or 'none'}"]
    if no:
        parts.append(f"not on: {', '.join(no)}")
    if unk:
        parts.append(f"unverified: {', '.join(unk)}")
    return "; ".join(parts)
