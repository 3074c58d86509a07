"""Host-side stage timing: `with stage("decode"): ...` adds the block's wall seconds to the accumulator that the
nearest enclosing `collect()` of this thread/context opened; without one it costs a context-variable read.

Times are exclusive: a stage inside another counts for the inner one only (resample inside decode is resample,
not decode too), so the stages of one collect() sum to at most its wall time. Families name their sub-stages
(decode, resample, front-end, resize, normalise, events, top-k, viterbi, ...); the engine adds its .npy writes
as "write" and times the family's postprocess as "post-process" (whatever the family did not name itself).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar

_CLOCK: ContextVar = ContextVar("stage_clock", default=None)


class _Clock:
    __slots__ = ("acc", "stack")

    def __init__(self):
        self.acc: dict[str, float] = {}
        self.stack: list[list[float]] = []          # per open stage: [start, seconds spent in inner stages]


@contextmanager
def stage(name: str):
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    frame = [time.perf_counter(), 0.0]
    clock.stack.append(frame)
    try:
        yield
    finally:
        clock.stack.pop()
        dt = time.perf_counter() - frame[0]
        clock.acc[name] = clock.acc.get(name, 0.0) + dt - frame[1]
        if clock.stack:
            clock.stack[-1][1] += dt


@contextmanager
def collect():
    """Open an accumulator for the stages run inside; yields the dict {stage: seconds} (filled on exit)."""
    clock = _Clock()
    token = _CLOCK.set(clock)
    try:
        yield clock.acc
    finally:
        _CLOCK.reset(token)


def add(into: dict, times: dict | None) -> dict:
    """Sum stage times `times` into `into` (in place) and return it."""
    for k, v in (times or {}).items():
        into[k] = into.get(k, 0.0) + v
    return into
