"""Host side of Silero VAD 16 kHz (silero-vad 6.2.3's trained model): audio in, 32 ms chunks, speech segments out.

NumPy, SciPy, soundfile (and soxr) only: runs on an Ascend host without torch or silero-vad.

Streaming exactly as silero-vad's OnnxWrapper and get_speech_timestamps drive the model (silero_vad/utils_vad.py
of the wheel): audio of any rate and channel count is mixed to mono and resampled to 16 kHz (modality.audio;
silero-vad itself resamples with torchaudio, or decimates multiples of 16 kHz); the waveform is cut into
512-sample chunks from sample 0, the last partial chunk zero-padded to 512 (a recording shorter than one chunk
becomes one padded chunk, with a warning); each chunk is fed with the 64 samples before it as context (zeros for
the first chunk; for chunk k > 0 the last 64 samples of chunk k-1), a window of 576 samples; the LSTM state
(2, 1, 128) starts at zeros and is carried chunk to chunk. One item per chunk: {input (1, 576), state (2, 1,
128) zeros}; state_carry tells the stages to feed item k-1's stateN as item k's state. The model gives one
speech probability per 32 ms chunk; postprocess turns the track into segments by silero-vad's own rules
(segments.py) and writes them as CSV.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from modality import audio
from pipeline.stage_clock import stage
from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.schema import Opt

from . import segments as seg

SAMPLE_RATE = 16000
CHUNK = 512                   # samples per chunk at 16 kHz (32 ms)
CONTEXT = 64                  # samples of the previous chunk fed before each chunk
WINDOW = CHUNK + CONTEXT      # 576: the model input
HIDDEN = 128                  # LSTM state size
HOP_S = CHUNK / SAMPLE_RATE   # 0.032 s per probability
CAPABILITIES = frozenset({"time_input", "task_metrics"})

TASK_GATE_DEFAULTS = {"min_chunk_agreement": 0.99, "max_boundary_shift_ms": 32.0}
MODEL_SCHEMA = {
    # the wheel's own ONNX, the oracle our fp32 path is checked against (oracle.py); same wheel as weights.wheel
    "oracle": Opt({
        "file": Opt(str, "silero_vad/data/silero_vad.onnx", help="path of silero-vad's ONNX inside the wheel"),
        "sha256": Opt(str, "", help="its sha256"),
    }, {}),
}
PREPROCESS_SCHEMA = {
    "sample_rate": Opt(int, SAMPLE_RATE, help="the 16 kHz model"),
    "max_duration_s": Opt(float, 1200.0, help="longer files are refused (one item of 3.3 KB per 32 ms chunk)"),
}
POSTPROCESS_SCHEMA = {   # silero-vad's get_speech_timestamps parameters, its defaults
    "threshold": Opt(float, 0.5, help="a chunk with prob >= threshold is speech"),
    "neg_threshold": Opt((float, type(None)), None, help="in speech, prob < this is silence; null: max(threshold "
                                                         "- 0.15, 0.01)"),
    "min_speech_duration_ms": Opt(float, 250.0, help="shorter segments are dropped"),
    "min_silence_duration_ms": Opt(float, 100.0, help="silence this long ends a segment"),
    "speech_pad_ms": Opt(float, 30.0, help="segments grow this much on each side"),
    "max_speech_duration_s": Opt((float, type(None)), None, help="longer segments are cut; null: no limit"),
    "min_silence_at_max_speech_ms": Opt(float, 98.0, help="silences at least this long are cut points at the "
                                                          "max length"),
    "use_max_poss_sil_at_max_speech": Opt(bool, True, help="cut at the longest such silence (else the last)"),
    "max_segments": Opt(int, 1000, help="segments listed in a file's summary (the CSV has all)"),
    "task_gate": Opt({k: Opt(type(v), v) for k, v in TASK_GATE_DEFAULTS.items()}, {}),
}
# (name, shape) in config order; None: the batch axis (1 on a static target)
EXPECTED_INPUTS = (("input", [None, WINDOW]), ("state", [2, None, HIDDEN]))
EXPECTED_OUTPUTS = (("prob", [None, 1]), ("stateN", [2, None, HIDDEN]))


def check_config(cfg: dict, source: str) -> None:
    pre, post = cfg["preprocess"], cfg["postprocess"]
    if pre["sample_rate"] != SAMPLE_RATE:
        raise ConfigError(f"{source}: preprocess.sample_rate is {pre['sample_rate']}; this model runs at {SAMPLE_RATE}")
    if pre["max_duration_s"] <= 0:
        raise ConfigError(f"{source}: preprocess.max_duration_s must be > 0")
    if not 0 < post["threshold"] < 1:
        raise ConfigError(f"{source}: postprocess.threshold must be between 0 and 1 (silero's default 0.5)")
    neg = post["neg_threshold"]
    if neg is not None and not 0 < neg <= post["threshold"]:
        raise ConfigError(f"{source}: postprocess.neg_threshold must be in (0, threshold] or null (threshold - 0.15)")
    if min(post["min_speech_duration_ms"], post["min_silence_duration_ms"], post["speech_pad_ms"],
           post["min_silence_at_max_speech_ms"]) < 0:
        raise ConfigError(f"{source}: postprocess durations must be >= 0")
    if post["max_speech_duration_s"] is not None and post["max_speech_duration_s"] <= 0:
        raise ConfigError(f"{source}: postprocess.max_speech_duration_s must be > 0 or null (no limit)")
    g = post["task_gate"]
    if not 0 <= g["min_chunk_agreement"] <= 1 or g["max_boundary_shift_ms"] < 0:
        raise ConfigError(f"{source}: postprocess.task_gate needs min_chunk_agreement in [0, 1] and "
                          "max_boundary_shift_ms >= 0")
    _check_tensors(cfg, source)


def _check_tensors(cfg: dict, source: str) -> None:
    for kind, want in (("inputs", EXPECTED_INPUTS), ("outputs", EXPECTED_OUTPUTS)):
        got = [(t["name"], t["shape"], t["dtype"]) for t in cfg[kind]]
        ok = len(got) == len(want) and all(
            name == w_name and dtype == "float32" and len(shape) == len(w_shape)
            and all(w is None or d == w for d, w in zip(shape, w_shape))
            for (name, shape, dtype), (w_name, w_shape) in zip(got, want))
        if not ok:
            spec = "input [1, 576] and state [2, 1, 128]" if kind == "inputs" else "prob [1, 1] and stateN [2, 1, 128]"
            raise ConfigError(f"{source}: Silero VAD needs {kind} {spec} (float32, in this order); got {got}")


def state_carry(cfg: dict) -> dict[str, str]:
    """The LSTM state: item k's input `state` is item k-1's output `stateN` (same source)."""
    return {"stateN": "state"}


def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    try:
        return audio.find_audio_files(input_arg)
    except InputError:
        raise
    except PipelineError as exc:
        raise InputError(str(exc)) from None


# --- inputs -------------------------------------------------------------------------------------------------

def load_wave(source: Path, cfg: dict) -> tuple[np.ndarray, dict]:
    """(mono float32 waveform at 16 kHz, info) of one file; any length >= 1 sample is accepted."""
    try:
        wave, info = audio.load_audio(Path(source), SAMPLE_RATE, 1)
    except InputError:
        raise
    except PipelineError as exc:
        raise InputError(str(exc)) from None
    limit = cfg["preprocess"]["max_duration_s"]
    if info["duration_s"] > limit:
        raise InputError(f"{source} is {info['duration_s']:.0f} s long; the limit is preprocess.max_duration_s = "
                         f"{limit:.0f} s; split the recording or raise the limit")
    info["samples"] = int(wave.shape[0])
    return wave, info


def chunk_count(samples: int) -> int:
    """Chunks of a waveform: ceil(samples / 512), at least one (a shorter file is one padded chunk)."""
    return max(1, -(-int(samples) // CHUNK))


def windows(wave: np.ndarray) -> np.ndarray:
    """(chunks, 576) model inputs of a 16 kHz waveform: chunk k = samples [512k, 512k + 512), the last one
    zero-padded, each preceded by the 64 samples before it (zeros before the first chunk). As utils_vad.py:
    get_speech_timestamps pads the last chunk to 512 and OnnxWrapper.__call__ keeps x[..., -64:] of each
    (context + chunk) window as the next one's context."""
    n = chunk_count(wave.shape[0])
    padded = np.zeros(CONTEXT + n * CHUNK, np.float32)
    padded[CONTEXT:CONTEXT + wave.shape[0]] = wave
    idx = np.arange(n)[:, None] * CHUNK + np.arange(WINDOW)[None, :]
    return padded[idx]


