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


_PREPARED: dict = {}


def _projection(fb2: np.ndarray):
    """power (n, bins) float32 -> mel (n, n_mels): a sparse product (each bin feeds at most two bands, so about
    1/30 of the dense work) in scipy's single-threaded kernel; without SciPy the dense product. No BLAS
    threads: next to a running model they spin on the same cores (measured 4-12 ms instead of 0.1 ms a block)."""
    try:
        import scipy.sparse

        fbt = scipy.sparse.csr_matrix(fb2.T)
        return lambda power: (fbt @ power.T).T
    except ImportError:
        return lambda power: power @ fb2


def _prepared(buffers: tuple):
    """float64 window (float32 rounding of the windowed frame shows at -100 dB) and the projection onto the
    bands from the FFT bins that some band uses, each filterbank row repeated for the real and the imaginary
    part (float32); cached per buffer pair."""
    window, fb = buffers
    key = (id(window), id(fb))
    if key not in _PREPARED:
        rows = np.nonzero(fb.any(axis=1))[0]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        fb2 = np.repeat(fb[lo:hi], 2, axis=0).astype(np.float32)
        _PREPARED.clear()
        _PREPARED[key] = (window.astype(np.float64), _projection(fb2), lo, hi, buffers)
    return _PREPARED[key][:4]


BLOCK = 128                     # frames per block: the block's buffers stay in cache


def num_frames(n_samples: int, hop: int) -> int:
    return 1 + n_samples // hop


def log_mel(wave: np.ndarray, pre: dict, buffers: tuple | None = None) -> np.ndarray:
    """(N,) float waveform at pre['sample_rate'] -> (n_mels, T) float32 log-mel in dB.

    `buffers` = (window, filterbank) taken from the model (build/<m>/frontend.npz); without them both are
    computed here, equal to torchaudio's to one float32 ulp.

    Precision where it matters: the windowed frame and its FFT are float64 (a float32 FFT is off by 0.01 dB in
    bands 100 dB below a frame's peak, e.g. a chirp); the power and the mel projection are float32 (sums of
    positive terms: relative error ~1e-7, i.e. 1e-6 dB); the dB conversion is float64. The power of bin k is
    re_k^2 + im_k^2, so the squared real/imaginary parts go through one matrix product with the filterbank
    rows repeated twice: no complex temporaries, one sparse product per block.
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
    mel = np.empty((t, pre["n_mels"]), np.float32)
    buf = np.empty((min(t, BLOCK), n_fft), np.float64)
    power = np.empty((min(t, BLOCK), 2 * (hi - lo)), np.float32)
    for s in range(0, t, BLOCK):
        e = min(s + BLOCK, t)
        np.multiply(frames[s:e], window, out=buf[: e - s])
        spec = _rfft(buf[: e - s])
        np.square(spec[:, lo:hi].view(np.float64), out=power[: e - s], casting="same_kind")
        mel[s:e] = project(power[: e - s])
    db = mel.astype(np.float64)
    np.maximum(db, 1e-10, out=db)
    np.log10(db, out=db)
    db *= 10.0
    return db.T.astype(np.float32)


def _rfft(frames: np.ndarray) -> np.ndarray:
    """Real FFT along the last axis, in place where possible (scipy's pocketfft when present, numpy otherwise)."""
    try:
        import scipy.fft

        return scipy.fft.rfft(frames, axis=1, overwrite_x=True)
    except ImportError:
        return np.fft.rfft(frames, axis=1)
