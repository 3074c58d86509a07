"""CREPE's report plot (the report_plots hook): f0 over the activation heat map, reference and target side by
side. Inputs are the saved arrays; the bins' pitch axis is CREPE's (20 cents per bin from 31.7 Hz).
matplotlib is imported on first use: the host side imports without it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.plotting import pyplot, save_png

from .decode import CENTS_OFFSET, CENTS_PER_BIN      # cents above 10 Hz of bin 0; cents per bin


def _bin_of(f0: np.ndarray) -> np.ndarray:
    return (1200.0 * np.log2(np.asarray(f0, np.float64) / 10.0) - CENTS_OFFSET) / CENTS_PER_BIN


def _panel(ax, act: np.ndarray, f0: np.ndarray, voiced: np.ndarray, hop_s: float, title: str) -> None:
    n = act.shape[0]
    ax.imshow(act.T, origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0,
              extent=(-0.5 * hop_s, (n - 0.5) * hop_s, -0.5, act.shape[1] - 0.5), interpolation="nearest")
    t = np.arange(n) * hop_s
    track = np.where(voiced.astype(bool), _bin_of(f0), np.nan)
    ax.plot(t, track, color="cyan", lw=1.2, label="f0 (voiced frames)")
    ticks = [50, 100, 200, 400, 800, 1600]
    ax.set_yticks(_bin_of(np.array(ticks)))
    ax.set_yticklabels([str(f) for f in ticks])
    ax.set(xlabel="time (s)", ylabel="pitch (Hz)", title=title)
    ax.legend(loc="upper right", fontsize=7)


def pitch_over_activation(ref: dict, tgt: dict, hop_s: float, path: Path, title: str = "") -> Path | None:
    """ref/tgt: {activation (frames, 360), f0_hz (frames,), voiced (frames,), label}. Writes one PNG."""
    if ref is None or tgt is None or np.asarray(ref["activation"]).size == 0:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for ax, side in zip(axes, (ref, tgt)):
        _panel(ax, np.asarray(side["activation"]), np.asarray(side["f0_hz"]), np.asarray(side["voiced"]), hop_s,
               side.get("label", ""))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
