"""Host side of CNN8RNN sound event detection: audio in, NumPy log-mel, windows, frame/clip outputs, events.

NumPy, SciPy and soundfile only, so it runs on an Ascend host without torch.

Windowing: a target with a dynamic frame axis (onnxruntime) gets each file in one pass when it is at most
`preprocess.max_window_s` long, exactly as the PyTorch model sees it; longer files, and targets with a fixed
frame count (a static .om), get consecutive non-overlapping windows of that length, the last one zero-padded.
Each window is an independent pass: the GRU restarts at every window boundary and the zero-padded tail of
the last window is cut from the outputs. The clip-level scores of a windowed file are the model's own
linear-softmax pooling over the concatenated segment outputs of all windows (padding segments excluded).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import ROOT
from pipeline.schema import Opt

from .audio import AUDIO_SUFFIXES, load_audio
from .events import detect_events, top_k
from .frontend import log_mel, num_frames

FRONTEND_FILE = "frontend.npz"

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
    if cfg["preprocess"]["hop_length"] * 4 > cfg["preprocess"]["sample_rate"] * cfg["preprocess"]["max_window_s"]:
        raise ConfigError(f"{source}: preprocess.max_window_s is shorter than one output segment")


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def bundled_labels(cfg: dict) -> list[str]:
    return read_labels(ROOT / cfg["model"]["classes_file"])


def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    path = Path(input_arg)
    if not path.exists():
        raise PipelineError(f"INPUT {input_arg} does not exist; give an audio file or a folder of WAV/FLAC/OGG files")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise PipelineError(f"INPUT folder {input_arg} holds no audio ({', '.join(AUDIO_SUFFIXES)}); "
                            "point INPUT at a folder of WAV/FLAC/OGG files")
    return files


def synth_scene(rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
    """A short scene: quiet noise bed, a harmonic 'voice' with vibrato, a chirp, a knock train."""
    n = int(seconds * sr)
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
    from .audio import resample

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
    for m in input_meta or []:
        if len(m.shape) == 4 and isinstance(m.shape[2], int):
            return m.shape[2]
    return None


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    pre = cfg["preprocess"]
    sr, hop = pre["sample_rate"], pre["hop_length"]
    min_samples = max(int(round(pre["min_duration_s"] * sr)), pre["n_fft"] // 2 + 1, 4 * hop)
    wave, info = load_audio(Path(source), sr, min_samples)
    n = wave.shape[0]
    buffers = frontend_buffers(cfg)
    frames = fixed_frames(input_meta)
    if frames is None and n <= pre["max_window_s"] * sr:
        return [{"logmel": log_mel(wave, pre, buffers).T[None, None], "_info": info, "_window": (0, n, n)}]
    frames = frames or num_frames(int(pre["max_window_s"] * sr), hop)
    win = (frames - 1) * hop                        # samples per window: frames = 1 + win // hop
    items = []
    for start in range(0, n, win):
        chunk = wave[start:start + win]
        valid = chunk.shape[0]
        if valid < win:
            chunk = np.concatenate([chunk, np.zeros(win - valid, np.float32)])
        items.append({"logmel": log_mel(chunk, pre, buffers).T[None, None], "_info": info, "_window": (start, valid, n),
                      "_frames": frames})
    return items


def frames_from_segments(seg: np.ndarray, t: int) -> np.ndarray:
    """The published frame rule: repeat each 40 ms segment 4 times, pad with the last one: frame t <- min(t//4, S-1)."""
    idx = np.minimum(np.arange(t) // 4, seg.shape[0] - 1)
    return seg[idx]


def postprocess(cfg: dict, source: Path, items: list[dict], meta: dict):
    pre, post = cfg["preprocess"], cfg["postprocess"]
    hop, sr = pre["hop_length"], pre["sample_rate"]
    labels = meta.get("labels") or bundled_labels(cfg)
    info = items[0]["_info"]
    n_total = items[0]["_window"][2]
    t_total = num_frames(n_total, hop)
    if len(items) == 1 and items[0]["_window"][1] == n_total:
        seg = items[0]["segmentwise_output"][0]
        clip = items[0]["clipwise_output"][0]
        frames = frames_from_segments(seg, t_total)
    else:
        frame_parts, seg_parts = [], []
        for it in items:
            _, valid, _ = it["_window"]
            s = it["segmentwise_output"][0]
            f = it["_frames"]                                  # frames per window; windows step f - 1 frames
            frame_parts.append(frames_from_segments(s, f)[: f - 1])
            t_valid = int(np.ceil(valid / hop))                 # frames centred on real (not padded) audio
            seg_parts.append(s[: max(1, int(np.ceil(t_valid / 4)))])
        frames = _fit(np.concatenate(frame_parts), t_total)
        seg = np.concatenate(seg_parts)
        clip = (seg * seg).sum(0) / seg.sum(0)
    events = detect_events(frames, labels, post, hop / sr)
    summary = {
        "duration_s": n_total / sr, "sample_rate_in": info["sample_rate_in"], "channels_in": info["channels_in"],
        "windows": len(items), "frames": int(frames.shape[0]), "frame_hop_s": hop / sr,
        "top_k": top_k(clip, labels, post["top_k"]),
        "events": events[: post["max_events"]], "events_total": len(events),
        "silent": info["silent"], "clipped_share": info["clipped_share"],
    }
    if info["clipped_share"] > 0.001:
        summary["warning"] = f"{info['clipped_share']:.2%} of samples are at full scale (clipped recording)"
    if info["silent"]:
        summary["warning"] = "the recording is digital silence; scores reflect the model's response to silence"
    return summary, {"framewise": frames.astype(np.float32), "clipwise": clip.astype(np.float32),
                     "segmentwise": seg.astype(np.float32)}


def _fit(frames: np.ndarray, t: int) -> np.ndarray:
    if frames.shape[0] >= t:
        return frames[:t]
    return np.concatenate([frames, np.repeat(frames[-1:], t - frames.shape[0], axis=0)])


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """Log-mel of synthetic scenes (not N(0,1)): shape (B, 1, T, 64)."""
    pre = cfg["preprocess"]
    b, _, t, _ = shape
    n = (t - 1) * pre["hop_length"]
    out = [log_mel(synth_scene(rng, pre["sample_rate"], n / pre["sample_rate"])[:n], pre).T for _ in range(b)]
    return np.stack(out)[:, None].astype(np.float32)


def bench_extras(cfg: dict, feeds: dict, model_ms: float) -> dict:
    """Audio seconds per batch, the NumPy front-end's cost for the same audio, and the real-time factor."""
    import time

    pre = cfg["preprocess"]
    b, _, t, _ = feeds["logmel"].shape
    n = (t - 1) * pre["hop_length"]
    wave = synth_scene(np.random.default_rng(0), pre["sample_rate"], n / pre["sample_rate"])[:n]
    log_mel(wave, pre)
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps * b):
        log_mel(wave, pre)
    fe_ms = (time.perf_counter() - t0) * 1e3 / reps
    audio_s = b * n / pre["sample_rate"]
    return {"audio_s_per_batch": audio_s, "frontend_ms_per_batch": fe_ms,
            "frontend_share_of_model": fe_ms / model_ms if model_ms > 0 else None,
            "real_time_factor": audio_s / ((model_ms + fe_ms) / 1e3),
            "real_time_factor_definition": "seconds of audio per second of compute (front-end + model)"}
