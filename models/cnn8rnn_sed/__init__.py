"""Host side of CNN8RNN sound event detection: audio in, NumPy log-mel, windows, frame/clip outputs, events.

NumPy, SciPy, soundfile (and soxr when installed) only, so it runs on an Ascend host without torch. Decoding,
resampling, windows and their crossfade come from the audio modality layer (modality/audio.py); this module
adds the model's front-end (frontend.py), its frame rule, labels and events.

Windowing: the log-mel of the whole file is computed once (exactly the one-pass front-end), then fed in
windows of frames (window starts are whole segments of 4 frames).
- dynamic frame axis (onnxruntime): one pass, exactly as the PyTorch model sees the file, up to the frames a
  memory budget allows (`preprocess.max_pass_mb`, default 2048 MB; the pass needs about PASS_MB_PER_MINUTE
  = 430 MB per minute of audio at batch 1, measured with onnxruntime on CPU: 377 / 794 / 1711 / 3434 MB for
  1 / 2 / 4 / 8 min). Longer files: the fewest equal windows within the cap, overlapping by
  `preprocess.window_overlap` of a window (default 0.25), outputs crossfaded linearly across each overlap.
- fixed frame count (a static .om, e.g. 1001 frames = 10 s): windows step (1 - window_overlap) of a window;
  the last one, or a shorter file's only one, is filled up with silence frames (-100 dB).
A window is its own pass: the bidirectional GRU carries state over the whole input, so windowed outputs differ
from one pass everywhere, by an amount that depends on the weights (how long the GRU remembers), not only
near the cuts. tests/test_cnn8rnn.py measures it with long-memory GRU weights. Filled-up silence is not
neutral either (the backward GRU starts on it). Frames and segments of the fill are cut; the clip scores of a
windowed file are the model's linear-softmax pooling over the file's merged segments.

Bad input: missing/corrupt/empty/NaN/too short (< 30 ms, 960 samples at 32 kHz) files raise one-line
InputErrors. Digital silence is a valid input: outputs are the model's (finite) response to a -100 dB
log-mel, flagged `silent` with a warning. Clipped recordings are processed and flagged with a warning.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from modality import audio
from pipeline.stage_clock import stage
from pipeline.errors import ConfigError, InputError
from pipeline.paths import ROOT
from pipeline.schema import Opt

from .events import detect_events, top_k
from .frontend import log_mel

CAPABILITIES = frozenset({"time_input", "frame_output", "labels"})
FRONTEND_FILE = "frontend.npz"
SILENCE_DB = -100.0             # the log-mel of digital silence: 10*log10(1e-10)
SEGMENT_FRAMES = 4              # one output segment = 4 log-mel frames (two 2x2 poolings)
PASS_MB_PER_MINUTE = 430.0      # resident memory of one onnxruntime pass per minute of audio, batch 1 (measured)

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
    "max_pass_mb": Opt(float, 2048.0, help="memory budget of one pass on a dynamic target; longer files are "
                                           "windowed (about 430 MB per minute of audio)"),
    "window_overlap": Opt(float, 0.25, help="share of a window that overlaps the next (crossfaded)"),
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
    if pass_frames(pre) < 100 * SEGMENT_FRAMES:
        raise ConfigError(f"{source}: preprocess.max_pass_mb {pre['max_pass_mb']} allows less than 4 s per pass; "
                          "give at least 30 MB (2048 is the default)")
    if not 0 <= pre["window_overlap"] <= 0.5:
        raise ConfigError(f"{source}: preprocess.window_overlap is {pre['window_overlap']}; "
                          "give a share between 0 and 0.5 (0.25 is the default)")
    mels = [t["shape"][-1] for t in cfg["inputs"] if t["name"] == "logmel"]
    if mels != [pre["n_mels"]]:
        raise ConfigError(f"{source}: inputs needs one 'logmel' input whose last dim equals preprocess.n_mels "
                          f"({pre['n_mels']}); got {mels}")


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def labels(cfg: dict, meta: dict | None) -> list[str]:
    """Class names in output order: those of the checkpoint's classes.txt (recorded in weights.json by
    load_weights), else the bundled `model.classes_file`."""
    return list((meta or {}).get("labels") or read_labels(ROOT / cfg["model"]["classes_file"]))


def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    return audio.find_audio_files(input_arg)


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
    count = count or cfg["infer"]["samples"]
    rng = np.random.default_rng(cfg["infer"]["seed"] if seed is None else seed)
    kinds = [(32000, 1, 3.0, "wav"), (44100, 2, 10.0, "wav"), (16000, 1, 1.0, "flac"), (48000, 2, 7.5, "flac")]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        sr, ch, seconds, ext = kinds[i % len(kinds)]
        mono = audio.resample(synth_scene(rng, 32000, seconds), 32000, sr)
        paths.append(audio.write_clip(out_dir / f"clip_{i:04d}_{sr // 1000}k_{ch}ch.{ext}", mono, sr, ch, ext))
    return paths


def host_artifacts(cfg: dict) -> list[str]:
    return [FRONTEND_FILE]


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


def front_end(pre: dict, buffers, wave: np.ndarray) -> np.ndarray:
    """The audio layer's front-end hook: waveform (N,) -> log-mel frames (T, n_mels)."""
    return log_mel(wave, pre, buffers).T


