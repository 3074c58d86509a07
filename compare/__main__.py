"""make compare: target outputs vs the onnxruntime CPU fp32 reference on the same saved inputs, with a gate."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from pipeline import provenance
from pipeline.atomic import save_npy, write_json
from pipeline.config import gate_for, load_config
from pipeline.errors import PipelineError, cli
from pipeline.log import StageLog
from pipeline.metrics import compare_arrays
from pipeline.paths import ModelPaths
from run.batching import signature, split, stack
from run.targets import open_runner, reference_runner

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


def run_reference(cfg, paths, manifest, batch_size: int) -> dict:
    """Reference outputs per item id, batched by equal shapes like the target run."""
    names = manifest["feeds"]
    refs, groups = {}, {}
    for item in manifest["items"]:
        feeds = {n: np.load(paths.inputs / item["files"][n]) for n in names}
        groups.setdefault(signature(feeds, names), []).append((item["id"], feeds))
    with reference_runner(cfg) as runner:
        desc = runner.describe()
        for batch_items in groups.values():
            for i in range(0, len(batch_items), batch_size):
                chunk = batch_items[i:i + batch_size]
                out = runner.infer(stack([f for _, f in chunk], names))
                for (item_id, _), res in zip(chunk, split(out, len(chunk))):
                    refs[item_id] = res
                    for name, arr in res.items():
                        save_npy(paths.outputs("reference") / f"{item_id}.{name}.npy", arr)
    return refs, desc


@cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compare", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default=os.environ.get("BACKEND", "auto"))
    args = ap.parse_args(argv)
    cfg = load_config(args.model)
    paths = ModelPaths(cfg["name"])
    target_runner = open_runner(cfg, args.backend)      # resolves `auto`, checks the target exists
    backend = target_runner.backend
    log = StageLog(paths.logs / "accuracy_eval.log")
    manifest, _ = load_run(paths, backend, cfg)
    refs, ref_desc = run_reference(cfg, paths, manifest, cfg["infer"]["batch_size"])

    comp = cfg["compare"]
    outputs = [t["name"] for t in cfg["outputs"]]
    per_output, all_pass = {}, True
    for name in outputs:
        gate = gate_for(cfg, name)
        rows = []
        for item in manifest["items"]:
            tgt = np.load(paths.outputs(backend) / "items" / f"{item['id']}.{name}.npy")
            ref = refs[item["id"]][name]
            if tgt.shape != ref.shape:
                raise PipelineError(f"output {name} of item {item['id']}: shape {tgt.shape} vs reference {ref.shape}; "
                                    f"rebuild the target with `make om infer BACKEND={backend}`")
            m = compare_arrays(tgt, ref, comp["rtol"], comp["atol_scale"])
            fails = []
            if m["nonfinite_in_target"]:
                fails.append(f"{m['nonfinite_in_target']} NaN/Inf where the reference is finite")
            if not m["rel_l2"] <= gate["max_rel_l2"]:
                fails.append(f"rel_l2 {m['rel_l2']:.3e} > {gate['max_rel_l2']}")
            if not m["cosine"] >= gate["min_cosine"]:
                fails.append(f"cosine {m['cosine']:.7f} < {gate['min_cosine']}")
            vmax = gate["max_violation_fraction"]
            if vmax is not None and m["violation_fraction"] > vmax:
                fails.append(f"violation fraction {m['violation_fraction']:.2e} > {vmax}")
            rows.append({"item": item["id"], "source": manifest["sources"][item["source_index"]],
                         "passed": not fails, "failures": fails, **m})
        worst_l2 = max(rows, key=lambda r: r["rel_l2"])
        worst_cos = min(rows, key=lambda r: r["cosine"])
        passed = all(r["passed"] for r in rows)
        all_pass &= passed
        summary = {
            "passed": passed, "gate": gate, "samples": len(rows), "failed_samples": sum(not r["passed"] for r in rows),
            "worst_rel_l2": worst_l2["rel_l2"], "worst_rel_l2_item": worst_l2["item"],
            "min_cosine": worst_cos["cosine"], "min_cosine_item": worst_cos["item"],
            "max_abs": max(r["max_abs"] for r in rows), "mean_abs": float(np.mean([r["mean_abs"] for r in rows])),
            "masked_rel_max": max(r["masked_rel_max"] for r in rows),
            "masked_rel_mean": float(np.mean([r["masked_rel_mean"] for r in rows])),
            "violation_fraction_max": max(r["violation_fraction"] for r in rows),
        }
        summary["notes"] = explain_output(summary, rows)
        per_output[name] = {"summary": summary, "samples": rows}
        verdict = "PASSED" if passed else "FAILED"
        log(f"{verdict} | {cfg['name']} {name}: {backend} vs ort-cpu fp32 over {len(rows)} sample(s): "
            f"worst rel_l2 {summary['worst_rel_l2']:.3e} (<= {gate['max_rel_l2']}), "
            f"min cosine {summary['min_cosine']:.7f} (>= {gate['min_cosine']}), max abs {summary['max_abs']:.3e}, "
            f"masked rel max {summary['masked_rel_max']:.3e}")
        for note in summary["notes"]:
            log(f"  note | {note}")
        for r in rows:
            if not r["passed"]:
                log(f"  fail | {r['item']} ({r['source']}): {'; '.join(r['failures'])}")

    weights_meta = json.loads((paths.build / "weights.json").read_text())
    report = provenance.header("compare", cfg)
    report.update({
        "verdict": "PASSED" if all_pass else "FAILED",
        "target": target_runner.describe() if backend != "om" else {"backend": "om", "device": target_runner.device},
        "reference": ref_desc, "weights": weights_meta,
        "inputs_manifest_sha256": provenance.sha256_file(paths.inputs / "manifest.json"),
        "metric_definitions": {
            "rel_l2": "||t - r|| / ||r||, float64", "cosine": "sum(t*r) / (||t|| ||r||)",
            "masked_rel": "|t - r| / |r| where |r| > float32 eps, else 0 (msit style)",
            "violation_fraction": "share of elements with |t - r| > atol + rtol*|r|, atol = atol_scale * max|r|",
            "floored_rel_p99": "99th percentile of |t - r| / (|r| + 1e-3 max|r|)",
        },
        "outputs": per_output,
    })
    write_json(paths.results / "accuracy_eval.json", report)
    log(f"{report['verdict']} | {cfg['name']}: {backend} ({target_runner.device}) against onnxruntime CPU fp32; "
        f"results/{cfg['name']}/accuracy_eval.json")
    log.save()
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
