"""make precision: layer-wise fp16-vs-fp32 comparison, the keep_dtype list that fixes fp16, and the ATC options.

This is a CPU emulation of ATC's precision rules with onnxruntime (fp16 storage between ops, as
force_fp16 computes), not an NPU measurement.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipeline import provenance
from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.config import gate_for, load_config, load_family, save_reads
from pipeline.errors import PipelineError
from pipeline.paths import ModelPaths

from .fix import evaluate, search
from .layerwise import flops, layer_compare
from .mixlist import mix_option, model_opset


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


def gate_lines(gates: dict[str, dict]) -> list[tuple[float, str]]:
    """One line per distinct max_rel_l2 of the outputs' gates, labelled with the outputs when they differ."""
    by_value: dict[float, list[str]] = {}
    for name, gate in gates.items():
        by_value.setdefault(gate["max_rel_l2"], []).append(name)
    if len(by_value) == 1:
        value = next(iter(by_value))
        return [(value, f"gate: relative L2 {value:g}")]
    return [(v, f"gate of {', '.join(names)}: relative L2 {v:g}") for v, names in sorted(by_value.items())]


def plot(rows_before, rows_after, keep, path: Path, title: str, gates: dict[str, dict]) -> None:
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
    for (value, label), style in zip(gate_lines(gates), ("--", ":", "-.", (0, (5, 5)))):
        ax.axhline(value, color="grey", ls=style, lw=0.8, label=label)
    ax.set_xlabel("node (topological order)")
    ax.set_ylabel("relative L2 vs fp32")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def why_failed(result: dict) -> str:
    fails = [f"{name}: {'; '.join(o['failures'])}" for name, o in result["outputs"].items() if o.get("failures")]
    fails += [f"task {v['name']}: {v['line']}" for v in result.get("task", []) if not v["passed"]]
    return f" ({' | '.join(fails)})" if fails else ""


def gate_text(g: dict) -> str:
    parts = []
    for name, gate in g["outputs"].items():
        vf = gate.get("max_violation_fraction")
        parts.append(f"{name}: rel L2 <= {gate['max_rel_l2']}, cosine >= {gate['min_cosine']}"
                     + (f", share outside atol + rtol*|ref| <= {vf}" if vf is not None else ""))
    return "; ".join(parts) + f" (rtol {g['rtol']}, atol = {g['atol_scale']} * max|ref|)"


