"""make infer: preprocess inputs on the host, save them as .npy, run the target backend, summarise outputs.

Resumable and streaming: sources run in blocks (run/engine.py) whose results are journaled as they finish, so
an interrupted run resumes where it stopped and ends with the same files as an uninterrupted one. Per-file
summaries stream to results/<model>/inference_result.jsonl; inference_result.json holds the header, the totals,
a pointer to the JSONL and the family's run_summary over all files. ENGINE=ray runs the same blocks in Ray Data
actors (run/ray_engine.py). A stateful family (state_carry) runs each source's items in order with the state
carried (pipeline.batching.run_sequence); the inputs manifest records the carry (`state_carry`) and marks each
item whose state inputs came from the previous item (`carried`), so compare's reference carries its own.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from convert import backends
from pipeline.contract import DURATION_KEY, RUN_ARRAYS_KEY
from pipeline import provenance
from pipeline.atomic import _default, atomic_path, remove_orphans, write_json
from pipeline.config import load_config, load_family
from pipeline.errors import ConfigError, InputError, PipelineError, cli
from pipeline.log import StageLog
from pipeline.paths import ModelPaths
from pipeline.progress import Progress
from pipeline import stages

from .engine import (JOURNAL, BlockWorker, HostPool, Journal, host_workers, plan_blocks, prepare_source,
                     prepare_threads, run_key)
from pipeline.stage_clock import add as add_stages

ENGINES = ("local", "ray")


def prefetch(fn, args_iter, depth: int, threads: int = 1):
    """Yield fn(*args) in order, computing up to `depth` ahead in `threads` worker threads."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        queue = deque()
        it = iter(args_iter)
        for a in it:
            queue.append(pool.submit(fn, *a))
            if len(queue) >= depth:
                break
        while queue:
            fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append(pool.submit(fn, *nxt))
            yield fut.result()


def load_weights_meta(paths: ModelPaths, cfg: dict) -> dict:
    path = paths.build / "weights.json"
    if not path.exists():
        raise PipelineError(f"{path} is missing; run `make export MODEL={cfg['name']}` (or copy the whole build folder)")
    return json.loads(path.read_text())


def iter_blocks(worker: BlockWorker, family, cfg, sources, blocks, todo, depth: int, pool: HostPool | None = None):
    """Journal entries of the `todo` blocks in order. In this process: preparation runs ahead in a thread (bounded
    queue), the post step after each block's device runs. With a HostPool: host processes prepare up to `depth`
    sources ahead and post-process block n-1 while the runner runs block n; the entries and files are the same."""
    if pool is not None:
        yield from _iter_blocks_pool(worker, cfg, sources, blocks, todo, depth, pool)
        return
    input_meta = worker.runner.get_input_metadata()
    order = [(b, idx) for b in todo for idx in blocks[b]]
    threads = prepare_threads(cfg, family)
    prepared = prefetch(lambda b, idx: (b, prepare_source(family, cfg, input_meta, idx, Path(sources[idx]))),
                        order, max(depth, 2 * threads), threads)
    current, bucket = None, []
    for b, p in prepared:
        if current is not None and b != current:
            yield worker.run_block(current, bucket)
            bucket = []
        current = b
        bucket.append(p)
    if bucket:
        yield worker.run_block(current, bucket)


def _iter_blocks_pool(worker: BlockWorker, cfg, sources, blocks, todo, depth: int, pool: HostPool):
    input_meta = worker.runner.get_input_metadata()
    write = not worker.carry                  # a stateless family's inputs are written by the host process
    order = iter([idx for b in todo for idx in blocks[b]])
    ahead: deque = deque()

    def top_up():
        while len(ahead) < depth:
            idx = next(order, None)
            if idx is None:
                return
            ahead.append(pool.prepare(input_meta, idx, Path(sources[idx]), write))

    posting: deque = deque()              # (device state, {index: future}) of blocks whose post step runs

    def finished(state, futs):
        return worker.finish_block(state, {i: f.result() for i, f in futs.items()})

    top_up()
    for b in todo:
        prepared = []
        for _ in blocks[b]:
            prepared.append(ahead.popleft().result())
            top_up()
        state = worker.run_device(b, prepared)
        posting.append((state, {job[0]: pool.post(*job) for job in worker.post_jobs(state)}))
        while len(posting) > 1:
            yield finished(*posting.popleft())
    while posting:
        yield finished(*posting.popleft())


