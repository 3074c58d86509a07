"""The unit of work of `make infer` on any engine: a block of consecutive source files, and its journal.

A block holds `infer.batch_size` sources; its items are batched by equal shapes within the block only, so the
batches, and with them every output byte, depend on the source list alone, never on where a run was
interrupted or which worker ran the block. The local engine runs blocks in order in this process; the Ray
engine (run/ray_engine.py) runs the same `BlockWorker.run_block` in actors. Both write each item's inputs and
outputs atomically and append one journal line per finished block, so a rerun skips finished blocks.

A block always holds whole sources (plan_blocks cuts the source list, never a source's items), so a stateful
family (contract hook state_carry) has every source's items in one run_block call, where they run in order
through pipeline.batching.run_sequence; a resumed run reruns whole blocks and Ray actors get whole blocks.
Item context (keys starting with '_') goes into the manifest when it is JSON, beside the inputs as .npy when it
is a numpy array (`item_context` reads both back), and is a one-line error otherwise.

Host stages: prepare_source and the post step time the family's named sub-stages (pipeline.stage_clock:
decode, resample, front-end, resize, ..., what the family did not name is "prepare" / "post-process") and the
engine's .npy writes ("write"); every journal entry's stats hold their seconds under "stages". A HostPool
(spawned host processes, `infer.host_workers`) prepares the next sources and post-processes finished blocks
while the runner runs the current one; the records and files are the same bytes as in one process.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from pipeline import provenance
from pipeline.contract import DURATION_KEY, RTF_KEY
from pipeline.atomic import _default, save_npy, write_text
from pipeline.batching import feed_names, rows_of, run_rows, run_sequence, signature, split, stack
from pipeline.errors import PipelineError
from pipeline.stage_clock import add as add_stages, collect, stage

JOURNAL = "journal.jsonl"


def plan_blocks(n_sources: int, block_size: int) -> list[list[int]]:
    return [list(range(i, min(i + block_size, n_sources))) for i in range(0, n_sources, block_size)]


def item_id(idx: int, k: int) -> str:
    return f"{idx:05d}_{k:03d}"


CONTEXT_DIR = "context"      # build/<m>/inputs/context/<item>.<key>.npy: numpy item context


def _np_scalar(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


def split_context(item: dict, source) -> tuple[dict, dict]:
    """An item's context as (JSON values for the manifest, numpy arrays saved as .npy); PipelineError otherwise."""
    plain, arrays = {}, {}
    for key, v in item.items():
        if not key.startswith("_"):
            continue
        if isinstance(v, np.ndarray):
            arrays[key] = v
            continue
        try:
            plain[key] = json.loads(json.dumps(v, default=_np_scalar, allow_nan=True))
        except (TypeError, ValueError):
            raise PipelineError(f"{source}: item context '{key}' is a {type(v).__name__}, which is neither JSON nor a "
                                "numpy array; make the family's prepare give JSON values (numbers, strings, lists, "
                                "dicts) or numpy arrays (saved as .npy beside the inputs)") from None
    return plain, arrays


def item_context(inputs_dir: Path, entry: dict) -> dict:
    """A manifest item's context as prepare gave it: the JSON values and the numpy arrays saved beside the inputs."""
    ctx = dict(entry.get("context", {}))
    for key, rel in entry.get("context_files", {}).items():
        ctx[key] = np.load(Path(inputs_dir) / rel)
    return ctx


def _safe(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60]


def prepare_source(family, cfg, input_meta, idx: int, source: Path, work: Path | None = None) -> dict:
    """Decode and preprocess one source: {"index", "source", "items", "prepare_s", "stages"} or {"index", "source",
    "error", ...}. With `work` (a host process of a stateless family) the items' inputs and context files are
    written there too and the manifest entries come along ("manifest"): run_block then only runs them."""
    t0 = time.perf_counter()
    with collect() as stages:
        try:
            with stage("prepare"):
                items = family.prepare(source, cfg, input_meta)
            if not items:
                raise PipelineError(f"{source}: the model family produced no input items; check the file")
            names = feed_names(cfg)
            for it in items:
                missing = [n for n in names if n not in it]
                if missing:
                    raise PipelineError(f"{source}: prepared item lacks input(s) {missing}")
                for n in names:
                    it[n] = np.ascontiguousarray(it[n])
                split_context(it, source)
            out = {"index": idx, "source": str(source), "items": items}
            if work is not None and not family.state_carry(cfg):
                out["manifest"] = manifest_entries(out, names, {}, Path(work))
        except PipelineError as exc:
            out = {"index": idx, "source": str(source), "error": " ".join(str(exc).split())}
    return {**out, "prepare_s": time.perf_counter() - t0, "stages": dict(stages)}


