"""Host side of CNN8RNN sound event detection: audio in, NumPy log-mel, windows, frame/clip outputs, events.

NumPy, SciPy, soundfile (and soxr when installed) only, so it runs on an Ascend host without torch.

Windowing (plan_windows / merge_windows): the log-mel of the whole file is computed once (exactly the
one-pass front-end), then cut into windows of frames, so window edges see the neighbouring audio.
- dynamic frame axis (onnxruntime): a file of at most `preprocess.max_window_s` (60 s) is one pass, exactly as
  the PyTorch model sees it. A longer file is cut into the fewest equal windows of at most that length
  (whole segments of 4 frames; the last one shorter), nothing filled up.
- fixed frame count (a static .om, e.g. 1001 frames = 10 s): windows step 1000 frames; the last one, or a
  shorter file's only one, is filled up with silence frames (-100 dB, the log-mel of digital silence).
Effect on the outputs: each window is its own pass, so the GRU restarts and the convolutions see an edge at
every boundary; measured with the stand-in weights on 60 s of audio in 10 s windows, frames further than
1 s from a boundary equal the one-pass result (rel. L2 < 1e-3), all frames 0.10, clip scores 0.05. Filled-up
silence is not neutral either: the backward GRU starts on it, which changes the last ~1 s of real audio.
Frames and segments of the fill are cut; the clip scores of a windowed or filled file are the model's
linear-softmax pooling over the segments of real frames of all windows (one pass: the model's own).

Bad input: missing/corrupt/empty/NaN/too short (< 30 ms, 960 samples at 32 kHz) files raise one-line
PipelineErrors. Digital silence is a valid input: outputs are the model's (finite) response to a -100 dB
log-mel, flagged `silent` with a warning. Clipped recordings are processed and flagged with a warning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import ROOT
from pipeline.schema import Opt

from modality.audio import find_audio_files, load_audio
from .events import detect_events, top_k
from .frontend import log_mel

FRONTEND_FILE = "frontend.npz"
SILENCE_DB = -100.0             # the log-mel of digital silence: 10*log10(1e-10)

MODEL_SCHEMA = {
    "classes_num": Opt(int, 447),
    "classes_file": Opt(str, "models/cnn8rnn_sed/classes_447.txt", help="label names in output order"),
}
PREPROCESS_SCHEMA = {
    "sample_rate": Opt(int, 32000),
    "n_fft": Opt(int, 1024),
    "hop_length": Opt(int, 320),
    "n_mels": Opt(int, 64),
    "f_min": Opt(float, 50.0),
    "f_max": Opt(float, 14000.0),
    "max_window_s": Opt(float, 60.0, help="longer files are cut into windows of this length"),
    "min_duration_s": Opt(float, 0.03, help="shorter files are refused (the model needs 4 frames)"),
}
POSTPROCESS_SCHEMA = {
    "top_k": Opt(int, 5),
    "onset_threshold": Opt(float, 0.5),
    "offset_threshold": Opt(float, 0.3),
    "min_duration_s": Opt(float, 0.1),
    "merge_gap_s": Opt(float, 0.1),
    "max_events": Opt(int, 200),
}


def check_config(cfg: dict, source: str) -> None:
    path = ROOT / cfg["model"]["classes_file"]
    if not path.is_file():
        raise ConfigError(f"{source}: model.classes_file {cfg['model']['classes_file']} does not exist; "
                          "point it at the 447 class names")
    post = cfg["postprocess"]
    if not 0 < post["offset_threshold"] <= post["onset_threshold"] < 1:
        raise ConfigError(f"{source}: postprocess needs 0 < offset_threshold <= onset_threshold < 1")
    labels = read_labels(path)
    if len(labels) != cfg["model"]["classes_num"]:
        raise ConfigError(f"{source}: model.classes_file has {len(labels)} names but classes_num is "
                          f"{cfg['model']['classes_num']}; make them agree")
    pre = cfg["preprocess"]
    if pre["max_window_s"] < 1.0:
        raise ConfigError(f"{source}: preprocess.max_window_s is {pre['max_window_s']}; "
                          "use at least 1 s (60 s is the default)")
    mels = [t["shape"][-1] for t in cfg["inputs"] if t["name"] == "logmel"]
    if mels != [pre["n_mels"]]:
        raise ConfigError(f"{source}: inputs needs one 'logmel' input whose last dim equals preprocess.n_mels "
                          f"({pre['n_mels']}); got {mels}")


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def bundled_labels(cfg: dict) -> list[str]:
    return read_labels(ROOT / cfg["model"]["classes_file"])


def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    return find_audio_files(input_arg)


def synth_scene(rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
    """A short scene: quiet noise bed, a harmonic 'voice' with vibrato, a chirp, a knock train."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    x = rng.normal(0, 0.003, n)
    a, b = sorted(rng.uniform(0, seconds, 2))
    f0 = rng.uniform(110, 260) * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * t))
    ph = 2 * np.pi * np.cumsum(f0) / sr
    x += ((t > a) & (t < b)) * 0.2 * sum(np.sin(k * ph) * np.exp(-k / 4) for k in range(1, 10))
    c = rng.uniform(0, max(seconds - 0.5, 0.01))
    f = np.linspace(500, 6000, n)
    x += ((t > c) & (t < c + 0.5)) * 0.1 * np.sin(2 * np.pi * np.cumsum(f) / sr)
    knocks = np.zeros(n)
    knocks[rng.integers(0, n, max(1, int(seconds * 3)))] = 1.0
    x += 0.4 * np.convolve(knocks, np.exp(-np.arange(300) / 30) * np.sin(np.arange(300) / 3), mode="same")
    return np.clip(x, -1, 1).astype(np.float32)


