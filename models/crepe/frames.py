"""CREPE framing on the host: 1024-sample windows at a hop, zero-padded and normalised as torchcrepe.predict does."""
from __future__ import annotations

import numpy as np

WINDOW = 1024
STD_FLOOR = 1e-10          # torchcrepe divides by max(1e-10, std)


def frame_count(n_samples: int, hop: int) -> int:
    """Frames of torchcrepe.predict with pad=True: one per hop, the first centred on sample 0."""
    return 1 + n_samples // hop


def frames_at(wave: np.ndarray, hop: int, first: int, count: int) -> np.ndarray:
    """Raw frames first..first+count-1 of `wave` zero-padded by WINDOW/2 on both sides: (count, 1024) float64.

    Frame i covers padded samples [i*hop, i*hop + 1024), i.e. wave[i*hop - 512 : i*hop + 512]; frames that run
    past the padded end are filled with zeros (only possible for the fill-up rows of a fixed-size target).
    """
    half = WINDOW // 2
    lo = first * hop - half
    hi = (first + count - 1) * hop + half
    seg = np.zeros(hi - lo, np.float64)
    a, b = max(lo, 0), min(hi, wave.shape[0])
    if b > a:
        seg[a - lo:b - lo] = wave[a:b]
    view = np.lib.stride_tricks.sliding_window_view(seg, WINDOW)
    return view[::hop][:count]


def normalise(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frames minus their mean, divided by max(1e-10, std with Bessel's correction), as float32; level in dBFS).

    torchcrepe uses torch.std (unbiased). A frame of digital silence stays all zeros. The level is the frame's
    RMS around its mean in dB full scale (-240 dB for digital silence), used for the silence gate.
    """
    centred = raw - raw.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, ddof=1, keepdims=True)
    frames = (centred / np.maximum(std, STD_FLOOR)).astype(np.float32)
    rms = np.sqrt(np.mean(centred * centred, axis=1))
    level = 20.0 * np.log10(np.maximum(rms, 1e-12))
    return frames, level
