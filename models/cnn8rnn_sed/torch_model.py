"""Torch side of CNN8RNN (wsntxxn/cnn8rnn-audioset-sed): the published network, checkpoints, stand-in weights.

Module names follow the published state dict (67 keys) so `pytorch_model.bin` / `model.safetensors` load
with strict=True. The ONNX graph starts after the front-end: it takes the log-mel (B, 1, T, 64) and returns
segmentwise (B, S, 447) and clipwise (B, 447) probabilities; the host computes the log-mel in NumPy.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import check_keys, read_state_dict
from pipeline.errors import PipelineError, ToolchainError, WeightsError
from pipeline.provenance import sha256_file

from . import read_labels
from .frontend import hann_periodic, mel_filterbank

CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin")


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x, pool_size):
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool_size) + F.max_pool2d(x, pool_size)


class Cnn8Rnn(nn.Module):
    def __init__(self, classes_num: int = 447, sample_rate: int = 32000, pre: dict | None = None):
        super().__init__()
        import torchaudio

        pre = pre or {"n_fft": 1024, "hop_length": 320, "n_mels": 64, "f_min": 50.0, "f_max": 14000.0}
        self.melspec_extractor = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=pre["n_fft"], win_length=pre["n_fft"], hop_length=pre["hop_length"],
            f_min=pre["f_min"], f_max=pre["f_max"], n_mels=pre["n_mels"], norm="slaney", mel_scale="slaney")
        self.db_transform = torchaudio.transforms.AmplitudeToDB(top_db=None)
        self.bn0 = nn.BatchNorm2d(pre["n_mels"])
        self.conv_block1 = ConvBlock(1, 64)
        self.conv_block2 = ConvBlock(64, 128)
        self.conv_block3 = ConvBlock(128, 256)
        self.conv_block4 = ConvBlock(256, 512)
        self.fc1 = nn.Linear(512, 512)
        self.rnn = nn.GRU(512, 256, bidirectional=True, batch_first=True)
        self.fc_audioset = nn.Linear(512, classes_num)

    def front_end(self, waveform):
        """(B, N) -> log-mel (B, 1, T, 64), exactly the published model's first steps."""
        x = self.db_transform(self.melspec_extractor(waveform))      # (B, 64, T)
        return x.transpose(1, 2).unsqueeze(1)

    def from_logmel(self, x):
        """(B, 1, T, 64) log-mel -> segmentwise (B, S, C), clipwise (B, C)."""
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        x = self.conv_block1(x, (2, 2))
        x = self.conv_block2(x, (2, 2))
        x = self.conv_block3(x, (1, 2))
        x = self.conv_block4(x, (1, 2))
        x = torch.mean(x, dim=3).transpose(1, 2)                    # (B, S, 512)
        x = F.relu_(self.fc1(x))
        x, _ = self.rnn(x)
        seg = torch.sigmoid(self.fc_audioset(x)).clamp(1e-7, 1.0)
        clip = (seg * seg).sum(1) / seg.sum(1)                      # linear-softmax pooling
        return seg, clip

    def forward(self, waveform):
        """The published forward: dict with clipwise_output (B, C) and framewise_output (B, T, C)."""
        x = self.front_end(waveform)
        seg, clip = self.from_logmel(x)
        t = x.shape[2]
        frame = seg.repeat_interleave(4, dim=1)
        if frame.shape[1] < t:
            frame = torch.cat([frame, frame[:, -1:].expand(-1, t - frame.shape[1], -1)], dim=1)
        return {"clipwise_output": clip, "framewise_output": frame[:, :t]}


class LogMelModel(nn.Module):
    """What goes into ONNX: log-mel in, (segmentwise, clipwise) out."""

    def __init__(self, net: Cnn8Rnn):
        super().__init__()
        self.net = net

    def forward(self, logmel):
        return self.net.from_logmel(logmel)


def build(cfg: dict) -> Cnn8Rnn:
    m = cfg["model"]
    return Cnn8Rnn(m["classes_num"], cfg["preprocess"]["sample_rate"], cfg["preprocess"]).eval()


def export_module(model: Cnn8Rnn, cfg: dict) -> nn.Module:
    return LogMelModel(model).eval()