def zero_state(batch: int = 1) -> np.ndarray:
    return np.zeros((2, batch, HIDDEN), np.float32)


INFO_KEYS = ("samples", "duration_s", "sample_rate_in", "channels_in", "peak", "clipped_share", "silent")


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    """One file -> one item per 32 ms chunk, in order: {input (1, 576), state (2, 1, 128) zeros}. The first item
    carries the file facts as JSON-able context (_samples, _duration_s, _sample_rate_in, ...)."""
    _check_target(input_meta)
    wave, info = load_wave(source, cfg)
    with stage("framing"):
        win = windows(wave)
    state = zero_state()
    state.flags.writeable = False          # one shared initial state: the stages replace it, never write it
    items = [{"input": win[k:k + 1], "state": state} for k in range(win.shape[0])]
    items[0].update({f"_{k}": (round(float(info[k]), 6) if isinstance(info[k], float) else info[k])
                     for k in INFO_KEYS})
    return items


def _check_target(input_meta) -> None:
    for m in input_meta or []:
        if m.name == "input" and m.shape and isinstance(m.shape[-1], int) and m.shape[-1] != WINDOW:
            raise PipelineError(f"the target's input takes {m.shape[-1]} samples, Silero VAD 16 kHz {WINDOW} "
                                "(64 context + 512); rebuild it from this config")


