"""Silero VAD's report plot (the report_plots hook): the target's probability track over the reference's, the
thresholds, and the speech segments of both shaded. matplotlib is imported on first use."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.plotting import pyplot, save_png


def vad_track(ref_p: np.ndarray, ref_segs: np.ndarray, tgt_p: np.ndarray, tgt_segs: np.ndarray, hop_s: float,
              threshold: float, neg_threshold: float, path: Path, title: str = "") -> Path | None:
    if ref_p.size == 0:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 3.6))
    t = np.arange(ref_p.shape[0]) * hop_s
    for a, b in tgt_segs:
        ax.axvspan(a, b, ymin=0.0, ymax=0.9, color="tab:green", alpha=0.18, lw=0)
    for a, b in ref_segs:
        ax.plot([a, b], [1.06, 1.06], color="black", lw=4, solid_capstyle="butt")
    for a, b in tgt_segs:
        ax.plot([a, b], [1.12, 1.12], color="tab:green", lw=4, solid_capstyle="butt")
    ax.step(t, ref_p, where="post", color="0.4", lw=1.6, label="reference (fp32) probability")
    ax.step(t[:tgt_p.shape[0]], tgt_p, where="post", color="tab:blue", lw=0.9, label="target probability")
    ax.axhline(threshold, color="tab:red", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    ax.axhline(neg_threshold, color="tab:orange", ls=":", lw=0.8, label=f"neg_threshold {neg_threshold:g}")
    ax.set(xlim=(0, max(t[-1] + hop_s, 1e-3)), ylim=(-0.02, 1.17), xlabel="time (s)", ylabel="speech probability",
           title=f"{title}  (bars: segments, black reference, green target; shaded: target speech)")
    ax.legend(loc="center right", fontsize=7)
    return save_png(fig, Path(path))
