"""CNN8RNN: published checkpoint layout, NumPy front-end, host + ONNX path vs the PyTorch model, audio edge cases."""
import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from models import cnn8rnn_sed as fam
from models.cnn8rnn_sed import torch_model as tm
from models.cnn8rnn_sed.events import detect_events
from models.cnn8rnn_sed.frontend import log_mel
from pipeline.config import load_config
from pipeline.errors import ConfigError, InputError, PipelineError, ToolchainError, WeightsError
from pipeline.metrics import rel_l2
from pipeline.runners import OrtRunner, TensorMeta

DATA = Path(__file__).parent / "data"
REC = DATA / "pluck_32k_mono.wav"
SPEECH = DATA / "speech_32k_mono.wav"
DYNAMIC = [TensorMeta("logmel", "float32", [None, 1, None, 64])]


@pytest.fixture(scope="module")
def cfg():
    return load_config("cnn8rnn_audioset_sed")


@pytest.fixture(scope="module")
def published(cfg, tmp_path_factory):
    """A network with known weights written in the published layout, and its ONNX export."""
    from safetensors.torch import save_file

    from export.stage import export_onnx

    net = tm.build(cfg)
    tm.apply_standin(net, cfg, seed=5)
    d = tmp_path_factory.mktemp("published")
    sd = net.state_dict()
    torch.save(sd, d / "pytorch_model.bin")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"architectures": ["Cnn8RnnSoundEventDetection"], "classes_num": 447,
                                               "sample_rate": 32000, "torch_dtype": "float32"}))
    labels = fam.labels(cfg, None)[::-1]                         # a different order, to see it is used
    (d / "classes.txt").write_text("\n".join(labels) + "\n")
    loaded = tm.build(cfg)
    prov = tm.load_weights(loaded, d, cfg)
    feeds = {"logmel": fam.random_input("logmel", [1, 1, 301, 64], np.random.default_rng(0), cfg)}
    export_onnx(tm.export_module(loaded, cfg), cfg, feeds, d / "model.onnx")
    return {"net": net, "dir": d, "prov": prov, "labels": labels, "onnx": d / "model.onnx"}


def host_path(cfg, onnx_path, source, meta, input_meta=DYNAMIC):
    items = fam.prepare(source, cfg, input_meta)
    with OrtRunner(onnx_path) as r:
        outs = [{**r.infer({"logmel": it["logmel"]}), **{k: v for k, v in it.items() if k.startswith("_")}}
                for it in items]
    return fam.postprocess(cfg, source, outs, meta)


def torch_reference(net, wave):
    with torch.no_grad():
        out = net(torch.from_numpy(wave)[None])
    return out["clipwise_output"][0].numpy(), out["framewise_output"][0].numpy()


def test_published_keys(cfg):
    sd = tm.build(cfg).state_dict()
    assert len(sd) == 67
    assert tuple(sd["melspec_extractor.spectrogram.window"].shape) == (1024,)
    assert tuple(sd["melspec_extractor.mel_scale.fb"].shape) == (513, 64)
    assert tuple(sd["rnn.weight_ih_l0_reverse"].shape) == (768, 512)
    assert sd["bn0.num_batches_tracked"].dtype == torch.int64


def make_signal(kind):
    sr, n = 32000, 32000 * 2 + 123
    t = np.arange(n) / sr
    rng = np.random.default_rng(1)
    return {"sine": 0.99 * np.sin(2 * np.pi * 1000 * t), "noise": rng.normal(0, 0.3, n).clip(-1, 1),
            "chirp": 0.5 * np.sin(2 * np.pi * (100 * t + 3000 * t ** 2)),
            "impulses": np.where(np.arange(n) % 4000 == 0, 1.0, 0.0), "near_silence": rng.normal(0, 1e-6, n),
            "recording": sf.read(REC, dtype="float32")[0][:n]}[kind].astype(np.float32)


