"""make report: results/<model>/REPORT.md and results/REPORT.md from results/ and logs/ only (plus build/
arrays for the plots where present). `--publish` also writes the model-card section for adaptation platforms."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pipeline import SCHEMA_VERSION
from pipeline.atomic import write_text
from pipeline.contract import EMBEDDING_ARRAY, FRAME_ARRAY, FRAME_HOP_KEY
from convert import backends
from pipeline.config import available_models, default_models, load_config, load_family
from pipeline.paths import ModelPaths
from pipeline import stages

from . import plots
from .tables import (accuracy_table, dataset_table, device_label, environment, export_table, get,
                     labeled_accuracy_table, performance_table, precision_table, run_summary_lines, weights_line)

FILES = tuple(f.removesuffix(".json") for f in stages.RESULT_FILES)     # every stage's results/<m>/ file
PUBLISHED = ("accuracy_eval", "labeled_accuracy", "performance_eval")   # proof files the model card carries


def load(path: Path) -> dict | None:
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        print(f"WARNING | {path}: schema_version {doc.get('schema_version')}, this report reads {SCHEMA_VERSION}")
    return doc


def model_plots(cfg, paths, docs) -> list[tuple[str, Path]]:
    out = []
    d = paths.results / "plots"
    p = plots.latency_throughput(docs["performance_eval"], d / "latency_throughput.png")
    if p:
        out.append(("Latency and throughput against batch size", p))
    p = plots.error_distribution(docs["accuracy_eval"], d / "error_distribution.png")
    if p:
        out.append(("Relative L2 error per sample and output, with the gate", p))
    inf = docs["inference_result"]
    if not inf or not inf.get("first_sample"):
        return out
    sample = inf["first_sample"]
    tgt_dir, ref_dir = Path(inf["outputs_dir"]), paths.outputs("reference")
    arrays = sample.get("arrays", {})
    family = load_family(cfg["family"])
    item = sample["items"][0]
    try:
        tgt_arrays = {n: np.load(tgt_dir / a["file"]) for n, a in arrays.items() if a["file"].endswith(".npy")}
        manifest = json.loads((paths.inputs / "manifest.json").read_text())
        from run.engine import item_context

        ctx = {it["id"]: item_context(paths.inputs, it) for it in manifest["items"] if it["id"] in sample["items"]}
        ref_items = [{**{t["name"]: np.load(ref_dir / f"{i}.{t['name']}.npy") for t in cfg["outputs"]}, **ctx.get(i, {})}
                     for i in sample["items"]]
        meta = json.loads((paths.build / "weights.json").read_text())
        out += family.report_plots(cfg, sample["source"], ref_items, tgt_arrays, meta, d)
        if family.has("frame_output", cfg) and FRAME_ARRAY in arrays and len(sample["items"]) == 1:
            tgt = np.load(tgt_dir / arrays[FRAME_ARRAY]["file"])
            ref_out = {t["name"]: np.load(ref_dir / f"{item}.{t['name']}.npy") for t in cfg["outputs"]}
            ref = family.frames_from_outputs(cfg, ref_out, tgt.shape[0])
            meta = json.loads((paths.build / "weights.json").read_text())
            labels = family.labels(cfg, meta) if family.has("labels", cfg) else None
            labels = labels or [str(i) for i in range(tgt.shape[1])]
            out.append(("Frame-level outputs of the top classes, reference and target, detected events in cyan",
                        plots.audio_heatmap(tgt, ref, labels, sample["summary"].get("events", []),
                                            sample["summary"].get(FRAME_HOP_KEY, 0.01), d / "frames_heatmap.png")))
        elif family.has("embedding", cfg) and EMBEDDING_ARRAY in arrays:
            name = cfg["outputs"][0]["name"]
            what = f"output {name} of item 1 of {len(sample['items'])} of {Path(sample['source']).name}"
            out.append((f"Embedding difference per dimension, {what} (the first file)",
                        plots.embedding_difference(np.load(tgt_dir / "items" / f"{item}.{name}.npy"),
                                                   np.load(ref_dir / f"{item}.{name}.npy"), d / "embedding_diff.png",
                                                   what)))
    except FileNotFoundError:
        out.append(("(array plots skipped: build/ outputs of `make infer` and `make compare` are not here)", None))
    return out


def labeled_section(cfg, docs, always: bool = True) -> list[str]:
    """`make accuracy`'s table; for a model without class labels only when a result exists (it cannot run there)."""
    if not docs["labeled_accuracy"] and not (always and load_family(cfg["family"]).has("labels", cfg)):
        return []
    return ["## Labelled accuracy (top-1 / top-5)", "", *labeled_accuracy_table(docs["labeled_accuracy"]), ""]


def model_report(cfg, docs, env_info, figs) -> str:
    name = cfg["name"]
    inf = docs["inference_result"]
    lines = [f"# {name}", "", cfg["description"], "",
             f"Evidence produced on: **{device_label((docs['accuracy_eval'] or {}).get('target', {}).get('backend') or (inf or {}).get('backend'), (inf or {}).get('device'))}**.",
             "", "## Environment", "", *environment(docs, env_info), "",
             "## Weights", "", weights_line(docs["export"] or inf), "",
             "## Export and simplification", "", *export_table(docs["export"]), "",
             "## Accuracy against onnxruntime CPU fp32", "", *accuracy_table(docs["accuracy_eval"]), "",
             *labeled_section(cfg, docs),
             "## Performance", "", *performance_table(docs["performance_eval"]), "",
             "## Dataset-scale run", "", *dataset_table(docs["dataset_run"]), "",
             "## Precision findings", "", *precision_table(docs["precision_report"]), ""]
    if inf and inf.get("run_summary"):
        lines += ["## Run summary", "", f"Over the {inf.get('sources_ok')} file(s) of the last `make infer` "
                  f"({inf.get('backend')}), from the model family's run_summary:", "", *run_summary_lines(inf), ""]
    if inf and inf.get("timing", {}).get("real_time_factor"):
        lines += [f"`make infer` real-time factor: {inf['timing']['real_time_factor']:.1f} "
                  f"({inf['timing']['audio_s']:.1f} s of audio) [↗](inference_result.json#/timing/real_time_factor)", ""]
    if figs:
        lines += ["## Plots", ""]
        for caption, path in figs:
            lines += [f"{caption}:", "", f"![{caption}](plots/{path.name})" if path else "", ""]
    return "\n".join(lines)


