"""make precision: layer-wise fp16-vs-fp32 comparison, the keep_dtype list that fixes fp16, and the ATC options.

This is a CPU emulation of ATC's precision rules with onnxruntime (fp16 storage between ops, as
force_fp16 computes), not an NPU measurement.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from convert import aipp
from pipeline import provenance
from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.config import batch_one, gate_for, load_config, load_family, save_reads
from pipeline.errors import PipelineError
from pipeline.paths import ModelPaths

from .fix import evaluate, search
from .layerwise import layer_compare
from .mixlist import mix_option, model_opset


def load_feeds(cfg, paths, max_samples: int) -> tuple[list[dict], str]:
    manifest = paths.inputs / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        items = m["items"][:max_samples]
        p = aipp.plan(cfg)          # saved AIPP pixels: the network's input is their fp32 normalisation
        feeds = [aipp.network_feeds(cfg, {n: np.load(paths.inputs / it["files"][n]) for n in m["feeds"]}, p)
                 for it in items]
        return feeds, (f"{len(items)} saved input(s) of `make infer` ({paths.inputs})"
                       + ("; AIPP pixels normalised in fp32 (AIPP's own input noise: make compare's aipp line)"
                          if p else ""))
    family = load_family(cfg["family"])
    case = cfg["export"]["parity_cases"][0]
    feeds = []
    for i in range(max_samples):
        rng = np.random.default_rng(100 + i)
        feeds.append({t["name"]: family.random_input(t["name"], batch_one(t, case[t["name"]]), rng, cfg)
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
             f"What the emulation computes (force_fp16, nothing kept): {rep['fp16']['line']}.", "",
             f"Inputs: {rep['inputs']}. Gate (the one `make compare` applies, per sample and output): "
             f"{gate_text(rep['gate'])}.", "",
             f"Target SoC: {rep['soc']['text']}.", "",
             "| option | verdict | outputs (worst over samples) | fp32 share of compute (cube, vector) | "
             "compiles on |", "|---|---|---|---|---|"]
    for o in rep["options"]:
        lines.append(f"| {o['option']} | {'PASSED' if o['passed'] else 'FAILED'} | {outs(o)} | "
                     f"{price_text(o)} | {o.get('compiles_text', '')} |")
    rec = rep.get("recommended")
    lines += ["", "**Recommended:** " + (f"{rec['option']} ({price_text(rec)}): the cheapest passing option "
                                          f"{rep['soc']['scope']} can compile." if rec else
                                          "none: no passing option compiles on the target SoC."),
              "", "Price: the share of the model's compute (2 x MACs for Conv/MatMul/Gemm/GRU/LSTM on the cube unit, "
              "one operation per element for vector ops; convert/compute.py) done in fp32. An fp32 cube op is "
              "slow, and Ascend310/310P/910 have no fp32 cube at all (docs/fp16-fixes.md)."]
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
        lines += [f"Keep {len(fix['keep'])} node(s) in fp32 ({fix['fp32_compute_share']:.2%} of the compute: cube "
                  f"{fix['fp32_cube_share']:.2%}, vector {fix['fp32_vector_share']:.2%}; search tier "
                  f"{fix['tier']}, {fix['evaluations']} emulation runs): `{rep['keep_dtype_file']}`. Config lines:",
                  "", "```yaml", *rep["config_lines"], "```"]
    else:
        lines.append("No node set the target SoC can run in fp32 passes the gate within the search budget"
                     + (f" ({len(fix['excluded'])} node(s) excluded: no fp32 kernel on the SoC, or recurrent)"
                        if fix.get("excluded") else "") + ".")
    for o in rep["options"]:
        if "atc" in o:
            a = o["atc"]
            lines += ["", f"Or mixed precision ({'PASSED' if o['passed'] else 'FAILED'} in the emulation, "
                          f"{price_text(o)}):", "", "```yaml", "atc:",
                      f"  precision_mode: {a['precision_mode']}", f"  modify_mixlist: {json.dumps(a['modify_mixlist'])}",
                      f"  keep_dtype: {json.dumps(a['keep_dtype'])}", "fp16:",
                      f"  keep_op_types: {json.dumps(o['emulated_keep_op_types'])}",
                      f"  keep_nodes: {json.dumps(a['keep_dtype'])}", "```"]
    for note in rep.get("notes", []):
        lines += ["", f"Note: {note}"]
    lines += ["", f"![error per layer]({Path(rep['plot']).name})", ""]
    return "\n".join(lines)


def price_text(o: dict) -> str:
    return (f"{o['fp32_compute_share']:.2%} (cube {o.get('fp32_cube_share', 0.0):.2%}, "
            f"vector {o.get('fp32_vector_share', 0.0):.2%})")


def target_soc(cfg) -> str | None:
    """SOC= first, then atc.soc_version (as make om resolves it; the doctor never asks npu-smi)."""
    return os.environ.get("SOC") or (cfg.get("atc") or {}).get("soc_version") or None


def soc_scope(soc: str | None) -> dict:
    from convert.soc_precision import FAMILIES, soc_family

    family = soc_family(soc)
    if soc and family:
        return {"soc": soc, "family": family, "scope": soc, "text": f"{soc} (family {family}): only nodes whose "
                "op this family runs in fp32 on the AI Core are offered"}
    if soc:
        return {"soc": soc, "family": None, "scope": "any family", "text": f"{soc}, not a SoC family the doctor "
                "knows: every fix is checked against all families instead"}
    return {"soc": None, "family": None, "scope": "any family", "text": "none given (SOC= or atc.soc_version): every "
            f"fix is checked against all families ({', '.join(FAMILIES)}); `compiles on` names those whose AI Core "
            "has an fp32 kernel for every op type the fix keeps in fp32"}


def priced(option: dict, costs: dict, fp32_nodes, op_types) -> dict:
    """The option with its price (fp32 shares of compute) and the families that can compile it."""
    from convert.compute import shares
    from convert.soc_precision import compiles_on, compiles_text

    per = compiles_on(op_types)
    return {**option, **shares(costs, fp32_nodes), "fp32_compute_share": shares(costs, fp32_nodes)["fp32_share"],
            "fp32_op_types": sorted(set(op_types)), "compiles": {f: v["ok"] for f, v in per.items()},
            "compiles_why": {f: {**v["blocked"], **v["unknown"]} for f, v in per.items() if v["ok"] is not True},
            "compiles_text": compiles_text(per)}


def recommend(options: list[dict], family: str | None) -> dict | None:
    """The cheapest passing option the family can compile (unverified counts as compiling); any family's when none
    is given."""
    ok = [o for o in options if o["passed"] and (family is None or o["compiles"].get(family) is not False)]
    return min(ok, key=lambda o: (o["fp32_compute_share"], o.get("keep_nodes", 0))) if ok else None


def unroll_option(model, feeds, cfg, allowed, costs_of, max_evals: int = 80) -> tuple[dict | None, str]:
    """GRU/LSTM cannot be kept in fp32 on Ascend; unrolled at export (per-step MatMul/Sigmoid/Tanh/... nodes) they
    can. The unrolled model (convert.rnn_fp16.unroll_recurrences) goes through the same search; static sequence
    lengths only."""
    rec = [n.name for n in model.graph.node if n.op_type in ("GRU", "LSTM")]
    if not rec:
        return None, ""
    try:
        from convert.rnn_fp16 import unroll_recurrences
    except ImportError as exc:
        return None, (f"{len(rec)} GRU/LSTM node(s): Ascend runs them in fp16 only; unrolling them at export "
                      f"(export.unroll_recurrence: true) was not evaluated: convert.rnn_fp16 is not available ({exc})")
    try:
        unrolled, _ = unroll_recurrences(model, rounding=False)
    except ValueError as exc:                  # convert.rnn_fp16 says what it cannot unroll, in one line
        return None, (f"{len(rec)} GRU/LSTM node(s): Ascend runs them in fp16 only, and they cannot be unrolled "
                      f"here ({exc})")
    rows = layer_compare(unrolled, feeds)
    costs = costs_of(unrolled)
    res = search(unrolled, feeds, cfg, rows, costs=costs, allowed=allowed, max_evals=max_evals)
    types = {n.name: n.op_type for n in unrolled.graph.node}
    option = {"option": "unroll the recurrence at export (export.unroll_recurrence: true)"
                        + (f" + keep_dtype ({len(res['keep'])} nodes)" if res["keep"] else ""),
              "keep_nodes": len(res["keep"]), "keep": res["keep"], "export": {"unroll_recurrence": True},
              **res["after"]}
    return priced(option, costs, res["keep"], [types[n] for n in res["keep"]]), ""


def emulation_truth(model, input_shapes: dict) -> dict:
    """The emulation's own fp16 record (convert/fp16_truth.py), as the ort-fp16 target states it."""
    from convert.fp16 import emulate_fp16
    from convert.fp16_truth import record, truth

    t = truth(emulate_fp16(model)[0], model, input_shapes)
    return {**record(t), "cpu_without_fp16_kernel": t["cpu_without_fp16_kernel"]}


