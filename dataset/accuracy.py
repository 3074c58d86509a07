"""make accuracy: top-1 / top-5 of a classifier on a labelled INPUT set, ModelZoo style, three runs side by side.

PyTorch eager (the weights `make export` recorded; "not run" on a host without torch), the fp32 ONNX reference
(onnxruntime CPU) and the target BACKEND, on the same prepared arrays (dataset/scoring.py). The verdict holds the
target to at most MAX_DROP_POINTS below PyTorch (below the ONNX reference where PyTorch did not run), in top-1 and
in top-5: the ModelZoo acceptance rule (docs/metrics.md, "Labelled accuracy"). Writes
results/<model>/labeled_accuracy.json and logs/<model>/labeled_accuracy.log; exits 1 on FAILED.
"""
from __future__ import annotations

import sys

from convert import backends
from convert.backends import reference_runner
from pipeline import provenance, stages
from pipeline.atomic import write_json
from pipeline.config import load_config, load_family
from pipeline.errors import ConfigError, InputError, cli
from pipeline.log import StageLog
from pipeline.paths import ModelPaths
from run.infer import load_weights_meta

from .labeled import ClassNames, read_set
from .scoring import RUNS, Runs, column, score_output, score_set, torch_module

MAX_DROP_POINTS = 1.0       # the ModelZoo rule: the target may lose at most 1 point (docs/metrics.md); a constant
TOP_K = 5
RESULT = "labeled_accuracy.json"
PAIRS = (("target", "torch"), ("target", "onnx"), ("onnx", "torch"))
TAGS = {"torch": "torch eager", "onnx": "onnx fp32"}


def run_accuracy(model: str, backend: str = "auto", input: str = "", device: int = 0, fail_on_bad: bool = False) -> int:
    """top-1/top-5 on a labelled INPUT set: PyTorch eager, ONNX fp32 and the target (the `make accuracy` stage)."""
    cfg = load_config(model, stage="accuracy")
    family = load_family(cfg["family"])
    if not family.has("labels", cfg):
        raise ConfigError(f"{cfg['name']} has no class labels (not a classifier: its config lacks the capability "
                          "`labels`); make accuracy measures classifiers only")
    if not input:
        raise InputError("make accuracy needs INPUT=<labelled set>: a folder with one sub-folder per class "
                         "(ImageFolder) or a CSV of file,label rows")
    paths = ModelPaths(cfg["name"])
    meta = load_weights_meta(paths, cfg)
    output, classes = score_output(cfg)
    names = ClassNames(classes, family.labels(cfg, meta), family.label_ids(cfg, meta))
    lset = read_set(input, cfg, family, names)
    backend, notes = backends.run_backend(cfg, backend)
    backends.load_target(cfg, backend)              # one line naming `make om` when the target is missing
    log = StageLog(paths.logs / "labeled_accuracy.log")
    for note in notes:
        log(f"accuracy | {cfg['name']} | {note}")
    module, torch_desc = torch_module(cfg, family, meta)
    log(f"accuracy | {cfg['name']}: {len(lset.files)} labelled file(s) from {lset.path} ({lset.kind}), "
        f"batch {cfg['infer']['batch_size']}, target {backend}")
    with backends.open_runner(cfg, backend, device) as target, reference_runner(cfg) as ref:
        runs = Runs(cfg, target, ref, module, output, min(TOP_K, classes), family.state_carry(cfg))
        rows, failed = score_set(cfg, family, lset, runs, target.get_input_metadata())
        devices = {"target": (target.device, target.describe()), "onnx": (ref.device, ref.describe())}
    if not rows:
        raise InputError(f"no labelled file could be read; first: {failed[0]['error']}")
    result = provenance.header("accuracy", cfg)
    result.update(summary(cfg, backend, lset, rows, failed, devices, (module, torch_desc), meta, runs.k))
    write_json(paths.results / RESULT, result)
    report(log, cfg, result)
    log.save()
    too_many = fail_on_bad or len(failed) > cfg["infer"]["max_bad_share"] * len(lset.files)
    if failed and too_many:
        raise InputError(f"{len(failed)} of {len(lset.files)} labelled file(s) failed to read; first: "
                         f"{failed[0]['error']}; the list is in results/{cfg['name']}/{RESULT}#/failed")
    return 0 if result["verdict"] == "PASSED" else 1


