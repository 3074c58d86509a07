"""`make om-double`: the .om path of the real-weights MobileNetV2 against the TEST DOUBLES of ATC and ais_bench
(tests/fake_atc.py, tests/ais_bench_double.py), with and without AIPP and fp16 I/O: make om, infer, compare, bench.

There is no NPU here. The doubles run the network in fp32 on onnxruntime, with ATC's AIPP arithmetic (fp16
parameters, fp16 result) and the fp16 I/O casts that the fake ATC writes into the graph, so compare's error is what
AIPP and the I/O rounding alone cost; no figure here is an NPU figure. Writes results/om_double/summary.{json,md};
the runs' own files stay in build/om_double/.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
WORK = ROOT / "build" / "om_double"
PHOTOS = ROOT / "tests" / "data" / "photos"
BASE = "mobilenet_v2_imagenet1k"
VARIANTS = {          # name suffix -> atc keys over the base config
    "aipp": {"aipp": True},
    "aipp_fp16out": {"aipp": True, "output_fp16": True},
    "float": {"aipp": False},
    "float_fp16io": {"aipp": False, "input_fp16_nodes": ["image"], "output_fp16": True},
}


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    env = {"PIPELINE_BUILD_DIR": WORK / "build", "PIPELINE_RESULTS_DIR": WORK / "results",
           "PIPELINE_LOGS_DIR": WORK / "logs"}
    os.environ.update({k: str(v) for k, v in env.items()})
    if (ROOT / "build" / "_wheels").is_dir():
        shutil.copytree(ROOT / "build" / "_wheels", WORK / "build" / "_wheels")
    bin_dir = WORK / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "atc").write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'fake_atc.py'} \"$@\"\n")
    (bin_dir / "atc").chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    import ais_bench_double as double

    from compare.stage import compare
    from convert import aipp
    from convert.stage import build_targets
    from export.stage import export_model
    from pipeline import ais_runner
    from pipeline.config import load_config
    from run.bench import bench
    from run.infer import infer

    ais_runner.session_factory = double.FakeInferSession
    base = yaml.safe_load((ROOT / "configs" / "more" / f"{BASE}.yaml").read_text())
    rows = []
    for suffix, atc in VARIANTS.items():
        name = f"{BASE}_{suffix}"
        raw = {**base, "name": name, "atc": {**base.get("atc", {}), **atc}, "bench": {**base["bench"], "torch_baseline": False}}
        path = WORK / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        model = str(path)
        assert export_model(model) == 0
        assert build_targets(model, "om", soc="Ascend310P3") == 0
        assert infer(model, "om", input=str(PHOTOS)) == 0
        verdict = compare(model, "om")
        assert bench(model, "om") == 0
        res = WORK / "results" / name
        acc = json.loads((res / "accuracy_eval.json").read_text())
        cfg = load_config(model)
        s = acc["outputs"]["logits"]["summary"]
        rows.append({"variant": suffix, "atc": atc, "verdict": acc["verdict"], "exit": verdict,
                     "worst_rel_l2": s["worst_rel_l2"], "min_cosine": s["min_cosine"],
                     "task": [v["line"] for v in acc.get("task", {}).get("verdicts", [])],
                     "aipp_noise": acc.get("aipp_noise", {}).get("line"),
                     "io_bytes_per_item": aipp.io_bytes(cfg)})
    out = ROOT / "results" / "om_double"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"what": __doc__.strip().splitlines()[0], "note": "test doubles, not an NPU: onnxruntime fp32 network "
           "with AIPP's arithmetic and fp16 I/O casts", "inputs": str(PHOTOS.relative_to(ROOT)), "rows": rows}
    (out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# MobileNetV2 .om against the ATC and ais_bench doubles (no NPU: fp32 network, AIPP and fp16 I/O "
             "rounding only)", "", "| variant | verdict | worst rel L2 | min cosine | bytes in / out per image |",
             "|---|---|---|---|---|"]
    for r in rows:
        b = r["io_bytes_per_item"]
        lines.append(f"| {r['variant']} | {r['verdict']} | {r['worst_rel_l2']:.2e} | {r['min_cosine']:.7f} | "
                     f"{b['input_bytes']:,} / {b['output_bytes']:,} |")
    lines += ["", *[f"- {r['variant']}: {r['aipp_noise']}" for r in rows if r["aipp_noise"]]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["verdict"] == "PASSED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
