"""Log-mel front-end in NumPy, equal to torchaudio MelSpectrogram + AmplitudeToDB with the published settings.

reflect pad n_fft/2, periodic Hann, |rfft|^2 (power 2), Slaney mel filterbank with Slaney area
normalisation, 10*log10(max(mel, 1e-10)), no top_db. Runs on a host without torch.
"""
from __future__ import annotations

import functools
import math

import numpy as np


def hz_to_mel_slaney(f: float) -> float:
    if f >= 1000.0:
        return 15.0 + math.log(f / 1000.0) / (math.log(6.4) / 27.0)
    return f / (200.0 / 3)


def mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float32)
    f_sp, logstep = np.float32(200.0 / 3), np.float32(math.log(6.4) / 27.0)
    hz = (f_sp * m).astype(np.float32)
    log_t = m >= np.float32(15.0)
    hz[log_t] = np.float32(1000.0) * np.exp(logstep * (m[log_t] - np.float32(15.0)))
    return hz


def linspace32(a: float, b: float, n: int) -> np.ndarray:
    """torch.linspace in float32: float step, fused multiply-add, filled from both ends."""
    a32, b32 = np.float32(a), np.float32(b)
    step = np.float32((b32 - a32) / np.float32(n - 1))
    i = np.arange(n)
    lo = (np.float64(a32) + np.float64(step) * i).astype(np.float32)
    hi = (np.float64(b32) - np.float64(step) * (n - 1 - i)).astype(np.float32)
    return np.where(i < n // 2, lo, hi)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """(n_fft//2+1, n_mels) float32, torchaudio.functional.melscale_fbanks(norm='slaney', mel_scale='slaney').

    Computed in float32 step by step as torchaudio does, so it equals the `fb` buffer stored in the
    published checkpoint (an exact float64 filterbank differs by up to 0.2% at the triangle edges).
    """
    all_freqs = linspace32(0, sample_rate // 2, n_fft // 2 + 1)
    f_pts = mel_to_hz_slaney(linspace32(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = (np.float32(-1.0) * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(np.float32(0.0), np.minimum(down, up))
    enorm = np.float32(2.0) / (f_pts[2:n_mels + 2] - f_pts[:n_mels])
    return (fb * enorm[None, :]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def hann_periodic(n: int) -> np.ndarray:
    """torch.hann_window(n) (periodic), computed in float32 like torch."""
    k = np.arange(n + 1, dtype=np.float32)
    w = np.cos(k * np.float32(2.0 * math.pi / n)).astype(np.float32)
    return (w * np.float32(-0.5) + np.float32(0.5)).astype(np.float32)[:-1]


def _rfft(frames: np.ndarray) -> np.ndarray:
    """Real FFT along the last axis (scipy's pocketfft when present, numpy otherwise)."""
    try:
        import scipy.fft

        return scipy.fft.rfft(frames, axis=1)
    except ImportError:
        return np.fft.rfft(frames, axis=1)


_PREPARED: dict = {}


class MelProjection:
    """power (T, bins) -> mel (T, n_mels) with a triangular filterbank, without BLAS.

    Adjacent triangles overlap, but the even-numbered ones do not overlap each other, nor do the odd ones:
    each parity is one weight per FFT bin followed by a sum over each band's contiguous bins (add.reduceat).
    That is ~30x fewer operations than the dense product and never spins up BLAS threads next to a running
    model. A filterbank without that structure falls back to the dense float64 product.
    """

    def __init__(self, fb: np.ndarray):
        self.fb = np.ascontiguousarray(fb, np.float64)
        self.layers = self._layers(self.fb)

    @staticmethod
    def _layers(fb: np.ndarray):
        layers = []
        for parity in (0, 1):
            w, starts = np.zeros(fb.shape[0]), []
            for j in range(parity, fb.shape[1], 2):
                rows = np.nonzero(fb[:, j])[0]
                if rows.size == 0 or np.any(w[rows]) or (starts and rows[0] <= starts[-1]) or \
                        rows[-1] - rows[0] + 1 != rows.size:
                    return None
                w[rows] = fb[rows, j]
                starts.append(int(rows[0]))
            layers.append((w, np.array(starts)))
        return layers

    def __call__(self, power: np.ndarray, out: np.ndarray) -> None:
        if self.layers is None:
            np.matmul(power, self.fb, out=out)
            return
        for parity, (w, starts) in enumerate(self.layers):
            out[:, parity::2] = np.add.reduceat(power * w, starts, axis=1)


def _prepared(buffers: tuple):
    """float64 window (float32 rounding in the product shows at -100 dB) and the mel projection over the FFT
    bins that are non-zero in some band (bins outside every band are skipped), cached per buffer pair."""
    window, fb = buffers
    key = (id(window), id(fb))
    if key not in _PREPARED:
        rows = np.nonzero(fb.any(axis=1))[0]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        _PREPARED.clear()
        _PREPARED[key] = (window.astype(np.float64), MelProjection(fb[lo:hi]), lo, hi, buffers)
    return _PREPARED[key][:4]


BLOCK = 128


def num_frames(n_samples: int, hop: int) -> int:
    return 1 + n_samples // hop


def log_mel(wave: np.ndarray, pre: dict, buffers: tuple | None = None) -> np.ndarray:
    """(N,) float waveform at pre['sample_rate'] -> (n_mels, T) float32 log-mel in dB.

    `buffers` = (window, filterbank) taken from the model (build/<m>/frontend.npz); without them both are
    computed here, equal to torchaudio's to one float32 ulp.
    """
    n_fft, hop = pre["n_fft"], pre["hop_length"]
    x = np.asarray(wave, np.float32)
    pad = n_fft // 2
    if x.shape[0] <= pad:
        raise ValueError(f"need more than {pad} samples for reflect padding, got {x.shape[0]}")
    x = np.pad(x, (pad, pad), mode="reflect")
    t = num_frames(wave.shape[0], hop)
    frames = np.lib.stride_tricks.as_strided(x, shape=(t, n_fft), strides=(x.strides[0] * hop, x.strides[0]),
                                             writeable=False)
    if buffers is None:
        buffers = (hann_periodic(n_fft), mel_filterbank(pre["sample_rate"], n_fft, pre["n_mels"], pre["f_min"],
                                                        pre["f_max"]))
    window, project, lo, hi = _prepared(buffers)
    mel = np.empty((t, pre["n_mels"]), np.float64)
    buf = np.empty((min(t, BLOCK), n_fft), np.float64)   # float64 FFT: exact to ~1e-9 dB; float32 is not
    for s in range(0, t, BLOCK):                       # 128-frame blocks stay in cache: about 2x faster than one pass
        e = min(s + BLOCK, t)
        np.multiply(frames[s:e], window, out=buf[: e - s])
        spec = _rfft(buf[: e - s])[:, lo:hi]
        project(np.square(spec.real) + np.square(spec.imag), mel[s:e])
    np.maximum(mel, 1e-10, out=mel)
    np.log10(mel, out=mel)
    mel *= 10.0
    return mel.T.astype(np.float32)
