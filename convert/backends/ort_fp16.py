"""`ort-fp16`: the CPU emulation of ATC's force_fp16 — the simplified ONNX converted to float16 inside (float32 graph
inputs/outputs, fp16.keep_op_types / fp16.keep_nodes kept in fp32), run by onnxruntime's CPU provider.

It stands in for the .om where there is no NPU, so its build reports the Ascend pre-flight (errors are printed, not
fatal) and writes build/<m>/atc.sh for the Ascend host, as `make om` always did.
"""
from __future__ import annotations

from .base import Backend


class OrtFp16Backend(Backend):
    name = "ort-fp16"
    what = "CPU emulation of ATC's force_fp16: fp16 compute inside, fp32 inputs/outputs, onnxruntime"
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
        rep = convert_fp16(paths.onnx_sim, paths.onnx_fp16, cfg["fp16"]["keep_op_types"], cfg["fp16"]["keep_nodes"])
        log(f"om | ort-fp16 target {paths.onnx_fp16.name}: float16 inside, float32 inputs/outputs "
            f"({time.perf_counter() - t0:.1f} s; {rep['overflow_count']} constants above fp16 max, "
            f"{rep['flush_to_zero_count']} flushed to zero)")
        return {"backend": "ort-fp16", "device": "cpu", "onnx": provenance.file_record(paths.onnx_fp16),
                "source_onnx": provenance.file_record(paths.onnx_sim), "fp16_conversion": rep,
                "emulates": "ATC --precision_mode=force_fp16 (fp16 compute, fp32 graph inputs/outputs)"}

    def open_runner(self, cfg, target, device=0):
        from pipeline.paths import ModelPaths
        from pipeline.runners import OrtRunner

        o = cfg["onnxruntime"]
        return OrtRunner(ModelPaths(cfg["name"]).onnx_fp16, self.name, o["intra_op_threads"], o["graph_optimization"])

    def onnx_for_host(self, paths):
        return paths.onnx_fp16


BACKEND = OrtFp16Backend()
