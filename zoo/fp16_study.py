"""The fp16 fix study (issue 20): the precision doctor on the zoo's fp16 misses, under the strict tensor gate.

Six timm stand-ins missed the fp16 gate of the 694aad7 sweep (evidence e02dd5f), when every output was held to
pipeline/config.py's default tensor gate (rel L2 <= 0.01, cosine >= 0.9999, no violation share); since 8861f9c a
classifier's logits get rel L2 <= 0.05 / cosine >= 0.999 and they pass. Each model gets a config of its own,
`<zoo name>_fp16strict`, with that strict gate set explicitly (compare.gate, so the family default does not apply),
and runs export, the ort-fp16 target, infer, compare, the doctor, and the proof (the recommended keep list in the
config, then the target and compare again). The row sets the e02dd5f fix (read from git) beside the new one, both
priced by convert.compute.node_costs. The real-weights MobileNetV2 (configs/more) is the comparison point.

    python -m zoo.fp16_study [--soc Ascend310P3] [--max-evals 80] [--samples N] [names ...]

writes <results>/zoo/fp16_fixes.{json,md}; docs/fp16-fixes.md holds a table from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.atomic import write_json, write_text
from pipeline.paths import ROOT, ModelPaths

from . import listing

STRICT_GATE = {"max_rel_l2": 0.01, "min_cosine": 0.9999, "max_violation_fraction": None}
MISSES = ("efficientnet_lite0.ra_in1k", "mobileone_s0.apple_in1k", "rexnet_100.nav_in1k", "lcnet_050.ra2_in1k",
          "mnasnet_100.rmsp_in1k", "mobilevit_xxs.cvnets_in1k")
REAL = "mobilenet_v2_imagenet1k"          # configs/more: torchvision's real checkpoint
BEFORE = "e02dd5f"                        # the evidence commit whose zoo.json holds the fixes chosen then
SUFFIX = "_fp16strict"


def strict_config(name: str, doc: dict) -> dict:
    """The config of one study model: the zoo's generated config (or configs/more for the real MobileNetV2), named
    <name>_fp16strict, with the strict tensor gate."""
    if name == REAL:
        cfg = yaml.safe_load((ROOT / "configs" / "more" / f"{REAL}.yaml").read_text(encoding="utf-8"))
    else:
        cfg = listing.base_config(doc, listing.select(doc, [name])[0])
    cfg = listing.merge(cfg, {"compare": {"gate": dict(STRICT_GATE)}})
    cfg["name"] = f"{cfg['name']}{SUFFIX}"
    cfg["description"] = f"{cfg.get('description', '')} (fp16 fix study: strict tensor gate)".strip()
    return cfg


def old_fixes() -> dict[str, dict]:
    """zoo row name -> the precision stage of the e02dd5f sweep (its fix and config), {} without git."""
    try:
        text = subprocess.run(["git", "show", f"{BEFORE}:results/zoo/zoo.json"], cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {r["name"]: r["stages"].get("precision") or {} for r in json.loads(text)["rows"]}


def run_stage(stage: str, model: str, log: Path, **opts) -> tuple[int, str]:
    from pipeline.stages import argv

    cmd = argv(stage, model=model, **opts)
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        p = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return p.returncode, lines[-1] if lines else ""


def price_old(model_path: Path, fix: dict) -> dict | None:
    """The e02dd5f fix priced like the new ones: every node of its kept op types plus its kept nodes in fp32."""
    import onnx

    from convert.compute import node_costs, shares
    from convert.soc_precision import compiles_on, compiles_text

    conf = fix.get("config") or {}
    types = set((conf.get("fp16") or {}).get("keep_op_types") or [])
    nodes = set((conf.get("fp16") or {}).get("keep_nodes") or [])
    if not types and not nodes:
        return None
    costs = node_costs(onnx.load(str(model_path)))
    fp32 = [n for n, c in costs.items() if c["unit"] != "none" and (c["op_type"] in types or n in nodes)]
    per = compiles_on({costs[n].get("kind", costs[n]["op_type"]) for n in fp32})
    return {"what": fix.get("what"), "recorded_fp32_compute_share": fix.get("fp32_compute_share"),
            **shares(costs, fp32), "compiles": {f: v["ok"] for f, v in per.items()},
            "compiles_text": compiles_text(per)}


def prove(cfg: dict, keep: list[str], log: Path) -> dict:
    """The keep list in the config; the ort-fp16 target, make infer and make compare again."""
    listing.write_config(listing.merge(cfg, {"atc": {"keep_dtype": keep}, "fp16": {"keep_nodes": keep}}))
    rc, last = 0, ""
    for stage in ("om", "infer", "compare"):            # what make compare reruns after a config change
        if rc == 0:
            rc, last = run_stage(stage, cfg["name"], log, backend="ort-fp16")
    listing.write_config(cfg)
    acc = ModelPaths(cfg["name"]).results / "accuracy_eval.json"
    doc = json.loads(acc.read_text(encoding="utf-8")) if acc.is_file() else {}
    return {"verdict": doc.get("verdict") if rc in (0, 1) else "error", "message": last}


def one(name: str, doc: dict, old: dict, soc: str | None, max_evals: int, samples: int) -> dict:
    from pipeline.config import load_config
    from precision.stage import diagnose

    cfg = strict_config(name, doc)
    listing.write_config(cfg)
    paths = ModelPaths(cfg["name"])
    log = paths.logs / "fp16_study.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("", encoding="utf-8")
    t0 = time.perf_counter()
    row = {"architecture": name, "config": cfg["name"], "weights": "real" if name == REAL else "stand-in",
           "gate": STRICT_GATE}
    for stage, opts in (("export", {}), ("om", {"backend": "ort-fp16"}), ("infer", {"backend": "ort-fp16"}),
                        ("compare", {"backend": "ort-fp16"})):
        rc, last = run_stage(stage, cfg["name"], log, **opts)
        if rc != 0 and stage != "compare":
            return {**row, "error": f"make {stage}: {last}"}
    acc = json.loads((paths.results / "accuracy_eval.json").read_text(encoding="utf-8"))
    row["compare"] = {"verdict": acc.get("verdict")}
    saved = os.environ.get("SOC")
    if soc:
        os.environ["SOC"] = soc
    try:                                  # every input make compare saw, as make zoo gives the doctor
        diagnose(cfg["name"], max_samples=samples or load_config(cfg["name"])["infer"]["samples"],
                 max_evals=max_evals)
    finally:
        if soc and saved is None:
            os.environ.pop("SOC", None)
    rep = json.loads((paths.results / "precision_report.json").read_text(encoding="utf-8"))
    keep_opt = next((o for o in rep["options"] if o["option"].startswith("force_fp16 + keep_dtype")), None)
    row.update({
        "before": {k: rep["options"][0][k] for k in ("passed", "outputs")},
        "old_fix": price_old(paths.onnx_sim, old.get(listing.model_name(name), {})),
        "new_fix": {"passed": rep["fix"]["passed"], "keep_nodes": len(rep["fix"]["keep"]), "tier": rep["fix"]["tier"],
                    "evaluations": rep["fix"]["evaluations"],
                    **{k: rep["fix"][k] for k in ("fp32_compute_share", "fp32_cube_share", "fp32_vector_share")},
                    "compiles": keep_opt["compiles"] if keep_opt else None,
                    "compiles_text": keep_opt["compiles_text"] if keep_opt else None},
        "recommended": rep["recommended"], "options": [{k: o.get(k) for k in (
            "option", "passed", "fp32_compute_share", "fp32_cube_share", "fp32_vector_share", "compiles_text")}
            for o in rep["options"]],
        "soc": rep["soc"]["text"], "report": str(paths.results / "precision_report.md"),
    })
    if rep["fix"]["passed"] and rep["fix"]["keep"]:
        row["proof"] = prove(cfg, rep["fix"]["keep"], log)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(rows: list[dict]) -> list[str]:
    out = ["| model | weights | force_fp16 worst rel L2 | e02dd5f fix: fp32 share (cube) | new fix: nodes, fp32 share "
           "(cube, vector) | proof (make compare) | new fix compiles on |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['architecture']} | {r['weights']} | {r['error']} | | | | |")
            continue
        worst = max(o["rel_l2"] for o in r["before"]["outputs"].values())
        old, new = r["old_fix"], r["new_fix"]
        out.append(f"| {r['architecture']} | {r['weights']} | {worst:.2e} | "
                   + (f"{pct(old['fp32_share'])} ({pct(old['fp32_cube_share'])})" if old else "-") + " | "
                   + (f"{new['keep_nodes']}, {pct(new['fp32_compute_share'])} ({pct(new['fp32_cube_share'])}, "
                      f"{pct(new['fp32_vector_share'])})" if new["passed"] else "no passing set in budget")
                   + f" | {(r.get('proof') or {}).get('verdict', '-')} | {new['compiles_text'] or '-'} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoo.fp16_study", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"timm names of configs/zoo.yaml, or {REAL} (default: the six misses "
                                              "and the real MobileNetV2)")
    ap.add_argument("--soc", default=os.environ.get("SOC") or None, help="target --soc_version (default: none)")
    ap.add_argument("--max-evals", type=int, default=80, help="emulation runs per search")
    ap.add_argument("--samples", type=int, default=0, help="saved inputs the doctor compares (default: every one "
                                                          "make compare saw, infer.samples)")
    a = ap.parse_args(argv)
    doc = listing.load_list(ROOT / "configs" / "zoo.yaml")
    old = old_fixes()
    rows = []
    for name in a.names or [*MISSES, REAL]:
        print(f"fp16-study | {name} ...", flush=True)
        rows.append(one(name, doc, old, a.soc, a.max_evals, a.samples))
        print(f"fp16-study | {table(rows[-1:])[-1]}", flush=True)
    out = ModelPaths("zoo").results
    write_json(out / "fp16_fixes.json", {"gate": STRICT_GATE, "soc": a.soc, "max_evals": a.max_evals,
                                         "samples": a.samples, "rows": rows})
    write_text(out / "fp16_fixes.md", "\n".join(["# fp16 fixes under the strict tensor gate", "", *table(rows), ""]))
    print(f"fp16-study | {out / 'fp16_fixes.md'}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
