"""Pre-flight: will ATC accept this ONNX? Offline checks, no CANN needed (`make preflight`, first step of `make om`).

Checks: opset range, every node's op type against ATC's ONNX parser map (including If subgraphs), custom
domains, the ATC commands the config yields (shapes, gears, precision options), config inputs vs graph inputs,
int64 compute (AI CPU fallback) and keep_dtype node names.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError, cli
from pipeline.paths import ModelPaths
from pipeline import stages

# Absent from ATC's ONNX parser map (docs/atc.md, "10. ONNX opsets and operators"), with the usual way around
UNSUPPORTED = {
    "STFT": "compute the spectrogram on the host (NumPy) and feed it to the model",
    "DFT": "compute it on the host, or as a Conv1D with a fixed DFT basis",
    "MelWeightMatrix": "apply the mel filterbank on the host or as a MatMul with a constant",
    "HannWindow": "use a constant window tensor", "HammingWindow": "use a constant window tensor",
    "BlackmanWindow": "use a constant window tensor",
    "Loop": "unroll the loop at export (fixed trip count)", "Scan": "unroll the scan at export",
    "Col2Im": "replace it with reshapes/ConvTranspose",
    "GroupNormalization": "export with opset < 18 so it decomposes, or use InstanceNormalization + Mul/Add",
    "RNN": "use GRU/LSTM or unroll", "QuantizeLinear": "quantise with AMCT instead of QDQ nodes",
    "DequantizeLinear": "quantise with AMCT instead of QDQ nodes",
    "DynamicQuantizeLinear": "quantise with AMCT instead of QDQ nodes",
    "QLinearConv": "use float Conv (quantise with AMCT)", "QLinearMatMul": "use float MatMul (quantise with AMCT)",
    "ConvInteger": "use float Conv (quantise with AMCT)", "MatMulInteger": "use float MatMul (quantise with AMCT)",
}
# Parsed only by recent toolkits (absent from msit's map): (opsets, upstream registration)
NEWER_PARSERS = {
    "Unique": ((11, 18), "hicann/ops-nn index/unique_with_counts_and_sorting/framework/unique_onnx_plugin.cpp")}
# Standard ONNX ops in ATC's parser map (msit analyze map_conf/onnx.yaml, keys ai.onnx::<opset>::<Op>; CANN
# version of that map unknown, so indicative): registered for every opset 11..18 ...
PARSER_OPS = set("""Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BitShift
Cast Ceil Celu Clip Compress Concat ConcatFromSequence ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
Det Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater HardSigmoid Hardmax Identity If InstanceNormalization IsInf IsNaN
LRN LSTM LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization LpPool MatMul Max MaxPool MaxRoiPool MaxUnpool Mean
MeanVarianceNormalization Min Mod Mul Multinomial Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad Pow
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign Round ScatterElements ScatterND Selu SequenceAt SequenceConstruct SequenceEmpty SequenceErase
SequenceInsert SequenceLength Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth
Split SplitToSequence Sqrt Squeeze Sub Sum Tan Tanh TfIdfVectorizer ThresholdedRelu Tile TopK Transpose Unsqueeze
Where Xor""".split())
# ... and only for these opsets (first, last)
PARSER_OPS_RANGE = {
    "AffineGrid": (11, 16), "Scatter": (11, 11), "Upsample": (11, 16), "GreaterOrEqual": (12, 18),
    "SoftmaxCrossEntropyLoss": (12, 18), "HardSwish": (14, 18), "Trilu": (14, 18), "Bernoulli": (15, 18),
    "CastLike": (15, 18), "GridSample": (16, 18), "LayerNormalization": (17, 18), "BitwiseAnd": (18, 18),
    "BitwiseNot": (18, 18), "BitwiseOr": (18, 18), "BitwiseXor": (18, 18), "Mish": (18, 18),
}
PARSER_BUILTIN = {"Constant"}                 # turned into weights by the parser itself
COMPUTE_OPS = {"Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Pow", "Mod", "ReduceSum", "ReduceMean", "CumSum"}
CHECKS = ["opset 11-18", "ops in ATC's ONNX parser map (If subgraphs too)", "custom domains",
          "GRU/LSTM attributes ATC reads",
          "ATC commands from the config (shapes, gears, precision options)", "config inputs vs graph inputs",
          "int64 compute (AI CPU)", "keep_dtype node names exist"]


def finding(level: str, code: str, message: str, fix: str) -> dict:
    return {"level": level, "code": code, "message": message, "fix": fix}


def parser_knows(op: str, opset: int) -> bool:
    if op in PARSER_OPS or op in PARSER_BUILTIN:
        return True
    lo, hi = PARSER_OPS_RANGE.get(op, (0, -1))
    return lo <= opset <= hi


def all_nodes(graph):
    """Nodes of the graph and of every subgraph (If branches), depth first."""
    import onnx

    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from all_nodes(g)


def _config_input(cfg: dict, name: str) -> dict | None:
    return next((t for t in cfg["inputs"] if t["name"] == name), None)


IGNORED_RNN_ATTRS = ("activations", "activation_alpha", "activation_beta", "clip", "input_forget", "layout")
UNROLL_FIX = "set export.unroll_recurrence: true (a static sequence length) so ATC gets ordinary MatMul/Sigmoid/Tanh ops"


def recurrence_findings(nodes) -> list[dict]:
    """GRU/LSTM that ATC would build differently from the ONNX: its parser reads hidden_size and direction only
    (gru/lstm_onnx_plugin.cpp), and DynamicGRUV2 computes the reset gate after the matmul (linear_before_reset=1)."""
    out = []
    for n in nodes:
        if n.op_type not in ("GRU", "LSTM"):
            continue
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "GRU" and not (attrs.get("linear_before_reset") and attrs["linear_before_reset"].i):
            out.append(finding("error", "gru_reset", f"GRU {n.name} has linear_before_reset=0; Ascend's DynamicGRUV2 "
                               "computes linear_before_reset=1 and ATC does not read the attribute, so the .om would "
                               "compute other numbers", UNROLL_FIX + ", or export a reset-after GRU (PyTorch's nn.GRU)"))
        ignored = [a for a in IGNORED_RNN_ATTRS if a in attrs]
        if n.op_type == "LSTM" and len(n.input) > 7 and n.input[7]:
            ignored.append("P (peepholes)")
        if ignored:
            out.append(finding("error", "rnn_attrs", f"{n.op_type} {n.name} sets {', '.join(ignored)}, which ATC's "
                               "ONNX parser ignores", UNROLL_FIX))
        direction = attrs["direction"].s.decode() if "direction" in attrs else "forward"
        if n.op_type == "GRU" and direction == "reverse":
            out.append(finding("warning", "gru_reverse", f"GRU {n.name} runs in reverse only; the one-direction path of "
                               "DynamicGRUV2 was not seen to honour direction in the sources read",
                               "check the .om against `make compare` on an NPU host, or " + UNROLL_FIX))
    return out


def check_model(model, cfg: dict) -> list[dict]:
    """Graph-level findings (list of {level, code, message, fix}); no files, no CANN."""
    import onnx

    out = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not 11 <= opset <= 18:
        out.append(finding("error", "opset", f"ONNX opset {opset} is outside ATC's range 11-18",
                           "set export.opset between 11 and 18 and rerun `make export`"))
    elif opset > 13:
        out.append(finding("warning", "opset", f"opset {opset} needs CANN 7.0 or newer (CANN 6.x reads 9-13)",
                           "on CANN 6.x export with export.opset: 13"))
    nodes = list(all_nodes(model.graph))
    counts = Counter(n.op_type for n in nodes if n.domain in ("", "ai.onnx"))
    for op, n in sorted(counts.items()):
        if op in UNSUPPORTED:
            out.append(finding("error", "unsupported_op", f"{n} {op} node(s): ATC has no ONNX parser for {op}",
                               UNSUPPORTED[op]))
        elif op in NEWER_PARSERS and opset is not None and \
                NEWER_PARSERS[op][0][0] <= opset <= NEWER_PARSERS[op][0][1]:
            out.append(finding("warning", "newer_parser", f"{n} {op} node(s): only recent toolkits parse {op} "
                               f"({NEWER_PARSERS[op][1]}); older ones stop with E19010 'No parser is registered'",
                               "move it to the host to convert on any CANN, or check with `atc --mode=3`"))
        elif opset is not None and not parser_knows(op, opset):
            out.append(finding("error", "unsupported_op", f"{n} {op} node(s): not in ATC's ONNX parser map for "
                               f"opset {opset} (ATC would stop with E19010 'No parser is registered')",
                               "replace the op at export or change export.opset; a newer CANN may parse it: "
                               "check with `atc --mode=3` on a CANN host"))
    for n in nodes:
        if n.domain not in ("", "ai.onnx"):
            out.append(finding("error", "custom_domain", f"node {n.name} ({n.domain}::{n.op_type}) is a custom op",
                               "re-export without custom ops or register a custom ATC plugin"))
    out += recurrence_findings(nodes)
    atc = cfg["atc"]
    for inp in model.graph.input:
        conf = _config_input(cfg, inp.name)
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if i == 0 or d.dim_value:
                continue
            name = d.dim_param or f"dim{i}"
            if conf and i < len(conf["shape"]):            # the config says what ATC gets for this axis
                axis = conf["shape"][i]
                if isinstance(axis, int) or axis in atc["fixed_dims"] or atc["dynamic_dims"]:
                    continue
                name = axis
            elif name in atc["fixed_dims"] or atc["dynamic_dims"]:
                continue
            out.append(finding("error", "dynamic_dim", f"input {inp.name} axis {i} ('{name}') is dynamic and "
                               "ATC needs static shapes or gears",
                               f"add atc.fixed_dims: {{{name}: <size>}} or atc.dynamic_dims gears"))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    except Exception:  # shape inference can fail on exotic graphs; skip this check then
        types = {}
    int64_nodes = [n.name or n.op_type for n in model.graph.node
                   if n.op_type in COMPUTE_OPS and any(types.get(o) == onnx.TensorProto.INT64 for o in n.output)]
    if int64_nodes:
        out.append(finding("warning", "int64_compute", f"{len(int64_nodes)} node(s) compute in int64 (e.g. "
                           f"{', '.join(int64_nodes[:3])}): AI Core takes no int64, these run on the slow AI CPU",
                           "cast to int32 in the model, or fold the shape arithmetic (onnxsim with fixed shapes)"))
    names = {n.name for n in nodes}
    for entry in atc["keep_dtype"]:
        if entry.startswith("OpType::"):
            continue
        if entry not in names:
            out.append(finding("error", "keep_dtype", f"atc.keep_dtype names node '{entry}', which is not in the ONNX",
                               "use node names of the simplified ONNX (model.sim.onnx) or OpType::<AscendIRType> entries"))
    return out


def check_config(model, cfg: dict, onnx_name: str = "model.sim.onnx", soc: str | None = None) -> list[dict]:
    """The ATC commands this config yields, and the config inputs against the graph inputs."""
    from .atc import build_atc_jobs

    out = []
    try:
        build_atc_jobs(cfg, onnx_name, soc or cfg["atc"]["soc_version"] or "SOC_VERSION")
    except ConfigError as exc:
        out.append(finding("error", "atc_config", " ".join(str(exc).split()), "fix the atc section of the config"))
    inits = {i.name for i in model.graph.initializer}
    graph = {i.name: i for i in model.graph.input if i.name not in inits}
    for t in cfg["inputs"]:
        inp = graph.get(t["name"])
        if inp is None:
            out.append(finding("error", "input_name", f"config input '{t['name']}' is not an input of the ONNX "
                               f"(inputs: {', '.join(graph) or 'none'})",
                               "ATC --input_shape uses the ONNX input names: make inputs[].name match the export"))
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(t["shape"]):
            out.append(finding("error", "input_rank", f"input {t['name']} has rank {len(dims)} in the ONNX, "
                               f"{len(t['shape'])} in the config", "make inputs[].shape match the exported model"))
            continue
        for i, (d, want) in enumerate(zip(dims, t["shape"])):
            if not d.dim_value:
                continue
            sizes = ([want] if isinstance(want, int) else list(cfg["atc"]["batch_sizes"]) if i == 0
                     else [cfg["atc"]["fixed_dims"][want]] if want in cfg["atc"]["fixed_dims"] else [])
            bad = [s for s in sizes if s != d.dim_value]
            if bad:
                out.append(finding("error", "fixed_dim", f"input {t['name']} axis {i} is fixed to {d.dim_value} in "
                                   f"the ONNX but ATC would get {bad[0]}",
                                   "export with that axis dynamic, or match the config to the exported size"))
    out += aipp_findings(graph, cfg)
    for name in graph:
        if _config_input(cfg, name) is None:
            out.append(finding("error", "input_name", f"ONNX input '{name}' is missing from the config inputs",
                               "list every model input under inputs: (in graph order)"))
    return out


def aipp_findings(graph: dict, cfg: dict) -> list[dict]:
    """The AIPP plan (atc.aipp) against the ONNX image input: NCHW, 3 channels, float, and H x W equal to what AIPP
    hands the network (the crop size, else the source size)."""
    from .aipp import plan

    try:
        p = plan(cfg)
    except (ConfigError, PipelineError) as exc:
        return [finding("error", "aipp", " ".join(str(exc).split()), "fix atc.aipp or the model's preprocessing")]
    if not p or p["input"] not in graph:
        return []
    t = graph[p["input"]].type.tensor_type
    dims = [d.dim_value or None for d in t.shape.dim]
    out_hw = p["crop"][2:] if p["crop"] else p["src"]
    if t.elem_type not in (1, 10):      # FLOAT, FLOAT16
        return [finding("error", "aipp", f"AIPP input {p['input']} is not a float tensor in the ONNX",
                        "AIPP writes normalised float pixels: export the image input as float32")]
    if len(dims) != 4 or dims[1] not in (None, p["channels"]) or [d for d in dims[2:]] != list(out_hw):
        return [finding("error", "aipp", f"AIPP hands the network {p['channels']}x{out_hw[0]}x{out_hw[1]} (NCHW), "
                        f"the ONNX input {p['input']} is {dims}",
                        "export the model for the preprocessing's input size, or turn atc.aipp off")]
    return []


def run_preflight(onnx_path: Path, cfg: dict, soc: str | None = None) -> dict:
    """The report for one ONNX file: verdict PASSED/FAILED, counts, findings, the checks run."""
    import onnx

    if not Path(onnx_path).exists():
        raise PipelineError(f"{onnx_path} is missing; run `make export MODEL={cfg['name']}` first")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have many types
        raise PipelineError(f"{onnx_path} is not a readable ONNX file ({type(exc).__name__}); rerun `make export`") from None
    findings = check_model(model, cfg) + check_config(model, cfg, Path(onnx_path).name, soc)
    errors = [f for f in findings if f["level"] == "error"]
    return {"onnx": provenance.file_record(onnx_path), "verdict": "FAILED" if errors else "PASSED",
            "errors": len(errors), "warnings": len(findings) - len(errors), "findings": findings, "checks": CHECKS,
            "ascend_op_types": ascend_types(model)}


def ascend_types(model) -> dict:
    """Per ONNX op type of the graph: the AI Core op types ATC makes of it (the names --modify_mixlist and
    OpType:: entries need), or None where no mapping is known (convert/ascend_ops.py)."""
    from .ascend_ops import ascend_op_types

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops = sorted({n.op_type for n in all_nodes(model.graph) if n.domain in ("", "ai.onnx")})
    return {op: ascend_op_types(op, opset) for op in ops}


def report_lines(report: dict, model: str) -> list[str]:
    """One `ERROR | ...` / `WARNING | ...` line per finding (with the fix), then the verdict line."""
    lines = [f"{f['level'].upper()} | {f['message']}; fix: {f['fix']}" for f in report["findings"]]
    lines.append(f"{report['verdict']} | preflight {model}: {report['errors']} error(s), {report['warnings']} "
                 f"warning(s) for ATC")
    return lines


def preflight(model: str, onnx: str = '', soc: str = '') -> int:
    """offline ATC compatibility check of the ONNX (the `make preflight` stage as a library call)."""
    cfg = load_config(model, stage="preflight")
    paths = ModelPaths(cfg["name"])
    report = run_preflight(Path(onnx) if onnx else paths.onnx_sim, cfg, soc or None)
    for line in report_lines(report, cfg["name"]):
        print(line)
    result = provenance.header("preflight", cfg)
    result.update(report)
    write_json(paths.results / ("preflight.json" if not onnx else "preflight-custom.json"), result)
    return 0 if report["verdict"] == "PASSED" else 1


@cli
def main(argv=None) -> int:
    return preflight(**stages.parse("preflight", argv))


if __name__ == "__main__":
    sys.exit(main())