def markdown(rep: dict) -> str:
    def outs(r):
        return "; ".join(f"{k}: rel L2 {v['rel_l2']:.2e}, cos {v['cosine']:.6f}"
                         + (f", outside tol {v['violation_fraction']:.1%}" if "violation_fraction" in v else "")
                         + (f" ({', '.join(v['failures'])})" if v.get("failures") else "")
                         for k, v in r["outputs"].items())

    lines = [f"# Precision report: {rep['model']}", "",
             f"> {rep['disclaimer']}", "",
             f"Inputs: {rep['inputs']}. Gate (the one `make compare` applies, per sample and output): "
             f"{gate_text(rep['gate'])}.", "",
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
    for o in rep["options"]:
        if "atc" in o:
            a = o["atc"]
            lines += ["", f"Or mixed precision ({'PASSED' if o['passed'] else 'FAILED'} in the emulation, "
                          f"{o['fp32_compute_share']:.2%} of the compute in fp32):", "", "```yaml", "atc:",
                      f"  precision_mode: {a['precision_mode']}", f"  modify_mixlist: {json.dumps(a['modify_mixlist'])}",
                      f"  keep_dtype: {json.dumps(a['keep_dtype'])}", "fp16:",
                      f"  keep_op_types: {json.dumps(o['emulated_keep_op_types'])}",
                      f"  keep_nodes: {json.dumps(a['keep_dtype'])}", "```"]
    for note in rep.get("notes", []):
        lines += ["", f"Note: {note}"]
    lines += ["", f"![error per layer]({Path(rep['plot']).name})", ""]
    return "\n".join(lines)


def diagnose(model: str, max_samples: int = 2) -> int:
    """where fp16 loses precision, and the keep_dtype fix (the `make precision` stage as a library call)."""
    import onnx

    cfg = load_config(model, stage="precision")
    paths = ModelPaths(cfg["name"])
    if not paths.onnx_sim.exists():
        raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first "
                            "(and `make infer` to use real inputs)")
    t0 = time.perf_counter()
    model = onnx.load(str(paths.onnx_sim))
    feeds, feeds_desc = load_feeds(cfg, paths, max_samples)
    rows = layer_compare(model, feeds)
    fl = flops(model, rows)
    total = sum(fl.values()) or 1.0
    result = search(model, feeds, cfg, rows)
    keep = result["keep"]
    rows_after = layer_compare(model, feeds, keep_nodes=keep) if keep else None
    share = sum(fl.get(n, 0) for n in keep) / total

    node_types = {n.name: n.op_type for n in model.graph.node}
    mix = mix_option(keep, node_types, model_opset(model, cfg["export"]["opset"]))
    notes = [mix["note"]] if mix and mix["note"] else []
    options = [{"option": "force_fp16 (ATC default)", "fp32_compute_share": 0.0, **result["before"]}]
    if keep:
        options.append({"option": f"force_fp16 + keep_dtype ({len(keep)} nodes)", "fp32_compute_share": share,
                        **result["after"]})
    if mix and mix["usable"]:
        got = evaluate(model, feeds, cfg, keep_nodes=mix["keep_nodes"], keep_op_types=mix["onnx_types"])
        fp32 = [r["node"] for r in rows if r["op_type"] in mix["onnx_types"] or r["node"] in mix["keep_nodes"]]
        options.append({"option": mix["option"], "fp32_compute_share": sum(fl.get(n, 0) for n in fp32) / total,
                        "atc": mix["atc"], "emulated_keep_op_types": mix["onnx_types"],
                        **{k: v for k, v in got.items() if not k.startswith("_")}})
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
    gates = {t["name"]: gate_for(cfg, t["name"]) for t in cfg["outputs"]}
    plot(rows, rows_after, keep, plot_path, f"{cfg['name']}: per-node error of the fp16 emulation", gates)
    rep = provenance.header("precision", cfg)
    rep.update({
        "disclaimer": "CPU emulation of ATC's precision rules with onnxruntime (fp16 between ops, fp32 inputs/"
                      "outputs), not an NPU measurement; on a real .om, compare with ais_bench dumps instead.",
        "inputs": feeds_desc, "options": options, "notes": notes,
        "gate": {"outputs": gates, "rtol": cfg["compare"]["rtol"], "atol_scale": cfg["compare"]["atol_scale"],
                 "function": "pipeline.metrics.gate_check (as make compare)"},
        "fix": {"needed": not result["before"]["passed"], "passed": result["passed"], "keep": keep,
                "fp32_compute_share": share, "search_history": result["history"]},
        "keep_dtype_file": str(keep_file), "config_lines": config_lines, "top_nodes": top,
        "layers": [{**r, "after_rel_l2": rows_after[i]["rel_l2"] if rows_after else None} for i, r in enumerate(rows)],
        "compute_estimate": "2*MACs for Conv/Gemm/MatMul/GRU from weight and output shapes, numel for other ops",
        "plot": str(plot_path), "wall_s": time.perf_counter() - t0,
    })
    write_json(paths.results / "precision_report.json", rep)
    write_text(paths.results / "precision_report.md", markdown(rep))
    b = result["before"]
    worst = max(v["rel_l2"] for v in b["outputs"].values())
    print(f"{'PASSED' if b['passed'] else 'FAILED'} | {cfg['name']} fp16 (emulated force_fp16): worst output rel L2 "
          f"{worst:.2e}{why_failed(b)}")
    if keep:
        a = result["after"]
        worst_after = max(v["rel_l2"] for v in a["outputs"].values())
        print(f"{'PASSED' if a['passed'] else 'FAILED'} | {cfg['name']} fp16 + keep_dtype ({len(keep)} nodes, "
              f"{share:.2%} of compute in fp32): worst output rel L2 {worst_after:.2e}{why_failed(a)}")
        print(f"precision | keep list: {keep_file}; config lines: {' '.join(config_lines)}")
    for note in notes:
        print(f"precision | note: {note}")
    print(f"precision | results/{cfg['name']}/precision_report.md (CPU emulation, not an NPU measurement)")
    save_reads(cfg)
    return 0