def generate_sources(cfg: dict, out_dir: Path, count: int | None = None, seed: int | None = None) -> list[Path]:
    """Deterministic WAV/FLAC clips of several lengths, sample rates and channel counts."""
    import soundfile as sf

    from pipeline.atomic import atomic_path
    from modality.audio import resample

    count = count or cfg["infer"]["samples"]
    rng = np.random.default_rng(cfg["infer"]["seed"] if seed is None else seed)
    kinds = [(32000, 1, 3.0, "wav"), (44100, 2, 10.0, "wav"), (16000, 1, 1.0, "flac"), (48000, 2, 7.5, "flac")]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        sr, ch, seconds, ext = kinds[i % len(kinds)]
        mono = resample(synth_scene(rng, 32000, seconds), 32000, sr)
        data = np.stack([mono * (1.0 - 0.2 * c) for c in range(ch)], axis=1)
        path = out_dir / f"clip_{i:04d}_{sr // 1000}k_{ch}ch.{ext}"
        with atomic_path(path) as tmp:
            sf.write(str(tmp), data, sr, format=ext.upper(), subtype="PCM_16")
        paths.append(path)
    return paths


_BUFFERS: dict = {}


def frontend_buffers(cfg: dict):
    """The model's own window and mel filterbank, written next to the ONNX by `make export`; else None."""
    from pipeline.paths import ModelPaths

    path = ModelPaths(cfg["name"]).build / FRONTEND_FILE
    if not path.exists():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _BUFFERS:
        with np.load(path) as z:
            _BUFFERS.clear()
            _BUFFERS[key] = (z["window"].astype(np.float32), z["fb"].astype(np.float32))
    return _BUFFERS[key]


def fixed_frames(input_meta) -> int | None:
    """The frame count of a static target's (B, 1, T, 64) input; None when the frame axis is dynamic."""
    for m in input_meta or []:
        if len(m.shape) == 4 and isinstance(m.shape[2], int):
            return m.shape[2]
    return None


