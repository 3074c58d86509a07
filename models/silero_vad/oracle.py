"""The oracle of the Silero VAD family: the wheel's own silero_vad.onnx, driven as its OnnxWrapper drives it,
against our fp32 path (our exported ONNX on onnxruntime, the family's chunking, the state carried), on the same
16 kHz audio. NumPy + onnxruntime only (silero-vad's Python imports torch; its wrapper is re-written here).

What silero-vad 6.2.3 does (silero_vad/utils_vad.py), and the wrapper below repeats:
- OnnxWrapper.__init__: an onnxruntime session on CPU with one intra- and one inter-op thread; reset_states:
  state = zeros (2, 1, 128), context empty;
- OnnxWrapper.__call__(chunk of 512, 16000): context = zeros (1, 64) when empty; x = concat(context, chunk)
  (576); session.run({input: x, state, sr: int64 16000}) -> (out, state); context = x[..., -64:];
- get_speech_timestamps: model.reset_states(); for start in range(0, len(audio), 512): chunk =
  audio[start:start + 512], zero-padded to 512 when shorter; prob = model(chunk, 16000).item(); then
  get_speech_timestamps_from_probs(probs, audio_length_samples=len(audio)) (our segments.py).

`python -m models.silero_vad.oracle --model silero_vad_16k [--input file-or-folder] [--onnx our.onnx]` writes
results/<model>/oracle.json: per file the worst absolute probability difference and both segment lists; it
passes when every difference is <= 1e-4 and every file's segments are identical. Default inputs: the speech
clips of tests/data/speech/ plus generated babble, noise, digital silence and a 20 ms clip.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline import wheel_files
from pipeline.paths import ROOT, ModelPaths

from . import CHUNK, CONTEXT, HIDDEN, SAMPLE_RATE, find_segments, load_wave, windows

MAX_ABS_DIFF = 1e-4
ORACLE_FILE = "oracle.json"
SPEECH_DIR = ROOT / "tests" / "data" / "speech"


def wheel_onnx(cfg: dict) -> tuple[Path, dict]:
    """The wheel's own ONNX (model.oracle.file of the weights.wheel requirement), sha256-checked and cached."""
    wheel = cfg["weights"]["wheel"]
    spec = {"requirement": wheel["requirement"], "file": cfg["model"]["oracle"]["file"],
            "sha256": cfg["model"]["oracle"]["sha256"], "licence": wheel["licence"]}
    return wheel_files.wheel_file(spec, cfg.get("_source", cfg["name"]))


def session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.inter_op_num_threads = threads
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class WheelVAD:
    """silero-vad's OnnxWrapper for 16 kHz, batch 1, in NumPy: context and state kept between calls."""

    def __init__(self, path: Path):
        self.session = session(path)
        self.reset_states()

    def reset_states(self) -> None:
        self._state = np.zeros((2, 1, HIDDEN), np.float32)
        self._context = np.zeros((0,), np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        x = np.asarray(chunk, np.float32).reshape(1, -1)
        if x.shape[1] != CHUNK:
            raise ValueError(f"Provided number of samples is {x.shape[1]} (Supported values: {CHUNK} for 16000)")
        if not len(self._context):
            self._context = np.zeros((1, CONTEXT), np.float32)
        x = np.concatenate([self._context, x], axis=1)
        out, state = self.session.run(None, {"input": x, "state": self._state, "sr": np.array(SAMPLE_RATE, np.int64)})
        self._state = state
        self._context = x[..., -CONTEXT:]
        return float(out.reshape(-1)[0])


def wheel_track(model: WheelVAD, wave: np.ndarray) -> np.ndarray:
    """get_speech_timestamps' probability loop over a 16 kHz waveform."""
    model.reset_states()
    probs = []
    for start in range(0, wave.shape[0], CHUNK):
        chunk = wave[start:start + CHUNK]
        if chunk.shape[0] < CHUNK:
            chunk = np.pad(chunk, (0, CHUNK - chunk.shape[0]))
        probs.append(model(chunk))
    return np.array(probs, np.float64)


def our_track(sess, wave: np.ndarray) -> np.ndarray:
    """Our path: the family's windows, our ONNX, stateN fed back as the next chunk's state."""
    state = np.zeros((2, 1, HIDDEN), np.float32)
    probs = []
    for w in windows(wave):
        prob, state = sess.run(["prob", "stateN"], {"input": w[None], "state": state})
        probs.append(float(prob.reshape(-1)[0]))
    return np.array(probs, np.float64)


def compare_file(cfg: dict, path: Path, wheel: WheelVAD, ours) -> dict:
    wave, info = load_wave(path, cfg)
    a, b = wheel_track(wheel, wave), our_track(ours, wave)
    if a.shape != b.shape:
        raise AssertionError(f"{path}: the wheel gives {a.shape[0]} chunks, our path {b.shape[0]}")
    n = wave.shape[0]
    post = cfg["postprocess"]
    seg_w, seg_o = find_segments(a, n, post), find_segments(b, n, post)
    diff = np.abs(a - b)
    return {"file": str(path), "duration_s": round(info["duration_s"], 4), "samples_16k": int(n), "chunks": int(a.shape[0]),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "chunks_over_threshold_wheel": int((a >= post["threshold"]).sum()),
            "segments_wheel_s": [[s / SAMPLE_RATE, e / SAMPLE_RATE] for s, e in seg_w],
            "segments_ours_s": [[s / SAMPLE_RATE, e / SAMPLE_RATE] for s, e in seg_o],
            "same_segments": seg_w == seg_o,
            "passed": bool(diff.max() <= MAX_ABS_DIFF and seg_w == seg_o)}


def compare_with_wheel(cfg: dict, audio_paths, onnx_path: Path | None = None) -> dict:
    """Our fp32 ONNX (default build/<model>/model.sim.onnx, what ort-cpu runs) against the wheel's ONNX per file."""
    onnx_path = Path(onnx_path or ModelPaths(cfg["name"]).onnx_sim)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} is missing; run `make export MODEL={cfg['name']}` first or pass --onnx")
    oracle_path, prov = wheel_onnx(cfg)
    wheel, ours = WheelVAD(oracle_path), session(onnx_path)
    files = [compare_file(cfg, Path(p), wheel, ours) for p in audio_paths]
    worst = max((f["max_abs_diff"] for f in files), default=None)
    return {"model": cfg["name"], "oracle": {"path": str(oracle_path), **prov,
                                            "driven_as": "silero-vad OnnxWrapper + get_speech_timestamps (NumPy re-write)"},
            "ours": {"onnx": str(onnx_path)}, "gate": {"max_abs_diff": MAX_ABS_DIFF, "same_segments": True},
            "files": files, "worst_abs_diff": worst, "all_same_segments": all(f["same_segments"] for f in files),
            "passed": bool(files) and all(f["passed"] for f in files)}


