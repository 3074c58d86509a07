"""Pre-flight: will ATC accept this ONNX? Offline checks, no CANN needed (`make preflight`, first step of `make om`)."""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import load_config
from pipeline.errors import PipelineError, cli
from pipeline.paths import ModelPaths

# Absent from ATC's ONNX parser map (shared/reference/ascend-atc.md section 5)
UNSUPPORTED = {
    "STFT": "compute the spectrogram on the host (NumPy) and feed it to the model",
    "DFT": "compute it on the host, or as a Conv1D with a fixed DFT basis",
    "MelWeightMatrix": "apply the mel filterbank on the host or as a MatMul with a constant",
    "HannWindow": "use a constant window tensor", "HammingWindow": "use a constant window tensor",
    "BlackmanWindow": "use a constant window tensor",
    "Loop": "unroll the loop at export (fixed trip count)", "Scan": "unroll the scan at export",
    "Unique": "move it to the host", "Col2Im": "replace it with reshapes/ConvTranspose",
    "GroupNormalization": "export with opset < 18 so it decomposes, or use InstanceNormalization + Mul/Add",
    "RNN": "use GRU/LSTM or unroll", "QuantizeLinear": "quantise with AMCT instead of QDQ nodes",
    "DequantizeLinear": "quantise with AMCT instead of QDQ nodes",
    "ConvInteger": "use float Conv (quantise with AMCT)", "MatMulInteger": "use float MatMul (quantise with AMCT)",
}
# Standard ops ATC parses (subset of the msit parser map, indicative); others get a warning, not an error
KNOWN = set("""Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace Div Dropout Einsum Elu Equal
Erf Exp Expand Flatten Floor GRU Gather GatherElements GatherND Gemm GlobalAveragePool GlobalMaxPool Greater
GreaterOrEqual GridSample HardSigmoid HardSwish Identity If InstanceNormalization LRN LSTM LayerNormalization
LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or PRelu Pad Pow RandomUniform Range Reciprocal ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize RoiAlign Round ScatterElements ScatterND Selu Shape Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh Tile TopK
Transpose Trilu Unsqueeze Where Xor""".split())
COMPUTE_OPS = {"Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Pow", "Mod", "ReduceSum", "ReduceMean", "CumSum"}


def finding(level: str, code: str, message: str, fix: str) -> dict:
    return {"level": level, "code": code, "message": message, "fix": fix}


def check_model(model, cfg: dict) -> list[dict]:
    import onnx

    out = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not 11 <= opset <= 18:
        out.append(finding("error", "opset", f"ONNX opset {opset} is outside ATC's range 11-18",
                           "set export.opset between 11 and 18 and rerun `make export`"))
    elif opset > 13:
        out.append(finding("warning", "opset", f"opset {opset} needs CANN 7.0 or newer (CANN 6.x reads 9-13)",
                           "on CANN 6.x export with export.opset: 13"))
    counts = Counter(n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx"))
    for op, n in sorted(counts.items()):
        if op in UNSUPPORTED:
            out.append(finding("error", "unsupported_op", f"{n} {op} node(s): ATC has no ONNX parser for {op}",
                               UNSUPPORTED[op]))
        elif op not in KNOWN:
            out.append(finding("warning", "unknown_op", f"{n} {op} node(s): not in the ATC parser map this tool knows",
                               "check the CANN 'Supported ONNX Operators' list, or run `atc --mode=3` on the host"))
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            out.append(finding("error", "custom_domain", f"node {n.name} ({n.domain}::{n.op_type}) is a custom op",
                               "re-export without custom ops or register a custom ATC plugin"))
    atc = cfg["atc"]
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i == 0 or d.dim_value:
                continue
            name = d.dim_param or f"dim{i}"
            if name not in atc["fixed_dims"] and not atc["dynamic_dims"]:
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
    names = {n.name for n in model.graph.node}
    for entry in atc["keep_dtype"]:
        if entry.startswith("OpType::"):
            continue
        if entry not in names:
            out.append(finding("error", "keep_dtype", f"atc.keep_dtype names node '{entry}', which is not in the ONNX",
                               "use node names of the simplified ONNX (model.sim.onnx) or OpType::<AscendIRType> entries"))
    return out


def run_preflight(onnx_path: Path, cfg: dict) -> dict:
    import onnx

    if not Path(onnx_path).exists():
        raise PipelineError(f"{onnx_path} is missing; run `make export MODEL={cfg['name']}` first")
    model = onnx.load(str(onnx_path), load_external_data=False)
    findings = check_model(model, cfg)
    errors = [f for f in findings if f["level"] == "error"]
    return {"onnx": provenance.file_record(onnx_path), "verdict": "FAILED" if errors else "PASSED",
            "errors": len(errors), "warnings": len(findings) - len(errors), "findings": findings,
            "checks": ["opset 11-18", "ops in ATC's ONNX parser map", "custom domains",
                       "dynamic non-batch dims need fixed_dims or gears", "int64 compute (AI CPU)",
                       "keep_dtype node names exist"]}


def report_lines(report: dict, model: str) -> list[str]:
    lines = [f"{f['level'].upper()} | {f['message']}; fix: {f['fix']}" for f in report["findings"]]
    lines.append(f"{report['verdict']} | preflight {model}: {report['errors']} error(s), {report['warnings']} "
                 f"warning(s) for ATC")
    return lines


@cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.preflight", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--onnx", default="", help="check another ONNX file (default: build/<model>/model.sim.onnx)")
    args = ap.parse_args(argv)
    cfg = load_config(args.model)
    paths = ModelPaths(cfg["name"])
    report = run_preflight(Path(args.onnx) if args.onnx else paths.onnx_sim, cfg)
    for line in report_lines(report, cfg["name"]):
        print(line)
    result = provenance.header("preflight", cfg)
    result.update(report)
    write_json(paths.results / ("preflight.json" if not args.onnx else "preflight-custom.json"), result)
    return 0 if report["verdict"] == "PASSED" else 1


if __name__ == "__main__":
    sys.exit(main())
