"""Frame probabilities -> sound events (hysteresis thresholds, gap merging, minimum duration) and top-k."""
from __future__ import annotations

import numpy as np


def top_k(clip: np.ndarray, labels: list[str], k: int) -> list[dict]:
    idx = np.argsort(-clip, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i], "score": round(float(clip[i]), 6)} for i in idx]


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive) indices of the runs of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]


def class_events(p: np.ndarray, onset: float, offset: float, min_frames: int, max_gap: int) -> list[tuple]:
    """Hysteresis: a run of frames >= `offset` is an event if some frame in it reaches `onset`.
    Events separated by at most `max_gap` frames are merged; events shorter than `min_frames` are dropped.
    Returns (start frame, end frame exclusive, peak probability)."""
    starts, ends = runs(p >= offset)
    if starts.size == 0:
        return []
    keep = np.maximum.reduceat(p, starts) >= onset
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return []
    new = np.concatenate([[True], starts[1:] - ends[:-1] > max_gap])    # gap to the previous event
    first = np.nonzero(new)[0]
    starts, ends = starts[first], ends[np.concatenate([first[1:] - 1, [len(ends) - 1]])]
    return [(int(s), int(e), float(p[s:e].max())) for s, e in zip(starts, ends) if e - s >= min_frames]


def detect_events(frames: np.ndarray, labels: list[str], post: dict, hop_s: float,
                  duration_s: float | None = None) -> list[dict]:
    """frames: (T, C) probabilities, frame t centred at t*hop_s. An event over frames [s, e) spans
    [s*hop_s, e*hop_s), the offset capped at the audio duration. Sorted by onset, then by peak score."""
    min_frames = max(1, int(round(post["min_duration_s"] / hop_s)))
    max_gap = int(round(post["merge_gap_s"] / hop_s))
    candidates = np.nonzero(frames.max(axis=0) >= post["onset_threshold"])[0]
    end_cap = float("inf") if duration_s is None else duration_s
    events = []
    for c, s, e, peak in all_class_events(frames, candidates, post["onset_threshold"], post["offset_threshold"],
                                          min_frames, max_gap):
        events.append({"label": labels[c], "index": c, "onset_s": round(s * hop_s, 3),
                       "offset_s": round(min(e * hop_s, end_cap), 3), "peak_score": round(peak, 6)})
    events.sort(key=lambda ev: (ev["onset_s"], -ev["peak_score"], ev["index"]))
    return events


def all_class_events(frames: np.ndarray, classes: np.ndarray, onset: float, offset: float, min_frames: int,
                     max_gap: int) -> list[tuple]:
    """class_events of every class in `classes` at once (no loop over classes): [(class, start, end, peak)],
    class by class in the order given, each class's events in time order; the same numbers as class_events.

    The classes' tracks side by side, one sentinel frame below every threshold after each track, so a run
    never crosses into the next class; runs, their peaks (maximum.reduceat over [start, end)), the onset test,
    gap merging within a class, and the minimum length, all as flat array operations."""
    classes = np.asarray(classes, np.intp)
    if classes.size == 0:
        return []
    t = frames.shape[0]
    tracks = np.empty((classes.size, t + 1), frames.dtype)
    tracks[:, :t] = frames[:, classes].T
    tracks[:, t] = -np.inf if frames.dtype.kind == "f" else np.iinfo(frames.dtype).min
    flat = tracks.reshape(-1)
    mask = flat >= offset
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    if starts.size == 0:
        return []
    peaks = np.maximum.reduceat(flat, np.stack([starts, ends], 1).reshape(-1))[::2]
    keep = peaks >= onset
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return []
    row = starts // (t + 1)
    new = np.ones(starts.size, bool)
    new[1:] = (row[1:] != row[:-1]) | (starts[1:] - ends[:-1] > max_gap)
    first = np.nonzero(new)[0]
    last = np.append(first[1:] - 1, starts.size - 1)
    starts, ends, row = starts[first], ends[last], row[first]
    long = ends - starts >= min_frames
    starts, ends, row = starts[long], ends[long], row[long]
    if starts.size == 0:
        return []
    peaks = np.maximum.reduceat(flat, np.stack([starts, ends], 1).reshape(-1))[::2]
    base = row * (t + 1)
    return list(zip(classes[row].tolist(), (starts - base).tolist(), (ends - base).tolist(),
                    peaks.astype(np.float64).tolist()))
