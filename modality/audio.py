"""Audio modality layer (host side: NumPy, soundfile, soxr; no torch), shared by audio model families.

- decoding: WAV/FLAC/OGG in blocks, mixed to mono and resampled as a stream (libsoxr VHQ), so an hour of
  48 kHz stereo needs about the memory of its 32 kHz mono result (~0.5 GB), not several copies of the file;
- time: duration and real-time factor;
- front-end hook: a family passes its own feature function (waveform -> (frames, features)); `load_features`
  decodes and applies it, `frontend_ms` times it for the bench;
- windows over a file's feature frames for dynamic targets (one pass up to a frame cap, beyond it overlapping
  windows) and static targets (fixed frame count, the last window filled), and the crossfade that merges the
  windows' outputs back onto the file's frame grid (`plan_windows`, `crossfade_weights`, `merge_frames`).
"""
from __future__ import annotations

import time
from math import gcd
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from pipeline.errors import InputError, PipelineError
from pipeline.stage_clock import stage

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
BLOCK = 1 << 18                 # frames decoded per block (5.5 s at 48 kHz)
CLIP_LEVEL = 0.999              # |sample| at or above this counts as clipped


def find_audio_files(input_arg: str) -> list[Path]:
    """INPUT as a file or a folder (searched recursively): the audio files in it, sorted."""
    from . import find_files

    return find_files(input_arg, AUDIO_SUFFIXES, "an audio file", "a folder of WAV/FLAC/OGG files", "audio",
                      "a folder of WAV/FLAC/OGG files")


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling: libsoxr 'VHQ' (passband flat to ~0.01 dB up to 95% of Nyquist).

    Falls back to scipy's polyphase FIR (Kaiser window), whose wider transition band costs about 1% in the
    model's outputs for a 44.1 kHz recording; soxr's costs about 1e-5.
    """
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    try:
        import soxr

        return soxr.resample(x.astype(np.float64), int(sr_in), int(sr_out), "VHQ").astype(np.float32)
    except ImportError:
        from scipy.signal import resample_poly

        g = gcd(int(sr_in), int(sr_out))
        return resample_poly(x.astype(np.float64), sr_out // g, sr_in // g).astype(np.float32)


class _Resampler:
    """Streaming soxr when available (identical to one-shot soxr), else collect and resample once."""

    def __init__(self, sr_in: int, sr_out: int):
        self.sr_in, self.sr_out, self.parts, self.stream = sr_in, sr_out, [], None
        if sr_in != sr_out:
            try:
                import soxr

                self.stream = soxr.ResampleStream(sr_in, sr_out, 1, dtype="float64", quality="VHQ")
            except ImportError:
                pass

    def push(self, mono: np.ndarray, last: bool) -> None:
        with stage("resample"):
            self._push(mono, last)

    def _push(self, mono: np.ndarray, last: bool) -> None:
        if self.stream is not None:
            self.parts.append(self.stream.resample_chunk(mono.astype(np.float64), last=last).astype(np.float32))
        else:
            self.parts.append(mono.astype(np.float32, copy=False))

    def result(self) -> np.ndarray:
        with stage("resample"):
            x = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
            return x if self.stream is not None else resample(x, self.sr_in, self.sr_out)


def _decode_error(path: Path, exc: Exception) -> InputError:
    msg = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
    return InputError(f"{path} cannot be decoded as audio ({msg}); give a WAV, FLAC or OGG file")


def load_audio(path: Path, sample_rate: int, min_samples: int) -> tuple[np.ndarray, dict]:
    """Return (mono float32 waveform at sample_rate, info). Bad files raise one-line InputErrors.

    info: sample_rate_in, channels_in, samples_in, duration_s (of the file), peak, clipped_share (share of
    samples at full scale, any channel), silent (all samples exactly 0).
    """
    import soundfile as sf

    peak, clipped, total = 0.0, 0, 0
    try:
        with stage("decode"):      # the blocks' resampling inside is the "resample" stage
            with sf.SoundFile(str(path)) as f:
                sr, channels = int(f.samplerate), int(f.channels)
                rs = _Resampler(sr, sample_rate)
                blocks = f.blocks(blocksize=BLOCK, dtype="float32", always_2d=True)
                block = next(blocks, None)
                while block is not None:
                    nxt = next(blocks, None)
                    if not np.isfinite(block).all():
                        bad = int(np.count_nonzero(~np.isfinite(block)))
                        raise InputError(f"{path} contains NaN/Inf samples ({bad} in the block at "
                                         f"{total / sr:.1f} s); repair the file (e.g. re-export it as PCM WAV)")
                    mag = np.abs(block)
                    peak = max(peak, float(mag.max()))
                    clipped += int(np.count_nonzero(mag >= CLIP_LEVEL))
                    total += block.shape[0]
                    rs.push(block.mean(axis=1), last=nxt is None)
                    block = nxt
    except PipelineError:
        raise
    except (RuntimeError, sf.LibsndfileError, ValueError, TypeError, EOFError) as exc:
        raise _decode_error(path, exc) from None
    if total == 0:
        raise InputError(f"{path} holds no audio samples; remove it or give a non-empty recording")
    wave = rs.result()
    info = {"sample_rate_in": sr, "channels_in": channels, "samples_in": total, "duration_s": total / sr,
            "peak": peak, "clipped_share": clipped / (total * channels), "silent": peak == 0.0}
    if wave.shape[0] < min_samples:
        raise InputError(f"{path} is {info['duration_s'] * 1000:.1f} ms long; the model needs at least "
                         f"{1000 * min_samples / sample_rate:.0f} ms ({min_samples} samples at {sample_rate} Hz)")
    return wave, info


# --- time ---------------------------------------------------------------------------------------------------

def duration_s(samples: int, sample_rate: int) -> float:
    """Seconds of audio in `samples` samples at `sample_rate` (the summary's contract key `duration_s`)."""
    return samples / float(sample_rate)


def real_time_factor(audio_s: float, wall_s: float) -> float | None:
    """Seconds of audio processed per second of wall time (> 1: faster than real time); None without a time."""
    return audio_s / wall_s if wall_s > 0 else None


# --- front-end hook -------------------------------------------------------------------------------------------

FrontEnd = Callable[[np.ndarray], np.ndarray]   # mono waveform (N,) at the model rate -> features (frames, F)


def load_features(path: Path, sample_rate: int, min_samples: int, front_end: FrontEnd
                  ) -> tuple[np.ndarray, dict]:
    """Decode one file (load_audio) and apply the family's front-end to the whole waveform once.

    Returns (features (frames, F), info); info gains `samples` (at the model rate) and `duration_s`."""
    wave, info = load_audio(Path(path), sample_rate, min_samples)
    info["samples"] = int(wave.shape[0])
    info["duration_s"] = duration_s(wave.shape[0], sample_rate)
    with stage("front-end"):
        return front_end(wave), info


def frontend_ms(front_end: FrontEnd, wave: np.ndarray, repeats: int = 5) -> float:
    """Milliseconds the front-end takes for `wave` (best of `repeats` after a warm-up, each ~50 ms long).

    The best of several runs filters out transient CPU contention (e.g. a model runtime's threads still
    spinning right after a run), so the figure is the front-end's own cost."""
    front_end(wave)
    once = _timed(lambda: front_end(wave))
    number = max(1, int(0.05 // max(1e-4, once)))
    best = min(_timed(lambda: [front_end(wave) for _ in range(number)]) for _ in range(repeats))
    return best * 1e3 / number


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- windows --------------------------------------------------------------------------------------------------

class Window(NamedTuple):
    """One model pass over a file's feature frames: frames [start, start + real) of the file, fed as `fed`
    frames (fed > real: the rest is fill), `total` = frames of the file."""
    start: int
    real: int
    fed: int
    total: int


def _down(n: int, m: int) -> int:
    return (n // m) * m


def plan_windows(total: int, *, fixed: int | None = None, max_frames: int | None = None, overlap: int = 0,
                 multiple: int = 1, min_frames: int = 1) -> list[Window]:
    """Windows that cover `total` frames; every start is a multiple of `multiple` (the frames of one output
    step, so window outputs fall on the file's grid).

    Dynamic target (fixed None): one window when total <= max_frames (or no cap); else the fewest windows of
    equal length <= max_frames that overlap by `overlap` frames (rounded down to `multiple`, at most half a
    window), the last one shorter; nothing filled unless it has fewer than `min_frames`.
    Static target (fixed F): every window feeds F frames, steps F - overlap (rounded down to `multiple`); the
    last one (or a shorter file's only one) is filled.
    """
    if fixed is not None:
        if fixed < min_frames:
            raise PipelineError(f"the target takes {fixed} frames per input; the model needs at least "
                                f"{min_frames}; rebuild it with a larger fixed frame count")
        usable = max(multiple, _down(fixed, multiple))
        step = max(multiple, _down(usable - min(overlap, usable // 2), multiple))
        k = 1 if total <= fixed else 1 + -(-(total - fixed) // step)
        return [Window(i * step, min(fixed, total - i * step), fixed, total) for i in range(k)]
    if max_frames is None or total <= max_frames:
        return [Window(0, total, max(total, min_frames), total)]
    cap = _down(max_frames, multiple)
    if cap < 2 * multiple:
        raise PipelineError(f"a window of {max_frames} frames is too short; raise the frame cap")
    ov = _down(min(overlap, cap // 2), multiple)
    k = 1 + -(-(total - cap) // (cap - ov))
    step = -(-(-(-(total - ov) // k)) // multiple) * multiple
    out = []
    for i in range(k):
        real = min(step + ov, total - i * step)
        out.append(Window(i * step, real, max(real, min_frames), total))
    return out


def crossfade_weights(plan: list[Window], rows: list[int], per: int = 1) -> list[np.ndarray]:
    """Weights of each window's output rows (row r covers frames start + r*per .. + per) for merging: linear
    ramps across every overlap with a neighbour (up where the window starts inside the previous one, down
    where the next one starts inside it), normalised so the weights of every file row sum to 1."""
    raw = []
    for i, (w, n) in enumerate(zip(plan, rows)):
        centre = w.start + per * (np.arange(n) + 0.5)
        x = np.ones(n)
        if i > 0:
            prev = plan[i - 1]
            n_in = prev.start + prev.real - w.start
            if n_in > 0:
                x = np.minimum(x, (centre - w.start) / n_in)
        if i + 1 < len(plan):
            n_out = w.start + w.real - plan[i + 1].start
            if n_out > 0:
                x = np.minimum(x, (w.start + w.real - centre) / n_out)
        raw.append(np.clip(x, 1e-6, 1.0))
    length = max(w.start // per + n for w, n in zip(plan, rows))
    total = np.zeros(length)
    for w, x in zip(plan, raw):
        total[w.start // per: w.start // per + len(x)] += x
    return [x / total[w.start // per: w.start // per + len(x)] for w, x in zip(plan, raw)]


def merge_frames(parts: list[np.ndarray], plan: list[Window], per: int = 1) -> np.ndarray:
    """Window outputs (rows, ...) -> the file's rows, crossfaded where windows overlap (crossfade_weights).
    One window: its rows unchanged. Row r of window i is file row start_i/per + r."""
    if len(parts) == 1:
        return parts[0]
    weights = crossfade_weights(plan, [p.shape[0] for p in parts], per)
    length = max(w.start // per + p.shape[0] for w, p in zip(plan, parts))
    out = np.zeros((length,) + parts[0].shape[1:], np.float64)
    for w, p, x in zip(plan, parts, weights):
        a = w.start // per
        out[a:a + p.shape[0]] += p * x.reshape((-1,) + (1,) * (p.ndim - 1))
    return out.astype(parts[0].dtype)


def write_clip(path: Path, mono: np.ndarray, sample_rate: int, channels: int, fmt: str) -> Path:
    """A generated sample file: `channels` copies of `mono` at falling gain, 16-bit WAV/FLAC/OGG, written atomically."""
    import soundfile as sf

    from pipeline.atomic import atomic_path

    data = np.stack([mono * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return Path(path)