def diagnose(model: str, max_samples: int = 2, max_evals: int = 80) -> int:
    """where fp16 loses precision, and the keep_dtype fix (the `make precision` stage as a library call)."""
    import onnx

    from convert.compute import node_costs
    from convert.soc_precision import fp32_capable

    cfg = load_config(model, stage="precision")
    paths = ModelPaths(cfg["name"])
    if not paths.onnx_sim.exists():
        raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first "
                            "(and `make infer` to use real inputs)")
    t0 = time.perf_counter()
    model = onnx.load(str(paths.onnx_sim))
    feeds, feeds_desc = load_feeds(cfg, paths, max_samples)
    input_shapes = {k: list(np.shape(v)) for k, v in feeds[0].items()}
    costs_of = lambda m: node_costs(m, input_shapes)  # noqa: E731
    costs = costs_of(model)
    soc = target_soc(cfg)
    scope = soc_scope(soc)
    family = scope["family"]
    kinds = {n: c.get("kind", c["op_type"]) for n, c in costs.items()}    # a depthwise Conv is its own kind
    allowed = (lambda name, op: fp32_capable(kinds.get(name, op), soc if family else None)[0] is not False)
    rows = layer_compare(model, feeds)
    result = search(model, feeds, cfg, rows, costs=costs, allowed=allowed, max_evals=max_evals)
    keep = result["keep"]
    rows_after = layer_compare(model, feeds, keep_nodes=keep) if keep else None
    node_types = {n.name: n.op_type for n in model.graph.node}
    computing = [n for n, c in costs.items() if c["unit"] != "none"]

    mix = mix_option(keep, node_types, model_opset(model, cfg["export"]["opset"]))
    notes = [mix["note"]] if mix and mix["note"] else []
    options = [priced({"option": "force_fp16 (ATC default)", "keep_nodes": 0, **result["before"]}, costs, [], [])]
    if keep:
        options.append(priced({"option": f"force_fp16 + keep_dtype ({len(keep)} nodes)", "keep_nodes": len(keep),
                               "keep": keep, **result["after"]}, costs, keep, [kinds.get(n, node_types[n]) for n in keep]))
    if mix and mix["usable"]:
        got = evaluate(model, feeds, cfg, keep_nodes=mix["keep_nodes"], keep_op_types=mix["onnx_types"])
        fp32 = [n for n in computing if costs[n]["op_type"] in mix["onnx_types"] or n in mix["keep_nodes"]]
        options.append(priced({"option": mix["option"], "keep_nodes": len(mix["keep_nodes"]), "atc": mix["atc"],
                               "emulated_keep_op_types": mix["onnx_types"],
                               **{k: v for k, v in got.items() if not k.startswith("_")}},
                              costs, fp32, [kinds[n] for n in fp32]))
    unrolled, why = unroll_option(model, feeds, cfg, allowed, costs_of, max_evals)
    if unrolled:
        options.append(unrolled)
    if why:
        notes.append(why)
    options.append(priced({"option": "must_keep_origin_dtype (everything fp32)", "keep_nodes": 0, "passed": True,
                           "outputs": {o.name: {"rel_l2": 0.0, "cosine": 1.0, "passed": True}
                                       for o in model.graph.output}},
                          costs, computing, [kinds[n] for n in computing]))
    rec = recommend(options, family)
    rec_nodes = [n for n, why in result["excluded"].items() if why.startswith("recurrent")]
    no_kernel = [n for n in result["excluded"] if n not in rec_nodes]
    if rec_nodes:
        notes.append(f"{len(rec_nodes)} recurrent node(s) never offered for keep_dtype: Ascend computes GRU/LSTM in "
                     "fp16 whatever the keep list")
    if no_kernel:
        kinds = sorted({node_types.get(n, "?") for n in no_kernel})
        notes.append(f"{len(no_kernel)} node(s) never offered for keep_dtype ({', '.join(kinds)}): no fp32 AI Core "
                     f"kernel on {family or 'any family'} (convert/soc_precision.py)")
    tried = [h for h in result["history"] if h["step"].endswith("every candidate") and not h["passed"]]
    if not result["before"]["passed"]:
        for h in tried:
            notes.append(f"keeping every {h['step'].split(':')[0]}-tier candidate in fp32 ({h['kept']} nodes, "
                         f"{h['fp32_share']:.2%} of the compute) still fails: worst output rel L2 "
                         f"{h['worst_rel_l2']:.2e}")
    if family:
        unknown = sorted({t for o in options if o is not options[-1] for t in o["fp32_op_types"]
                          if fp32_capable(t, soc)[0] is None})
        if unknown:
            notes.append(f"fp32 support of {', '.join(unknown)} on {family} is not verified (convert/soc_precision.py):"
                         " allowed, but check the ATC log for the kernel it picked")

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
        "fp16": emulation_truth(model, input_shapes),
        "inputs": feeds_desc, "soc": scope, "options": options, "notes": notes,
        "recommended": {k: rec[k] for k in ("option", "fp32_compute_share", "fp32_share", "fp32_cube_share",
                                            "fp32_vector_share", "compiles", "compiles_text")} if rec else None,
        "gate": {"outputs": gates, "rtol": cfg["compare"]["rtol"], "atol_scale": cfg["compare"]["atol_scale"],
                 "function": "pipeline.metrics.gate_check (as make compare)"},
        "fix": {"needed": not result["before"]["passed"], "passed": result["passed"], "keep": keep,
                "fp32_compute_share": result["fp32_share"], "fp32_cube_share": result["fp32_cube_share"],
                "fp32_vector_share": result["fp32_vector_share"], "tier": result["tier"],
                "evaluations": result["evaluations"], "excluded": result["excluded"],
                "search_history": result["history"]},
        "keep_dtype_file": str(keep_file), "config_lines": config_lines, "top_nodes": top,
        "layers": [{**r, "unit": costs.get(r["node"], {}).get("unit"), "flops": costs.get(r["node"], {}).get("flops"),
                    "after_rel_l2": rows_after[i]["rel_l2"] if rows_after else None} for i, r in enumerate(rows)],
        "compute_estimate": "convert.compute.node_costs: 2*MACs for Conv/ConvTranspose/MatMul/Gemm/GRU/LSTM/Einsum "
                            "(cube unit), elements of the output (of the input for reductions) for vector ops, 0 "
                            "for data movement; shapes from ONNX shape inference at the doctor's input shapes",
        "plot": str(plot_path), "wall_s": time.perf_counter() - t0,
    })
    write_json(paths.results / "precision_report.json", rep)
    write_text(paths.results / "precision_report.md", markdown(rep))
    for o in options:
        worst = max(v["rel_l2"] for v in o["outputs"].values())
        print(f"{'PASSED' if o['passed'] else 'FAILED'} | {cfg['name']} {o['option']}: fp32 share "
              f"{o['fp32_compute_share']:.2%} (cube {o['fp32_cube_share']:.2%}, vector {o['fp32_vector_share']:.2%}), "
              f"{o['compiles_text']}; worst output rel L2 {worst:.2e}{why_failed(o) if not o['passed'] else ''}")
    print(f"precision | recommended for {scope['scope']}: "
          + (f"{rec['option']} (fp32 share {rec['fp32_compute_share']:.2%})" if rec else
             f"none: no passing option compiles on {scope['scope']}"))
    if keep:
        print(f"precision | keep list ({len(keep)} nodes): {keep_file}; config lines: atc.keep_dtype and "
              "fp16.keep_nodes = that list (precision_report.md)" if len(keep) > 8 else
              f"precision | keep list: {keep_file}; config lines: {' '.join(config_lines)}")
    for note in notes:
        print(f"precision | note: {note}")
    print(f"precision | emulation: {rep['fp16']['line']}")
    if rep["fp16"]["cpu_without_fp16_kernel"]:
        print(f"precision | onnxruntime's CPU has no fp16 kernel for {', '.join(rep['fp16']['cpu_without_fp16_kernel'])}:"
              " emulated (fp32 arithmetic between fp16-rounded tensors, GRU/LSTM rounded per step)")
    print(f"precision | results/{cfg['name']}/precision_report.md (CPU emulation, not an NPU measurement)")
    save_reads(cfg)
    return 0
