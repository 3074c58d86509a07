"""Deterministic speech-like test signals for the VAD family (generate_sources, random_input): NumPy + SciPy.

A source-filter "babble": a glottal pulse train (f0 100..220 Hz with a falling intonation and jitter) through
three formant resonators per vowel, syllables of 120..260 ms with soft onsets, noise bursts for fricatives,
phrases of 3..8 syllables separated by pauses; a quiet noise floor under all of it. Not words, but it has the
harmonics, formant movement and syllable rhythm that a speech detector responds to.
"""
from __future__ import annotations

import numpy as np

VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (660, 1720, 2410),
          (490, 1350, 1690), (570, 840, 2410), (440, 1020, 2240)]     # Peterson & Barney averages (Hz)
BANDWIDTHS = (90.0, 110.0, 170.0)


def _resonator(x: np.ndarray, f: float, bw: float, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bw / sr)
    a = [1.0, -2 * r * np.cos(2 * np.pi * f / sr), r * r]
    return lfilter([1.0 - r], a, x)


def syllable(rng: np.random.Generator, sr: int, f0: float) -> np.ndarray:
    n = int(rng.uniform(0.12, 0.26) * sr)
    t = np.arange(n) / sr
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)) * (1 + 0.01 * rng.standard_normal(n))
    phase = np.cumsum(f / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)                      # one impulse per period
    src = np.convolve(pulses, np.exp(-np.arange(int(0.004 * sr)) / (0.0008 * sr)), mode="same")
    formants = VOWELS[rng.integers(len(VOWELS))]
    y = sum(_resonator(src, fq * rng.uniform(0.95, 1.05), bw, sr) for fq, bw in zip(formants, BANDWIDTHS))
    env = np.minimum(1.0, np.minimum(t / 0.025, (t[-1] - t) / 0.04 + 1e-3))
    y = y * env
    if rng.random() < 0.5:                                              # a fricative before the vowel
        m = int(rng.uniform(0.04, 0.09) * sr)
        hiss = _resonator(rng.standard_normal(m), rng.uniform(3000, 6000), 1500.0, sr) * 0.15
        y = np.concatenate([hiss * np.hanning(m), y])
    return y / (np.abs(y).max() + 1e-9)


def babble(rng: np.random.Generator, sr: int, seconds: float, noise_db: float = -55.0) -> tuple[np.ndarray, list]:
    """(waveform float32 peak 0.7, [(start, end)] samples of the phrases) filling `seconds` of audio."""
    n = int(seconds * sr)
    out = np.zeros(n)
    spans, pos = [], int(rng.uniform(0.2, 0.6) * sr)
    while True:
        f0 = rng.uniform(100, 220)
        parts = [syllable(rng, sr, f0 * (1 - 0.15 * k / 8)) * rng.uniform(0.5, 1.0) for k in range(rng.integers(3, 9))]
        phrase = np.concatenate(parts)
        if pos + phrase.shape[0] > n - int(0.2 * sr):
            break
        out[pos:pos + phrase.shape[0]] = phrase
        spans.append((pos, pos + phrase.shape[0]))
        pos += phrase.shape[0] + int(rng.uniform(0.4, 1.2) * sr)
    out = 0.7 * out / (np.abs(out).max() + 1e-9)
    out += 10 ** (noise_db / 20) * rng.standard_normal(n)
    return out.astype(np.float32), spans
