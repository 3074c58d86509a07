"""ONNX op types -> the Ascend (AI Core) op types ATC ends up with, for --modify_mixlist and OpType:: entries.

A mixlist names AI Core op types as in aic-<soc>-ops-info*.json, after ATC's ONNX parser and graph fusion, not
ONNX types: ONNX Div is parsed to RealDiv, GRU to CommonGRU and then fused to DynamicGRUV2. An entry naming a
type that is not in the built graph does nothing, silently. Where this table knows no mapping, the caller must
fall back to --keep_dtype with node names, which ATC honours whatever the type.

Every row was read in the upstream sources below (not guessed); ops missing here are unknown, not unsupported:
  NN    hicann/ops-nn, snapshot 2026-08 (<op>/framework/*_onnx_plugin.cpp: REGISTER_CUSTOM_OP(<Ascend type>)
        .OriginOpType("ai.onnx::<opset>::<ONNX type>"))
  MATH  hicann/ops-math, snapshot 2026-08 (same layout; common/src/framework/similar_opp_onnx_plugin.cpp holds
        the one-to-one element-wise registrations)
  CD    Ascend canndev ops/built-in/..., snapshot 2022-06 (GitHub mirror dengguojie/vue-element-admin, branch
        stp): graph fusion passes, const-to-attr rules, TBE kernels. Newer toolkits may differ: confirm with
        `atc --mode=1 --om=<om> --json=<json>` (the OM graph lists every op type).
Pure Python, no NumPy or torch: usable on any host.
"""
from __future__ import annotations

SIM = "MATH common/src/framework/similar_opp_onnx_plugin.cpp"
CONST2ATTR = "CD fusion_pass/graph_fusion/ai_core/const2attr/const2attr_fusion_pass.cc"
PARTITIONED = "parsed as a PartitionedCall subgraph (ParseOpToGraphFn) whose compute op is listed"

