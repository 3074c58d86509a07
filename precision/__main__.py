"""make precision: layer-wise fp16-vs-fp32 comparison, the keep_dtype list that fixes fp16, and the ATC options.

This is a CPU emulation of ATC's precision rules with onnxruntime (fp16 storage between ops, as
force_fp16 computes), not an NPU measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import provenance
from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.config import load_config, load_family
from pipeline.errors import PipelineError, cli
from pipeline.paths import ModelPaths

from .fix import evaluate, search
from .layerwise import flops, layer_compare

# ONNX op type -> Ascend IR type for `OpType::` keep_dtype entries (indicative; check with atc --mode=1)
ASCEND_IR = {"Softmax": "SoftmaxV2", "MatMul": "BatchMatMulV2", "LayerNormalization": "LayerNorm",
             "ReduceMean": "ReduceMean", "Pow": "Pow", "Sigmoid": "Sigmoid", "Exp": "Exp", "GRU": "CommonGRU"}


def load_feeds(cfg, paths, max_samples: int) -> tuple[list[dict], str]:
    manifest = paths.inputs / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        items = m["items"][:max_samples]
        return [{n: np.load(paths.inputs / it["files"][n]) for n in m["feeds"]} for it in items], \
            f"{len(items)} saved input(s) of `make infer` ({paths.inputs})"
    family = load_family(cfg["family"])
    case = cfg["export"]["parity_cases"][0]
    feeds = []
    for i in range(max_samples):
        rng = np.random.default_rng(100 + i)
        feeds.append({t["name"]: family.random_input(t["name"], [1, *case[t["name"]][1:]], rng, cfg)
                      for t in cfg["inputs"]})
    return feeds, f"{max_samples} seeded input(s) from the model family (no saved inputs)"


def plot(rows_before, rows_after, keep, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    x = np.arange(len(rows_before))
    ax.semilogy(x, [max(r["rel_l2"], 1e-9) for r in rows_before], lw=1, label="fp16 (force_fp16 emulated)")
    if rows_after is not None:
        ax.semilogy(x, [max(r["rel_l2"], 1e-9) for r in rows_after], lw=1, label=f"fp16 + keep_dtype ({len(keep)} nodes)")
    kept = [i for i, r in enumerate(rows_before) if r["node"] in set(keep)]
    if kept:
        ax.scatter(kept, [max(rows_before[i]["rel_l2"], 1e-9) for i in kept], color="red", zorder=3, s=18,
                   label="kept in fp32")
    ax.axhline(0.01, color="grey", ls="--", lw=0.8, label="gate: relative L2 1%")
    ax.set_xlabel("node (topological order)")
    ax.set_ylabel("relative L2 vs fp32")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown(rep: dict) -> str:
    def outs(r):
        return "; ".join(f"{k}: rel L2 {v['rel_l2']:.2e}, cos {v['cosine']:.6f}" for k, v in r["outputs"].items())

    lines = [f"# Precision report: {rep['model']}", "",
             f"> {rep['disclaimer']}", "",
             f"Inputs: {rep['inputs']}. Gate: {rep['gate']}.", "",
             "| option | verdict | outputs (worst over samples) | compute kept in fp32 |", "|---|---|---|---|"]
    for o in rep["options"]:
        lines.append(f"| {o['option']} | {'PASSED' if o['passed'] else 'FAILED'} | {outs(o)} | {o['fp32_compute_share']:.1%} |")
    lines += ["", "## Where fp16 loses precision (top nodes by error jump)", "",
              "| # | node | op | PyTorch origin | rel L2 | jump | overflow | underflow share |", "|---|---|---|---|---|---|---|---|"]
    for r in rep["top_nodes"]:
        lines.append(f"| {r['index']} | `{r['node']}` | {r['op_type']} | {r['origin'] or '-'} | {r['rel_l2']:.2e} | "
                     f"{r['jump']:.1f} | {r['overflow']} | {r['underflow_share']:.1%} |")
    fix = rep["fix"]
    lines += ["", "## Fix", ""]
    if not rep["fix"]["needed"]:
        lines.append("fp16 passes the gate as it is: no keep_dtype list is needed.")
    elif fix["passed"]:
        lines += [f"Keep {len(fix['keep'])} node(s) in fp32 ({fix['fp32_compute_share']:.2%} of the compute): "
                  f"`{rep['keep_dtype_file']}`. Config lines:", "", "```yaml", *rep["config_lines"], "```"]
    else:
        lines.append("No node set within the search budget passes the gate; consider must_keep_origin_dtype.")
    lines += ["", f"![error per layer]({Path(rep['plot']).name})", ""]
    return "\n".join(lines)


@cli
def main(argv=None) -> int:
    import onnx

    ap = argparse.ArgumentParser(prog="python -m precision", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-samples", type=int, default=2)
    args = ap.parse_args(argv)
    cfg = load_config(args.model)
    paths = ModelPaths(cfg["name"])
    if not paths.onnx_sim.exists():
        raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first "
                            "(and `make infer` to use real inputs)")
    t0 = time.perf_counter()
    model = onnx.load(str(paths.onnx_sim))
    feeds, feeds_desc = load_feeds(cfg, paths, args.max_samples)
    rows = layer_compare(model, feeds)
    fl = flops(model, rows)
    total = sum(fl.values()) or 1.0
    result = search(model, feeds, cfg, rows)
    keep = result["keep"]
    rows_after = layer_compare(model, feeds, keep_nodes=keep) if keep else None
    share = sum(fl.get(n, 0) for n in keep) / total

    types = sorted({r["op_type"] for r in rows if r["node"] in set(keep)})
    mix = evaluate(model, feeds, cfg, keep_op_types=types) if types else None
    mix_share = sum(v for r in rows if r["op_type"] in set(types) for v in [fl.get(r["node"], 0)]) / total
    options = [{"option": "force_fp16 (ATC default)", "fp32_compute_share": 0.0, **result["before"]}]
    if keep:
        options.append({"option": f"force_fp16 + keep_dtype ({len(keep)} nodes)", "fp32_compute_share": share,
                        **result["after"]})
    if mix:
        options.append({"option": f"allow_mix_precision + modify_mixlist black-list {[ASCEND_IR.get(t, t) for t in types]}",
                        "fp32_compute_share": mix_share, **{k: v for k, v in mix.items() if not k.startswith('_')}})
    options.append({"option": "must_keep_origin_dtype (everything fp32)", "fp32_compute_share": 1.0, "passed": True,
                    "outputs": {o.name: {"rel_l2": 0.0, "cosine": 1.0, "passed": True} for o in model.graph.output}})

    out_dir = paths.build / "precision"
    keep_file = out_dir / "keep_dtype.cfg"
    write_text(keep_file, "".join(f"{n}\n" for n in keep))
    config_lines = ["atc:", f"  keep_dtype: {json.dumps(keep)}", "fp16:", f"  keep_nodes: {json.dumps(keep)}"]
    ranked = sorted(range(len(rows)), key=lambda i: -rows[i]["jump"] * max(rows[i]["rel_l2"], 1e-12))[:10]
    top = [{"index": i, **{k: rows[i][k] for k in ("node", "op_type", "origin", "rel_l2", "jump", "overflow",
                                                    "underflow_share", "nonfinite")}} for i in sorted(ranked)]
    plot_path = paths.results / "precision_layers.png"
    plot(rows, rows_after, keep, plot_path, f"{cfg['name']}: per-node error of the fp16 emulation")
    rep = provenance.header("precision", cfg)
    rep.update({
        "disclaimer": "CPU emulation of ATC's precision rules with onnxruntime (fp16 between ops, fp32 inputs/"
                      "outputs), not an NPU measurement; on a real .om, compare with ais_bench dumps instead.",
        "inputs": feeds_desc, "gate": cfg["compare"]["gate"], "options": options,
        "fix": {"needed": not result["before"]["passed"], "passed": result["passed"], "keep": keep,
                "fp32_compute_share": share, "search_history": result["history"]},
        "keep_dtype_file": str(keep_file), "config_lines": config_lines, "top_nodes": top,
        "layers": [{**r, "after_rel_l2": rows_after[i]["rel_l2"] if rows_after else None} for i, r in enumerate(rows)],
        "compute_estimate": "2*MACs for Conv/Gemm/MatMul/GRU from weight and output shapes, numel for other ops",
        "plot": str(plot_path), "duration_s": time.perf_counter() - t0,
    })
    write_json(paths.results / "precision_report.json", rep)
    write_text(paths.results / "precision_report.md", markdown(rep))
    b = result["before"]
    worst = max(v["rel_l2"] for v in b["outputs"].values())
    print(f"{'PASSED' if b['passed'] else 'FAILED'} | {cfg['name']} fp16 (emulated force_fp16): worst output rel L2 "
          f"{worst:.2e}")
    if keep:
        a = result["after"]
        print(f"{'PASSED' if a['passed'] else 'FAILED'} | {cfg['name']} fp16 + keep_dtype ({len(keep)} nodes, "
              f"{share:.2%} of compute in fp32): worst output rel L2 {max(v['rel_l2'] for v in a['outputs'].values()):.2e}")
        print(f"precision | keep list: {keep_file}; config lines: {' '.join(config_lines)}")
    print(f"precision | results/{cfg['name']}/precision_report.md (CPU emulation, not an NPU measurement)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
