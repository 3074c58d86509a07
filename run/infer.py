"""make infer: preprocess inputs on the host, save them as .npy, run the target backend, summarise outputs."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline import provenance
from pipeline.atomic import save_npy, write_json
from pipeline.config import load_config, load_family
from pipeline.errors import PipelineError, cli
from pipeline.log import StageLog
from pipeline.paths import ModelPaths
from pipeline.progress import Progress

from convert.targets import open_runner
from models.contract import DURATION_KEY
from pipeline.batching import feed_names, rows_of, run_rows, signature, split, stack


def prefetch(fn, sources, depth: int):
    """Yield (source, result) in order, preparing up to `depth` sources ahead in a worker thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        queue = deque()
        it = iter(sources)
        for src in it:
            queue.append((src, pool.submit(fn, src)))
            if len(queue) >= depth:
                break
        while queue:
            src, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(fn, nxt)))
            yield src, fut.result()


def load_weights_meta(paths: ModelPaths, cfg: dict) -> dict:
    path = paths.build / "weights.json"
    if not path.exists():
        raise PipelineError(f"{path} is missing; run `make export MODEL={cfg['name']}` (or copy the whole build folder)")
    return json.loads(path.read_text())


def _jsonable(v):
    return isinstance(v, (str, int, float, bool, type(None))) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v))


class InferRun:
    """Streams sources through prepare -> batched runner -> postprocess, writing into staging folders."""

    def __init__(self, cfg, family, runner, weights_meta, inputs_dir: Path, outputs_dir: Path, batch_size: int):
        self.cfg, self.family, self.runner, self.meta = cfg, family, runner, weights_meta
        self.inputs_dir, self.outputs_dir = inputs_dir, outputs_dir
        self.names = feed_names(cfg)
        self.batch_size = batch_size
        self.input_meta = runner.get_input_metadata()
        self.pad = cfg["infer"].get("pad", "repeat")
        self.device_runs = 0
        self.pending: dict[tuple, list] = {}
        self.open_sources: dict[int, dict] = {}
        self.items_manifest, self.samples = [], []
        self.t_infer = self.t_post = 0.0
        self.batches = 0

    def prepare(self, source):
        t0 = time.perf_counter()
        items = self.family.prepare(source, self.cfg, self.input_meta)
        return items, time.perf_counter() - t0

    def add_source(self, idx: int, source: Path, items: list[dict]) -> None:
        if not items:
            raise PipelineError(f"{source}: the model family produced no input items; check the file")
        self.open_sources[idx] = {"source": source, "n": len(items), "outs": {}, "ids": []}
        for k, item in enumerate(items):
            item_id = f"{idx:05d}_{k:03d}"
            files = {}
            for n in self.names:
                if n not in item:
                    raise PipelineError(f"{source}: prepared item lacks input '{n}'")
                item[n] = np.ascontiguousarray(item[n])
                files[n] = f"{item_id}.{n}.npy"
                save_npy(self.inputs_dir / files[n], item[n])
            context = {k2: v for k2, v in item.items() if k2.startswith("_")}
            self.items_manifest.append({"id": item_id, "source_index": idx, "chunk": k, "files": files,
                                        "shapes": {n: list(item[n].shape) for n in self.names},
                                        "context": {k2: v for k2, v in context.items() if _jsonable(v)}})
            self.open_sources[idx]["ids"].append(item_id)
            sig = signature(item, self.names)
            self.pending.setdefault(sig, []).append((item_id, idx, k, item, context))
            if len(self.pending[sig]) >= self.batch_size:
                self.run_batch(self.pending.pop(sig))

    def flush(self) -> None:
        for sig in list(self.pending):
            self.run_batch(self.pending.pop(sig))

    def run_batch(self, batch: list) -> None:
        feeds = stack([b[3] for b in batch], self.names)
        t0 = time.perf_counter()
        out, runs = run_rows(self.runner, feeds, self.pad)
        self.t_infer += time.perf_counter() - t0
        self.batches += 1
        self.device_runs += runs
        for (item_id, idx, k, _item, context), res in zip(batch, split(out, [rows_of(b[3], self.names) for b in batch])):
            for name, arr in res.items():
                save_npy(self.outputs_dir / "items" / f"{item_id}.{name}.npy", arr)
            state = self.open_sources[idx]
            state["outs"][k] = {**res, **context}
            if len(state["outs"]) == state["n"]:
                self.finish_source(idx)

    def finish_source(self, idx: int) -> None:
        state = self.open_sources.pop(idx)
        source = state["source"]
        t0 = time.perf_counter()
        summary, arrays = self.family.postprocess(self.cfg, source, [state["outs"][k] for k in range(state["n"])],
                                                  self.meta)
        saved = {}
        for name, arr in arrays.items():
            rel = Path("post") / f"{idx:05d}_{_safe(source.stem)}.{name}.npy"
            save_npy(self.outputs_dir / rel, np.asarray(arr))
            saved[name] = {"file": str(rel), "shape": list(np.shape(arr))}
        self.t_post += time.perf_counter() - t0
        self.samples.append({"index": idx, "source": str(source), "source_sha256": provenance.sha256_file(source),
                             "items": state["ids"], "summary": summary, "arrays": saved})


