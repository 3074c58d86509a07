"""Silero VAD family (silero-vad 6.2.3's trained 16 kHz model): our fp32 path (NumPy chunks -> our ONNX on
onnxruntime, the state carried -> NumPy segment rules) against the wheel's own silero_vad.onnx driven as its
OnnxWrapper drives it, and against the wheel's own Python (OnnxWrapper + get_speech_timestamps, imported from the
cached wheel here in the tests only). Skips when the wheel cannot be downloaded."""
from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT
from pipeline import wheel_files
from pipeline.config import load_config, load_family
from pipeline.errors import ConfigError, InputError, WeightsError

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import models.silero_vad as vad                          # noqa: E402
from models.silero_vad import oracle                     # noqa: E402
from models.silero_vad import segments as seg            # noqa: E402
from models.silero_vad import torch_model as tm          # noqa: E402

MODEL = "silero_vad_16k"
SPEECH = sorted((ROOT / "tests" / "data" / "speech").glob("*.wav"))
SR = vad.SAMPLE_RATE


@pytest.fixture(scope="module")
def cfg():
    return load_config(MODEL)


def wheel_member(cfg: dict, member: str, sha256: str = "") -> Path:
    wheel = cfg["weights"]["wheel"]
    spec = {"requirement": wheel["requirement"], "file": member, "sha256": sha256, "licence": wheel["licence"]}
    try:
        return wheel_files.wheel_file(spec, MODEL)[0]
    except WeightsError as exc:
        pytest.skip(f"silero-vad wheel not available: {exc}")