# (ONNX type, first opset, last opset, type the parser registers, AI Core types or None, source, note)
ROWS = (
    ("Abs", 8, 18, "Abs", ("Abs",), SIM, ""),
    ("Add", 8, 18, "Add", ("Add",), SIM, ""),
    ("Sub", 8, 18, "Sub", ("Sub",), SIM, ""),
    ("Mul", 8, 18, "Mul", ("Mul",), SIM, ""),
    ("Div", 8, 18, "RealDiv", ("RealDiv",), SIM, "ONNX Div is RealDiv in ATC"),
    ("Pow", 8, 18, "Pow", ("Pow",), SIM, ""),
    ("Sqrt", 8, 18, "Sqrt", ("Sqrt",), SIM, ""),
    ("Reciprocal", 8, 18, "Reciprocal", ("Reciprocal",), SIM, ""),
    ("Erf", 8, 18, "Erf", ("Erf",), SIM, ""),
    ("Exp", 8, 18, "Exp", ("Exp",), SIM, ""),
    ("Log", 8, 18, "Log", ("Log",), SIM, ""),
    ("Sigmoid", 8, 18, "Sigmoid", ("Sigmoid",), SIM, ""),
    ("Tanh", 8, 18, "Tanh", ("Tanh",), SIM, ""),
    ("Relu", 8, 18, "Relu", ("Relu",), SIM, ""),
    ("Neg", 8, 18, "Neg", ("Neg",), SIM, ""),
    ("Softplus", 8, 18, "Softplus", ("Softplus",), SIM, ""),
    ("Sin", 8, 18, "Sin", ("Sin",), SIM, ""),
    ("Cos", 8, 18, "Cos", ("Cos",), SIM, ""),
    ("PRelu", 8, 18, "PRelu", ("PRelu",), SIM, ""),
    ("Where", 8, 18, "SelectV2", ("SelectV2",), SIM, ""),
    ("HardSwish", 14, 18, "HardSwish", ("HardSwish",), SIM, ""),
    ("LeakyRelu", 8, 18, "LeakyRelu", ("LeakyRelu",),
     "NN activation/leaky_relu/framework/leaky_relu_onnx_plugin.cpp", ""),
    ("Elu", 8, 18, "Elu", ("Elu",), "NN activation/elu/framework/elu_onnx_plugin.cpp", ""),
    ("HardSigmoid", 1, 18, "HardSigmoid", ("HardSigmoid",),
     "NN activation/hard_sigmoid/framework/hard_sigmoid_onnx_plugin.cpp", ""),
    ("Mish", 18, 18, "Mish", ("Mish",), "NN activation/mish/framework/mish_onnx_plugin.cpp", ""),
    ("Sum", 8, 18, "AccumulateNV2", ("AccumulateNV2",), "MATH math/accumulate_nv2/framework/sum_onnx_plugin.cpp", ""),
    ("Softmax", 8, 18, "SoftmaxV2", ("SoftmaxV2",), "NN activation/softmax_v2/framework/softmax_onnx_plugin.cpp", ""),
    ("LogSoftmax", 8, 18, "LogSoftmaxV2", ("LogSoftmaxV2",),
     "NN activation/log_softmax_v2/framework/logsoftmax_onnx_plugin.cpp", ""),
    ("MatMul", 8, 18, "BatchMatMulV2", ("BatchMatMulV2", "MatMulV2"),
     "NN matmul/mat_mul_v3/framework/matmul_onnx_plugin.cpp; CD fusion_pass/graph_fusion/ai_core/"
     "batch_matmul_fusion_pass.cc", "BatchMatMulFusionPass turns a batch matmul with 2-D operands into MatMulV2"),
    ("Gemm", 8, 18, "PartitionedCall", ("MatMulV2",), "NN common/src/framework/gemm_onnx_plugin.cpp",
     PARTITIONED + " (MatMulV2; Muls for alpha/beta != 1 and Add for C stay as they are); CANN 6.x registered "
     "MatMulV2 directly (CD framework/onnx_plugin/gemm_plugin.cc)"),
    ("Conv", 8, 18, "PartitionedCall", ("Conv2D", "Conv3D"), "NN common/src/framework/conv_onnx_plugin.cpp",
     PARTITIONED + ": Conv2D for 1-D (through Unsqueeze) and 2-D, Conv3D for 3-D"),
    ("AveragePool", 8, 18, "PartitionedCall", ("AvgPoolV2", "AvgPool3D"),
     "NN common/src/framework/average_pool_onnx_plugin.cpp", PARTITIONED),
    ("Clip", 8, 18, "PartitionedCall", ("ClipByValue", "Maximum", "Minimum"),
     "MATH conversion/clip_by_value/framework/clip_onnx_plugin.cpp", PARTITIONED + " (which one depends on min/max)"),
    ("ReduceMean", 8, 12, "PartitionedCall", ("ReduceMean", "ReduceMeanD"),
     "MATH math/reduce_mean/framework/reduce_mean_onnx_plugin.cpp; " + CONST2ATTR,
     PARTITIONED + "; with constant axes older toolkits turn ReduceMean into ReduceMeanD"),
    ("ReduceMean", 13, 18, "ReduceMean", ("ReduceMean", "ReduceMeanD"),
     "MATH math/reduce_mean/framework/reduce_mean_onnx_plugin.cpp; " + CONST2ATTR,
     "with constant axes older toolkits turn ReduceMean into ReduceMeanD"),
    ("ReduceSum", 8, 12, "PartitionedCall", ("ReduceSum",), "MATH math/reduce_sum/framework/reduce_sum_onnx_plugin.cpp",
     PARTITIONED),
    ("ReduceSum", 13, 18, "ReduceSum", ("ReduceSum",), "MATH math/reduce_sum/framework/reduce_sum_onnx_plugin.cpp", ""),
    ("ReduceMax", 8, 12, "PartitionedCall", ("ReduceMax", "ReduceMaxD"),
     "MATH math/reduce_max/framework/reduce_max_onnx_plugin.cpp; " + CONST2ATTR, PARTITIONED),
    ("ReduceMax", 13, 18, "ReduceMax", ("ReduceMax", "ReduceMaxD"),
     "MATH math/reduce_max/framework/reduce_max_onnx_plugin.cpp; " + CONST2ATTR, ""),
    ("GlobalAveragePool", 8, 18, "GlobalAveragePool", ("ReduceMeanD",),
     SIM + "; CD fusion_pass/graph_fusion/ai_core/globalavgpool_fusion_pass.cc",
     "Globalavgpoolpass retypes it to ReduceMeanD (GlobalAveragePool has no AI Core kernel)"),
    ("LayerNormalization", 17, 18, "PartitionedCall", ("LayerNorm",),
     "NN common/src/framework/layer_normalization_onnx_plugin.cpp",
     PARTITIONED + " (LayerNorm; Adds/Rsqrt/Cast only feed the optional mean and inv-std outputs)"),
    ("InstanceNormalization", 8, 18, "InstanceNorm", ("InstanceNorm",),
     "NN norm/instance_norm_v3/framework/instancenormalization_onnx_plugin.cpp", ""),
    ("BatchNormalization", 8, 18, "BatchNorm", ("BatchNorm",),
     "NN norm/batch_norm/framework/batch_normalization_onnx_plugin.cpp", ""),
    ("GRU", 8, 18, "CommonGRU", None,
     "NN common/src/framework/gru_onnx_plugin.cpp; CD fusion_pass/graph_fusion/ai_core/gru_fusion_pass.cc; "
     "CD tbe/impl/dynamic/dynamic_gru_v2.py",
     "parsed to CommonGRU, fused to DynamicGRUV2 (CommonGRUFusionPass), whose kernel takes float16 x and weights "
     "only (_check_dtype): no mixlist or keep_dtype entry keeps its matmuls in fp32; only its bias/output may be "
     "fp32"),
    ("LSTM", 8, 18, "CommonLSTM", None, "NN common/src/framework/lstm_onnx_plugin.cpp; CD fusion_pass/graph_fusion/"
     "ai_core/common_lstm_fusion_pass.cc; CD tbe/impl/dynamic/dynamic_rnn.py",
     "parsed to CommonLSTM, rewritten to one DynamicRNN per direction (CommonLSTMFusionPass; W, R, B must be "
     "constants), whose kernel takes float16 x, weights and state only: no mixlist or keep_dtype entry keeps it in "
     "fp32"),
    ("Einsum", 8, 18, "Einsum", None, "MATH common/src/framework/einsum_onnx_plugin.cpp; CD fusion_pass/"
     "graph_fusion/ai_core/einsum_fusion_pass.cc",
     "EinsumFusionPass rewrites it into matmul/transpose/reshape ops that depend on the equation"),
    ("Resize", 10, 18, "PartitionedCall", None, "NN common/src/framework/resize_onnx_plugin.cpp",
     "PartitionedCall of Resize or ResizeNearestNeighborV2 plus shape ops, chosen by mode"),
)