def combined(rows: list[tuple[str, dict]], env_info) -> str:
    lines = ["# Adaptation report", "", "## Environment", "",
             *environment({m: d.get("export") or d.get("inference_result") for m, d in rows}, env_info), "",
             "## Models", "", "| model | evidence from | export parity | accuracy | best throughput (samples/s) | report |",
             "|---|---|---|---|---|---|"]
    for m, d in rows:
        acc, perf, exp = d["accuracy_eval"], d["performance_eval"], d["export"]
        best = max(((r["throughput_samples_per_s"], i) for i, r in enumerate((perf or {}).get("results", []))), default=None)
        tp = (f"{best[0]:.2f} [↗]({m}/performance_eval.json#/results/{best[1]}/throughput_samples_per_s)"
              if best else "n/a")
        t = (acc or {}).get("target", {})
        lines.append(f"| {m} | {device_label(t.get('backend'), t.get('device'), t.get('fp16'))} | "
                     f"{get(exp, '/parity/verdict') or 'not run'} | {(acc or {}).get('verdict', 'not run')} | {tp} | "
                     f"[{m}/REPORT.md]({m}/REPORT.md) |")
    return "\n".join(lines + zoo_section()) + "\n"


def zoo_section() -> list[str]:
    """`make zoo`'s table (results/zoo/zoo.json), when a sweep has run."""
    from zoo.table import markdown

    path = ModelPaths("zoo").results / "zoo.json"
    if not path.is_file():
        return []
    text = markdown(json.loads(path.read_text()), prefix="zoo/", title=False)
    return ["", "## Zoo sweep", "", "From `make zoo`; the whole table with its notes: [zoo/ZOO.md](zoo/ZOO.md).", "",
            *text.splitlines()]


def publish_card(cfg, paths, docs) -> Path:
    """Model-card section with the evidence as text, and the proof files in the layout platforms expect."""
    acc, perf = docs["accuracy_eval"], docs["performance_eval"]
    backend = ((acc or {}).get("target", {}).get("backend") or (perf or {}).get("backend")
               or (docs["labeled_accuracy"] or {}).get("backend"))
    b = backends.REGISTRY.get(backend or "")
    on_npu = bool(b and b.measures_npu)
    out = paths.results / "publish"
    front = ["---", "hardware: NPU", "tags:", "  - NPU", "  - Ascend", "  - ascend-npu",
             f"evidence_backend: {backend or 'none'}", f"evidence_device: {'npu' if on_npu else 'cpu'}", "---", "",
             "#+NPU", ""]
    banner = [] if on_npu else [
        "> **These figures were measured on CPU with onnxruntime (backend "
        f"`{backend}`), not on an Ascend NPU.** The model is adapted for Ascend (ATC command in `atc.sh`), but "
        "NPU accuracy and speed are not shown here: run `make om infer compare bench BACKEND=om` on an Ascend "
        "host and publish again.", ""]
    labeled = labeled_section(cfg, docs, always=False)
    body = [f"# {cfg['name']} on Ascend", "", *banner, "## Accuracy", "", *accuracy_table(acc), "", *labeled,
            "## Performance", "", *performance_table(perf), "",
            "Proof files: `results/accuracy_eval.json`, `logs/accuracy_eval.log`"
            + (", `results/labeled_accuracy.json`, `logs/labeled_accuracy.log`" if labeled else "") + ".", ""]
    text = "\n".join(front + body)
    for name in PUBLISHED:
        text = text.replace(f"]({name}.json", f"](results/{name}.json")
    write_text(out / "README.md", text)
    for name in PUBLISHED:
        for src, dst in ((paths.results / f"{name}.json", out / "results" / f"{name}.json"),
                         (paths.logs / f"{name}.log", out / "logs" / f"{name}.log")):
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return out / "README.md"


def write_reports(models: list | None = None, publish: bool = False) -> int:
    """REPORT.md per model and combined, plots (PUBLISH=1: model card) (the `make report` stage as a library call)."""
    models = models or [m for m in available_models()
                        if m in default_models() or ModelPaths(m).results.exists()]
    rows = []
    env_info = None
    for m in models:
        cfg = load_config(m)
        paths = ModelPaths(cfg["name"])
        env_info = env_info or load(paths.results.parent / "env_info.json")
        docs = {k: load(paths.results / f"{k}.json") for k in FILES}
        figs = model_plots(cfg, paths, docs)
        write_text(paths.results / "REPORT.md", model_report(cfg, docs, env_info, figs))
        print(f"report | results/{cfg['name']}/REPORT.md ({len([f for f in figs if f[1]])} plot(s))")
        if publish:
            print(f"report | {publish_card(cfg, paths, docs)}")
        rows.append((cfg["name"], docs))
    top = ModelPaths(rows[0][0]).results.parent / "REPORT.md"
    write_text(top, combined(rows, env_info))
    print(f"report | {top}")
    return 0
