"""make export: PyTorch -> ONNX -> onnxsim, checked against PyTorch on the same seeded inputs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import dynamic_axes, load_config, load_family
from pipeline.errors import ExportError, ParityError, PipelineError, failing_call
from pipeline.log import StageLog
from pipeline.metrics import gate_check, rel_l2
from pipeline.paths import ModelPaths

from .weights import build_model, describe, resolve_weights


def op_histogram(model) -> dict:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items(), key=lambda kv: (-kv[1], kv[0])))


def parity_feeds(cfg: dict, family, seed: int) -> list[dict]:
    cases = []
    for i, case in enumerate(cfg["export"]["parity_cases"]):
        rng = np.random.default_rng(seed + i)
        cases.append({t["name"]: family.random_input(t["name"], case[t["name"]], rng, cfg) for t in cfg["inputs"]})
    return cases


def torch_outputs(module, feeds: dict, cfg: dict) -> dict:
    import torch

    with torch.no_grad():
        outs = module(*[torch.from_numpy(feeds[t["name"]]) for t in cfg["inputs"]])
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {t["name"]: o.numpy() for t, o in zip(cfg["outputs"], outs)}


def export_onnx(module, cfg: dict, feeds: dict, path: Path) -> None:
    import torch

    args = tuple(torch.from_numpy(feeds[t["name"]]) for t in cfg["inputs"])
    axes = {t["name"]: dynamic_axes(t) for t in cfg["inputs"] + cfg["outputs"] if dynamic_axes(t)}
    exp = cfg["export"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=[t["name"] for t in cfg["inputs"]],
                          output_names=[t["name"] for t in cfg["outputs"]], dynamic_axes=axes,
                          opset_version=exp["opset"], do_constant_folding=True,
                          dynamo=exp["exporter"] == "dynamo")


def simplify(src: Path, dst: Path, timeout: int, log: StageLog) -> None:
    cmd = [sys.executable, "-m", "export.simplify", str(src), str(dst)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"onnxsim did not finish within {timeout} s; raise simplify.timeout_s or set "
                            "simplify.enabled: false in the config") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"onnxsim failed: {last}; set simplify.enabled: false to skip it")


def run_onnx(path: Path, feeds: dict, cfg: dict) -> dict:
    from pipeline.runners import OrtRunner

    ort_cfg = cfg["onnxruntime"]
    with OrtRunner(path, "ort-cpu", ort_cfg["intra_op_threads"], ort_cfg["graph_optimization"]) as r:
        return r.infer(feeds)


def export_model(model: str, weights: str = '') -> int:
    """PyTorch -> ONNX -> onnxsim, parity-checked (the `make export` stage as a library call)."""

    cfg = load_config(model, stage="export")
    paths = ModelPaths(cfg["name"])
    family = load_family(cfg["family"])
    log = StageLog(paths.logs / "export.log")
    timings = {}

    t0 = time.perf_counter()
    weights = resolve_weights(cfg, weights, family)
    module, prov = build_model(cfg, family, weights)
    export_module = family.export_module(module, cfg)
    timings["build_and_load_s"] = time.perf_counter() - t0
    log(f"export | {cfg['name']}: weights {describe(prov)}")

    seed = cfg["export"]["seed"]
    cases = parity_feeds(cfg, family, seed)
    staging = paths.build / ".staging-export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        import onnx

        raw, sim = staging / paths.onnx.name, staging / paths.onnx_sim.name
        t0 = time.perf_counter()
        try:
            export_onnx(export_module, cfg, cases[0], raw)
        except PipelineError:
            raise
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}; try another opset or exporter "
                              "(export.opset, export.exporter)", failing_call=failing_call(exc)) from exc
        timings["export_s"] = time.perf_counter() - t0
        onnx_model = onnx.load(str(raw))
        onnx.checker.check_model(onnx_model)
        family.check_onnx(onnx_model, cfg)
        log(f"export | ONNX opset {cfg['export']['opset']} via {cfg['export']['exporter']}: "
            f"{len(onnx_model.graph.node)} nodes ({timings['export_s']:.1f} s)")

        if cfg["simplify"]["enabled"]:
            t0 = time.perf_counter()
            simplify(raw, sim, cfg["simplify"]["timeout_s"], log)
            timings["simplify_s"] = time.perf_counter() - t0
        else:
            shutil.copyfile(raw, sim)
        sim_model = onnx.load(str(sim))
        family.check_onnx(sim_model, cfg)
        log(f"export | simplified: {len(sim_model.graph.node)} nodes ({timings.get('simplify_s', 0):.1f} s)")

        t0 = time.perf_counter()
        limit = cfg["export"]["parity_max_rel_l2"]
        gate = {"max_rel_l2": limit, "min_cosine": None, "max_violation_fraction": None}
        parity, worst, failures = [], 0.0, []
        for i, feeds in enumerate(cases):
            ref = torch_outputs(export_module, feeds, cfg)
            got_raw, got_sim = run_onnx(raw, feeds, cfg), run_onnx(sim, feeds, cfg)
            row = {"case": i, "shapes": {k: list(v.shape) for k, v in feeds.items()}, "outputs": {}}
            for name, r in ref.items():
                (m_raw, f_raw), (m_sim, f_sim) = gate_check(got_raw[name], r, gate), gate_check(got_sim[name], r, gate)
                e_raw, e_sim = m_raw["rel_l2"], m_sim["rel_l2"]
                failures += [f"case {i} {name} onnx: {f}" for f in f_raw] + [f"case {i} {name} simplified: {f}" for f in f_sim]
                row["outputs"][name] = {
                    "shape": list(r.shape),
                    "rel_l2_onnx_vs_torch": e_raw, "rel_l2_sim_vs_torch": e_sim,
                    "rel_l2_sim_vs_onnx": rel_l2(got_sim[name], got_raw[name]),
                    "max_abs_sim_vs_torch": float(np.max(np.abs(got_sim[name].astype(np.float64) - r))),
                }
                worst = max(worst, e_raw, e_sim)
            parity.append(row)
        timings["parity_s"] = time.perf_counter() - t0
        verdict = "FAILED" if failures else "PASSED"
        log(f"{verdict} | export parity {cfg['name']}: worst relative L2 {worst:.2e} (limit {limit:.0e}) "
            f"over {len(cases)} case(s), PyTorch vs ONNX vs simplified ONNX")
        if verdict == "FAILED":
            raise ParityError(f"exported ONNX differs from PyTorch (relative L2 {worst:.2e} >= {limit:.0e}); "
                              f"see {log.path}; try another opset or exporter", worst=worst, limit=limit)

        paths.build.mkdir(parents=True, exist_ok=True)
        os.replace(raw, paths.onnx)
        os.replace(sim, paths.onnx_sim)
        extra = family.export_artifacts(module, cfg, paths.build)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    write_json(paths.build / "weights.json", prov)
    report = provenance.header("export", cfg)
    report.update({
        "weights": prov,
        "opset": cfg["export"]["opset"],
        "exporter": "torch.onnx TorchScript (dynamo=False)" if cfg["export"]["exporter"] == "torchscript"
        else "torch.onnx dynamo",
        "inputs": cfg["inputs"], "outputs": cfg["outputs"],
        "onnx": {**provenance.file_record(paths.onnx), "nodes": len(onnx_model.graph.node),
                 "op_types": op_histogram(onnx_model)},
        "onnx_simplified": {**provenance.file_record(paths.onnx_sim), "nodes": len(sim_model.graph.node),
                            "op_types": op_histogram(sim_model), "simplifier": "onnxsim" if cfg["simplify"]["enabled"] else "none"},
        "artifacts": [provenance.file_record(p) for p in extra],
        "parity": {"metric": "relative L2 ||a-b||/||b|| vs PyTorch eager, float64 (pipeline.metrics.gate_check)",
                   "limit": limit, "gate": gate, "failures": failures[:20],
                   "worst": worst, "verdict": verdict, "seed": seed, "cases": parity},
        "durations_s": {k: round(v, 3) for k, v in timings.items()},
    })
    write_json(paths.results / "export.json", report)
    log.save()
    return 0
