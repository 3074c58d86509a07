"""Log-mel front-end in NumPy, equal to torchaudio MelSpectrogram + AmplitudeToDB with the published settings.

reflect pad n_fft/2, periodic Hann, |rfft|^2 (power 2), Slaney mel filterbank with Slaney area
normalisation, 10*log10(max(mel, 1e-10)), no top_db. Runs on a host without torch.
"""
from __future__ import annotations

import functools

import numpy as np


def hz_to_mel_slaney(f):
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def mel_to_hz_slaney(m):
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """(n_fft//2+1, n_mels) float32, as torchaudio.functional.melscale_fbanks(norm='slaney', mel_scale='slaney')."""
    all_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    m_pts = np.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2)
    f_pts = mel_to_hz_slaney(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= (2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels]))[None, :]
    return fb.astype(np.float32)


@functools.lru_cache(maxsize=8)
def hann_periodic(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def num_frames(n_samples: int, hop: int) -> int:
    return 1 + n_samples // hop


def log_mel(wave: np.ndarray, pre: dict) -> np.ndarray:
    """(N,) float waveform at pre['sample_rate'] -> (n_mels, T) float32 log-mel in dB."""
    n_fft, hop = pre["n_fft"], pre["hop_length"]
    x = np.asarray(wave, np.float32)
    pad = n_fft // 2
    if x.shape[0] <= pad:
        raise ValueError(f"need more than {pad} samples for reflect padding, got {x.shape[0]}")
    x = np.pad(x, (pad, pad), mode="reflect")
    t = num_frames(wave.shape[0], hop)
    frames = np.lib.stride_tricks.as_strided(x, shape=(t, n_fft), strides=(x.strides[0] * hop, x.strides[0]),
                                             writeable=False)
    spec = np.fft.rfft(frames * hann_periodic(n_fft), axis=1)
    power = (spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2)
    fb = mel_filterbank(pre["sample_rate"], n_fft, pre["n_mels"], pre["f_min"], pre["f_max"])
    mel = power @ fb                                   # (T, n_mels)
    return (10.0 * np.log10(np.maximum(mel, 1e-10))).T.astype(np.float32)