def run_local(cfg, family, runner, meta, work, sources, blocks, todo, journal, progress, batch_size,
              pool: HostPool | None = None) -> None:
    worker = BlockWorker(cfg, family, runner, meta, work, batch_size)
    depth = max(2, 2 * batch_size, 2 * (pool.workers if pool else 0))
    for entry in iter_blocks(worker, family, cfg, sources, blocks, todo, depth, pool):
        journal.append(entry)
        progress.update(len(entry["records"]))


def _swap_dir(staging: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    if staging.exists():
        os.replace(staging, final)
    else:
        final.mkdir(parents=True)


def finish(journal: Journal, work: Path, paths: ModelPaths, cfg: dict, backend: str) -> dict:
    """Manifests and the streamed results from the journal, in source order; then the folders move in place."""
    names = [t["name"] for t in cfg["inputs"]]
    items, failed, n_ok, audio_s, done = [], [], 0, 0.0, []
    stats = {"infer_s": 0.0, "post_s": 0.0, "prepare_s": 0.0, "batches": 0, "device_runs": 0, "items": 0,
             "stages": {}}
    jsonl = paths.results / "inference_result.jsonl"
    first = None
    with atomic_path(jsonl) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for entry in journal.entries():
            for k, v in entry["stats"].items():
                if k == "stages":
                    add_stages(stats["stages"], v)
                else:
                    stats[k] += v
            for rec in entry["records"]:
                if "error" in rec:
                    failed.append({"index": rec["index"], "source": rec["source"], "error": rec["error"]})
                    out.write(json.dumps({"index": rec["index"], "source": rec["source"], "error": rec["error"]}) + "\n")
                    continue
                items.extend(rec["manifest"])
                sample = {k: rec[k] for k in ("index", "source", "source_sha256", "items", "summary", "arrays")}
                first = first or sample
                n_ok += 1
                if isinstance(rec["summary"], dict) and isinstance(rec["summary"].get(DURATION_KEY), (int, float)):
                    audio_s += rec["summary"][DURATION_KEY]
                out.write(json.dumps(sample, default=_default, allow_nan=True) + "\n")
                done.append((rec["source"], rec["summary"], {n: a["file"] for n, a in rec["arrays"].items()}))
    return {"items": items, "failed": failed, "sources_ok": n_ok, "audio_s": audio_s, "stats": stats,
            "jsonl": jsonl, "first": first, "names": names, "done": done}


def run_summary(family, cfg: dict, done: list, outputs_dir: Path) -> dict:
    """The family's figures over the whole run (contract hook run_summary); each summary gets RUN_ARRAYS_KEY."""
    summaries = [(source, {**(summary if isinstance(summary, dict) else {"value": summary}),
                           RUN_ARRAYS_KEY: {n: str(outputs_dir / f) for n, f in arrays.items()}})
                 for source, summary, arrays in done]
    out = family.run_summary(cfg, summaries)
    try:
        json.dumps(out, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"the {cfg['family']} family's run_summary returned something that is not JSON ({exc}); "
                            "return numbers, strings, lists and dicts") from None
    return out or {}


def bad_share_check(failed: list, total: int, cfg: dict, fail_on_bad: bool) -> str | None:
    """Why the run must exit non-zero because of bad inputs, or None."""
    if not failed:
        return None
    limit = cfg["infer"]["max_bad_share"]
    share = len(failed) / max(total, 1)
    if fail_on_bad or share > limit:
        why = "FAIL_ON_BAD=1" if fail_on_bad else f"{share:.1%} of the inputs, above infer.max_bad_share {limit:.1%}"
        return (f"{len(failed)} of {total} input file(s) failed ({why}); first: {failed[0]['error']}; "
                "fix or remove them, the list is in results/<model>/inference_result.jsonl")
    return None


def infer(model: str, backend: str = 'auto', input: str = '', device: int = 0, batch_size: int = 0, engine: str = 'local', workers: str = '', fail_on_bad: bool = False) -> int:
    """run the target on INPUT or generated samples (the `make infer` stage as a library call)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown ENGINE '{engine}'; use one of: {', '.join(ENGINES)}")

    cfg = load_config(model, stage="infer")
    paths = ModelPaths(cfg["name"])
    family = load_family(cfg["family"])
    backend, notes = backends.run_backend(cfg, backend)
    target = backends.load_target(cfg, backend)
    weights_meta = load_weights_meta(paths, cfg)
    log = StageLog(paths.logs / f"infer-{backend}.log")
    for note in notes:
        log(f"infer | {cfg['name']} | {note}")
    batch_size = batch_size or cfg["infer"]["batch_size"]

    if input:
        sources = family.find_sources(input, cfg)
        input_desc = {"kind": "user", "arg": input}
    else:
        sources = family.generate_sources(cfg, paths.build / "samples")
        input_desc = {"kind": "generated", "folder": str(paths.build / "samples"), "seed": cfg["infer"]["seed"]}
    sources = [Path(s) for s in sources]
    work = paths.build / "infer-work" / backend
    carry = dict(family.state_carry(cfg))
    journal = Journal(work / JOURNAL, run_key(cfg, backend, sources, target, batch_size, carry))
    done = journal.open(lambda msg: log(f"infer | notice | {msg}"))
    if done and journal.keep_complete(work, [t["name"] for t in cfg["outputs"]]):
        done = dict(journal.offsets)
    if not done:
        for sub in ("inputs", "outputs"):
            shutil.rmtree(work / sub, ignore_errors=True)
    elif remove_orphans(work):
        log(f"infer | notice | removed the half-written files of the killed run in {work}")
    blocks = plan_blocks(len(sources), batch_size)
    todo = [b for b in range(len(blocks)) if b not in done]
    if done:
        log(f"infer | resuming: {len(done)} of {len(blocks)} block(s) were finished by an earlier run; "
            f"{len(todo)} to go")
    progress = Progress(len(sources), "infer")
    progress.update(sum(len(blocks[b]) for b in done))

    n_host = host_workers(cfg, len(sources)) if engine == "local" else 1
    # the host processes start before the runner opens (no AscendCL state in any child)
    pool = HostPool(n_host, cfg, weights_meta, work) if n_host > 1 and todo else None
    threads = prepare_threads(cfg, family)          # without a pool: iter_blocks prepares in this many threads
    t_load = time.perf_counter()
    if engine == "ray":
        from .ray_engine import run_ray

        runner_desc, device, engine_info = run_ray(cfg, backend, target, weights_meta, work, sources, blocks, todo,
                                                   journal, progress, batch_size, workers, device, log)
        t_start, load_s = t_load, None
    else:
        try:
            runner = backends.open_runner(cfg, backend, device)
            with runner:
                t_start = time.perf_counter()
                load_s = t_start - t_load
                log(f"infer | {cfg['name']} on {backend} ({runner.device}): {len(sources)} input file(s), batch "
                    f"{batch_size}, " + (f"{pool.workers} host processes" if pool else
                                         f"1 host process, {threads} prepare thread(s)"))
                run_local(cfg, family, runner, weights_meta, work, sources, blocks, todo, journal, progress,
                          batch_size, pool)
        finally:
            if pool:
                pool.close()
        runner_desc, device = runner.describe(), runner.device
        engine_info = {"engine": "local", "host_workers": pool.workers if pool else 1,
                       "prepare_threads": None if pool else threads}
    progress.close()
    wall = time.perf_counter() - t_start

    res = finish(journal, work, paths, cfg, backend)
    if not res["items"]:
        raise InputError(res["failed"][0]["error"] if res["failed"] else "no input produced an item")
    manifest = {"model": cfg["name"], "input": input_desc, "feeds": res["names"],
                "sources": [str(s) for s in sources], "items": res["items"]}
    if carry:
        manifest["state_carry"] = carry
    write_json(work / "inputs" / "manifest.json", manifest)
    manifest_sha = provenance.sha256_file(work / "inputs" / "manifest.json")
    write_json(work / "outputs" / "manifest.json", {
        "backend": backend, "device": device, "runner": runner_desc, "inputs_manifest_sha256": manifest_sha,
        "outputs": [t["name"] for t in cfg["outputs"]], "items": [it["id"] for it in res["items"]]})
    _swap_dir(work / "inputs", paths.inputs)
    _swap_dir(work / "outputs", paths.outputs(backend))
    summary_of_run = run_summary(family, cfg, res["done"], paths.outputs(backend))

    st, n_items = res["stats"], len(res["items"])
    timing = {
        "runner_load_s": load_s, "wall_s": wall, "preprocess_s": st["prepare_s"], "inference_s": st["infer_s"],
        "postprocess_s": st["post_s"], "host_stages_s": st["stages"], "items": n_items, "batches": st["batches"], "device_runs": st["device_runs"],
        "batch_size": batch_size, "pad": cfg["infer"]["pad"],
        "resumed_blocks": len(done), "blocks": len(blocks),
        "end_to_end_items_per_s": n_items / wall if wall > 0 else None,
        "inference_only_items_per_s": n_items / st["infer_s"] if st["infer_s"] > 0 else None,
        "memory_trace": progress.trace,
        "host_workers": pool.workers if pool else 1,
        "definition": ("items per second of wall time after the runner is loaded (preprocessing, I/O, "
                       "inference, postprocessing); inference_only counts only runner calls; resumed runs count "
                       "this run's wall time and all items; preprocess_s, postprocess_s and host_stages_s (seconds per host "
                       "stage: decode, resample, front-end, resize, write, post-process, ...) are summed over the "
                       "host processes, so with host_workers > 1 they can exceed wall_s; memory_trace: resident MB of this process after "
                       "every 10% of the input files"),
    }
    if family.has("time_input", cfg):
        timing["audio_s"] = res["audio_s"]
        timing["real_time_factor"] = res["audio_s"] / wall if wall > 0 else None
        timing["real_time_factor_definition"] = "seconds of audio per second of wall time (higher is faster)"
    result = provenance.header("infer", cfg)
    result.update({"backend": backend, "device": device, "runner": runner_desc, "engine": engine_info,
                   **({"fp16": fp16} if (fp16 := backends.target_precision(cfg, backend)) else {}),
                   "weights": weights_meta, "input": input_desc, "timing": timing,
                   "inputs_dir": str(paths.inputs), "outputs_dir": str(paths.outputs(backend)),
                   "inputs_manifest_sha256": manifest_sha, "sources": len(sources),
                   "sources_ok": res["sources_ok"], "failed_count": len(res["failed"]),
                   "failed": res["failed"][:50], "samples_file": res["jsonl"].name, "first_sample": res["first"],
                   "run_summary": summary_of_run})
    write_json(paths.results / "inference_result.json", result)
    shutil.rmtree(work, ignore_errors=True)
    log(f"infer | {n_items} item(s) from {res['sources_ok']} file(s) in {wall:.2f} s"
        + (f" ({len(done)} block(s) resumed)" if done else "")
        + f": {timing['end_to_end_items_per_s']:.2f} items/s end to end"
        + (f", {timing['inference_only_items_per_s']:.2f} items/s in the runner" if timing["inference_only_items_per_s"] else "")
        + f"; results/{cfg['name']}/inference_result.json")
    for f in res["failed"][:20]:
        log(f"infer | failed | {f['source']}: {f['error']}")
    log.save()
    why = bad_share_check(res["failed"], len(sources), cfg, fail_on_bad)
    if why:
        raise InputError(why)
    return 0


@cli
def main(argv=None) -> int:
    return infer(**stages.parse("infer", argv))


if __name__ == "__main__":
    sys.exit(main())