# Fusion passes that absorb an ONNX op into a bigger AI Core op, so a mixlist entry must name that op too
FUSIONS = {
    "Erf": (("Gelu",), "CD fusion_pass/graph_fusion/ai_core/gelu_onnx_fusion_pass.cc",
            "GeluONNXFusionPass fuses Div-Erf-Add-Mul-Mul (exact GELU, as torch exports it) into Gelu"),
    "Pow": (("LayerNorm",), "CD fusion_pass/graph_fusion/ai_core/layer_norm_onnx_fusion_pass.cc",
            "LayerNormONNXFusionPass fuses ReduceMean-Sub-Pow-ReduceMean-Add-Sqrt-Div-Mul-Add into LayerNorm"),
}
FUSIONS["ReduceMean"] = FUSIONS["Pow"]

NOT_IN_ATC_RANGE = "ATC reads ONNX opsets 11-18 (current docs); this op type exists only in a later opset"
LATER_OPSET_OPS = {"Gelu": 20, "RMSNormalization": 23, "GroupNormalization": 18}


def _row(onnx_op_type: str, opset: int):
    return next((r for r in ROWS if r[0] == onnx_op_type and r[1] <= opset <= r[2]), None)


def ascend_op_types(onnx_op_type: str, opset: int) -> list[str] | None:
    """AI Core op types ATC ends up with for this ONNX op (parser, then the common fusion passes), or None when
    unknown or not a type a mixlist can change (see describe())."""
    row = _row(onnx_op_type, opset)
    if row is None or row[4] is None:
        return None
    types = list(row[4])
    for t in FUSIONS.get(onnx_op_type, ((),))[0]:
        if t not in types:
            types.append(t)
    return types


def describe(onnx_op_type: str, opset: int) -> str:
    """One line: what ATC makes of this ONNX op and where that was read, or why no mapping is given."""
    row = _row(onnx_op_type, opset)
    if row is None:
        if onnx_op_type in LATER_OPSET_OPS and opset < LATER_OPSET_OPS[onnx_op_type]:
            return f"{onnx_op_type}: not an ONNX op at opset {opset}; the exporter decomposes it"
        if any(r[0] == onnx_op_type for r in ROWS):
            return f"{onnx_op_type}: no parser registration for opset {opset} in the sources read"
        return f"{onnx_op_type}: no known mapping (not in the sources read); use --keep_dtype with node names"
    onnx, _, _, parsed, types, source, note = row
    what = f"{onnx} -> {', '.join(types)}" if types else f"{onnx} -> {parsed}, no mixlist type"
    parts = [what, note, FUSIONS[onnx][2] if onnx in FUSIONS else "",
             f"source: {source}" + (f"; {FUSIONS[onnx][1]}" if onnx in FUSIONS else "")]
    return "; ".join(p for p in parts if p)


def mixlist_for(onnx_op_types, opset: int) -> tuple[dict, list[str]]:
    """({"black-list": {"to-add": [Ascend types]}} in --modify_mixlist's JSON format, [ONNX types without a
    known mapping, for which the caller must suggest --keep_dtype node names instead])."""
    add, unmapped = set(), set()
    for op in onnx_op_types:
        types = ascend_op_types(op, opset)
        if types:
            add.update(types)
        else:
            unmapped.add(op)
    return {"black-list": {"to-add": sorted(add)}}, sorted(unmapped)