def default_inputs(cfg: dict, scratch: Path) -> list[Path]:
    """The committed speech clips plus generated babble, noise, digital silence and a 20 ms clip."""
    import soundfile as sf

    from . import generate_sources

    paths = sorted(SPEECH_DIR.glob("*.wav")) if SPEECH_DIR.is_dir() else []
    paths += generate_sources(cfg, scratch, count=4, seed=7)
    rng = np.random.default_rng(11)
    extra = {"silence_2s_16k.wav": np.zeros(2 * SAMPLE_RATE, np.float32),
             "white_noise_3s_16k.wav": (0.01 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32),
             "short_20ms_16k.wav": (0.1 * rng.standard_normal(320)).astype(np.float32)}
    for name, x in extra.items():
        sf.write(str(scratch / name), x, SAMPLE_RATE, subtype="FLOAT")
        paths.append(scratch / name)
    return paths


def main(argv=None) -> int:
    from pipeline.errors import cli

    return cli(_main)(argv)


def _main(argv=None) -> int:
    from modality.audio import find_audio_files
    from pipeline.errors import PipelineError
    from pipeline.atomic import write_json
    from pipeline.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="silero_vad_16k")
    ap.add_argument("--input", default="", help="an audio file or folder (default: tests/data/speech + generated)")
    ap.add_argument("--onnx", default="", help="our ONNX (default build/<model>/model.sim.onnx)")
    args = ap.parse_args(argv)
    cfg = load_config(args.model)
    paths = ModelPaths(cfg["name"])
    ours = Path(args.onnx) if args.onnx else paths.onnx_sim
    if not ours.exists():
        raise PipelineError(f"{ours} is missing; run `make export MODEL={cfg['name']}` first")
    if args.input:
        inputs = find_audio_files(args.input)
    else:
        scratch = paths.build / "oracle_inputs"
        scratch.mkdir(parents=True, exist_ok=True)
        inputs = default_inputs(cfg, scratch)
    result = compare_with_wheel(cfg, inputs, Path(args.onnx) if args.onnx else None)
    out = write_json(paths.results / ORACLE_FILE, result)
    for f in result["files"]:
        print(f"oracle | {Path(f['file']).name}: {f['chunks']} chunks, max |diff| {f['max_abs_diff']:.2e}, segments "
              f"{len(f['segments_ours_s'])} ours / {len(f['segments_wheel_s'])} wheel, "
              f"{'same' if f['same_segments'] else 'DIFFERENT'}")
    verdict = "PASSED" if result["passed"] else "FAILED"
    print(f"{verdict} | {cfg['name']} against the wheel's own ONNX: worst |diff| {result['worst_abs_diff']:.2e} (<= {MAX_ABS_DIFF:g}), segments "
          f"{'identical' if result['all_same_segments'] else 'differ'} over {len(result['files'])} file(s); {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
