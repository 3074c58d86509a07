"""Batches: group prepared items of equal shapes, and run any number of rows on any target.

The one batching rule (infer, compare, bench's pipeline figure and the dataset run all use `run_rows`):
a target that takes any batch size gets the rows as they come; a target with built sizes (static per-batch
.om files, or dynamic-batch gears) gets runs of those sizes only. Full runs use the largest size; a short rest
is padded up to the smallest size that holds it (repeating the last row, or zeros: `infer.pad`), or split into
smaller built sizes, whichever costs fewer device runs: padding takes one run, and splitting takes one only
when the rest is itself a built size, so a rest is run as is when it is built and padded otherwise. Padded rows'
outputs are dropped, so results count only real items.

A stateful family (contract hook state_carry) is the exception, and `run_sequence` is its one loop (infer on both
engines, compare's reference, bench's pipeline figure, the labelled-set scoring): the items of one source run in
order, one item per device run, never stacked with other items or padded (a state's batch axis need not be axis 0),
and item k's carried outputs replace the state inputs of item k+1.
"""
from __future__ import annotations

import numpy as np

from .errors import PipelineError

PAD_MODES = ("repeat", "zeros")


def feed_names(cfg: dict) -> list[str]:
    return [t["name"] for t in cfg["inputs"]]


def signature(item: dict, names: list[str]) -> tuple:
    return tuple((n, item[n].shape[1:], str(item[n].dtype)) for n in names)


def stack(items: list[dict], names: list[str]) -> dict:
    return {n: np.concatenate([it[n] for it in items], axis=0) for n in names}


def rows_of(item: dict, names: list[str]) -> int:
    return int(item[names[0]].shape[0])


def split(outputs: dict, counts) -> list[dict]:
    """Outputs of stacked items back into items; `counts` = rows per item (an int n means n items of 1 row)."""
    counts = [1] * counts if isinstance(counts, int) else list(counts)
    edges = np.cumsum([0, *counts])
    return [{k: v[a:b] for k, v in outputs.items()} for a, b in zip(edges[:-1], edges[1:])]


def plan_runs(rows: int, sizes: list[int] | None) -> list[tuple[int, int]]:
    """(real rows, run size) per device run for `rows` rows; sizes None = any batch size (one run)."""
    if rows <= 0:
        return []
    if not sizes:
        return [(rows, rows)]
    sizes = sorted(set(sizes))
    runs = []
    while rows >= sizes[-1]:
        runs.append((sizes[-1], sizes[-1]))
        rows -= sizes[-1]
    if rows:   # the rest: one run of the smallest built size that holds it (splitting never takes fewer runs)
        runs.append((rows, next(s for s in sizes if s >= rows)))
    return runs


def pad_rows(feeds: dict, size: int, mode: str = "repeat") -> dict:
    out = {}
    for n, a in feeds.items():
        extra = size - a.shape[0]
        if extra <= 0:
            out[n] = a
            continue
        fill = np.repeat(a[-1:], extra, axis=0) if mode == "repeat" else np.zeros((extra, *a.shape[1:]), a.dtype)
        out[n] = np.concatenate([a, fill])
    return out


def run_rows(runner, feeds: dict, pad: str = "repeat") -> tuple[dict, int]:
    """Run stacked feeds through `runner` by the batching rule; (outputs of the real rows, device runs)."""
    total = next(iter(feeds.values())).shape[0]
    plan = plan_runs(total, runner.accepted_batch_sizes())
    if len(plan) == 1 and plan[0][0] == plan[0][1] == total:
        return runner.infer(feeds), 1
    parts, start = [], 0
    for real, size in plan:
        chunk = {n: a[start:start + real] for n, a in feeds.items()}
        out = runner.infer(pad_rows(chunk, size, pad))
        parts.append({k: v[:real] for k, v in out.items()})
        start += real
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, len(plan)


def run_sequence(runner, items: list[dict], carry: dict[str, str], names: list[str], where: str = "",
                 chunks: list[int] | None = None) -> list[tuple[dict, dict]]:
    """Run the items of ONE source in order, one device run each, carrying state: the outputs named by `carry`
    ({output: input}) of item k are fed as those inputs of item k+1 (item 0 keeps the state it was prepared with).
    `chunks`: each item's position in its source (the manifest's chunk index); it must be 0, 1, 2, ... in order,
    else the items are out of order (a split or shuffled source) and the carried state would be wrong.
    Returns [(the feeds actually run, the outputs)] per item; device runs = len(items)."""
    where = f"{where}: " if where else ""
    if chunks is not None and list(chunks) != list(range(len(chunks))):
        raise PipelineError(f"{where}items out of order for the carried state: chunks {list(chunks)[:12]}, expected "
                            f"0..{len(chunks) - 1} in order (a stateful source runs whole and in order); rerun "
                            "`make infer` so that build/<model>/inputs holds each source's items in order")
    _check_target(runner, items[0] if items else {}, names, where)
    done, prev = [], None
    for k, item in enumerate(items):
        fed = {n: item[n] for n in names}
        if prev is not None:
            for out, inp in carry.items():
                state, want = prev[out], item[inp]
                if state.shape != want.shape:
                    raise PipelineError(
                        f"{where}output {out} of item {k - 1} has shape {list(state.shape)}, but it feeds input "
                        f"{inp} of item {k}, prepared as {list(want.shape)}; the target was built for another "
                        "state shape than the family prepares: rebuild it (`make export om`) for the config's shapes")
                fed[inp] = np.ascontiguousarray(state, dtype=want.dtype)
        prev = runner.infer(fed)
        done.append((fed, prev))
    return done


def _check_target(runner, item: dict, names: list[str], where: str) -> None:
    """A fixed-shape target (a static .om) given a chunk it was not built for: one line naming the built shape."""
    if not item:
        return
    for m in runner.get_input_metadata():
        if m.name not in names:
            continue
        got, want = list(item[m.name].shape), list(m.shape or [])
        if len(got) != len(want) or any(w is not None and int(w) >= 0 and int(w) != g for w, g in zip(want, got)):
            built = "[" + ", ".join("?" if w is None or int(w) < 0 else str(w) for w in want) + "]"
            raise PipelineError(f"{where}input {m.name} is {got}, the target was built for {built}; a stateful model "
                                "runs one item per device run at the built shapes: make prepare give that shape (the "
                                "chunk size), or rebuild the target (`make export om`) for the prepared one")