def manifest_entries(p: dict, names: list[str], carry: dict, work: Path) -> list[dict]:
    """The manifest entries of a prepared source's items; writes their context arrays and (stateless) inputs."""
    entries = []
    with stage("write"):
        for k, item in enumerate(p["items"]):
            iid = item_id(p["index"], k)
            files = {n: f"{iid}.{n}.npy" for n in names}
            plain, arrays = split_context(item, p["source"])
            entry = {"id": iid, "source_index": p["index"], "chunk": k, "files": files,
                     "shapes": {n: list(item[n].shape) for n in names}, "context": plain}
            if arrays:
                entry["context_files"] = {c: f"{CONTEXT_DIR}/{iid}.{c}.npy" for c in arrays}
                for c, a in arrays.items():
                    save_npy(work / "inputs" / entry["context_files"][c], a)
            if carry and k > 0:
                entry["carried"] = sorted(carry.values())     # its state inputs are item k-1's outputs
            if not carry:       # a stateful item's inputs are saved once run: the state actually fed
                for n in names:
                    save_npy(work / "inputs" / files[n], item[n])
            entries.append(entry)
    return entries


def postprocess_source(family, cfg, meta: dict, work: Path, index: int, source: str, n_items: int, outs: dict,
                       busy_s: float) -> dict:
    """One source's post step: {"record": ... | "error": line, "post_s", "stages"}; its arrays and text files
    written under work/outputs/post. busy_s: its prepare and device seconds so far (real-time factor)."""
    t0 = time.perf_counter()
    with collect() as stages:
        try:
            rec = _postprocess(family, cfg, meta, work, index, Path(source), n_items, outs, busy_s, t0)
            out = {"record": rec}
        except PipelineError as exc:
            out = {"error": " ".join(str(exc).split())}
    return {**out, "post_s": time.perf_counter() - t0, "stages": dict(stages)}


def _postprocess(family, cfg, meta, work: Path, index: int, source: Path, n_items: int, outs: dict, busy_s: float,
                 t0: float) -> dict:
    items = [outs[k] for k in range(n_items)]
    with stage("post-process"):
        summary, arrays = family.postprocess(cfg, source, items, meta)
        texts = family.text_outputs(cfg, summary, arrays)
    stem = f"{index:05d}_{_safe(source.stem)}"
    saved = {}
    with stage("write"):
        for name, arr in arrays.items():
            rel = Path("post") / f"{stem}.{name}.npy"
            save_npy(work / "outputs" / rel, np.asarray(arr))
            saved[name] = {"file": str(rel), "shape": list(np.shape(arr))}
        for suffix, text in texts.items():
            rel = Path("post") / f"{stem}.{suffix}"
            write_text(work / "outputs" / rel, text)
            saved[suffix] = {"file": str(rel)}
    with stage("hash"):
        digest = provenance.sha256_file(source)
    if family.has("time_input", cfg) and isinstance(summary, dict):
        busy = busy_s + time.perf_counter() - t0
        summary[RTF_KEY] = summary[DURATION_KEY] / busy if busy > 0 else None
    return {"source_sha256": digest, "items": [item_id(index, k) for k in range(n_items)], "summary": summary,
            "arrays": saved}


# --- host processes -----------------------------------------------------------------------------------------

AUTO_POOL_MIN_CORES = 2      # infer.host_workers 0 (auto): no pool on this many cores or fewer
POOL_MIN_SOURCES = 16     # infer.host_workers 0 (auto): fewer sources run in this process (a pool's start-up
                          # of ~1 s per process would cost more than it saves)


def spawnable(cfg: dict) -> bool:
    """Whether a fresh interpreter can import the family (not one registered at run time, e.g. by a test)."""
    import importlib.util

    name = f"models.{cfg['family']}"
    try:
        spec = importlib.util.find_spec(name)
        return spec is not None and spec.name == name
    except (ImportError, ValueError):
        return False