def fixed_frames(input_meta) -> int | None:
    """The frame count of a static target's (B, 1, T, 64) input; None when the frame axis is dynamic."""
    for m in input_meta or []:
        if len(m.shape) == 4 and isinstance(m.shape[2], int):
            return m.shape[2]
    return None


def min_samples(pre: dict) -> int:
    """Reflect padding needs n > n_fft/2; one output segment needs 4 frames, i.e. n >= 3 hops (960 samples)."""
    return max(int(round(pre["min_duration_s"] * pre["sample_rate"])), pre["n_fft"] // 2 + 1, 3 * pre["hop_length"])


def pass_frames(pre: dict) -> int:
    """Frames one pass may take on a dynamic target: the memory budget over the measured cost per minute."""
    per_minute = 60 * pre["sample_rate"] / pre["hop_length"]
    return int(pre["max_pass_mb"] / PASS_MB_PER_MINUTE * per_minute)


def plan_windows(t: int, pre: dict, fixed: int | None) -> list[audio.Window]:
    """The windows of a file of t log-mel frames (see the module docstring)."""
    if fixed is not None:
        overlap = int(pre["window_overlap"] * fixed)
        return audio.plan_windows(t, fixed=fixed, overlap=overlap, multiple=SEGMENT_FRAMES,
                                  min_frames=SEGMENT_FRAMES)
    cap = pass_frames(pre)
    return audio.plan_windows(t, max_frames=cap, overlap=int(pre["window_overlap"] * cap), multiple=SEGMENT_FRAMES,
                              min_frames=SEGMENT_FRAMES)


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    """One audio file -> log-mel items (1, 1, frames, 64). The log-mel of the whole file is computed once and
    cut into windows, so window edges see the neighbouring audio, not padding. Context keys: _info (file
    facts), _window (audio.Window: first frame, real frames, frames fed, frames of the file)."""
    pre = cfg["preprocess"]
    mel, info = audio.load_features(Path(source), pre["sample_rate"], min_samples(pre),
                                    partial(front_end, pre, frontend_buffers(cfg)))
    t = mel.shape[0]
    items = []
    for w in plan_windows(t, pre, fixed_frames(input_meta)):
        x = np.full((w.fed, mel.shape[1]), SILENCE_DB, np.float32)
        x[:w.real] = mel[w.start:w.start + w.real]
        items.append({"logmel": x[None, None], "_info": info, "_window": w})
    return items


def frames_from_segments(seg: np.ndarray, t: int) -> np.ndarray:
    """The published frame rule: repeat each 40 ms segment 4 times, pad with the last one: frame t <- min(t//4, S-1)."""
    idx = np.minimum(np.arange(t) // SEGMENT_FRAMES, seg.shape[0] - 1)
    return seg[idx]


def frames_from_outputs(cfg: dict, outputs: dict, frames: int) -> np.ndarray:
    """(frames, classes) of one item's raw outputs {"segmentwise_output": (1, S, C), ...}, published frame rule."""
    return frames_from_segments(outputs["segmentwise_output"][0], frames)


def merge_windows(items: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(framewise (T, C), segmentwise of the file (S', C), clipwise (C,)).

    One window fed exactly the file's frames: the model's own outputs. Otherwise the whole segments of each
    window over real frames (not the fill; T//4 for the file, as one pass has) are crossfaded onto the file's
    segment grid (audio.merge_frames), frames
    follow by the published frame rule, and clipwise is the model's linear-softmax pooling over the merged
    segments.
    """
    plan = [it["_window"] for it in items]
    t = plan[0].total
    if len(items) == 1 and plan[0].fed == t:
        seg = items[0]["segmentwise_output"][0]
        return frames_from_segments(seg, t), seg, items[0]["clipwise_output"][0]
    parts = [it["segmentwise_output"][0][: w.real // SEGMENT_FRAMES] for it, w in zip(items, plan)]
    seg = audio.merge_frames(parts, plan, per=SEGMENT_FRAMES).astype(np.float64)
    clip = (seg * seg).sum(0) / seg.sum(0)
    return frames_from_segments(seg, t).astype(np.float32), seg.astype(np.float32), clip.astype(np.float32)


def postprocess(cfg: dict, source: Path, items: list[dict], meta: dict):
    pre, post = cfg["preprocess"], cfg["postprocess"]
    hop, sr = pre["hop_length"], pre["sample_rate"]
    names = labels(cfg, meta)
    info = items[0]["_info"]
    plan = [it["_window"] for it in items]
    with stage("merge"):
        frames, seg, clip = merge_windows(items)
    duration = info["duration_s"]
    with stage("events"):
        events = detect_events(frames, names, post, hop / sr, duration)
    filled = sum(w.fed - w.real for w in plan)
    overlap = sum(max(0, a.start + a.real - b.start) for a, b in zip(plan, plan[1:]))
    summary = {
        "duration_s": duration, "sample_rate_in": info["sample_rate_in"], "channels_in": info["channels_in"],
        "windows": len(items), "window_frames": plan[0].fed, "silence_fill_s": filled * hop / sr,
        "window_overlap_s": overlap * hop / sr,
        "frames": int(frames.shape[0]), "frame_hop_s": hop / sr,
        "top_k": _top_k(clip, names, post["top_k"]),
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


def _top_k(clip, names, k):
    with stage("top-k"):
        return top_k(clip, names, k)


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """Log-mel of synthetic scenes (not N(0,1)): shape (B, 1, T, 64), one scene per batch element."""
    pre = cfg["preprocess"]
    b, _, t, _ = shape
    n = (t - 1) * pre["hop_length"]
    if n < min_samples(pre):
        raise InputError(f"input {name} with {t} frames is shorter than the model minimum "
                         f"({1 + min_samples(pre) // pre['hop_length']} frames); use a longer shape")
    out = [log_mel(synth_scene(rng, pre["sample_rate"], n / pre["sample_rate"]), pre).T for _ in range(b)]
    return np.stack(out)[:, None].astype(np.float32)


def frontend_ms(cfg: dict, n_samples: int, repeats: int = 5) -> float:
    """Milliseconds the NumPy front-end takes for one clip of n_samples (audio.frontend_ms: best of `repeats`)."""
    pre = cfg["preprocess"]
    wave = synth_scene(np.random.default_rng(0), pre["sample_rate"], n_samples / pre["sample_rate"])
    return audio.frontend_ms(partial(front_end, pre, frontend_buffers(cfg)), wave, repeats)


def bench_extras(cfg: dict, feeds: dict, model_ms: float) -> dict:
    """Audio seconds per batch, the NumPy front-end's cost for the same audio, and the real-time factor."""
    pre = cfg["preprocess"]
    b, _, t, _ = feeds["logmel"].shape
    n = (t - 1) * pre["hop_length"]
    fe_ms = b * frontend_ms(cfg, n)
    audio_s = b * audio.duration_s(n, pre["sample_rate"])
    return {"audio_s_per_batch": audio_s, "frontend_ms_per_batch": fe_ms,
            "frontend_share_of_model": fe_ms / model_ms if model_ms > 0 else None,
            "real_time_factor": audio.real_time_factor(audio_s, (model_ms + fe_ms) / 1e3),
            "real_time_factor_definition": "seconds of audio per second of compute (front-end + model)"}