def min_samples(pre: dict) -> int:
    """Reflect padding needs n > n_fft/2; one output segment needs 4 frames, i.e. n >= 3 hops (960 samples)."""
    return max(int(round(pre["min_duration_s"] * pre["sample_rate"])), pre["n_fft"] // 2 + 1, 3 * pre["hop_length"])


def plan_windows(t: int, pre: dict, fixed: int | None) -> list[tuple[int, int, int]]:
    """Windows over a file's T log-mel frames: (first frame, frames the window owns, frames fed).

    Windows own consecutive runs of frames that are multiples of 4 (one segment = 4 frames), so their segments
    tile the file's segment grid. Fixed target (F frames fed): windows own 4*(F//4) frames each (1000 of 1001;
    the extra fed frame is the next window's first), the last one is filled up with silence frames. Dynamic
    target: one window of T frames when T <= 1 + max_window_s/hop, else the fewest equal windows of at most
    that many frames, the last one shorter (and only filled up if it has fewer than 4 frames).
    """
    if fixed is not None:
        if fixed < 4:
            raise PipelineError(f"the target takes {fixed} frames per input; the model needs at least 4; "
                                "rebuild it with atc.fixed_dims.frames >= 4 (1001 = 10 s)")
        step = 4 * (fixed // 4)
        k = 1 if t <= fixed else 1 + -(-(t - fixed) // step)
        return [(i * step, step if i < k - 1 else t - i * step, fixed) for i in range(k)]
    cap = 1 + int(pre["max_window_s"] * pre["sample_rate"]) // pre["hop_length"]
    if t <= cap:
        return [(0, t, t)]
    k = -(-t // (4 * (cap // 4)))
    step = 4 * -(-t // (4 * k))
    return [(f0, min(step, t - f0), max(min(step, t - f0), 4)) for f0 in range(0, t, step)]


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    """One audio file -> log-mel items (1, 1, frames, 64). The log-mel of the whole file is computed once and
    cut into windows, so window edges see the neighbouring audio, not padding. Context keys: _info (file
    facts), _window (first frame, frames owned, frames fed, frames of the file)."""
    pre = cfg["preprocess"]
    wave, info = load_audio(Path(source), pre["sample_rate"], min_samples(pre))
    mel = log_mel(wave, pre, frontend_buffers(cfg)).T                 # (T, n_mels)
    t = mel.shape[0]
    info["samples"] = int(wave.shape[0])
    items = []
    for f0, own, fed in plan_windows(t, pre, fixed_frames(input_meta)):
        x = np.full((fed, mel.shape[1]), SILENCE_DB, np.float32)
        real = min(fed, t - f0)
        x[:real] = mel[f0:f0 + real]
        items.append({"logmel": x[None, None], "_info": info, "_window": (f0, own, fed, t)})
    return items


def frames_from_segments(seg: np.ndarray, t: int) -> np.ndarray:
    """The published frame rule: repeat each 40 ms segment 4 times, pad with the last one: frame t <- min(t//4, S-1)."""
    idx = np.minimum(np.arange(t) // 4, seg.shape[0] - 1)
    return seg[idx]


def merge_windows(items: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(framewise (T, C), segmentwise of the file (S', C), clipwise (C,)).

    One window fed exactly the file's frames: the model's own outputs. Otherwise each window writes the frames
    it owns (published frame rule within the window), its segments over owned frames are kept (segments of
    silence fill-up only are dropped), and clipwise is the model's linear-softmax pooling over all kept segments.
    """
    f0, own, fed, t = items[0]["_window"]
    if len(items) == 1 and fed == t:
        seg = items[0]["segmentwise_output"][0]
        return frames_from_segments(seg, t), seg, items[0]["clipwise_output"][0]
    frames = np.empty((t, items[0]["segmentwise_output"].shape[-1]), np.float32)
    segs = []
    for it in items:
        f0, own, fed, _ = it["_window"]
        s = it["segmentwise_output"][0]
        frames[f0:f0 + own] = frames_from_segments(s, fed)[:own]
        segs.append(s[: min(s.shape[0], -(-own // 4))])
    seg = np.concatenate(segs).astype(np.float64)
    clip = (seg * seg).sum(0) / seg.sum(0)
    return frames, seg.astype(np.float32), clip.astype(np.float32)


def postprocess(cfg: dict, source: Path, items: list[dict], meta: dict):
    pre, post = cfg["preprocess"], cfg["postprocess"]
    hop, sr = pre["hop_length"], pre["sample_rate"]
    labels = meta.get("labels") or bundled_labels(cfg)
    info = items[0]["_info"]
    frames, seg, clip = merge_windows(items)
    duration = info["samples"] / sr
    events = detect_events(frames, labels, post, hop / sr, duration)
    filled = sum(max(0, w[0] + w[2] - w[3]) for w in (it["_window"] for it in items))   # silence frames fed
    summary = {
        "duration_s": duration, "sample_rate_in": info["sample_rate_in"], "channels_in": info["channels_in"],
        "windows": len(items), "window_frames": items[0]["_window"][2], "silence_fill_s": filled * hop / sr,
        "frames": int(frames.shape[0]), "frame_hop_s": hop / sr,
        "top_k": top_k(clip, labels, post["top_k"]),
        "events": events[: post["max_events"]], "events_total": len(events),
        "silent": info["silent"], "peak": round(info["peak"], 6), "clipped_share": info["clipped_share"],
    }
    warnings = []
    if info["silent"]:
        warnings.append("the recording is digital silence; scores are the model's response to silence")
    elif info["clipped_share"] > 0.001:
        warnings.append(f"{info['clipped_share']:.2%} of samples are at full scale (clipped recording)")
    if warnings:
        summary["warning"] = "; ".join(warnings)
    return summary, {"framewise": frames.astype(np.float32), "clipwise": clip.astype(np.float32),
                     "segmentwise": seg.astype(np.float32)}


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """Log-mel of synthetic scenes (not N(0,1)): shape (B, 1, T, 64), one scene per batch element."""
    pre = cfg["preprocess"]
    b, _, t, _ = shape
    n = (t - 1) * pre["hop_length"]
    if n < min_samples(pre):
        raise PipelineError(f"input {name} with {t} frames is shorter than the model minimum "
                            f"({1 + min_samples(pre) // pre['hop_length']} frames); use a longer shape")
    out = [log_mel(synth_scene(rng, pre["sample_rate"], n / pre["sample_rate"]), pre).T for _ in range(b)]
    return np.stack(out)[:, None].astype(np.float32)


def frontend_ms(cfg: dict, n_samples: int, repeats: int = 5) -> float:
    """Milliseconds the NumPy front-end takes for one clip of n_samples (best of `repeats`, after a warm-up).

    The best of several runs filters out transient CPU contention (e.g. onnxruntime's worker threads still
    spinning right after a model run), so the figure is the front-end's own cost."""
    import time

    pre = cfg["preprocess"]
    wave = synth_scene(np.random.default_rng(0), pre["sample_rate"], n_samples / pre["sample_rate"])
    log_mel(wave, pre)
    number = max(1, int(0.05 // max(1e-4, _timed(lambda: log_mel(wave, pre), time))))   # ~50 ms per repeat
    best = min(_timed(lambda: [log_mel(wave, pre) for _ in range(number)], time) for _ in range(repeats))
    return best * 1e3 / number


def _timed(fn, time) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_extras(cfg: dict, feeds: dict, model_ms: float) -> dict:
    """Audio seconds per batch, the NumPy front-end's cost for the same audio, and the real-time factor."""
    pre = cfg["preprocess"]
    b, _, t, _ = feeds["logmel"].shape
    n = (t - 1) * pre["hop_length"]
    fe_ms = b * frontend_ms(cfg, n)
    audio_s = b * n / pre["sample_rate"]
    return {"audio_s_per_batch": audio_s, "frontend_ms_per_batch": fe_ms,
            "frontend_share_of_model": fe_ms / model_ms if model_ms > 0 else None,
            "real_time_factor": audio_s / ((model_ms + fe_ms) / 1e3),
            "real_time_factor_definition": "seconds of audio per second of compute (front-end + model)"}
