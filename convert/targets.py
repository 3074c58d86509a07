"""Builders and runner openers of the backends declared in pipeline/backends.py (no torch).

A builder makes a backend's deployable target from build/<model>/model.sim.onnx and returns the record
written to build/<model>/target-<backend>.json; an opener makes its runner from that record.
"""
from __future__ import annotations

import json
import time

from pipeline import provenance
from pipeline.errors import PipelineError
from pipeline.paths import ModelPaths


def build_om(cfg, paths, log, soc) -> dict:
    from .ascend import build_om as atc_build

    return atc_build(cfg, paths, soc, log)


def build_ort_fp16(cfg, paths, log, soc=None) -> dict:
    from .fp16 import convert_fp16

    t0 = time.perf_counter()
    rep = convert_fp16(paths.onnx_sim, paths.onnx_fp16, cfg["fp16"]["keep_op_types"], cfg["fp16"]["keep_nodes"])
    log(f"om | ort-fp16 target {paths.onnx_fp16.name}: float16 inside, float32 inputs/outputs "
        f"({time.perf_counter() - t0:.1f} s; {rep['overflow_count']} constants above fp16 max, "
        f"{rep['flush_to_zero_count']} flushed to zero)")
    return {"backend": "ort-fp16", "device": "cpu", "onnx": provenance.file_record(paths.onnx_fp16),
            "source_onnx": provenance.file_record(paths.onnx_sim), "fp16_conversion": rep,
            "emulates": "ATC --precision_mode=force_fp16 (fp16 compute, fp32 graph inputs/outputs)"}


def build_ort_cpu(cfg, paths, log, soc=None) -> dict:
    log(f"om | ort-cpu target: the simplified fp32 ONNX {paths.onnx_sim.name} as is")
    return {"backend": "ort-cpu", "device": "cpu", "onnx": provenance.file_record(paths.onnx_sim)}


def _ort(cfg, path, backend):
    from pipeline.runners import OrtRunner

    o = cfg["onnxruntime"]
    return OrtRunner(path, backend, o["intra_op_threads"], o["graph_optimization"])


def open_om(cfg, target, device):
    from pipeline.ais_runner import AisBenchRunner

    return AisBenchRunner(target, device_id=device, cfg=cfg)


def open_ort_fp16(cfg, target, device):
    return _ort(cfg, ModelPaths(cfg["name"]).onnx_fp16, "ort-fp16")


def open_ort_cpu(cfg, target, device):
    return _ort(cfg, ModelPaths(cfg["name"]).onnx_sim, "ort-cpu")


def load_target(cfg: dict, backend: str) -> dict:
    paths = ModelPaths(cfg["name"])
    if backend == "ort-cpu":                 # the reference needs no `make om`
        if not paths.onnx_sim.exists():
            raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first")
        return {"backend": "ort-cpu", "onnx": {"path": str(paths.onnx_sim)}}
    path = paths.build / f"target-{backend}.json"
    if not path.exists():
        raise PipelineError(f"no {backend} target for {cfg['name']} ({path} missing); "
                            f"run `make om MODEL={cfg['name']} BACKEND={backend}` first")
    return json.loads(path.read_text())


def open_runner(cfg: dict, backend: str, device: int = 0, log=None):
    """The runner infer/compare/bench use for BACKEND (`auto`: the registry's plan). Not yet activated."""
    from pipeline import backends

    name, notes = backends.run_backend(cfg, backend)
    for note in notes:
        (log or print)(f"{cfg['name']} | {note}")
    return backends.open_target_runner(name, cfg, load_target(cfg, name), device)


def reference_runner(cfg: dict):
    from pipeline import backends

    return backends.open_target_runner(backends.REFERENCE, cfg, load_target(cfg, backends.REFERENCE))
