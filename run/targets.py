"""Open the runner for a backend from the files `make export` / `make om` wrote (no torch needed)."""
from __future__ import annotations

import json

from convert.backends import BACKENDS, resolved_name
from pipeline.errors import PipelineError
from pipeline.paths import ModelPaths

from pipeline.runners import OrtRunner, Runner


def load_target(cfg: dict, backend: str) -> dict:
    paths = ModelPaths(cfg["name"])
    if backend == "ort-cpu":
        if not paths.onnx_sim.exists():
            raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first")
        return {"backend": "ort-cpu", "onnx": {"path": str(paths.onnx_sim)}}
    path = paths.build / f"target-{backend}.json"
    if not path.exists():
        raise PipelineError(f"no {backend} target for {cfg['name']} ({path} missing); "
                            f"run `make om MODEL={cfg['name']} BACKEND={backend}` first")
    return json.loads(path.read_text())


def open_runner(cfg: dict, backend: str, device: int = 0) -> Runner:
    """Runner for `backend` ('auto' means what `make om` builds here). Not yet activated."""
    if backend not in BACKENDS:
        raise PipelineError(f"unknown BACKEND '{backend}'; use one of: {', '.join(BACKENDS)}")
    backend = resolved_name(backend) if backend == "auto" else backend
    target = load_target(cfg, backend)
    ort_cfg = cfg["onnxruntime"]
    paths = ModelPaths(cfg["name"])
    if backend == "ort-cpu":
        return OrtRunner(paths.onnx_sim, "ort-cpu", ort_cfg["intra_op_threads"], ort_cfg["graph_optimization"])
    if backend == "ort-fp16":
        return OrtRunner(paths.onnx_fp16, "ort-fp16", ort_cfg["intra_op_threads"], ort_cfg["graph_optimization"])
    from pipeline.ais_runner import AisBenchRunner

    return AisBenchRunner(target, device_id=device, cfg=cfg)


def reference_runner(cfg: dict) -> Runner:
    return open_runner(cfg, "ort-cpu")