def host_workers(cfg: dict, n_sources: int) -> int:
    """Host processes for a run: infer.host_workers (0 = one per core, and 1 below POOL_MIN_SOURCES sources); 1
    for a family a fresh interpreter cannot import (one registered at run time, e.g. by a test)."""
    if not spawnable(cfg):
        return 1
    n = int(cfg["infer"].get("host_workers", 0) or 0)
    if n > 0:
        return n
    cores = os.cpu_count() or 1
    # auto: on 2 cores one process (with prepare_threads) measured faster than a pool (make bench's host figure);
    # above, a pool of cores - 1, leaving a core to the runner and the writes (not measured here: no such host)
    if cores <= AUTO_POOL_MIN_CORES or n_sources < POOL_MIN_SOURCES:
        return 1
    return cores - 1


def prepare_threads(cfg: dict, family) -> int:
    """Threads that prepare sources ahead in this process when it has no host pool: infer.prepare_threads, else
    (0 = auto) the family's PREPARE_THREADS (0 = one per core: its prepare releases the GIL; default 1). The
    prepared sources come out in order, so every file is the same with any count."""
    n = int(cfg["infer"].get("prepare_threads", 0) or 0) or int(family.PREPARE_THREADS)
    return n if n > 0 else max(1, os.cpu_count() or 1)


_HOST: dict = {}


def _host_init(cfg: dict, meta: dict, work: str, parent: int = 0) -> None:
    from pipeline.config import load_family

    _HOST.update(cfg=cfg, meta=meta, work=Path(work), family=load_family(cfg["family"]))
    if parent:
        _exit_with(parent)


