"""The onnxruntime CPU fp32 reference over `make infer`'s saved inputs, for make compare (either engine).

Items run in chunks (consecutive items of equal input shapes, at most batch_size); each chunk's outputs are saved
as build/<model>/outputs/reference/<item>.<output>.npy. The local engine runs the chunks in this process as
compare streams over them; ENGINE=ray runs them on actors (run.ray_engine.run_reference_ray) and compare reads
the files.
"""
from __future__ import annotations

import json

import numpy as np

from pipeline.atomic import save_npy
from pipeline.batching import rows_of, run_rows, split, stack


def reference_chunks(manifest: dict, batch_size: int) -> list[list[int]]:
    """Item indices run together: consecutive items of equal input shapes, at most batch_size (any engine)."""
    chunks, sig = [], None
    for i, item in enumerate(manifest["items"]):
        s = json.dumps(item["shapes"], sort_keys=True)
        if chunks and s == sig and len(chunks[-1]) < batch_size:
            chunks[-1].append(i)
        else:
            chunks.append([i])
        sig = s
    return chunks


def run_reference_chunk(paths, manifest, runner, chunk: list[int], pad: str) -> list[tuple[dict, dict]]:
    names = manifest["feeds"]
    items = [manifest["items"][i] for i in chunk]
    feeds = [{n: np.load(paths.inputs / it["files"][n]) for n in names} for it in items]
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