@pytest.fixture(scope="module")
def real(cfg, tmp_path_factory):
    """The real model in torch (weights from the wheel's ONNX), our exported ONNX, the wheel's own ONNX."""
    weights = wheel_member(cfg, cfg["weights"]["wheel"]["file"], cfg["weights"]["wheel"]["sha256"])
    model = tm.build(cfg)
    prov = tm.load_weights(model, weights, cfg)
    path = tmp_path_factory.mktemp("vad") / "model.onnx"
    from export.stage import export_onnx

    fam = load_family("silero_vad")
    feeds = {t["name"]: fam.random_input(t["name"], t["shape"], np.random.default_rng(0), cfg) for t in cfg["inputs"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(tm.export_module(model, cfg), cfg, feeds, path)
    try:
        wheel_onnx, wheel_prov = oracle.wheel_onnx(cfg)
    except WeightsError as exc:
        pytest.skip(f"silero-vad wheel not available: {exc}")
    return {"model": model, "prov": prov, "onnx": path, "wheel_onnx": wheel_onnx, "wheel_prov": wheel_prov,
            "sess": oracle.session(path)}


@pytest.fixture(scope="module")
def utils_vad(cfg):
    """silero-vad's own utils_vad.py out of the cached wheel (imports torch): the reference Python."""
    pytest.importorskip("packaging")
    path = wheel_member(cfg, "silero_vad/utils_vad.py")
    spec = importlib.util.spec_from_file_location("_silero_utils_vad", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The committed speech clips, and generated silence, low noise, pink noise and a 20 ms clip."""
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(5)
    white = 10 ** (-40 / 20) * rng.standard_normal(3 * SR)
    spec = np.fft.rfft(rng.standard_normal(4 * SR))
    pink = np.fft.irfft(spec / np.sqrt(np.maximum(np.arange(spec.shape[0]), 1)), 4 * SR)
    pink = 10 ** (-30 / 20) * pink / np.abs(pink).max()
    made = {"silence_2s.wav": np.zeros(2 * SR), "white_noise_3s.wav": white, "pink_noise_4s.wav": pink,
            "short_20ms.wav": 0.1 * rng.standard_normal(320)}
    out = {}
    for name, x in made.items():
        sf.write(str(d / name), x.astype(np.float32), SR, subtype="FLOAT")
        out[name] = d / name
    return {"speech": SPEECH, **out}


def torch_track(model, wave: np.ndarray) -> np.ndarray:
    """Our torch model chunk by chunk over the family's windows, the state carried."""
    state = torch.zeros(2, 1, vad.HIDDEN)
    probs = []
    with torch.no_grad():
        for w in vad.windows(wave):
            p, state = model(torch.from_numpy(w[None]), state)
            probs.append(float(p))
    return np.array(probs)


def run_items(sess, items: list[dict]) -> list[dict]:
    """What the stages do with state_carry: item k's state is item k-1's stateN; outputs + context per item."""
    carry = vad.state_carry({})
    outs, prev = [], None
    for it in items:
        feeds = {"input": it["input"], "state": it["state"]}
        if prev is not None:
            feeds.update({inp: prev[out] for out, inp in carry.items()})
        prev = dict(zip(["prob", "stateN"], sess.run(["prob", "stateN"], feeds)))
        outs.append({**prev, **{k: v for k, v in it.items() if k.startswith("_")}})
    return outs


# --- config, chunking ----------------------------------------------------------------------------------------

def test_config_loads_through_the_pipeline(cfg, tmp_path):
    fam = load_family(cfg["family"])
    assert cfg["family"] == "silero_vad" and fam.has("time_input") and fam.has("task_metrics")
    assert [(t["name"], t["shape"]) for t in cfg["inputs"]] == [("input", [1, 576]), ("state", [2, 1, 128])]
    assert [(t["name"], t["shape"]) for t in cfg["outputs"]] == [("prob", [1, 1]), ("stateN", [2, 1, 128])]
    assert fam.state_carry(cfg) == {"stateN": "state"}
    post = cfg["postprocess"]
    assert (post["threshold"], post["neg_threshold"], post["min_speech_duration_ms"], post["min_silence_duration_ms"],
            post["speech_pad_ms"], post["max_speech_duration_s"]) == (0.5, None, 250, 100, 30, None)
    assert vad.neg_threshold(post) == pytest.approx(0.35)
    text = (ROOT / "configs" / "more" / f"{MODEL}.yaml").read_text()
    bad = tmp_path / f"{MODEL}.yaml"
    for old, new, msg in [("threshold: 0.5", "threshold: 1.5", "threshold"),
                          ("sample_rate: 16000", "sample_rate: 8000", "16000"),
                          ("shape: [1, 576]", "shape: [1, 512]", "input")]:
        bad.write_text(text.replace(old, new, 1))
        with pytest.raises(ConfigError, match=msg):
            load_config(str(bad))


def test_windows_follow_silero_context_and_padding():
    """Chunk k = samples [512k, 512k+512) with the 64 samples before it; zeros before the first; last padded."""
    x = np.arange(1, 1301, dtype=np.float32)
    w = vad.windows(x)
    assert w.shape == (3, 576)
    assert np.array_equal(w[0], np.concatenate([np.zeros(64), x[:512]]))
    assert np.array_equal(w[1], x[448:1024])
    assert np.array_equal(w[2], np.concatenate([x[960:], np.zeros(1536 - 1300)]))
    assert vad.windows(np.ones(512, np.float32)).shape == (1, 576)
    assert vad.windows(np.ones(513, np.float32)).shape == (2, 576)
    assert vad.windows(np.ones(5, np.float32)).shape == (1, 576)


def test_prepare_items_and_short_audio_warning(cfg, tmp_path):
    path = tmp_path / "short.wav"
    sf.write(str(path), (0.1 * np.random.default_rng(0).standard_normal(160)).astype(np.float32), SR, subtype="FLOAT")
    items = vad.prepare(path, cfg, None)
    assert len(items) == 1 and items[0]["input"].shape == (1, 576) and items[0]["state"].shape == (2, 1, 128)
    assert not items[0]["state"].any() and items[0]["_samples"] == 160
    outs = [{"prob": np.array([[0.9]], np.float32), "stateN": np.zeros((2, 1, 128), np.float32), **items[0]}]
    summary, arrays = vad.postprocess(cfg, path, outs, {})
    assert "shorter than one 32 ms chunk" in summary["warning"] and summary["padded_samples"] == 352
    assert summary["segments_total"] == 0            # 10 ms of speech is under min_speech_duration_ms
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), SR)
    with pytest.raises(InputError):
        vad.prepare(empty, cfg, None)


# --- segments: silero's rules ---------------------------------------------------------------------------------

def hand_tracks() -> dict:
    on, off, mid = 0.9, 0.05, 0.42          # mid: between neg_threshold (0.35) and threshold (0.5)
    return {
        "speech_at_start": [on] * 20 + [off] * 20,
        "speech_at_end": [off] * 20 + [on] * 20,
        "all_speech": [on] * 30,
        "burst_under_min_speech": [off] * 10 + [on] * 6 + [off] * 20,          # 6 chunks = 192 ms < 250
        "burst_just_over_min_speech": [off] * 10 + [on] * 8 + [off] * 20,      # 256 ms
        "gap_under_min_silence": [off] * 5 + [on] * 15 + [off] * 3 + [on] * 15 + [off] * 10,   # 96 ms gap: merged
        "gap_over_min_silence": [off] * 5 + [on] * 15 + [off] * 6 + [on] * 15 + [off] * 10,
        "shortest_split": [off] * 5 + [on] * 15 + [off] * 4 + [on] * 15 + [off] * 10,   # 4 x 32 ms: not split
        "padding_both_sides": [off] * 5 + [on] * 15 + [off] * 5 + [on] * 15 + [off] * 10,  # 5 x 32 ms: split
        "hysteresis_mid_keeps_speech": [off] * 5 + [on] * 10 + [mid] * 10 + [on] * 5 + [off] * 10,
        "short_tail_speech": [off] * 30 + [on] * 3,
        "empty": [],
        "silence": [off] * 50,
    }


def test_segments_hand_made_expected():
    t = hand_tracks()
    ts = seg.speech_timestamps
    assert ts(t["speech_at_start"]) == [(0, 20 * 512 + 480)]
    assert ts(t["speech_at_end"]) == [(20 * 512 - 480, 40 * 512)]
    assert ts(t["all_speech"]) == [(0, 30 * 512)]
    assert ts(t["burst_under_min_speech"]) == []
    assert ts(t["burst_just_over_min_speech"]) == [(10 * 512 - 480, 18 * 512 + 480)]
    assert ts(t["gap_under_min_silence"]) == [(5 * 512 - 480, 38 * 512 + 480)]
    assert len(ts(t["gap_over_min_silence"])) == 2
    # silence ends speech once cur - temp_end >= 1600 samples: at the 5th silent chunk (2048), not the 4th (1536)
    assert ts(t["shortest_split"]) == [(5 * 512 - 480, 39 * 512 + 480)]
    a, b = ts(t["padding_both_sides"])               # the 160 ms gap is over 2 x 30 ms: both sides padded by 480
    assert a[1] == 20 * 512 + 480 and b[0] == 25 * 512 - 480
    assert ts(t["hysteresis_mid_keeps_speech"]) == [(5 * 512 - 480, 30 * 512 + 480)]
    assert ts(t["short_tail_speech"]) == []
    assert ts(t["empty"]) == [] and ts(t["silence"]) == []
    # a gap of 2 chunks (64 ms) with min_silence 0: split, and the gap under 2 x pad is halved between the two
    a, b = ts([0.9] * 10 + [0.05] * 2 + [0.9] * 10, min_silence_duration_ms=0, min_speech_duration_ms=0, speech_pad_ms=40)
    assert a[1] == b[0] == 10 * 512 + 512


def test_segments_equal_silero_rules(utils_vad):
    """Our NumPy rules against silero-vad's get_speech_timestamps_from_probs: hand-made and 300 random tracks, with
    default and other parameters (max_speech cuts in both modes, neg_threshold, pads)."""
    def theirs(p, **kw):
        kw = dict(kw)
        if kw.get("max_speech_duration_s") is None:
            kw["max_speech_duration_s"] = float("inf")
        if "min_silence_at_max_speech_ms" in kw:
            kw["min_silence_at_max_speech"] = kw.pop("min_silence_at_max_speech_ms")
        out = utils_vad.get_speech_timestamps_from_probs(list(map(float, p)), **kw)
        return [(d["start"], d["end"]) for d in out]

    variants = [{}, {"max_speech_duration_s": 1.0}, {"max_speech_duration_s": 0.7, "use_max_poss_sil_at_max_speech": False},
                {"threshold": 0.6, "neg_threshold": 0.2, "speech_pad_ms": 100, "min_silence_duration_ms": 300},
                {"min_speech_duration_ms": 0, "speech_pad_ms": 0, "min_silence_duration_ms": 0}]
    rng = np.random.default_rng(0)
    tracks = list(hand_tracks().values())
    for _ in range(300):                               # Markov tracks: runs of speech and silence, some noisy
        n, p, state = int(rng.integers(1, 400)), [], rng.random() < 0.5
        for _ in range(n):
            if rng.random() < 0.08:
                state = not state
            p.append(float(np.clip((0.8 if state else 0.15) + rng.normal(0, 0.2), 0, 1)))
        tracks.append(p)
    checked = 0
    for p in tracks:
        for kw in variants:
            length = len(p) * 512 - int(rng.integers(0, 512)) if p else 0
            assert seg.speech_timestamps(p, audio_length_samples=length, **kw) == \
                theirs(p, audio_length_samples=length, **kw), (p, kw)
            checked += 1
    assert checked == len(tracks) * len(variants)


# --- the real model against the wheel ------------------------------------------------------------------------

def test_weights_are_the_wheel_models(cfg, real):
    """silero_vad_16k_op15.onnx's tensors are the 16 kHz branch of silero_vad.onnx, bit for bit."""
    expected = tm.build(cfg).state_dict()
    a = tm.state_dict_from_onnx(Path(real["prov"]["path"]), expected)
    b = tm.state_dict_from_onnx(real["wheel_onnx"], expected)
    assert all(torch.equal(a[k], b[k]) for k in expected)
    assert real["prov"]["sha256"] == cfg["weights"]["wheel"]["sha256"]
    assert real["wheel_prov"]["sha256"] == cfg["model"]["oracle"]["sha256"] and "MIT" in real["wheel_prov"]["licence"]


def test_torch_and_onnx_equal_the_wheel_onnx(cfg, real, clips):
    """Per chunk, with the state carried: our torch model and our exported ONNX against the wheel's ONNX as its
    OnnxWrapper drives it, <= 1e-4 on speech, silence, noise and a 20 ms clip; the same segments."""
    wheel = oracle.WheelVAD(real["wheel_onnx"])
    files = [*clips["speech"], clips["silence_2s.wav"], clips["white_noise_3s.wav"], clips["pink_noise_4s.wav"],
             clips["short_20ms.wav"]]
    for path in files:
        wave, _ = vad.load_wave(path, cfg)
        ref = oracle.wheel_track(wheel, wave)
        ours_t = torch_track(real["model"], wave)
        assert np.abs(ours_t - ref).max() <= 1e-4, path.name
    result = oracle.compare_with_wheel(cfg, files, real["onnx"])
    assert result["passed"] and result["worst_abs_diff"] <= 1e-4 and result["all_same_segments"]
    by = {Path(f["file"]).name: f for f in result["files"]}
    for p in clips["speech"]:
        assert len(by[p.name]["segments_ours_s"]) >= 2, p.name            # speech with pauses
    for name in ("silence_2s.wav", "white_noise_3s.wav", "pink_noise_4s.wav", "short_20ms.wav"):
        assert by[name]["segments_ours_s"] == [], name


def test_segments_equal_the_wheels_own_python(cfg, real, utils_vad):
    """silero-vad's own OnnxWrapper + get_speech_timestamps on the same 16 kHz waveform: the same segments as our
    family's prepare -> our ONNX (state carried) -> postprocess, and the same probabilities as our wrapper."""
    model = utils_vad.OnnxWrapper(str(real["wheel_onnx"]), force_onnx_cpu=True)
    mine = oracle.WheelVAD(real["wheel_onnx"])
    for path in SPEECH:
        wave, _ = vad.load_wave(path, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = utils_vad.get_speech_timestamps(torch.from_numpy(wave), model, sampling_rate=SR)
        items = run_items(real["sess"], vad.prepare(path, cfg, None))
        summary, arrays = vad.postprocess(cfg, path, items, {})
        got = [(round(a * SR), round(b * SR)) for a, b in arrays["segments_s"]]
        assert got == [(d["start"], d["end"]) for d in theirs], path.name
        probs = model.audio_forward(torch.from_numpy(wave)[None], SR).numpy().reshape(-1)
        assert np.abs(probs - oracle.wheel_track(mine, wave)).max() <= 1e-6
        assert summary["segments_total"] >= 2 and summary["chunk_hop_s"] == 0.032


def test_the_wheels_safetensors_is_another_checkpoint(cfg, real):
    """silero_vad_16k.safetensors of the same wheel loads strictly into the same network, but its tensors are not
    those of the wheel's ONNX/JIT: on speech its probabilities differ by far more than 1e-4 (docs/silero-vad.md)."""
    path = wheel_member(cfg, "silero_vad/data/silero_vad_16k.safetensors",
                        "c59271c284ae9c8335d795d60e0bfdb71aaaceec578d9bd9ffc1b8153c319ea1")
    other = tm.build(cfg)
    prov = tm.load_weights(other, path, cfg)
    assert prov["format"] == "safetensors state dict"
    same = {k: torch.equal(v, real["model"].state_dict()[k]) for k, v in other.state_dict().items()}
    assert same["stft_conv.weight"] and not any(v for k, v in same.items() if k != "stft_conv.weight")
    wave, _ = vad.load_wave(SPEECH[0], cfg)
    assert np.abs(torch_track(other, wave) - torch_track(real["model"], wave)).max() > 0.05


# --- host outputs ---------------------------------------------------------------------------------------------

def test_postprocess_text_plots_gate_and_run_summary(cfg, real, clips, tmp_path):
    fam = load_family("silero_vad")
    per, summaries = [], []
    for path in [clips["speech"][0], clips["white_noise_3s.wav"]]:
        ref = run_items(real["sess"], vad.prepare(path, cfg, None))
        summary, arrays = vad.postprocess(cfg, path, ref, {"kind": "file", "sha256": "x"})
        json.dumps(summary)
        assert summary["duration_s"] > 0 and summary["chunks"] == arrays["prob"].shape[0] == len(ref)
        csv = fam.text_outputs(cfg, summary, arrays)["segments.csv"]
        assert csv.splitlines()[0] == "start_s,end_s,duration_s" and len(csv.splitlines()) == 1 + summary["segments_total"]
        plots = fam.report_plots(cfg, path, ref, arrays, {}, tmp_path / path.stem)
        assert plots and Path(plots[0][1]).stat().st_size > 1000
        per.append(fam.task_metrics(cfg, path, ref, ref, {}))
        summaries.append((str(path), summary))
    verdicts = fam.task_gate(cfg, per)
    assert [v["name"] for v in verdicts] == ["speech_chunks", "segment_boundaries"] and all(v["passed"] for v in verdicts)
    run = fam.run_summary(cfg, summaries)
    assert run["files"] == 2 and run["files_with_speech"] == 1 and run["files_without_speech"] == 1
    assert run["speech_s"] > 1 and len(run["per_file"]["rows"]) == 2
    # a target whose probabilities drop for 0.3 s inside speech: another segment count, the gate says so
    path = clips["speech"][0]
    ref = run_items(real["sess"], vad.prepare(path, cfg, None))
    _, arrays = vad.postprocess(cfg, path, ref, {})
    a, b = arrays["segments_s"][0]
    mid = int((a + b) / 2 / vad.HOP_S)
    tgt = [{**it, "prob": np.array([[0.01]], np.float32)} if mid <= k < mid + 10 else it for k, it in enumerate(ref)]
    m = fam.task_metrics(cfg, path, ref, tgt, {})
    assert not m["same_count"] and m["chunk_agreement"] < 1
    verdicts = {v["name"]: v for v in fam.task_gate(cfg, [m])}
    assert not verdicts["segment_boundaries"]["passed"] and "number of segments" in verdicts["segment_boundaries"]["line"]


def test_bench_extras_and_random_input(cfg):
    fam = load_family("silero_vad")
    rng = np.random.default_rng(0)
    feeds = {t["name"]: fam.random_input(t["name"], t["shape"], rng, cfg) for t in cfg["inputs"]}
    assert feeds["input"].shape == (1, 576) and feeds["state"].shape == (2, 1, 128)
    assert np.abs(feeds["state"][0]).max() < 1 and feeds["input"].dtype == np.float32
    extras = fam.bench_extras(cfg, feeds, 0.5)
    assert extras["audio_s_per_batch"] == pytest.approx(0.032) and extras["real_time_factor"] > 1


def test_oracle_cli_writes_results(cfg, real, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_RESULTS_DIR", str(tmp_path / "results"))
    assert oracle.main(["--model", MODEL, "--input", str(SPEECH[0]), "--onnx", str(real["onnx"])]) == 0
    data = json.loads((tmp_path / "results" / MODEL / oracle.ORACLE_FILE).read_text())
    assert data["passed"] and data["files"][0]["max_abs_diff"] <= 1e-4
    assert data["oracle"]["sha256"] == cfg["model"]["oracle"]["sha256"]


def test_host_side_imports_without_torch():
    import subprocess

    code = ("import sys; import models.silero_vad, models.silero_vad.oracle, models.silero_vad.segments; "
            "assert 'torch' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-1000:]