def _exit_with(parent: int) -> None:
    """A host process ends when the process that started it is gone (killed by a signal, a timeout): a waiting
    pool worker would otherwise stay behind for ever."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _host_ready() -> int:
    return os.getpid()


def _host_prepare(input_meta, idx: int, source: str, write: bool, family=None) -> dict:
    h = _HOST
    return prepare_source(family or h["family"], h["cfg"], input_meta, idx, Path(source), h["work"] if write else None)


def _host_post(index: int, source: str, n_items: int, outs: dict, busy_s: float, family=None) -> dict:
    h = _HOST
    return postprocess_source(family or h["family"], h["cfg"], h["meta"], h["work"], index, source, n_items, outs,
                              busy_s)


class HostPool:
    """`workers` spawned host processes that prepare sources and post-process finished ones. Create it BEFORE the
    runner is opened (CANN forbids AscendCL in a fork()ed child of a process that initialised ACL; "spawn" starts
    clean interpreters, so the children never inherit ACL state either way)."""

    def __init__(self, workers: int, cfg: dict, meta: dict, work: Path):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        self.family = None            # a picklable family object to use instead of cfg's (the bench's AIPP pixels)
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_host_init, initargs=(cfg, meta, str(work), os.getpid()))
        self.pids = sorted(set(f.result() for f in [self.pool.submit(_host_ready) for _ in range(workers)]))

    def prepare(self, input_meta, idx: int, source, write: bool):
        return self.pool.submit(_host_prepare, input_meta, idx, str(source), write, self.family)

    def post(self, index: int, source: str, n_items: int, outs: dict, busy_s: float):
        return self.pool.submit(_host_post, index, source, n_items, outs, busy_s, self.family)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BlockWorker:
    """Runs prepared blocks through one opened runner; writes inputs/outputs per item under `work`."""

    def __init__(self, cfg, family, runner, meta: dict, work: Path, batch_size: int):
        self.cfg, self.family, self.runner, self.meta = cfg, family, runner, meta
        self.work, self.batch_size = work, batch_size
        self.names = feed_names(cfg)
        self.pad = cfg["infer"]["pad"]
        self.carry = dict(family.state_carry(cfg))

    def run_block(self, block: int, prepared: list[dict]) -> dict:
        """One block's journal entry: {"block", "records": [...], "stats": {...}} (device runs, then post)."""
        return self.finish_block(self.run_device(block, prepared))

    def run_device(self, block: int, prepared: list[dict]) -> dict:
        """Write the block's inputs, run its batches, write the item outputs: the state finish_block takes."""
        stats = {"infer_s": 0.0, "post_s": 0.0, "prepare_s": 0.0, "batches": 0, "device_runs": 0, "items": 0,
                 "stages": {}}
        self.busy: dict[int, float] = {}         # seconds spent on each source: prepare + its share of runs + post
        pending: dict[tuple, list] = {}
        outs: dict[int, dict] = {}
        records = {}
        for p in prepared:
            stats["prepare_s"] += p.get("prepare_s", 0.0)
            add_stages(stats["stages"], p.get("stages"))
            self.busy[p["index"]] = p.get("prepare_s", 0.0)
            if "error" in p:
                records[p["index"]] = {"index": p["index"], "source": p["source"], "error": p["error"]}
                continue
            outs[p["index"]] = {}
            if "manifest" in p and not self.carry:          # written by a host process
                entries = p["manifest"]
            else:
                with collect() as written:
                    entries = manifest_entries(p, self.names, self.carry, self.work)
                add_stages(stats["stages"], written)
            queued = [(e["id"], p["index"], k, item, {c: v for c, v in item.items() if c.startswith("_")})
                      for k, (e, item) in enumerate(zip(entries, p["items"]))]
            records[p["index"]] = {"index": p["index"], "source": p["source"], "manifest": entries}
            if not self.carry:
                for q in queued:
                    pending.setdefault(signature(q[3], self.names), []).append(q)
                continue
            try:
                self._run_sequence(p, queued, outs, stats)
            except PipelineError as exc:       # this source's order or state shape: listed like a bad file
                records[p["index"]] = {"index": p["index"], "source": p["source"], "error": " ".join(str(exc).split())}
        for group in pending.values():
            for i in range(0, len(group), self.batch_size):
                self._run_batch(group[i:i + self.batch_size], outs, stats)
        return {"block": block, "prepared": prepared, "records": records, "outs": outs, "stats": stats,
                "busy": self.busy}

    def post_jobs(self, state: dict) -> list[tuple]:
        """(index, source, items, outputs + context, busy seconds) of each source of the block still to post-process."""
        return [(p["index"], p["source"], len(p["items"]), state["outs"][p["index"]], state["busy"].get(p["index"], 0.0))
                for p in state["prepared"] if "error" not in state["records"][p["index"]]]

    def finish_block(self, state: dict, posted: dict | None = None) -> dict:
        """The journal entry of a block run by run_device; `posted` {index: postprocess_source result} when host
        processes did the post step, else it runs here."""
        records, stats = state["records"], state["stats"]
        for index, source, n_items, outs, busy in self.post_jobs(state):
            res = posted[index] if posted is not None else postprocess_source(
                self.family, self.cfg, self.meta, self.work, index, source, n_items, outs, busy)
            if "error" in res:
                records[index] = {"index": index, "source": source, "error": res["error"]}
            else:
                records[index].update(res["record"])
            stats["post_s"] += res["post_s"]
            add_stages(stats["stages"], res["stages"])
        return {"block": state["block"], "records": [records[p["index"]] for p in state["prepared"]], "stats": stats}

    def _run_sequence(self, p: dict, queued: list, outs: dict, stats: dict) -> None:
        """A stateful source: its items in order, one device run each, the state carried (run_sequence)."""
        t0 = time.perf_counter()
        done = run_sequence(self.runner, [q[3] for q in queued], self.carry, self.names, where=p["source"])
        dt = time.perf_counter() - t0
        stats["infer_s"] += dt
        self.busy[p["index"]] = self.busy.get(p["index"], 0.0) + dt
        stats["batches"] += len(queued)
        stats["device_runs"] += len(queued)
        stats["items"] += len(queued)
        t1 = time.perf_counter()
        for (iid, idx, k, _item, context), (fed, res) in zip(queued, done):
            for n in self.names:
                save_npy(self.work / "inputs" / f"{iid}.{n}.npy", fed[n])
            for name, arr in res.items():
                save_npy(self.work / "outputs" / "items" / f"{iid}.{name}.npy", arr)
            outs[idx][k] = {**res, **context}
        add_stages(stats["stages"], {"write": time.perf_counter() - t1})

    def _run_batch(self, batch: list, outs: dict, stats: dict) -> None:
        feeds = stack([b[3] for b in batch], self.names)
        t0 = time.perf_counter()
        out, runs = run_rows(self.runner, feeds, self.pad)
        dt = time.perf_counter() - t0
        stats["infer_s"] += dt
        rows = [rows_of(b[3], self.names) for b in batch]
        for b, r in zip(batch, rows):
            self.busy[b[1]] = self.busy.get(b[1], 0.0) + dt * r / max(1, sum(rows))
        stats["batches"] += 1
        stats["device_runs"] += runs
        stats["items"] += len(batch)
        t1 = time.perf_counter()
        for (iid, idx, k, _item, context), res in zip(batch, split(out, [rows_of(b[3], self.names) for b in batch])):
            for name, arr in res.items():
                save_npy(self.work / "outputs" / "items" / f"{iid}.{name}.npy", arr)
            outs[idx][k] = {**res, **context}
        add_stages(stats["stages"], {"write": time.perf_counter() - t1})


