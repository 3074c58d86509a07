"""The onnxruntime CPU fp32 reference over `make infer`'s saved inputs, for make compare (either engine).

Items run in chunks (consecutive items of equal input shapes, at most batch_size); each chunk's outputs are saved
as build/<model>/outputs/reference/<item>.<output>.npy. The local engine runs the chunks in this process as
compare streams over them; ENGINE=ray runs them on actors (run.ray_engine.run_reference_ray) and compare reads
the files.

A stateful run (the inputs manifest holds `state_carry`) is chunked by source instead: one chunk is all items of one
source, run in order through pipeline.batching.run_sequence. The reference carries ITS OWN state: only item 0's
saved state (the initial state prepare gave) is read; for item k > 0 the saved state files hold what the target
fed itself (its own carried outputs) and are replaced by the reference's outputs of item k-1, so the comparison
never hands the target's state to the reference. The manifest's chunk indices must run 0, 1, 2, ... per source.
"""
from __future__ import annotations

import json

import numpy as np

from pipeline.atomic import save_npy
from pipeline.batching import rows_of, run_rows, run_sequence, split, stack
from pipeline.errors import PipelineError


def reference_chunks(manifest: dict, batch_size: int) -> list[list[int]]:
    """Item indices run together: consecutive items of equal input shapes, at most batch_size (any engine); for a
    stateful run the consecutive items of one source, however many."""
    chunks, sig = [], None
    stateful = bool(manifest.get("state_carry"))
    for i, item in enumerate(manifest["items"]):
        if stateful:
            s, full = item["source_index"], False
        else:
            s, full = json.dumps(item["shapes"], sort_keys=True), bool(chunks) and len(chunks[-1]) >= batch_size
        if chunks and s == sig and not full:
            chunks[-1].append(i)
        else:
            chunks.append([i])
        sig = s
    return chunks


def check_sequences(manifest: dict, chunks: list[list[int]], carry: dict, hint: str) -> None:
    """Before any run (either engine): the manifest's carry is the family's, and each source's items are its chunks
    0, 1, 2, ... in order, in one place (run_sequence checks again as it runs)."""
    saved = manifest.get("state_carry") or {}
    if saved != (carry or {}):
        raise PipelineError(f"the saved inputs were made with state_carry {saved}, the family now carries {carry or {}}; "
                            f"{hint}")
    if not carry:
        return
    for chunk in chunks:
        items = [manifest["items"][i] for i in chunk]
        order = [it["chunk"] for it in items]
        if order != list(range(len(order))):
            source = manifest["sources"][items[0]["source_index"]]
            raise PipelineError(f"{source}: items out of order for the carried state in the saved manifest: chunks "
                                f"{order[:12]}, expected 0..{len(order) - 1} in order (a stateful source runs whole "
                                f"and in order); {hint}")


def run_reference_chunk(paths, manifest, runner, chunk: list[int], pad: str) -> list[tuple[dict, dict]]:
    names = manifest["feeds"]
    items = [manifest["items"][i] for i in chunk]
    feeds = [{n: np.load(paths.inputs / it["files"][n]) for n in names} for it in items]
    carry = manifest.get("state_carry") or {}
    if carry:
        source = manifest["sources"][items[0]["source_index"]]
        done = run_sequence(runner, feeds, carry, names, where=source, chunks=[it["chunk"] for it in items])
        res = [out for _fed, out in done]
    else:
        out, _ = run_rows(runner, stack(feeds, names), pad)
        res = split(out, [rows_of(f, names) for f in feeds])
    for item, r in zip(items, res):
        for name, arr in r.items():
            save_npy(paths.outputs("reference") / f"{item['id']}.{name}.npy", arr)
    return list(zip(items, res))


def iter_reference(paths, manifest, runner, batch_size: int, pad: str = "repeat", outputs=()):
    """Yield (item, reference outputs) in manifest order, streaming; runner None: read what Ray workers wrote."""
    for chunk in reference_chunks(manifest, batch_size):
        if runner is not None:
            yield from run_reference_chunk(paths, manifest, runner, chunk, pad)
            continue
        for i in chunk:
            item = manifest["items"][i]
            yield item, {o: np.load(paths.outputs("reference") / f"{item['id']}.{o}.npy") for o in outputs}
