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


def prepare_source(family, cfg, input_meta, idx: int, source: Path) -> dict:
    """Decode and preprocess one source: {"index", "source", "items"} or {"index", "source", "error"}."""
    t0 = time.perf_counter()
    try:
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
        return {"index": idx, "source": str(source), "items": items, "prepare_s": time.perf_counter() - t0}
    except PipelineError as exc:
        return {"index": idx, "source": str(source), "error": " ".join(str(exc).split()),
                "prepare_s": time.perf_counter() - t0}


class BlockWorker:
    """Runs prepared blocks through one opened runner; writes inputs/outputs per item under `work`."""

    def __init__(self, cfg, family, runner, meta: dict, work: Path, batch_size: int):
        self.cfg, self.family, self.runner, self.meta = cfg, family, runner, meta
        self.work, self.batch_size = work, batch_size
        self.names = feed_names(cfg)
        self.pad = cfg["infer"]["pad"]
        self.carry = dict(family.state_carry(cfg))

    def run_block(self, block: int, prepared: list[dict]) -> dict:
        """One block's journal entry: {"block", "records": [...], "stats": {...}}."""
        stats = {"infer_s": 0.0, "post_s": 0.0, "prepare_s": 0.0, "batches": 0, "device_runs": 0, "items": 0}
        self.busy: dict[int, float] = {}         # seconds spent on each source: prepare + its share of runs + post
        pending: dict[tuple, list] = {}
        outs: dict[int, dict] = {}
        records = {}
        for p in prepared:
            stats["prepare_s"] += p.get("prepare_s", 0.0)
            self.busy[p["index"]] = p.get("prepare_s", 0.0)
            if "error" in p:
                records[p["index"]] = {"index": p["index"], "source": p["source"], "error": p["error"]}
                continue
            outs[p["index"]] = {}
            entries, queued = [], []
            for k, item in enumerate(p["items"]):
                iid = item_id(p["index"], k)
                files = {n: f"{iid}.{n}.npy" for n in self.names}
                context = {c: v for c, v in item.items() if c.startswith("_")}
                plain, arrays = split_context(item, p["source"])
                entry = {"id": iid, "source_index": p["index"], "chunk": k, "files": files,
                         "shapes": {n: list(item[n].shape) for n in self.names}, "context": plain}
                if arrays:
                    entry["context_files"] = {c: f"{CONTEXT_DIR}/{iid}.{c}.npy" for c in arrays}
                    for c, a in arrays.items():
                        save_npy(self.work / "inputs" / entry["context_files"][c], a)
                if self.carry and k > 0:
                    entry["carried"] = sorted(self.carry.values())     # its state inputs are item k-1's outputs
                if not self.carry:       # a stateful item's inputs are saved once run: the state actually fed
                    for n in self.names:
                        save_npy(self.work / "inputs" / files[n], item[n])
                entries.append(entry)
                queued.append((iid, p["index"], k, item, context))
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
        for p in prepared:
            rec = records[p["index"]]
            if "error" in rec:
                continue
            t0 = time.perf_counter()
            try:
                rec.update(self._postprocess(p, outs[p["index"]], t0))
            except PipelineError as exc:
                rec = {"index": p["index"], "source": p["source"], "error": " ".join(str(exc).split())}
            records[p["index"]] = rec
            stats["post_s"] += time.perf_counter() - t0
        return {"block": block, "records": [records[p["index"]] for p in prepared], "stats": stats}

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
        for (iid, idx, k, _item, context), (fed, res) in zip(queued, done):
            for n in self.names:
                save_npy(self.work / "inputs" / f"{iid}.{n}.npy", fed[n])
            for name, arr in res.items():
                save_npy(self.work / "outputs" / "items" / f"{iid}.{name}.npy", arr)
            outs[idx][k] = {**res, **context}

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
        for (iid, idx, k, _item, context), res in zip(batch, split(out, [rows_of(b[3], self.names) for b in batch])):
            for name, arr in res.items():
                save_npy(self.work / "outputs" / "items" / f"{iid}.{name}.npy", arr)
            outs[idx][k] = {**res, **context}

    def _postprocess(self, p: dict, outs: dict, t0: float) -> dict:
        source = Path(p["source"])
        items = [outs[k] for k in range(len(p["items"]))]
        summary, arrays = self.family.postprocess(self.cfg, source, items, self.meta)
        stem = f"{p['index']:05d}_{_safe(source.stem)}"
        saved = {}
        for name, arr in arrays.items():
            rel = Path("post") / f"{stem}.{name}.npy"
            save_npy(self.work / "outputs" / rel, np.asarray(arr))
            saved[name] = {"file": str(rel), "shape": list(np.shape(arr))}
        for suffix, text in self.family.text_outputs(self.cfg, summary, arrays).items():
            rel = Path("post") / f"{stem}.{suffix}"
            write_text(self.work / "outputs" / rel, text)
            saved[suffix] = {"file": str(rel)}
        if self.family.has("time_input", self.cfg) and isinstance(summary, dict):
            busy = self.busy.get(p["index"], 0.0) + time.perf_counter() - t0
            summary[RTF_KEY] = summary[DURATION_KEY] / busy if busy > 0 else None
        return {"source_sha256": provenance.sha256_file(source),
                "items": [item_id(p["index"], k) for k in range(len(p["items"]))], "summary": summary, "arrays": saved}


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
    h.update(json.dumps({"cfg": sections, "pad": cfg["infer"]["pad"], "backend": backend,
                         "batch": batch_size, "target": target, "state_carry": state_carry or {}},
                        sort_keys=True, default=str).encode())
    for s in sources:                     # content, not mtime: regenerated samples are the same inputs
        h.update(f"{s}\0{provenance.sha256_file(Path(s))}\n".encode())
    return h.hexdigest()
