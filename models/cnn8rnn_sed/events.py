"""Frame probabilities -> sound events (hysteresis thresholds, gap merging, minimum duration) and top-k."""
from __future__ import annotations

import numpy as np


def top_k(clip: np.ndarray, labels: list[str], k: int) -> list[dict]:
    idx = np.argsort(-clip)[:k]
    return [{"index": int(i), "label": labels[i], "score": round(float(clip[i]), 6)} for i in idx]


def class_events(p: np.ndarray, onset: float, offset: float, min_frames: int, max_gap: int) -> list[tuple]:
    """Runs that rise above `onset` and last while above `offset`; gaps <= max_gap merged; short runs dropped."""
    runs, t, n = [], 0, len(p)
    above = p >= offset
    while t < n:
        if p[t] >= onset:
            start = t
            while start > 0 and above[start - 1]:
                start -= 1
            end = t
            while end < n and above[end]:
                end += 1
            runs.append([start, end])
            t = end
        else:
            t += 1
    merged = []
    for r in runs:
        if merged and r[0] - merged[-1][1] <= max_gap:
            merged[-1][1] = max(merged[-1][1], r[1])
        else:
            merged.append(r)
    return [(s, e, float(p[s:e].max())) for s, e in merged if e - s >= min_frames]


def detect_events(frames: np.ndarray, labels: list[str], post: dict, hop_s: float) -> list[dict]:
    """frames: (T, C) probabilities at hop_s per frame."""
    min_frames = max(1, int(round(post["min_duration_s"] / hop_s)))
    max_gap = int(round(post["merge_gap_s"] / hop_s))
    candidates = np.nonzero(frames.max(axis=0) >= post["onset_threshold"])[0]
    events = []
    for c in candidates:
        for s, e, peak in class_events(frames[:, c], post["onset_threshold"], post["offset_threshold"],
                                       min_frames, max_gap):
            events.append({"label": labels[c], "index": int(c), "onset_s": round(s * hop_s, 3),
                           "offset_s": round(e * hop_s, 3), "peak_score": round(peak, 6)})
    events.sort(key=lambda ev: (ev["onset_s"], -ev["peak_score"]))
    return events
