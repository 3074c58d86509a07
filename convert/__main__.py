"""make om: build the deployable target for BACKEND (om with ATC, else the ort-fp16 emulation target)."""
from __future__ import annotations

import argparse
import os
import sys
import time

from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import load_config
from pipeline.errors import PipelineError, cli
from pipeline.log import StageLog
from pipeline.paths import ModelPaths

from .backends import BACKENDS, resolve_backend


def build_ort_fp16(cfg, paths, log) -> dict:
    from .fp16 import convert_fp16

    t0 = time.perf_counter()
    rep = convert_fp16(paths.onnx_sim, paths.onnx_fp16, cfg["fp16"]["keep_op_types"], cfg["fp16"]["keep_nodes"])
    log(f"om | ort-fp16 target {paths.onnx_fp16.name}: float16 inside, float32 inputs/outputs "
        f"({time.perf_counter() - t0:.1f} s; {rep['overflow_count']} constants above fp16 max, "
        f"{rep['flush_to_zero_count']} flushed to zero)")
    return {"backend": "ort-fp16", "device": "cpu", "onnx": provenance.file_record(paths.onnx_fp16),
            "source_onnx": provenance.file_record(paths.onnx_sim), "fp16_conversion": rep,
            "emulates": "ATC --precision_mode=force_fp16 (fp16 compute, fp32 graph inputs/outputs)"}


def build_ort_cpu(cfg, paths, log) -> dict:
    log(f"om | ort-cpu target: the simplified fp32 ONNX {paths.onnx_sim.name} as is")
    return {"backend": "ort-cpu", "device": "cpu", "onnx": provenance.file_record(paths.onnx_sim)}


@cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default=os.environ.get("BACKEND", "auto"))
    ap.add_argument("--soc", default=os.environ.get("SOC", ""))
    args = ap.parse_args(argv)
    if args.backend not in BACKENDS:
        raise PipelineError(f"unknown BACKEND '{args.backend}'; use one of: {', '.join(BACKENDS)}")
    cfg = load_config(args.model)
    paths = ModelPaths(cfg["name"])
    if not paths.onnx_sim.exists():
        raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first")
    log = StageLog(paths.logs / "om.log")

    from . import ascend

    backend, why = resolve_backend(args.backend)
    preflight = ascend.preflight(cfg, paths, log, strict=backend == "om")
    if why:
        log(f"om | {why}")
    script = ascend.write_script(cfg, paths, args.soc or cfg["atc"]["soc_version"], log)

    if backend == "om":
        target = ascend.build_om(cfg, paths, args.soc or cfg["atc"]["soc_version"], log)
    elif backend == "ort-fp16":
        target = build_ort_fp16(cfg, paths, log)
    else:
        target = build_ort_cpu(cfg, paths, log)
    target.update({"model": cfg["name"], "atc_script": str(script) if script else None,
                   "preflight": preflight, "created": provenance.header("om", cfg)})
    write_json(paths.build / f"target-{backend}.json", target)
    log.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
