"""`ort-cpu`: the fp32 reference — the simplified ONNX as exported, on onnxruntime's CPU provider.

make compare measures every target against it. Its target is the simplified ONNX itself, so infer/compare/bench
need no `make om` for it (load_target returns the ONNX record); `make om BACKEND=ort-cpu` still writes a target
record, with the pre-flight report and atc.sh, as it always did.
"""
from __future__ import annotations

from .base import Backend


class OrtCpuBackend(Backend):
    name = "ort-cpu"
    what = "the fp32 reference: the simplified ONNX on onnxruntime's CPU provider"
    short = "the fp32 reference on onnxruntime's CPU provider"
    device_kind = "cpu"
    batching = "any"
    is_reference = True
    needs_build = False
    reports_preflight = True
    writes_atc_script = True
    auto_order = None

    def build(self, cfg, paths, log, machine) -> dict:
        from pipeline import provenance

        log(f"om | ort-cpu target: the simplified fp32 ONNX {paths.onnx_sim.name} as is")
        return {"backend": "ort-cpu", "device": "cpu", "onnx": provenance.file_record(paths.onnx_sim)}

    def load_target(self, cfg, paths) -> dict:
        from pipeline.errors import PipelineError

        if not paths.onnx_sim.exists():
            raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first")
        return {"backend": "ort-cpu", "onnx": {"path": str(paths.onnx_sim)}}

    def open_runner(self, cfg, target, device=0):
        from pipeline.paths import ModelPaths
        from pipeline.runners import OrtRunner

        from convert.aipp import host_side

        o = cfg["onnxruntime"]
        runner = OrtRunner(ModelPaths(cfg["name"]).onnx_sim, self.name, o["intra_op_threads"], o["graph_optimization"])
        return host_side(cfg, runner, "reference")       # AIPP: the fp32 normalisation of the same pixels


BACKEND = OrtCpuBackend()