def summary(cfg, backend, lset, rows, failed, devices, torch_run, meta, k) -> dict:
    """The result body: the set, the three columns, the differences in points, the verdict, per-file predictions."""
    b, (module, torch_desc) = backends.get(backend), torch_run
    cols = {run: column(rows, run) for run in RUNS if run != "torch" or module is not None}
    info = {"torch": {"name": "PyTorch eager", "ran": module is not None, "device": "cpu", "runtime": torch_desc},
            "onnx": {"name": "ONNX fp32 (onnxruntime CPU)", "ran": True, "backend": backends.REFERENCE,
                     "device": devices["onnx"][0], "runner": devices["onnx"][1]},
            "target": {"name": f"target {backend}", "ran": True, "backend": backend, "device": devices["target"][0],
                       "device_kind": b.device_kind, "runner": devices["target"][1],
                       "soc_version": devices["target"][1].get("soc_version")}}
    diffs = {f"{a}_minus_{c}": ({k: cols[a][f"{k}_pct"] - cols[c][f"{k}_pct"] for k in ("top1", "top5")}
                                if a in cols and c in cols else None) for a, c in PAIRS}
    ref = "torch" if "torch" in cols else "onnx"
    gate = diffs[f"target_minus_{ref}"]
    passed = all(v >= -MAX_DROP_POINTS - 1e-9 for v in gate.values())
    labels_file = provenance.file_record(lset.path) if lset.kind == "csv" else None
    return {
        "backend": backend, "device": devices["target"][0], "weights": meta,
        **({"fp16": fp16} if (fp16 := backends.target_precision(cfg, backend)) else {}),
        "labeled_set": {"path": str(lset.path), "kind": lset.kind, "labels_file": labels_file,
                        "files": len(lset.files), "classes_present": len(set(lset.labels)),
                        "list_sha256": lset.list_sha256()},
        "batch_size": cfg["infer"]["batch_size"], "pad": cfg["infer"]["pad"], "top_k": k,
        "runs": {run: {**info[run], **cols.get(run, {})} for run in RUNS},
        "differences_points": diffs,
        "gate": {"reference": ref, "max_drop_points": MAX_DROP_POINTS, "metric": "target - reference, top-1 and "
                 "top-5, in percentage points", "source": "Ascend ModelZoo-PyTorch READMEs (docs/metrics.md)"},
        "verdict": "PASSED" if passed else "FAILED",
        "images": len(rows), "failed_count": len(failed), "failed": failed,
        "predictions": rows,
        "definitions": {
            "top1_pct": "share of scored files whose highest-scoring class is the label, percent",
            "top5_pct": "share of scored files whose label is among the top_k highest-scoring classes, percent",
            "differences_points": "a_minus_b = a's percent - b's percent (percentage points)",
            "list_sha256": "sha256 of one 'relative path<TAB>class index' line per file, in set order",
            "predictions": "per file: the label and each run's top_k class indices, highest first"},
    }


def report(log, cfg: dict, res: dict) -> None:
    """One grep-able line per run, then the PASSED/FAILED summary line."""
    name, runs, n = cfg["name"], res["runs"], res["images"]
    for run in RUNS:
        r = runs[run]
        tag = TAGS.get(run, f"target {res['backend']}") + f", {r['device']}"
        log(f"accuracy | {name} | top-1 {r['top1_pct']:.2f}% top-5 {r['top5_pct']:.2f}% over {n} images ({tag})"
            if r["ran"] else f"accuracy | {name} | {r['runtime']} ({TAGS['torch']})")
    for d in ("target_minus_onnx", "onnx_minus_torch"):
        if res["differences_points"][d]:
            log(f"accuracy | {name} | {d.replace('_minus_', ' - ')}: top-1 {res['differences_points'][d]['top1']:+.2f} "
                f"points, top-5 {res['differences_points'][d]['top5']:+.2f} points")
    if res["failed"]:
        log(f"accuracy | {name} | {len(res['failed'])} file(s) failed, first: {res['failed'][0]['error']}")
    ref, lim = res["gate"]["reference"], res["gate"]["max_drop_points"]
    d, t, r = res["differences_points"][f"target_minus_{ref}"], runs["target"], runs[ref]
    who = "PyTorch" if ref == "torch" else "ONNX fp32 (no PyTorch here)"
    log(f"{res['verdict']} | {name} labelled accuracy: target {res['backend']} ({t['device']}) top-1 "
        f"{t['top1_pct']:.2f}% vs {who} {r['top1_pct']:.2f}% (diff {d['top1']:+.2f} points, limit "
        f"-{lim:.2f}), top-5 {t['top5_pct']:.2f}% vs {r['top5_pct']:.2f}% (diff {d['top5']:+.2f}) over {n} "
        f"images; results/{name}/{RESULT}")


@cli
def main(argv=None) -> int:
    return run_accuracy(**stages.parse("accuracy", argv))


if __name__ == "__main__":
    sys.exit(main())
