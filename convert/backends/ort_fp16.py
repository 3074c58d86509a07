"""`ort-fp16`: the CPU emulation of ATC's force_fp16 — the simplified ONNX with every tensor between ops rounded to
fp16 and GRU/LSTM rounded per step (convert/fp16.py; float32 graph inputs/outputs, fp16.keep_op_types /
fp16.keep_nodes kept in fp32), run by onnxruntime's CPU provider. Its arithmetic is fp32: the target records, per
node and as shares of compute, what was fp16 and what was emulated (convert/fp16_truth.py).

It stands in for the .om where there is no NPU, so its build reports the Ascend pre-flight (errors are printed, not
fatal) and writes build/<m>/atc.sh for the Ascend host, as `make om` always did.
"""
from __future__ import annotations

from .base import Backend


class OrtFp16Backend(Backend):
    name = "ort-fp16"
    what = ("CPU emulation of ATC's force_fp16: fp16-rounded tensors between ops, fp32 arithmetic, fp32 inputs/"
            "outputs, onnxruntime")
    short = "the CPU emulation of ATC's force_fp16"
    device_kind = "cpu"
    batching = "any"
    reports_preflight = True
    writes_atc_script = True
    auto_order = 20

    def build(self, cfg, paths, log, machine) -> dict:
        import time

        from convert.fp16 import convert_fp16
        from pipeline import provenance

        t0 = time.perf_counter()
        from convert.fp16_truth import short_line

        rep = convert_fp16(paths.onnx_sim, paths.onnx_fp16, cfg["fp16"]["keep_op_types"], cfg["fp16"]["keep_nodes"],
                           input_shapes(cfg))
        log(f"om | ort-fp16 target {paths.onnx_fp16.name}: {rep['truth']['label']}; float32 inputs/outputs "
            f"({time.perf_counter() - t0:.1f} s; {rep['overflow_count']} constants above fp16 max, "
            f"{rep['flush_to_zero_count']} flushed to zero)")
        log(f"om | ort-fp16 {short_line(rep['truth'])}")
        if rep["truth"]["cpu_without_fp16_kernel"]:
            log(f"om | onnxruntime's CPU has no fp16 kernel for {', '.join(rep['truth']['cpu_without_fp16_kernel'])}: "
                "the target emulates them (fp32 arithmetic between fp16-rounded tensors, GRU/LSTM rounded per step)")
        return {"backend": "ort-fp16", "device": "cpu", "onnx": provenance.file_record(paths.onnx_fp16),
                "source_onnx": provenance.file_record(paths.onnx_sim), "fp16_conversion": rep,
                "emulates": "ATC --precision_mode=force_fp16 (fp16 compute, fp32 graph inputs/outputs)"}

    def precision(self, target: dict) -> dict | None:
        from convert.fp16_truth import record

        t = (target.get("fp16_conversion") or {}).get("truth")
        return record(t) if t else None

    def open_runner(self, cfg, target, device=0):
        from pipeline.paths import ModelPaths
        from pipeline.runners import OrtRunner

        from convert.aipp import host_side

        o = cfg["onnxruntime"]
        runner = OrtRunner(ModelPaths(cfg["name"]).onnx_fp16, self.name, o["intra_op_threads"], o["graph_optimization"])
        return host_side(cfg, runner, "emulate")         # AIPP: its fp16 arithmetic on the same pixels

    def onnx_for_host(self, paths):
        return paths.onnx_fp16


def input_shapes(cfg: dict) -> dict:
    """Concrete input shapes for the compute shares: the first parity case (batch 1)."""
    case = (cfg["export"].get("parity_cases") or [{}])[0]
    from pipeline.config import batch_one

    return {t["name"]: batch_one(t, case[t["name"]]) for t in cfg["inputs"] if t["name"] in case}


BACKEND = OrtFp16Backend()