# --- outputs ------------------------------------------------------------------------------------------------

def track(items: list[dict], strict: bool = True) -> tuple[np.ndarray, int]:
    """(probability per chunk (float32), count of non-finite values set to 0) of a file's items in order."""
    p = np.array([np.asarray(it["prob"], np.float32).reshape(-1)[0] for it in items], np.float32)
    bad = int((~np.isfinite(p)).sum())
    if bad and strict:
        raise PipelineError(f"the model returned {bad} non-finite probabilities; check the target (fp16?) with "
                            "`make precision`")
    return np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0), bad


def file_info(items: list[dict]) -> dict:
    """The file facts of the first item's context; items read back without context: from the chunk count."""
    first = items[0]
    if "_samples" in first:
        return {k: first[f"_{k}"] for k in INFO_KEYS}
    n = len(items) * CHUNK
    return {"samples": n, "duration_s": n / SAMPLE_RATE, "sample_rate_in": None, "channels_in": None, "peak": None,
            "clipped_share": 0.0, "silent": False}


def neg_threshold(post: dict) -> float:
    return post["neg_threshold"] if post["neg_threshold"] is not None else max(post["threshold"] - 0.15, 0.01)


def find_segments(probs: np.ndarray, samples: int, post: dict) -> list[tuple[int, int]]:
    return seg.speech_timestamps(probs, sampling_rate=SAMPLE_RATE, window=CHUNK, audio_length_samples=samples,
                                 **seg.params(post))