def load_weights(model: Cnn8Rnn, path: Path, cfg: dict) -> dict:
    """A folder in the published layout (weights + config.json + classes.txt) or a single weights file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        ckpt = next((path / n for n in CHECKPOINT_NAMES if (path / n).is_file()), None)
        if ckpt is None:
            raise WeightsError(f"weights folder {path} has neither {' nor '.join(CHECKPOINT_NAMES)}; "
                               "copy the published files there or pass WEIGHTS=<file>")
    elif path.is_file():
        ckpt = path
    else:
        raise WeightsError(f"weights path {path} does not exist; pass WEIGHTS=<file or folder>")
    classes_num = cfg["model"]["classes_num"]
    sample_rate = cfg["preprocess"]["sample_rate"]
    if (folder / "config.json").is_file():
        hf = json.loads((folder / "config.json").read_text())
        if hf.get("classes_num", classes_num) != classes_num or hf.get("sample_rate", sample_rate) != sample_rate:
            raise WeightsError(f"{folder / 'config.json'} says classes_num={hf.get('classes_num')}, "
                               f"sample_rate={hf.get('sample_rate')}; the config expects {classes_num} and "
                               f"{sample_rate}; use a matching checkpoint or edit the model config")
    try:
        sd, wrapper = read_state_dict(ckpt, "give the published pytorch_model.bin or model.safetensors of CNN8RNN")
        sd = check_keys(sd, model.state_dict(), ckpt, "CNN8RNN")
    except WeightsError:
        raise
    except PipelineError as exc:          # pipeline.checkpoint's one-line messages, as the weights subtype
        raise WeightsError(str(exc)) from None
    model.load_state_dict(sd, strict=True)
    check_frontend_buffers(model, cfg)
    prov = {"kind": "file", "path": str(ckpt), "sha256": sha256_file(ckpt), "bytes": ckpt.stat().st_size,
            "format": "safetensors" if ckpt.suffix == ".safetensors" else "PyTorch pickle", "wrapper": wrapper,
            "sample_rate": sample_rate}
    return {**prov, **labels_record(folder, cfg)}


def labels_record(folder: Path, cfg: dict) -> dict:
    """The checkpoint's classes.txt, recorded in weights.json (the host side's labels() reads it from there, as an
    Ascend host has build/ but not the weights folder); without one the bundled names apply."""
    classes_num = cfg["model"]["classes_num"]
    path = folder / "classes.txt"
    if not path.is_file():
        return {"labels_source": f"bundled {cfg['model']['classes_file']} (no classes.txt beside the weights)"}
    names = read_labels(path)
    if len(names) != classes_num:
        raise WeightsError(f"{path} has {len(names)} labels, the model has {classes_num} classes; "
                           "give the classes.txt that belongs to the checkpoint")
    return {"labels": names, "labels_source": str(path), "labels_sha256": sha256_file(path)}


def export_artifacts(model: Cnn8Rnn, cfg: dict, build_dir: Path) -> list[Path]:
    """Ship the model's own front-end buffers next to the ONNX, so the host log-mel uses the exact values."""
    from pipeline.atomic import atomic_path

    from . import FRONTEND_FILE

    path = Path(build_dir) / FRONTEND_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, window=model.melspec_extractor.spectrogram.window.numpy(),
                     fb=model.melspec_extractor.mel_scale.fb.numpy())
    return [path]


def check_frontend_buffers(model: Cnn8Rnn, cfg: dict) -> None:
    """The host front-end recomputes window and mel filterbank; they must equal the checkpoint's buffers."""
    pre = cfg["preprocess"]
    fb = mel_filterbank(pre["sample_rate"], pre["n_fft"], pre["n_mels"], pre["f_min"], pre["f_max"])
    win = hann_periodic(pre["n_fft"])
    d_fb = float(np.max(np.abs(model.melspec_extractor.mel_scale.fb.numpy() - fb)))
    d_win = float(np.max(np.abs(model.melspec_extractor.spectrogram.window.numpy() - win)))
    if d_fb > 1e-6 or d_win > 1e-6:
        raise WeightsError(f"the checkpoint's front-end buffers differ from the host front-end (filterbank "
                           f"{d_fb:.1e}, window {d_win:.1e}); check preprocess settings in the config")