class Journal:
    """One JSON line per finished block, appended and fsynced; the first line holds the run key."""

    def __init__(self, path: Path, run_key: str):
        self.path, self.run_key = path, run_key
        self.offsets: dict[int, int] = {}

    def open(self, notice) -> dict[int, int]:
        """Blocks already finished by an earlier run with the same key; a journal of another run is discarded."""
        if self.path.exists():
            with open(self.path, "rb") as f:
                head = f.readline()
                try:
                    key = json.loads(head).get("run_key")
                except ValueError:
                    key = None
                if key == self.run_key:
                    while True:
                        off = f.tell()
                        line = f.readline()
                        if not line.endswith(b"\n"):        # a line cut by a crash: that block reruns
                            break
                        try:
                            self.offsets[json.loads(line)["block"]] = off
                        except (ValueError, KeyError):
                            break
                    self._truncate(f.tell() if line.endswith(b"\n") else off)
                    return dict(self.offsets)
            notice(f"{self.path} belongs to another run (config, inputs, model or backend changed): starting clean")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as f:
            f.write(json.dumps({"run_key": self.run_key}).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return {}

    def keep_complete(self, work: Path, outputs: list[str]) -> list[int]:
        """Forget finished blocks whose files are gone from `work` (a finish step cut short); they rerun."""
        lost = []
        for entry in list(self.entries()):
            for rec in entry["records"]:
                files = [work / "inputs" / f for e in rec.get("manifest", []) for f in e["files"].values()]
                files += [work / "inputs" / f for e in rec.get("manifest", [])
                          for f in e.get("context_files", {}).values()]
                files += [work / "outputs" / "items" / f"{e['id']}.{o}.npy" for e in rec.get("manifest", []) for o in outputs]
                files += [work / "outputs" / a["file"] for a in rec.get("arrays", {}).values()]
                if not all(f.exists() for f in files):
                    lost.append(entry["block"])
                    del self.offsets[entry["block"]]
                    break
        return lost

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(size)

    def append(self, entry: dict) -> None:
        line = json.dumps(entry, default=_default, allow_nan=True).encode() + b"\n"
        with open(self.path, "ab") as f:
            off = f.tell()
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.offsets[entry["block"]] = off

    def entries(self):
        """Journal entries in block order (read one at a time: memory stays flat)."""
        with open(self.path, "rb") as f:
            for block in sorted(self.offsets):
                f.seek(self.offsets[block])
                yield json.loads(f.readline())


def run_key(cfg: dict, backend: str, sources: list[Path], target: dict, batch_size: int,
            state_carry: dict | None = None) -> str:
    """What makes two runs the same: config sections infer reads, the target, the backend and the sources."""
    h = hashlib.sha256()
    sections = {k: cfg[k] for k in ("name", "family", "preprocess", "postprocess", "inputs", "outputs")}
    io = {k: cfg["atc"][k] for k in ("aipp", "input_fp16_nodes", "output_fp16")}   # what the host feeds (AIPP: pixels)
    h.update(json.dumps({"cfg": sections, "io": io, "pad": cfg["infer"]["pad"], "backend": backend,
                         "batch": batch_size, "target": target, "state_carry": state_carry or {}},
                        sort_keys=True, default=str).encode())
    for s in sources:                     # content, not mtime: regenerated samples are the same inputs
        h.update(f"{s}\0{provenance.sha256_file(Path(s))}\n".encode())
    return h.hexdigest()