def postprocess(cfg: dict, source: Path, items: list[dict], meta: dict):
    post = cfg["postprocess"]
    probs, _ = track(items)
    info = file_info(items)
    samples = int(info["samples"])
    with stage("segments"):
        spans = find_segments(probs, samples, post)
    secs = np.array(spans, np.float64).reshape(-1, 2) / SAMPLE_RATE
    speech_s = float((secs[:, 1] - secs[:, 0]).sum())
    audio_s = samples / SAMPLE_RATE
    summary = {
        "duration_s": info["duration_s"], "sample_rate_in": info["sample_rate_in"],
        "channels_in": info["channels_in"], "samples_16k": samples, "chunks": int(probs.shape[0]),
        "chunk_hop_s": HOP_S, "padded_samples": int(probs.shape[0] * CHUNK - samples),
        "threshold": post["threshold"], "neg_threshold": neg_threshold(post),
        "segments_total": len(spans),
        "segments": [{"start_s": round(float(a), 4), "end_s": round(float(b), 4)} for a, b in secs[:post["max_segments"]]],
        "speech_s": round(speech_s, 4), "speech_share": speech_s / audio_s if audio_s else 0.0,
        "max_prob": float(probs.max()), "mean_prob": float(probs.mean()),
        "silent": info["silent"], "peak": info["peak"], "clipped_share": info["clipped_share"],
        "weights": {k: meta.get(k) for k in ("kind", "path", "sha256", "format", "seed") if k in meta},
    }
    warnings = []
    if samples < CHUNK:
        warnings.append(f"the recording is {1000 * samples / SAMPLE_RATE:.1f} ms long at 16 kHz, shorter than one "
                        f"32 ms chunk: it was zero-padded to {CHUNK} samples, so its probability is the model's "
                        "response to mostly padding")
    if info["silent"]:
        warnings.append("the recording is digital silence")
    if (info["clipped_share"] or 0) > 0.001:
        warnings.append(f"{info['clipped_share']:.2%} of samples are at full scale (clipped recording)")
    if len(spans) > post["max_segments"]:
        warnings.append(f"{len(spans)} segments, the summary lists the first {post['max_segments']} (the CSV has all)")
    if warnings:
        summary["warning"] = "; ".join(warnings)
    arrays = {"prob": probs, "speech": seg.speech_mask(spans, probs.shape[0], CHUNK),
              "segments_s": secs}
    return summary, arrays


def segments_csv(arrays: dict) -> str:
    lines = ["start_s,end_s,duration_s"]
    lines += [f"{a:.4f},{b:.4f},{b - a:.4f}" for a, b in np.asarray(arrays["segments_s"]).reshape(-1, 2)]
    return "\n".join(lines) + "\n"


def text_outputs(cfg: dict, summary: dict, arrays: dict) -> dict[str, str]:
    return {"segments.csv": segments_csv(arrays)}


def run_summary(cfg: dict, summaries: list) -> dict:
    """Speech over the whole run: seconds, share, files with and without speech, and a table per file."""
    rows, speech, total, with_speech, segments = [], 0.0, 0.0, 0, 0
    for source, s in summaries:
        speech += s["speech_s"]
        total += s["samples_16k"] / SAMPLE_RATE
        segments += s["segments_total"]
        with_speech += s["segments_total"] > 0
        rows.append([Path(source).name, round(s["duration_s"], 3), s["segments_total"], round(s["speech_s"], 3),
                     round(s["speech_share"], 4)])
    return {"files": len(summaries), "files_with_speech": with_speech, "files_without_speech": len(summaries) - with_speech,
            "audio_s": round(total, 3), "speech_s": round(speech, 3),
            "speech_share": speech / total if total else 0.0, "segments": segments,
            "per_file": {"columns": ["file", "duration_s", "segments", "speech_s", "speech_share"], "rows": rows}}


def report_plots(cfg: dict, source, ref_items: list[dict], tgt_arrays: dict, meta: dict, out_dir: Path) -> list:
    """The probability track of the target over the reference's, segments shaded."""
    from .plots import vad_track

    ref_p, _ = track(ref_items, strict=False)
    samples = int(file_info(ref_items)["samples"])
    ref_segs = np.array(find_segments(ref_p, samples, cfg["postprocess"]), np.float64).reshape(-1, 2) / SAMPLE_RATE
    path = vad_track(ref_p, ref_segs, np.asarray(tgt_arrays["prob"]), np.asarray(tgt_arrays["segments_s"]).reshape(-1, 2),
                     HOP_S, cfg["postprocess"]["threshold"], neg_threshold(cfg["postprocess"]),
                     Path(out_dir) / "vad_track.png", title=Path(source).name)
    return [("speech probability per 32 ms chunk and speech segments, reference and target", path)] if path else []


