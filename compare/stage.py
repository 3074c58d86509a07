"""make compare: target outputs vs the onnxruntime CPU fp32 reference on the same saved inputs, with a gate.

A stateful model (state_carry) is compared as it runs: the reference carries its own state from its own outputs
(run/reference.py), so a target whose state drifts is seen drifting, not handed the target's state each step."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from convert import backends
from convert.backends import reference_runner
from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import gate_for, load_config, load_family
from pipeline.errors import ConfigError, PipelineError
from pipeline.log import StageLog
from pipeline.metrics import gate_check
from pipeline.paths import ModelPaths
from pipeline.progress import Progress
from run.engine import item_context
from run.reference import check_sequences, iter_reference, reference_chunks

from .aipp_noise import aipp_noise
from .explain import explain_output


def load_run(paths: ModelPaths, backend: str, cfg: dict):
    manifest_path = paths.inputs / "manifest.json"
    out_manifest_path = paths.outputs(backend) / "manifest.json"
    hint = f"run `make infer MODEL={cfg['name']} BACKEND={backend}` first"
    if not manifest_path.exists() or not out_manifest_path.exists():
        raise PipelineError(f"no saved inputs/outputs of backend {backend} for {cfg['name']}; {hint}")
    out_manifest = json.loads(out_manifest_path.read_text())
    if out_manifest["inputs_manifest_sha256"] != provenance.sha256_file(manifest_path):
        raise PipelineError(f"the {backend} outputs were made from other inputs than the saved ones; {hint}")
    return json.loads(manifest_path.read_text()), out_manifest


def check_sample(tgt, ref, gate, comp) -> tuple[dict, list[str]]:
    return gate_check(tgt, ref, gate, comp["rtol"], comp["atol_scale"])


def summarize(rows: list[dict], gate: dict) -> dict:
    worst_l2 = max(rows, key=lambda r: r["rel_l2"])
    worst_cos = min(rows, key=lambda r: r["cosine"])
    worst5 = sorted(rows, key=lambda r: -r["rel_l2"])[:5]
    summary = {
        "passed": all(r["passed"] for r in rows), "gate": gate, "samples": len(rows),
        "failed_samples": sum(not r["passed"] for r in rows),
        "worst_rel_l2": worst_l2["rel_l2"], "worst_rel_l2_item": worst_l2["item"],
        "min_cosine": worst_cos["cosine"], "min_cosine_item": worst_cos["item"],
        "median_rel_l2": float(np.median([r["rel_l2"] for r in rows])),
        # the distribution over samples, so a limit can be set from it rather than from one worst case
        "rel_l2_percentiles": {f"p{q}": float(np.percentile([r["rel_l2"] for r in rows], q)) for q in (50, 90, 99)},
        "max_abs": max(r["max_abs"] for r in rows), "mean_abs": float(np.mean([r["mean_abs"] for r in rows])),
        "masked_rel_max": max(r["masked_rel_max"] for r in rows),
        "masked_rel_mean": float(np.mean([r["masked_rel_mean"] for r in rows])),
        "violation_fraction_max": max(r["violation_fraction"] for r in rows),
        "worst_samples": [{"item": r["item"], "source": r["source"], "rel_l2": r["rel_l2"], "cosine": r["cosine"],
                           "max_abs": r["max_abs"]} for r in worst5],
    }
    summary["notes"] = explain_output(summary, rows)
    return summary


class TaskMetrics:
    """Collects the items of one source at a time (manifest order) and asks the family for its task figures."""

    def __init__(self, cfg, family, manifest, meta, inputs_dir):
        self.cfg, self.family, self.manifest, self.meta = cfg, family, manifest, meta
        self.inputs_dir = inputs_dir
        self.current, self.ref, self.tgt, self.per_source = None, [], [], []

    def add(self, item, ref_out, tgt_out) -> None:
        if item["source_index"] != self.current:
            self._flush()
            self.current = item["source_index"]
        ctx = item_context(self.inputs_dir, item)
        self.ref.append({**ref_out, **ctx})
        self.tgt.append({**tgt_out, **ctx})

    def _flush(self) -> None:
        if self.current is None:
            return
        source = self.manifest["sources"][self.current]
        figs = self.family.task_metrics(self.cfg, Path(source), self.ref, self.tgt, self.meta)
        self.per_source.append({"source": source, **figs})
        self.ref, self.tgt = [], []

    def finish(self) -> list[dict]:
        self._flush()
        self.current = None
        return self.per_source


def compare(model: str, backend: str = 'auto', engine: str = 'local', workers: str = '') -> int:
    """target vs the onnxruntime CPU fp32 reference, with the gate (the `make compare` stage as a library call)."""
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown ENGINE '{engine}'; use one of: local, ray")
    cfg = load_config(model, stage="compare")
    paths = ModelPaths(cfg["name"])
    backend, notes = backends.run_backend(cfg, backend)
    log = StageLog(paths.logs / "accuracy_eval.log")
    for note in notes:
        log(f"compare | {cfg['name']} | {note}")
    manifest, out_manifest = load_run(paths, backend, cfg)
    family = load_family(cfg["family"])
    weights_meta = json.loads((paths.build / "weights.json").read_text())
    tasks = TaskMetrics(cfg, family, manifest, weights_meta, paths.inputs) if family.has("task_metrics", cfg) else None
    comp = cfg["compare"]
    outputs = [t["name"] for t in cfg["outputs"]]
    gates = {name: gate_for(cfg, name) for name in outputs}
    rows = {name: [] for name in outputs}
    progress = Progress(len(manifest["items"]), "compare", unit="item")
    pad = cfg["infer"]["pad"]
    chunks = reference_chunks(manifest, cfg["infer"]["batch_size"])
    check_sequences(manifest, chunks, family.state_carry(cfg),
                    f"rerun `make infer MODEL={cfg['name']} BACKEND={backend}` to rewrite the saved inputs")
    if engine == "ray":
        from run.ray_engine import run_reference_ray      # only with ENGINE=ray: the default path never imports ray

        ref_desc = run_reference_ray(cfg, paths, manifest, chunks, pad, workers, log)
        ref_runner = None
    else:
        ref_runner = reference_runner(cfg)
    with ref_runner or contextlib.nullcontext():
        ref_desc = ref_runner.describe() if ref_runner else ref_desc
        for item, ref_out in iter_reference(paths, manifest, ref_runner, cfg["infer"]["batch_size"], pad, outputs):
            tgt_out = {}
            for name in outputs:
                tgt = np.load(paths.outputs(backend) / "items" / f"{item['id']}.{name}.npy")
                ref = ref_out[name]
                tgt_out[name] = tgt
                if tgt.shape != ref.shape:
                    raise PipelineError(f"output {name} of item {item['id']}: shape {tgt.shape} vs reference "
                                        f"{ref.shape}; rebuild the target with `make om infer BACKEND={backend}`")
                m, fails = check_sample(tgt, ref, gates[name], comp)
                rows[name].append({"item": item["id"], "source": manifest["sources"][item["source_index"]],
                                   "passed": not fails, "failures": fails, **m})
            if tasks:
                tasks.add(item, ref_out, tgt_out)
            progress.update()
    progress.close()

    per_output, all_pass = {}, True
    for name in outputs:
        summary = summarize(rows[name], gates[name])
        gate = gates[name]
        all_pass &= summary["passed"]
        per_output[name] = {"summary": summary, "samples": rows[name]}
        verdict = "PASSED" if summary["passed"] else "FAILED"
        log(f"{verdict} | {cfg['name']} {name}: {backend} vs ort-cpu fp32 over {summary['samples']} sample(s): "
            f"worst rel_l2 {summary['worst_rel_l2']:.3e} (<= {gate['max_rel_l2']}), "
            f"min cosine {summary['min_cosine']:.7f} (>= {gate['min_cosine']}), max abs {summary['max_abs']:.3e}, "
            f"masked rel max {summary['masked_rel_max']:.3e}")
        for note in summary["notes"]:
            log(f"  note | {note}")
        failed = [r for r in rows[name] if not r["passed"]]
        for r in failed[:20]:
            log(f"  fail | {r['item']} ({r['source']}): {'; '.join(r['failures'])}")
        if len(failed) > 20:
            log(f"  fail | ... and {len(failed) - 20} more, see accuracy_eval.json")
        if summary["samples"] > 5:
            worst = ", ".join(f"{w['item']} {w['rel_l2']:.2e}" for w in summary["worst_samples"])
            log(f"  worst | {name} by rel_l2: {worst}")
            pct = summary["rel_l2_percentiles"]
            log(f"  distribution | {name} rel_l2 over {summary['samples']} samples: p50 {pct['p50']:.2e}, "
                f"p90 {pct['p90']:.2e}, p99 {pct['p99']:.2e}, max {summary['worst_rel_l2']:.2e}")

    task = None
    if tasks:
        verdicts = family.task_gate(cfg, tasks.finish())
        for v in verdicts:
            all_pass &= bool(v["passed"])
            log(f"{'PASSED' if v['passed'] else 'FAILED'} | {cfg['name']} task {v['name']}: {backend} vs ort-cpu fp32: "
                f"{v['line']}")
        task = {"verdicts": verdicts, "per_source": tasks.per_source}
    noise = aipp_noise(cfg, manifest, outputs)
    if noise:
        log(f"  aipp | {noise['line']}")
    report = provenance.header("compare", cfg)
    report.update({
        "verdict": "PASSED" if all_pass else "FAILED",
        "target": {"backend": backend, "device": out_manifest.get("device", backends.get(backend).device_id()),
                   **({"runner": out_manifest["runner"]} if "runner" in out_manifest else {}),
                   **({"fp16": fp16} if (fp16 := backends.target_precision(cfg, backend)) else {})},
        "reference": ref_desc, "weights": weights_meta,
        "inputs_manifest_sha256": provenance.sha256_file(paths.inputs / "manifest.json"),
        "metric_definitions": {
            "rel_l2": "||t - r|| / ||r||, float64", "cosine": "sum(t*r) / (||t|| ||r||)",
            "masked_rel": "|t - r| / |r| where |r| > float32 eps, else 0 (msit style)",
            "violation_fraction": "share of elements with |t - r| > atol + rtol*|r|, atol = atol_scale * max|r|",
            "floored_rel_p99": "99th percentile of |t - r| / (|r| + 1e-3 max|r|)",
        },
        "outputs": per_output,
        **({"task": task} if task else {}),
        **({"aipp_noise": noise} if noise else {}),
        "memory_trace": progress.trace,         # resident MB of this process after every 10% of the items
    })
    write_json(paths.results / "accuracy_eval.json", report)
    log(f"{report['verdict']} | {cfg['name']}: {backend} ({report['target']['device']}) against onnxruntime CPU fp32; "
        f"results/{cfg['name']}/accuracy_eval.json")
    if "fp16" in report["target"]:
        log(f"  fp16 | {backend}: {report['target']['fp16']['line']}")
    log.save()
    return 0 if all_pass else 1