def _safe(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60]


def _swap_dir(staging: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staging, final)


@cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m run.infer", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default=os.environ.get("BACKEND", "auto"))
    ap.add_argument("--input", default=os.environ.get("INPUT", ""))
    ap.add_argument("--device", type=int, default=int(os.environ.get("DEVICE", "0") or 0))
    ap.add_argument("--batch-size", type=int, default=0)
    args = ap.parse_args(argv)

    cfg = load_config(args.model, stage="infer")
    paths = ModelPaths(cfg["name"])
    family = load_family(cfg["family"])
    notes = []
    runner = open_runner(cfg, args.backend, args.device, log=notes.append)
    backend = runner.backend
    weights_meta = load_weights_meta(paths, cfg)
    log = StageLog(paths.logs / f"infer-{backend}.log")
    for note in notes:
        log(f"infer | {note}")
    batch_size = args.batch_size or cfg["infer"]["batch_size"]

    if args.input:
        sources = family.find_sources(args.input, cfg)
        input_desc = {"kind": "user", "arg": args.input}
    else:
        sources = family.generate_sources(cfg, paths.build / "samples")
        input_desc = {"kind": "generated", "folder": str(paths.build / "samples"), "seed": cfg["infer"]["seed"]}
    log(f"infer | {cfg['name']} on {backend} ({runner.device}): {len(sources)} input file(s), batch {batch_size}")

    inputs_stage = paths.inputs.with_name("inputs.staging")
    outputs_stage = paths.outputs(backend).with_name(backend + ".staging")
    for d in (inputs_stage, outputs_stage):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    t_prep = 0.0
    try:
        t_load = time.perf_counter()
        with runner:
            t_start = time.perf_counter()
            load_s = t_start - t_load
            job = InferRun(cfg, family, runner, weights_meta, inputs_stage, outputs_stage, batch_size)
            depth = max(2, 2 * batch_size)
            progress = Progress(len(sources), "infer")
            for idx, (source, (items, dt)) in enumerate(prefetch(job.prepare, sources, depth)):
                t_prep += dt
                job.add_source(idx, Path(source), items)
                progress.update()
            job.flush()
            progress.close()
        wall = time.perf_counter() - t_start
        manifest = {"model": cfg["name"], "input": input_desc, "feeds": job.names,
                    "sources": [str(s) for s in sources], "items": job.items_manifest}
        write_json(inputs_stage / "manifest.json", manifest)
        manifest_sha = provenance.sha256_file(inputs_stage / "manifest.json")
        write_json(outputs_stage / "manifest.json", {"backend": backend, "device": runner.device,
                                                     "runner": runner.describe(), "inputs_manifest_sha256": manifest_sha,
                                                     "outputs": [t["name"] for t in cfg["outputs"]],
                                                     "items": [it["id"] for it in job.items_manifest]})
        _swap_dir(inputs_stage, paths.inputs)
        _swap_dir(outputs_stage, paths.outputs(backend))
    finally:
        shutil.rmtree(inputs_stage, ignore_errors=True)
        shutil.rmtree(outputs_stage, ignore_errors=True)

    n_items = len(job.items_manifest)
    samples = sorted(job.samples, key=lambda s: s["index"])
    timing = {
        "runner_load_s": load_s, "wall_s": wall, "preprocess_s": t_prep, "inference_s": job.t_infer, "postprocess_s": job.t_post,
        "items": n_items, "batches": job.batches, "device_runs": job.device_runs, "batch_size": batch_size,
        "accepted_batch_sizes": runner.accepted_batch_sizes(), "pad": job.pad,
        "end_to_end_items_per_s": n_items / wall if wall > 0 else None,
        "inference_only_items_per_s": n_items / job.t_infer if job.t_infer > 0 else None,
        "memory_trace": progress.trace,
        "definition": ("items per second of wall time after the runner is loaded (preprocessing, I/O, "
                       "inference, postprocessing); inference_only counts only runner.infer calls; "
                       "memory_trace: resident MB of this process after every 10% of the input files"),
    }
    if family.has("time_input", cfg):
        durations = [s["summary"][DURATION_KEY] for s in samples]
        timing["audio_s"] = float(sum(durations))
        timing["real_time_factor"] = float(sum(durations)) / wall if wall > 0 else None
        timing["real_time_factor_definition"] = "seconds of audio per second of wall time (higher is faster)"
    result = provenance.header("infer", cfg)
    result.update({"backend": backend, "device": runner.device, "runner": runner.describe(),
                   "weights": weights_meta, "input": input_desc, "timing": timing,
                   "inputs_dir": str(paths.inputs), "outputs_dir": str(paths.outputs(backend)),
                   "inputs_manifest_sha256": manifest_sha, "samples": samples})
    write_json(paths.results / "inference_result.json", result)
    log(f"infer | {n_items} item(s) from {len(samples)} file(s) in {wall:.2f} s: "
        f"{timing['end_to_end_items_per_s']:.2f} items/s end to end, "
        f"{timing['inference_only_items_per_s']:.2f} items/s in the runner; results/{cfg['name']}/inference_result.json")
    log.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