def task_metrics(cfg: dict, source, ref_items: list[dict], tgt_items: list[dict], meta: dict) -> dict:
    """Target segments against the reference's: chunk agreement, segment count, worst boundary shift."""
    from .gate import source_metrics

    post = cfg["postprocess"]
    ref_p, _ = track(ref_items)
    tgt_p, bad = track(tgt_items, strict=False)
    samples = int(file_info(ref_items)["samples"])
    out = source_metrics(ref_p, tgt_p, find_segments(ref_p, samples, post), find_segments(tgt_p, samples, post),
                         post["threshold"], CHUNK)
    return {"source": str(source), **out, "non_finite_target": bad}


def task_gate(cfg: dict, per_source: list[dict]) -> list[dict]:
    from .gate import task_gate as _task_gate

    return _task_gate(cfg["postprocess"]["task_gate"], per_source, SAMPLE_RATE)


# --- synthetic inputs and the bench -------------------------------------------------------------------------

# generated samples: (kind, rate, channels, seconds, format)
SAMPLE_KINDS = [("babble", 16000, 1, 6.0, "wav"), ("babble", 44100, 2, 5.0, "wav"),
                ("noise", 22050, 1, 3.0, "flac"), ("babble", 8000, 1, 4.0, "flac")]


def sample_signal(i: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int, str, str]:
    from . import synth

    kind, sr, ch, seconds, ext = SAMPLE_KINDS[i % len(SAMPLE_KINDS)]
    if kind == "noise":
        x = (10 ** (-35 / 20) * rng.standard_normal(int(seconds * sr))).astype(np.float32)
    else:
        x, _ = synth.babble(rng, SAMPLE_RATE, seconds)
        x = audio.resample(x, SAMPLE_RATE, sr)
    return x, sr, ch, ext, kind


def generate_sources(cfg: dict, out_dir: Path, count: int | None = None, seed: int | None = None) -> list[Path]:
    """Deterministic speech-like babble with pauses at several rates and channel counts, and a noise file."""
    count = count or cfg["infer"]["samples"]
    rng = np.random.default_rng(cfg["infer"]["seed"] if seed is None else seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        x, sr, ch, ext, kind = sample_signal(i, rng)
        paths.append(audio.write_clip(out_dir / f"vad_{i:04d}_{kind}_{sr // 1000}k_{ch}ch.{ext}", x, sr, ch, ext))
    return paths


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """input (B, 576): windows of speech-like babble (every fourth one quiet noise); state (2, B, 128): an LSTM
    state of the spread the trained model carries on speech (h = tanh of N(0, 0.4), c ~ N(0, 2))."""
    if name == "state":
        b = shape[1]
        h = np.tanh(rng.normal(0.0, 0.4, (b, shape[2])))
        c = rng.normal(0.0, 2.0, (b, shape[2]))
        return np.stack([h, c]).astype(np.float32)
    from . import synth

    b, width = shape
    wave, _ = synth.babble(rng, SAMPLE_RATE, max(2.0, 0.05 * b + 1.5))
    out = np.empty((b, width), np.float32)
    for i in range(b):
        if i % 4 == 3:
            out[i] = 10 ** (-50 / 20) * rng.standard_normal(width)
        else:
            start = int(rng.integers(0, wave.shape[0] - width))
            out[i] = wave[start:start + width]
    return out


def host_ms(chunks: int, repeats: int = 3) -> float:
    """Milliseconds of host work (windowing + the segment rules) for `chunks` chunks, best of `repeats`."""
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(chunks * CHUNK)).astype(np.float32)
    probs = rng.random(chunks)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        windows(wave)
        seg.speech_timestamps(probs)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def bench_extras(cfg: dict, feeds: dict, model_ms: float) -> dict:
    """A run is one 32 ms chunk of each of B streams (batch B): audio per run, host cost and real-time factor."""
    b = int(feeds["input"].shape[0])
    audio_s = b * HOP_S
    h_ms = host_ms(b)
    return {"chunks_per_run": b, "audio_s_per_batch": audio_s, "host_ms_per_batch": h_ms,
            "model_ms_per_audio_s": model_ms / audio_s if audio_s else None,
            "real_time_factor": audio.real_time_factor(audio_s, (model_ms + h_ms) / 1e3),
            "real_time_factor_definition": "seconds of audio per second of compute (model + host windowing and "
                                           "segment rules); a run is one 32 ms chunk per stream, streams = batch"}
