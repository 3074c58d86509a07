"""Group prepared items into batches of equal shapes, and pad/split for fixed-batch targets."""
from __future__ import annotations

import numpy as np


def feed_names(cfg: dict) -> list[str]:
    return [t["name"] for t in cfg["inputs"]]


def signature(item: dict, names: list[str]) -> tuple:
    return tuple((n, item[n].shape[1:], str(item[n].dtype)) for n in names)


def stack(items: list[dict], names: list[str], pad_to: int | None = None) -> dict:
    feeds = {n: np.concatenate([it[n] for it in items], axis=0) for n in names}
    if pad_to and pad_to > len(items):
        feeds = {n: np.concatenate([a, np.zeros((pad_to - len(items), *a.shape[1:]), a.dtype)]) for n, a in feeds.items()}
    return feeds


def split(outputs: dict, count: int) -> list[dict]:
    return [{k: v[i:i + 1] for k, v in outputs.items()} for i in range(count)]


def fixed_batch(input_meta) -> int | None:
    dims = {m.shape[0] for m in input_meta if m.shape}
    dims.discard(None)
    return dims.pop() if len(dims) == 1 else None
