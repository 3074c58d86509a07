"""Seeded harmonic test signals with a known f0 track (tones, glides, vibrato) for samples, parity and tests."""
from __future__ import annotations

import numpy as np


def harmonic(f0: np.ndarray, sr: int, harmonics: int = 6, rolloff: float = 0.6) -> np.ndarray:
    """A band-limited harmonic tone following the per-sample f0 track (partials above 0.45*sr are left out)."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros_like(phase)
    for k in range(1, harmonics + 1):
        out += np.where(k * f0 < 0.45 * sr, rolloff ** (k - 1) * np.sin(k * phase), 0.0)
    return out / np.max(np.abs(out))


def f0_track(kind: str, seconds: float, sr: int, f0: float = 220.0, f1: float = 880.0) -> np.ndarray:
    """Per-sample f0: 'tone' (constant f0), 'glide' (exponential f0 -> f1), 'vibrato' (f0 +-50 cents at 5.5 Hz)."""
    t = np.arange(int(round(seconds * sr))) / sr
    if kind == "tone":
        return np.full(t.shape, f0)
    if kind == "glide":
        return f0 * (f1 / f0) ** (t / seconds)
    if kind == "vibrato":
        return f0 * 2.0 ** (50.0 / 1200.0 * np.sin(2 * np.pi * 5.5 * t))
    raise ValueError(f"unknown f0 track kind {kind!r}")


def signal(kind: str, seconds: float, sr: int, rng: np.random.Generator, f0: float = 220.0, f1: float = 880.0,
           level: float = 0.5, noise_db: float = -40.0) -> tuple[np.ndarray, np.ndarray]:
    """(waveform float32, per-sample f0 Hz) of a harmonic sound with a light noise floor (noise_db below level)."""
    track = f0_track(kind, seconds, sr, f0, f1)
    x = level * harmonic(track, sr) + level * 10 ** (noise_db / 20) * rng.standard_normal(track.shape)
    return x.astype(np.float32), track


def frame_truth(track: np.ndarray, sr: int, hop_s: float, frames: int) -> np.ndarray:
    """The true f0 at each frame centre (frame i is centred on i*hop_s seconds)."""
    idx = np.minimum((np.arange(frames) * hop_s * sr).round().astype(int), track.shape[0] - 1)
    return track[idx]