@pytest.mark.parametrize("kind", ["sine", "noise", "chirp", "impulses", "near_silence", "recording"])
def test_frontend_matches_torchaudio(cfg, kind):
    """Against torchaudio's MelSpectrogram + AmplitudeToDB with the model's own float32 window and filterbank.

    Run in float64, torchaudio and ours agree to < 1e-3 dB wherever the reference is above -80 dB. torchaudio
    in float32 (how the published model runs) carries its own rounding: about 0.01 dB in bands 100 dB below
    the frame's peak; within 60 dB of the peak it agrees to < 1e-3 dB as well.
    """
    import torchaudio

    x = make_signal(kind)
    ms = torchaudio.transforms.MelSpectrogram(32000, 1024, 1024, 320, 50, 14000, n_mels=64, norm="slaney",
                                              mel_scale="slaney")
    to_db = torchaudio.transforms.AmplitudeToDB(top_db=None)
    buffers = (ms.spectrogram.window.numpy(), ms.mel_scale.fb.numpy())
    ours = log_mel(x, cfg["preprocess"], buffers)
    ref64 = to_db(ms.double()(torch.from_numpy(x).double())).numpy()
    ms.float()
    ref32 = to_db(ms(torch.from_numpy(x))).numpy()
    assert ours.shape == ref64.shape == (64, 1 + len(x) // 320)
    loud = ref64 > -80
    if loud.any():
        assert np.abs(ours - ref64)[loud].max() < 1e-3
        near_peak = (ref32 > -80) & (ref32 > ref32.max(axis=0, keepdims=True) - 60)
        assert np.abs(ours - ref32)[near_peak].max() < 1e-3
        assert np.abs(ours - ref32)[ref32 > -80].max() < 0.02
    computed = log_mel(x, cfg["preprocess"])           # no buffers: window/filterbank computed here
    if loud.any():
        assert np.abs(computed - ref64)[loud].max() < 2e-3


def test_computed_buffers_equal_torchaudio_to_one_ulp():
    import torchaudio

    from models.cnn8rnn_sed.frontend import hann_periodic, mel_filterbank

    ms = torchaudio.transforms.MelSpectrogram(32000, 1024, 1024, 320, 50, 14000, n_mels=64, norm="slaney",
                                              mel_scale="slaney")
    assert np.abs(hann_periodic(1024) - ms.spectrogram.window.numpy()).max() <= 6e-8
    assert np.abs(mel_filterbank(32000, 1024, 64, 50.0, 14000.0) - ms.mel_scale.fb.numpy()).max() < 5e-8


@pytest.mark.parametrize("fname", ["pytorch_model.bin", "model.safetensors"])
def test_checkpoint_file_loads_strictly(cfg, published, fname):
    net = tm.build(cfg)
    prov = tm.load_weights(net, published["dir"] / fname, cfg)
    for (k, a), (_, b) in zip(net.state_dict().items(), published["net"].state_dict().items()):
        assert torch.equal(a, b), k
    assert prov["labels"] == published["labels"] and prov["labels_source"].endswith("classes.txt")


@pytest.mark.parametrize("rec", [REC, SPEECH], ids=["pluck", "speech"])
def test_host_and_onnx_path_reproduce_the_network_32k(cfg, published, rec):
    wave = sf.read(rec, dtype="float32")[0]
    clip_ref, frame_ref = torch_reference(published["net"], wave)
    summary, arrays = host_path(cfg, published["onnx"], rec, published["prov"])
    assert arrays["framewise"].shape == frame_ref.shape == (1 + len(wave) // 320, 447)
    assert rel_l2(arrays["clipwise"], clip_ref) < 1e-4
    assert rel_l2(arrays["framewise"], frame_ref) < 1e-4
    top = summary["top_k"][0]
    assert top["label"] == published["labels"][int(np.argmax(clip_ref))]     # labels follow classes.txt


@pytest.mark.parametrize("rec", [REC, SPEECH], ids=["pluck", "speech"])
def test_44k_stereo_recording_stays_close(cfg, published, tmp_path, rec):
    wave = sf.read(rec, dtype="float32")[0]
    clip_ref, frame_ref = torch_reference(published["net"], wave)
    from scipy.signal import resample as fft_resample        # an ideal band-limited upsampler, not ours

    stereo = np.stack([fft_resample(wave.astype(np.float64), len(wave) * 441 // 320)] * 2, axis=1)
    sf.write(tmp_path / "rec44.wav", stereo, 44100, subtype="FLOAT")
    summary, arrays = host_path(cfg, published["onnx"], tmp_path / "rec44.wav", published["prov"])
    assert summary["sample_rate_in"] == 44100 and summary["channels_in"] == 2
    assert arrays["framewise"].shape == frame_ref.shape
    assert rel_l2(arrays["clipwise"], clip_ref) < 1e-2
    assert rel_l2(arrays["framewise"], frame_ref) < 1e-2


def test_exported_gru_is_linear_before_reset(published):
    model = onnx.load(str(published["onnx"]))
    grus = [n for n in model.graph.node if n.op_type == "GRU"]
    assert len(grus) == 1
    attrs = {a.name: a for a in grus[0].attribute}
    assert attrs["linear_before_reset"].i == 1 and attrs["direction"].s == b"bidirectional"
    attrs["linear_before_reset"].i = 0
    with pytest.raises(ToolchainError, match="linear_before_reset=0; PyTorch's GRU needs 1"):
        tm.check_onnx(model, load_config("cnn8rnn_audioset_sed"))


@pytest.mark.parametrize("seconds", [1, 3, 10, 60])
def test_onnx_parity_on_clip_lengths(cfg, published, seconds):
    frames = 1 + seconds * 32000 // 320
    x = fam.random_input("logmel", [1, 1, frames, 64], np.random.default_rng(seconds), cfg)
    with torch.no_grad():
        seg, clip = tm.export_module(published["net"], cfg)(torch.from_numpy(x))
    with OrtRunner(published["onnx"]) as r:
        out = r.infer({"logmel": x})
    assert out["segmentwise_output"].shape == (1, frames // 4, 447)
    assert rel_l2(out["segmentwise_output"], seg.numpy()) < 1e-5
    assert rel_l2(out["clipwise_output"], clip.numpy()) < 1e-5


def test_windows_for_a_fixed_length_target(cfg, published, tmp_path):
    """25 s through 10 s windows overlapping by 25%: 4 windows stepping 748 frames, the frame count of the whole
    file, clip = pooling over the merged segments; close to one pass away from the window edges."""
    rng = np.random.default_rng(2)
    wave = np.concatenate([fam.synth_scene(rng, 32000, 5.0) for _ in range(5)])
    sf.write(tmp_path / "long.wav", wave, 32000, subtype="FLOAT")
    fixed = [TensorMeta("logmel", "float32", [1, 1, 1001, 64])]
    items = fam.prepare(tmp_path / "long.wav", cfg, fixed)
    assert [it["_window"].start for it in items] == [0, 748, 1496, 2244]
    assert all(it["logmel"].shape == (1, 1, 1001, 64) for it in items)
    summary, arrays = host_path(cfg, published["onnx"], tmp_path / "long.wav", published["prov"], fixed)
    assert summary["windows"] == 4 and arrays["framewise"].shape == (1 + len(wave) // 320, 447)
    assert summary["window_overlap_s"] == pytest.approx(3 * 2.53)
    seg = arrays["segmentwise"].astype(np.float64)
    assert seg.shape == (625, 447) and np.allclose(arrays["clipwise"], (seg * seg).sum(0) / seg.sum(0), rtol=1e-5)
    _, one_pass = host_path(cfg, published["onnx"], tmp_path / "long.wav", published["prov"])
    a, b = arrays["framewise"], one_pass["framewise"]
    interior = np.ones(len(a), bool)
    for edge in (748, 1001, 1496, 1749, 2244, 2497, len(a)):
        interior[max(0, edge - 60):edge + 60] = False
    assert rel_l2(a[interior], b[interior]) < 0.01
    assert rel_l2(a, b) > 1e-4


def test_wrong_checkpoint_names_keys(cfg, tmp_path):
    sd = tm.build(cfg).state_dict()
    sd.pop("rnn.weight_hh_l0")
    sd["head.fc.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"1 missing keys \['rnn\.weight_hh_l0'\], "
                                            r"1 unexpected keys \['head\.fc\.weight'\]"):
        tm.load_weights(tm.build(cfg), tmp_path, cfg)


def test_labels_fallback_and_mismatch(cfg, published, tmp_path):
    import shutil

    shutil.copy(published["dir"] / "model.safetensors", tmp_path / "model.safetensors")
    prov = tm.load_weights(tm.build(cfg), tmp_path, cfg)
    assert "labels" not in prov and prov["labels_source"].startswith("bundled")
    assert fam.labels(cfg, prov) == fam.read_labels(fam.ROOT / cfg["model"]["classes_file"])
    assert len(fam.labels(cfg, prov)) == 447 and fam.labels(cfg, published["prov"]) == published["labels"]
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(WeightsError, match="has 2 labels, the model has 447 classes"):
        tm.load_weights(tm.build(cfg), tmp_path, cfg)
    (tmp_path / "config.json").write_text(json.dumps({"classes_num": 527, "sample_rate": 32000}))
    with pytest.raises(WeightsError, match="says classes_num=527"):
        tm.load_weights(tm.build(cfg), tmp_path, cfg)


def test_events_from_a_probability_track(cfg):
    post = dict(cfg["postprocess"], onset_threshold=0.5, offset_threshold=0.3, min_duration_s=0.05, merge_gap_s=0.03)
    p = np.zeros((300, 3), np.float32)
    p[10:40, 0] = 0.9          # 0.10-0.40 s
    p[40:45, 0] = 0.35         # hysteresis: still above offset -> extends to 0.45
    p[47:60, 0] = 0.8          # gap of 2 frames (0.02 s) -> merged
    p[100:103, 1] = 0.95       # 30 ms: shorter than min duration -> dropped
    p[200:250, 2] = 0.4        # never above onset -> no event
    ev = detect_events(p, ["a", "b", "c"], post, 0.01)
    assert ev == [{"label": "a", "index": 0, "onset_s": 0.1, "offset_s": 0.6, "peak_score": pytest.approx(0.9)}]


def write(path, data, sr=32000, subtype="FLOAT"):
    sf.write(path, data, sr, subtype=subtype)
    return path


def test_bad_audio_files(cfg, tmp_path):
    cases = {
        "empty.wav": (lambda p: write(p, np.zeros(0, np.float32)), "holds no audio samples"),
        "short.wav": (lambda p: write(p, np.ones(320, np.float32) * 0.1), "is 10.0 ms long; the model needs at least"),
        "nan.wav": (lambda p: write(p, np.array([0.1, np.nan] * 8000, np.float32)), "contains NaN/Inf samples"),
        "corrupt.wav": (lambda p: p.write_bytes(b"RIFF\x00\x00garbage"), "cannot be decoded as audio"),
    }
    for name, (make, message) in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(InputError, match=message):
            fam.prepare(path, cfg, DYNAMIC)


def test_silent_and_clipped_are_documented_results(cfg, published, tmp_path):
    silent = write(tmp_path / "silent.wav", np.zeros(32000, np.float32), subtype="PCM_16")
    summary, arrays = host_path(cfg, published["onnx"], silent, published["prov"])
    assert summary["silent"] and "digital silence" in summary["warning"]
    assert np.isfinite(arrays["framewise"]).all()
    loud = write(tmp_path / "clipped.wav", np.sign(np.sin(np.arange(32000) / 5)).astype(np.float32), subtype="PCM_16")
    summary, _ = host_path(cfg, published["onnx"], loud, published["prov"])
    assert "clipped recording" in summary["warning"]


@pytest.fixture(scope="module")
def standin(cfg):
    net = tm.build(cfg)
    return net, tm.apply_standin(net, cfg, seed=0)


def test_standin_weights_look_trained(cfg, standin):
    """Clip probabilities on real-looking audio spread from ~1e-4 (rare classes) to a few tenths, none saturated."""
    net, prov = standin
    assert prov["kind"] == "stand-in" and prov["seed"] == 0 and len(fam.labels(cfg, prov)) == 447
    for rec in (REC, SPEECH):
        clip, frames = torch_reference(net, sf.read(rec, dtype="float32")[0])
        assert clip.min() < 1e-3 and 0.2 < clip.max() < 0.95          # spread ...
        assert np.median(clip) < 0.05 and np.quantile(clip, 0.9) / np.quantile(clip, 0.1) > 20   # ... mostly rare
        assert np.mean((clip > 0.4) & (clip < 0.6)) < 0.02             # not all near 0.5
        assert frames.max() < 0.999 and np.mean(frames > 0.5) < 0.01   # not saturated


def test_generated_sources_cover_rates_and_channels(cfg, tmp_path):
    paths = fam.generate_sources(cfg, tmp_path, count=4)
    infos = [sf.info(str(p)) for p in paths]
    assert {(i.samplerate, i.channels) for i in infos} == {(32000, 1), (44100, 2), (16000, 1), (48000, 2)}
    assert [p.name for p in paths] == [p.name for p in fam.generate_sources(cfg, tmp_path / "again", count=4)]


def test_shortest_accepted_clip_gives_one_segment(cfg, published, tmp_path):
    """960 samples (30 ms) = 4 frames = 1 segment goes through; 959 is refused with the minimum named."""
    rng = np.random.default_rng(3)
    ok = write(tmp_path / "30ms.wav", rng.normal(0, 0.1, 960).astype(np.float32))
    wave = sf.read(ok, dtype="float32")[0]
    clip_ref, frame_ref = torch_reference(published["net"], wave)
    summary, arrays = host_path(cfg, published["onnx"], ok, published["prov"])
    assert arrays["segmentwise"].shape == (1, 447) and arrays["framewise"].shape == frame_ref.shape == (4, 447)
    assert rel_l2(arrays["clipwise"], clip_ref) < 1e-4 and rel_l2(arrays["framewise"], frame_ref) < 1e-4
    short = write(tmp_path / "short.wav", rng.normal(0, 0.1, 959).astype(np.float32))
    with pytest.raises(InputError, match=r"needs at least 30 ms \(960 samples at 32000 Hz\)"):
        fam.prepare(short, cfg, DYNAMIC)


def test_plan_windows_cover_the_file(cfg):
    """Windows cover the file in order, start on whole segments, feed what the target takes, overlap as set."""
    pre = cfg["preprocess"]
    cap = fam.pass_frames(pre)
    assert cap == 28576                                          # 2048 MB / 430 MB per minute = 4.76 min
    for fixed in (None, 1001, 1000):
        for t in (4, 5, 101, 1000, 1001, 1002, 2001, 6001, cap, cap + 1, 100001, 360001):
            plan = fam.plan_windows(t, pre, fixed)
            assert plan[0].start == 0 and plan[-1].start + plan[-1].real == t
            assert all(w.start % 4 == 0 and w.fed >= max(w.real, 4) and w.total == t for w in plan)
            assert all(a.start < b.start <= a.start + a.real for a, b in zip(plan, plan[1:]))   # no gap
            if fixed:
                assert {w.fed for w in plan} == {fixed}
                assert all(b.start - a.start == 748 for a, b in zip(plan, plan[1:]))
            elif t <= cap:
                assert plan == [(0, t, t, t)]                                   # one pass
            else:
                assert all(w.real == w.fed <= cap for w in plan)               # no fill-up, within the budget
                assert all(a.start + a.real - b.start >= cap // 4 - 4 for a, b in zip(plan, plan[1:]))
                assert len(plan) == 1 + -(-(t - cap) // (cap - 7144))          # as few windows as possible
    assert len(fam.plan_windows(360001, pre, 1001)) == 481


def test_audio_windows_crossfade_to_the_file_grid():
    """The audio layer's merge: weights sum to 1 on every row, ramps only across overlaps, and a signal that
    every window sees identically comes back unchanged."""
    from modality import audio

    for kw in ({"max_frames": 400, "overlap": 100}, {"max_frames": 400, "overlap": 0}, {"fixed": 1001, "overlap": 250}):
        plan = audio.plan_windows(2345, multiple=4, min_frames=4, **kw)
        rows = [-(-w.real // 4) for w in plan]
        weights = audio.crossfade_weights(plan, rows, per=4)
        total = np.zeros(-(-2345 // 4))
        for w, x in zip(plan, weights):
            total[w.start // 4: w.start // 4 + len(x)] += x
            assert np.all(x > 0) and np.all(x <= 1)
        assert np.allclose(total, 1.0)
        truth = np.random.default_rng(0).random((len(total), 3))
        parts = [truth[w.start // 4: w.start // 4 + n] for w, n in zip(plan, rows)]
        assert np.allclose(audio.merge_frames(parts, plan, per=4), truth)
    plan = audio.plan_windows(1000, max_frames=400, overlap=100, multiple=1)
    w = audio.crossfade_weights(plan, [p.real for p in plan])
    assert w[0][0] == 1.0 and w[0][-1] < 0.01 and w[1][0] < 0.01      # a window fades out where the next fades in
    assert audio.duration_s(48000, 32000) == 1.5 and audio.real_time_factor(10.0, 0.5) == 20.0
    assert audio.real_time_factor(1.0, 0.0) is None


def torch_on_logmel(net, logmel):
    """PyTorch's segmentwise (S, C) and framewise (T, C) for a (T, 64) log-mel, published frame rule."""
    with torch.no_grad():
        seg, _ = net.from_logmel(torch.from_numpy(np.ascontiguousarray(logmel))[None, None])
    return seg[0].numpy(), fam.frames_from_outputs(None, {"segmentwise_output": seg.numpy()}, logmel.shape[0])


def with_pass_frames(cfg, frames, overlap):
    small = copy.deepcopy(cfg)
    small["preprocess"]["max_pass_mb"] = frames * fam.PASS_MB_PER_MINUTE / 6000 + 1e-6
    small["preprocess"]["window_overlap"] = overlap
    return small


def test_long_file_on_a_dynamic_target_uses_unpadded_windows(cfg, published, tmp_path):
    """A 400-frame budget without overlap, a 10.5 s file (1051 frames): 3 windows of 352, 352, 347 frames,
    nothing filled up; each window is the PyTorch model on that slice of the file's log-mel; clip pools all
    segments."""
    small = with_pass_frames(cfg, 400, 0.0)
    rng = np.random.default_rng(4)
    wave = np.concatenate([fam.synth_scene(rng, 32000, 3.5) for _ in range(3)])
    src = write(tmp_path / "long.wav", wave)
    items = fam.prepare(src, small, DYNAMIC)
    assert [it["_window"] for it in items] == [(0, 352, 352, 1051), (352, 352, 352, 1051), (704, 347, 347, 1051)]
    summary, arrays = host_path(small, published["onnx"], src, published["prov"])
    assert summary["windows"] == 3 and summary["silence_fill_s"] == 0 and summary["window_overlap_s"] == 0
    mel = log_mel(wave, cfg["preprocess"]).T
    segs, frames = zip(*[torch_on_logmel(published["net"], mel[a:b]) for a, b in ((0, 352), (352, 704), (704, 1051))])
    assert rel_l2(arrays["framewise"], np.concatenate(frames)) < 1e-4
    seg = np.concatenate(segs).astype(np.float64)
    assert arrays["segmentwise"].shape == (88 + 88 + 86, 447) and rel_l2(arrays["segmentwise"], seg) < 1e-4
    assert rel_l2(arrays["clipwise"], (seg ** 2).sum(0) / seg.sum(0)) < 1e-4


@pytest.fixture(scope="module")
def long_memory(cfg):
    """Stand-in weights whose GRU remembers for seconds (update-gate bias +3: z ~ 0.95 per 40 ms segment, the
    kind of memory that makes trained weights differ 30 s away from a cut), and 60 s of varied audio."""
    net = tm.build(cfg)
    tm.apply_standin(net, cfg, seed=3)
    with torch.no_grad():
        for name in ("bias_hh_l0", "bias_hh_l0_reverse"):
            getattr(net.rnn, name)[256:512] += 3.0                    # PyTorch gate order r, z, n
    rng = np.random.default_rng(9)
    wave = np.concatenate([fam.synth_scene(rng, 32000, 5.0) for _ in range(12)])
    return net, wave


def torch_items(net, items):
    out = []
    for it in items:
        with torch.no_grad():
            seg, clip = net.from_logmel(torch.from_numpy(it["logmel"]))
        out.append({"segmentwise_output": seg.numpy(), "clipwise_output": clip.numpy(),
                    **{k: v for k, v in it.items() if k.startswith("_")}})
    return out


def frame_rel_l2(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def test_long_file_windows_against_one_pass(cfg, long_memory, tmp_path):
    """60 s with a 20 s pass budget: windowed vs one pass, with long-memory GRU weights.

    Measured (segments, relative L2 per segment; clip scores relative L2): cut without overlap median 2.2%,
    p90 68%, clip 38%; crossfaded over a 10% overlap 1.2% / 24% / 6.3%; over 25% (the default) 0.4% / 13% /
    3.7%. A file within the budget is one pass: the model's own outputs, exactly."""
    net, wave = long_memory
    src = write(tmp_path / "60s.wav", wave)
    meta = {"kind": "stand-in"}
    one = fam.prepare(src, with_pass_frames(cfg, 6001, 0.25), DYNAMIC)
    assert len(one) == 1 and one[0]["_window"] == (0, 6001, 6001, 6001)
    # the one item is the file's whole log-mel (dB; the host may use the exported float32 window and filterbank,
    # 6e-8 away from the computed ones, and another FFT/BLAS summation order: ~1e-5 dB; a cut or shift moves dB)
    np.testing.assert_allclose(one[0]["logmel"][0, 0], log_mel(wave, cfg["preprocess"]).T, rtol=0, atol=1e-3)
    outs = torch_items(net, one)
    _, arrays = fam.postprocess(cfg, src, outs, meta)
    ref_seg, ref_clip = outs[0]["segmentwise_output"][0], outs[0]["clipwise_output"][0]
    # one pass: the model's outputs come back untouched (no crossfade, no re-pooling), to the bit (the same arrays)
    assert np.array_equal(arrays["segmentwise"], ref_seg) and np.array_equal(arrays["clipwise"], ref_clip)
    figures = {}
    for overlap in (0.0, 0.25):
        items = fam.prepare(src, with_pass_frames(cfg, 2000, overlap), DYNAMIC)
        assert len(items) == 4 and all(it["_window"].fed <= 2000 for it in items)
        summary, arrays = fam.postprocess(cfg, src, torch_items(net, items), meta)
        assert arrays["segmentwise"].shape == ref_seg.shape and arrays["framewise"].shape == (6001, 447)
        per_seg = frame_rel_l2(arrays["segmentwise"], ref_seg)
        figures[overlap] = (np.median(per_seg), np.quantile(per_seg, 0.9), rel_l2(arrays["clipwise"], ref_clip))
    print("windowed vs one pass (median, p90 segment rel L2; clip rel L2):", figures)
    cut, faded = figures[0.0], figures[0.25]
    assert cut[0] > 0.01 and cut[2] > 0.1                  # long GRU memory: a plain cut is far from one pass
    assert faded[0] < 0.01 and faded[1] < 0.2 and faded[2] < 0.06
    assert faded[0] < cut[0] / 3 and faded[2] < cut[2] / 5


def test_short_file_on_a_fixed_target_pools_only_real_segments(cfg, published, tmp_path):
    """3 s (301 frames) in a 1001-frame static input: the file's log-mel followed by 700 silence frames
    (-100 dB); the fill's frames and segments are cut and the clip pools the 75 whole segments of real frames
    (as one pass does: 301 // 4)."""
    wave = fam.synth_scene(np.random.default_rng(5), 32000, 3.0)
    src = write(tmp_path / "3s.wav", wave)
    fixed = [TensorMeta("logmel", "float32", [1, 1, 1001, 64])]
    items = fam.prepare(src, cfg, fixed)
    assert len(items) == 1 and items[0]["_window"] == (0, 301, 1001, 301)
    assert np.all(items[0]["logmel"][0, 0, 301:] == -100.0)
    summary, arrays = host_path(cfg, published["onnx"], src, published["prov"], fixed)
    assert summary["silence_fill_s"] == pytest.approx(7.0) and arrays["framewise"].shape == (301, 447)
    filled = np.concatenate([log_mel(wave, cfg["preprocess"]).T, np.full((700, 64), -100.0, np.float32)])
    seg, _ = torch_on_logmel(published["net"], filled)
    seg = seg[:75].astype(np.float64)
    frames = fam.frames_from_segments(seg, 301)                # the frame rule on the file's grid, as one pass
    assert rel_l2(arrays["framewise"], frames) < 1e-4 and rel_l2(arrays["segmentwise"], seg) < 1e-4
    assert rel_l2(arrays["clipwise"], (seg ** 2).sum(0) / seg.sum(0)) < 1e-4


def test_events_match_a_frame_by_frame_reference():
    """The vectorised hysteresis equals a plain loop on random tracks."""
    from models.cnn8rnn_sed.events import class_events

    def reference(p, onset, offset, min_frames, max_gap):
        found, t = [], 0
        while t < len(p):
            if p[t] >= onset:
                s = t
                while s > 0 and p[s - 1] >= offset:
                    s -= 1
                e = t
                while e < len(p) and p[e] >= offset:
                    e += 1
                found.append([s, e])
                t = e
            else:
                t += 1
        merged = []
        for r in found:
            if merged and r[0] - merged[-1][1] <= max_gap:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        return [(s, e, float(p[s:e].max())) for s, e in merged if e - s >= min_frames]

    rng = np.random.default_rng(6)
    for _ in range(200):
        p = np.convolve(rng.uniform(0, 1, 400), np.ones(5) / 5, mode="same").astype(np.float32)
        args = (rng.uniform(0.5, 0.7), rng.uniform(0.3, 0.5), int(rng.integers(1, 8)), int(rng.integers(0, 6)))
        assert class_events(p, *args) == reference(p, *args)


def test_all_classes_at_once_equal_class_events_class_by_class():
    """all_class_events (every candidate class in one pass, as detect_events runs it) gives exactly the
    (class, start, end, peak) of class_events per class, including runs at both ends and all-on tracks."""
    from models.cnn8rnn_sed.events import all_class_events, class_events

    rng = np.random.default_rng(7)
    for trial in range(150):
        t, c = int(rng.integers(1, 300)), int(rng.integers(1, 40))
        frames = np.repeat(rng.uniform(0, 1, (t // 4 + 1, c)) ** rng.uniform(0.5, 4), 4, axis=0)[:t]
        frames = frames.astype(np.float32 if trial % 2 else np.float64)
        frames[:, 0] = 0.95
        frames[0, -1] = frames[-1, -1] = 0.8
        args = (rng.uniform(0.5, 0.7), rng.uniform(0.3, 0.5), int(rng.integers(1, 8)), int(rng.integers(0, 6)))
        classes = np.nonzero(frames.max(axis=0) >= args[0])[0]
        want = [(int(k), s, e, peak) for k in classes for s, e, peak in
                class_events(np.ascontiguousarray(frames[:, k]), *args)]
        got = all_class_events(frames, classes, *args)
        assert got == want and all(type(a) is type(b) for g, w in zip(got, want) for a, b in zip(g, w))


def test_event_offsets_stay_inside_the_audio():
    post = {"onset_threshold": 0.5, "offset_threshold": 0.3, "min_duration_s": 0.01, "merge_gap_s": 0.0}
    p = np.zeros((101, 1), np.float32)
    p[90:, 0] = 0.9
    ev = detect_events(p, ["a"], post, 0.01, duration_s=1.003)
    assert ev[0]["onset_s"] == 0.9 and ev[0]["offset_s"] == 1.003


def test_batchnorm_statistics_match_activations(standin):
    """Stand-in BN statistics are what each BN sees: exactly on the calibration audio, closely on the
    recordings (normalised activations: per-channel mean near 0, variance near 1 for most channels)."""
    net = standin[0]
    bns = tm.batchnorms(net)
    stats = {}

    def hook(i):
        def record(bn, inp):
            z = (inp[0].double() - bn.running_mean.double()[None, :, None, None]) / \
                bn.running_var.double().sqrt()[None, :, None, None]
            stats[i] = (z.mean(dim=(0, 2, 3)).numpy(), z.var(dim=(0, 2, 3), unbiased=False).numpy())
        return record

    hooks = [bn.register_forward_pre_hook(hook(i)) for i, bn in enumerate(bns)]
    try:
        with torch.no_grad():
            net.from_logmel(net.front_end(torch.from_numpy(tm.calibration_audio(32000, 0))))
        assert len(stats) == 9
        for mean, var in stats.values():
            assert np.abs(mean).max() < 1e-4 and np.all(var < 1.0) and np.median(var) > 0.9
        for rec in (REC, SPEECH):
            with torch.no_grad():
                net(torch.from_numpy(sf.read(rec, dtype="float32")[0])[None])
            for i, (mean, var) in stats.items():
                assert np.median(np.abs(mean)) < 1.0 and 0.1 < np.median(var) < 10, (rec.name, i)
    finally:
        for h in hooks:
            h.remove()


def test_streamed_decoding_equals_one_shot_resampling(cfg, tmp_path):
    """Blocks of 2^18 frames through soxr's stream = one soxr call on the whole mono mix."""
    import soxr

    from modality.audio import load_audio

    rng = np.random.default_rng(7)
    stereo = np.stack([fam.synth_scene(rng, 48000, 12.0), fam.synth_scene(rng, 48000, 12.0)], axis=1)
    src = write(tmp_path / "48k.wav", stereo, sr=48000)
    wave, info = load_audio(src, 32000, 960)
    ref = soxr.resample(stereo.astype(np.float32).mean(axis=1).astype(np.float64), 48000, 32000, "VHQ")
    assert info["channels_in"] == 2 and info["samples_in"] == 576000 and wave.shape == ref.shape == (384000,)
    assert np.abs(wave - ref).max() < 1e-6


def test_config_checks(cfg):
    bad = copy.deepcopy(cfg)
    bad["model"]["classes_num"] = 527
    with pytest.raises(ConfigError, match="has 447 names but classes_num is 527"):
        fam.check_config(bad, "x.yaml")
    bad = copy.deepcopy(cfg)
    bad["postprocess"]["offset_threshold"] = 0.9
    with pytest.raises(ConfigError, match="offset_threshold <= onset_threshold"):
        fam.check_config(bad, "x.yaml")


def test_ogg_stereo_48k_decodes(cfg, tmp_path):
    x = fam.synth_scene(np.random.default_rng(8), 48000, 1.0)
    src = tmp_path / "clip.ogg"
    sf.write(src, np.stack([x, 0.5 * x], axis=1), 48000, format="OGG", subtype="VORBIS")
    items = fam.prepare(src, cfg, DYNAMIC)
    assert len(items) == 1 and items[0]["logmel"].shape == (1, 1, 101, 64)
    assert items[0]["_info"]["channels_in"] == 2 and items[0]["_info"]["sample_rate_in"] == 48000
    assert fam.find_sources(str(tmp_path), cfg) == [src]


def test_corrupt_checkpoint_is_one_line(cfg, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match=r"cannot read checkpoint .*model\.safetensors") as err:
        tm.load_weights(tm.build(cfg), tmp_path, cfg)
    assert "\n" not in str(err.value)


def test_family_contract_hooks(cfg, published, tmp_path):
    """The hooks the stages call, through pipeline.config.load_family: capabilities and the keys they imply,
    labels, the frame matrix from raw outputs, host artifacts, check_onnx(onnx_model, cfg)."""
    from pipeline import contract
    from pipeline.config import load_family

    family = load_family(cfg["family"])
    assert family.capabilities == {"time_input", "frame_output", "labels"}
    assert family.host_artifacts(cfg) == ["frontend.npz"]
    assert family.labels(cfg, published["prov"]) == published["labels"]
    assert family.labels(cfg, {"kind": "stand-in"}) == fam.read_labels(fam.ROOT / cfg["model"]["classes_file"])
    seg = np.random.default_rng(0).random((1, 5, 447)).astype(np.float32)
    frames = family.frames_from_outputs(cfg, {"segmentwise_output": seg, "clipwise_output": seg[:, 0]}, 23)
    assert frames.shape == (23, 447) and np.array_equal(frames[[0, 3, 4, 19, 20, 22]], seg[0, [0, 0, 1, 4, 4, 4]])
    family.check_onnx(onnx.load(str(published["onnx"])), cfg)               # a correct graph passes
    summary, arrays = host_path(cfg, published["onnx"], REC, published["prov"])
    assert summary[contract.DURATION_KEY] == pytest.approx(sf.info(str(REC)).duration)
    assert summary[contract.FRAME_HOP_KEY] == 0.01 and contract.FRAME_ARRAY in arrays
    assert [t["label"] for t in summary[contract.TOP_K_KEY]][0] in published["labels"]


PEAK_RSS = """
import sys
import numpy as np, onnxruntime as ort, psutil


def high_water_mb():     # VmHWM: peak resident memory of this program (ru_maxrss would carry the parent's over exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).normal(-40, 20, (1, 1, int(sys.argv[2]), 64)).astype(np.float32)
before = psutil.Process().memory_info().rss / 2**20
for _ in range(2):                      # the second pass shows the steady state of onnxruntime's arena
    s.run(None, {"logmel": x})
print(high_water_mb() - before)
"""


def test_pass_memory_per_minute_is_what_the_budget_assumes(published):
    """PASS_MB_PER_MINUTE (430) turns preprocess.max_pass_mb into a frame cap: onnxruntime passes over 1 and
    2 minutes of log-mel (fresh processes, peak resident memory above the loaded session, two passes) need
    about that much per minute (+-25%)."""
    import subprocess
    import sys

    mb = [float(subprocess.run([sys.executable, "-c", PEAK_RSS, str(published["onnx"]), str(frames)], check=True,
                               capture_output=True, text=True, timeout=600).stdout.split()[-1])
          for frames in (6001, 12001)]
    assert 0.75 * fam.PASS_MB_PER_MINUTE < mb[1] - mb[0] < 1.25 * fam.PASS_MB_PER_MINUTE, mb
    assert 0.75 * fam.PASS_MB_PER_MINUTE < mb[0] < 1.25 * fam.PASS_MB_PER_MINUTE, mb