def calibration_audio(sample_rate: int, seed: int, clips: int = 12, seconds: float = 4.0) -> np.ndarray:
    """Real-looking synthetic clips: harmonic tones with vibrato, chirps, noise bursts, clicks, plucked strings,
    over quiet beds, at levels from -30 dBFS to near full scale. Every fourth clip ends in 0.5-1.5 s of digital
    silence, like the zero-padded short clips of AudioSet, so silence (and the silence fill of a static .om
    window) is inside the range the BatchNorm statistics describe."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    out = []
    for _ in range(clips):
        x = rng.normal(0, 10 ** rng.uniform(-3.5, -2), n)          # background
        for _ in range(rng.integers(2, 5)):
            kind = rng.integers(0, 5)
            a, b = sorted(rng.uniform(0, seconds, 2))
            env = ((t >= a) & (t < b)).astype(np.float64) * 10 ** rng.uniform(-1.5, -0.05)
            if kind == 0:      # voiced-like harmonic tone with vibrato
                f0 = rng.uniform(90, 400) * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
                ph = 2 * np.pi * np.cumsum(f0) / sample_rate
                x += env * sum(np.sin(k * ph) / k for k in range(1, 8))
            elif kind == 1:    # chirp
                f = np.linspace(rng.uniform(200, 2000), rng.uniform(2000, 12000), n)
                x += env * np.sin(2 * np.pi * np.cumsum(f) / sample_rate)
            elif kind == 2:    # filtered noise burst
                noise = np.convolve(rng.normal(0, 1, n), np.ones(rng.integers(1, 16)) / 8, mode="same")
                x += env * noise
            elif kind == 4:    # plucked string: decaying harmonics from the onset
                f0 = rng.uniform(80, 900)
                decay = np.exp(-np.clip(t - a, 0, None) * rng.uniform(3, 12)) * (t >= a)
                x += env.max() * decay * sum(np.sin(2 * np.pi * k * f0 * t) * 0.7 ** k for k in range(1, 12))
            else:              # clicks
                clicks = np.zeros(n)
                clicks[rng.integers(0, n, 40)] = 1.0
                x += env * np.convolve(clicks, np.exp(-np.arange(200) / 20), mode="same")
        if len(out) % 4 == 0:
            x[n - int(rng.uniform(0.5, 1.5) * sample_rate):] = 0.0
        out.append(np.clip(x, -1, 1))
    return np.stack(out).astype(np.float32)


def batchnorms(model: Cnn8Rnn) -> list[nn.BatchNorm2d]:
    return [model.bn0] + [getattr(getattr(model, f"conv_block{i}"), f"bn{j}") for i in range(1, 5) for j in (1, 2)]


@torch.no_grad()
def calibrate_batchnorm(model: Cnn8Rnn, logmel: torch.Tensor) -> torch.Tensor:
    """One eval-mode pass in which every BatchNorm first takes the per-channel mean/variance of its own input
    (a forward pre-hook), then normalises with them; later layers thus see calibrated earlier ones.
    Returns the features entering fc_audioset (B, S, 512)."""
    def set_stats(bn, inp):
        a = inp[0].double()
        bn.running_mean.copy_(a.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(a.var(dim=(0, 2, 3), unbiased=False) + 1e-3)
        bn.num_batches_tracked.fill_(1000)

    feats = {}
    handles = [bn.register_forward_pre_hook(set_stats) for bn in batchnorms(model)]
    handles.append(model.fc_audioset.register_forward_pre_hook(lambda m, inp: feats.setdefault("h", inp[0])))
    try:
        model.from_logmel(logmel)
    finally:
        for h in handles:
            h.remove()
    return feats["h"]


@torch.no_grad()
def apply_standin(model: Cnn8Rnn, cfg: dict, seed: int) -> dict:
    """Deterministic stand-in weights with trained-like statistics.

    Weights: Kaiming-scaled convolutions, PyTorch-default GRU/linear init from a fixed seed. BatchNorm running
    statistics: measured layer by layer on real-looking synthetic audio, so every BN sees the activations its
    statistics describe. Output layer: per-class scale (logit std 1.8 over segments) and bias (prior logit
    N(-5.5, 1.3)) so that clip probabilities spread from rare (~1e-4) to a few classes above 0.5 on typical
    audio, instead of sitting at 0.5 or saturating.
    """
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 4:
            nn.init.kaiming_normal_(p, nonlinearity="relu")
        elif name.startswith("rnn"):
            nn.init.uniform_(p, -1 / 16, 1 / 16)                   # PyTorch's GRU default: U(-1/sqrt(256), .)
        elif name.endswith("weight") and p.ndim == 2:
            nn.init.kaiming_uniform_(p, a=5 ** 0.5)
        elif "bn" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape))
        elif name.endswith("bias"):
            p.copy_(0.05 * torch.randn(p.shape))
    wave = torch.from_numpy(calibration_audio(cfg["preprocess"]["sample_rate"], seed))
    feats = calibrate_batchnorm(model, model.front_end(wave))
    logits = feats @ model.fc_audioset.weight.T                    # (B, S, C) without bias
    std = logits.std(dim=(0, 1)).clamp_min(1e-6)
    target_std = 1.8                                                # per-class logit spread over segments
    model.fc_audioset.weight.mul_((target_std / std)[:, None])
    mean = (logits.mean(dim=(0, 1)) * target_std / std)
    g = torch.Generator().manual_seed(seed + 1)
    class_prior = torch.randn(model.fc_audioset.bias.shape, generator=g) * 1.3 - 5.5   # most classes rare
    model.fc_audioset.bias.copy_(class_prior - mean)
    return {"kind": "stand-in", "seed": seed, "labels_source": f"bundled {cfg['model']['classes_file']}",
            "sample_rate": cfg["preprocess"]["sample_rate"],
            "rule": "Kaiming convolutions, PyTorch-default GRU/linear, BatchNorm statistics measured on synthetic "
                    "audio, output layer scaled to a per-class logit std of 1.8 and priors N(-5.5, 1.3)",
            "note": "deterministic stand-in weights (no checkpoint given): BatchNorm statistics calibrated on "
                    "synthetic audio, spread class priors; not the published weights"}


def check_onnx(onnx_model, cfg: dict | None = None) -> None:
    """The TorchScript exporter writes GRU with linear_before_reset=1 (PyTorch's GRU); anything else is wrong."""
    for node in onnx_model.graph.node:
        if node.op_type == "GRU":
            lbr = next((a.i for a in node.attribute if a.name == "linear_before_reset"), 0)
            if lbr != 1:
                raise ToolchainError(f"ONNX GRU node {node.name} has linear_before_reset={lbr}; PyTorch's GRU needs 1 "
                                     "(export with the TorchScript exporter: export.exporter: torchscript)")
