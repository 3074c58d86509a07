"""Torch side of Silero VAD 16 kHz (silero-vad 6.2.3's trained model): the network, its weights, export.

The network, as the wheel's `silero_vad/tinygrad_model.py` describes it (written anew here): a 576-sample
window (64 samples of context + the 512-sample chunk), right-padded by 64 samples with reflection, a
learned STFT (a bias-free Conv1d of 258 = 2 x 129 filters, 256 taps, stride 128: 4 frames), the magnitude
sqrt(re^2 + im^2), four Conv1d + ReLU (129->128, 128->64 stride 2, 64->64 stride 2, 64->128: one frame), one
LSTM cell (128) whose (h, c) is the carried state, ReLU, a 1x1 Conv1d and a sigmoid: the speech probability.

Weights: the 16 kHz model's tensors, read by name out of silero-vad's own ONNX (silero_vad_16k_op15.onnx, the
same tensors bit for bit as the 16 kHz branch of silero_vad.onnx and the `_model` of silero_vad.jit), or the
wheel's silero_vad_16k.safetensors (tinygrad names: stft_conv, conv1..conv4, lstm_cell, final_conv; our module
names are these). The safetensors of silero-vad 6.2.3 is another checkpoint than its ONNX/JIT (every tensor but
the STFT basis differs; probabilities differ by up to 0.25 on speech), so the config takes the ONNX's tensors:
only they reproduce the wheel's own model (docs/silero-vad.md). The LSTM cell is written out as matrix products
and gates (i, f, g, o as torch.nn.LSTMCell), so the ONNX holds MatMul/Add/Sigmoid/Tanh, which ATC takes without
an LSTM kernel. The export module takes (input [B, 576], state [2, B, 128]) and returns (prob [B, 1], stateN
[2, B, 128]).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import wheel_files
from pipeline.checkpoint import check_keys, find_checkpoint, read_state_dict
from pipeline.errors import PipelineError, WeightsError
from pipeline.provenance import sha256_file

from . import HIDDEN, WINDOW

N_FFT, STRIDE, PAD = 256, 128, 64
BINS = N_FFT // 2 + 1                   # 129


class SileroVAD16k(nn.Module):
    """One 32 ms step of Silero VAD at 16 kHz: (window (B, 576), state (2, B, 128)) -> (prob (B, 1), state)."""

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 2 * BINS, kernel_size=N_FFT, stride=STRIDE, padding=0, bias=False)
        self.conv1 = nn.Conv1d(BINS, 128, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, HIDDEN, kernel_size=3, stride=1, padding=1)
        self.lstm_cell = nn.LSTMCell(HIDDEN, HIDDEN)
        self.final_conv = nn.Conv1d(HIDDEN, 1, kernel_size=1)

    def features(self, window: torch.Tensor) -> torch.Tensor:
        """(B, 576) -> (B, 128): reflect pad, learned STFT magnitude, the four convolutions."""
        x = F.pad(window.unsqueeze(1), (0, PAD), mode="reflect")          # (B, 1, 640)
        x = self.stft_conv(x)                                              # (B, 258, 4)
        x = torch.sqrt(x[:, :BINS] ** 2 + x[:, BINS:] ** 2)               # (B, 129, 4)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))                                          # (B, 128, 1)
        return x[:, :, 0]

    def cell(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """torch.nn.LSTMCell written out: gates i, f, g, o."""
        m = self.lstm_cell
        gates = F.linear(x, m.weight_ih, m.bias_ih) + F.linear(h, m.weight_hh, m.bias_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def forward(self, window: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = self.cell(self.features(window), state[0], state[1])
        y = torch.sigmoid(self.final_conv(F.relu(h).unsqueeze(-1)))       # (B, 1, 1): one frame, its mean
        return y[:, :, 0], torch.stack([h, c])


def build(cfg: dict) -> SileroVAD16k:
    return SileroVAD16k().eval()


def default_weights(cfg: dict) -> Path | None:
    """The config's weights.wheel file (silero_vad_16k_op15.onnx of silero-vad 6.2.3), fetched and sha256-checked by
    pipeline.wheel_files; None without one (stand-in weights)."""
    spec = cfg["weights"].get("wheel") or {}
    if not spec.get("requirement"):
        return None
    return wheel_files.wheel_file(spec, cfg.get("_source", cfg["name"]))[0]


SAFETENSORS_NAME = "silero_vad_16k.safetensors"
# our module names -> silero's own (the TorchScript/ONNX names of the 16 kHz model, `_model.` in the JIT)
SILERO_NAMES = {"stft_conv.weight": "stft.forward_basis_buffer", "conv1": "encoder.0.reparam_conv",
                "conv2": "encoder.1.reparam_conv", "conv3": "encoder.2.reparam_conv", "conv4": "encoder.3.reparam_conv",
                "lstm_cell": "decoder.rnn", "final_conv": "decoder.decoder.2"}


def silero_name(key: str) -> str:
    if key in SILERO_NAMES:
        return SILERO_NAMES[key]
    module, param = key.split(".", 1)
    return f"{SILERO_NAMES[module]}.{param}"


def onnx_constants(path: Path) -> dict:
    """Every named tensor of an ONNX file: initializers and Constant nodes, in subgraphs (If branches) too."""
    import onnx
    from onnx import numpy_helper

    out: dict = {}

    def walk(graph):
        for t in graph.initializer:
            out[t.name] = numpy_helper.to_array(t)
        for node in graph.node:
            for a in node.attribute:
                if node.op_type == "Constant" and a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = numpy_helper.to_array(a.t)
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(onnx.load(str(path)).graph)
    return out


def state_dict_from_onnx(path: Path, expected: dict) -> dict:
    """The 16 kHz model's tensors out of one of silero-vad's own ONNX files (silero_vad_16k_op15.onnx, or the 16 kHz
    branch of silero_vad.onnx): names end in silero's module names; of several copies (the 8 kHz branch has
    the same names) the one whose prefix also holds the 16 kHz STFT basis (258, 1, 256) is taken."""
    consts = onnx_constants(path)
    basis = silero_name("stft_conv.weight")
    prefixes = [k[: -len(basis)] for k, v in consts.items()
                if k.endswith(basis) and tuple(v.shape) == tuple(expected["stft_conv.weight"].shape)]
    if len(prefixes) != 1:
        raise WeightsError(f"{path} holds {len(prefixes)} 16 kHz Silero VAD STFT bases ({basis} of shape (258, 1, "
                           "256)); give silero-vad's silero_vad_16k_op15.onnx or silero_vad.onnx")
    prefix = prefixes[0]
    sd, missing = {}, []
    for key in expected:
        name = prefix + silero_name(key)
        if name not in consts:
            missing.append(name)
            continue
        sd[key] = torch.from_numpy(np.array(consts[name], dtype=np.float32))
    if missing:
        raise WeightsError(f"{path} lacks {len(missing)} tensors of the 16 kHz Silero VAD, e.g. {missing[:2]}; give "
                           "silero-vad's silero_vad_16k_op15.onnx or silero_vad.onnx")
    return sd


def load_weights(model: SileroVAD16k, path, cfg: dict) -> dict:
    """Silero VAD 16 kHz weights, strict: silero-vad's own ONNX (the 16 kHz model's tensors, by name) or the
    wheel's silero_vad_16k.safetensors (tinygrad names; a different checkpoint, see docs/silero-vad.md). A folder
    is searched for silero_vad_16k_op15.onnx, silero_vad.onnx, silero_vad_16k.safetensors."""
    path = Path(path)
    ckpt = find_checkpoint(path, ("silero_vad_16k_op15.onnx", "silero_vad.onnx", SAFETENSORS_NAME))
    expected = model.state_dict()
    if ckpt.suffix == ".onnx":
        sd, fmt, wrapper = state_dict_from_onnx(ckpt, expected), "silero-vad ONNX (16 kHz tensors by name)", None
    else:
        hint = "give silero-vad's silero_vad_16k_op15.onnx (or silero_vad_16k.safetensors)"
        sd, wrapper = read_state_dict(ckpt, hint)
        fmt = "safetensors state dict"
    model.load_state_dict(check_keys(sd, expected, ckpt, "Silero VAD 16 kHz"), strict=True)
    return {"kind": "file", "path": str(ckpt), "sha256": sha256_file(ckpt), "bytes": ckpt.stat().st_size,
            "format": fmt, "wrapper": wrapper, "trained": True,
            "network": "Silero VAD 16 kHz (learned STFT, 4 convs, LSTM cell 128)"}


def dft_basis() -> np.ndarray:
    """A Hann-windowed DFT basis (258, 1, 256): real parts of bins 0..128, then imaginary parts."""
    n = np.arange(N_FFT)
    k = np.arange(BINS)[:, None]
    win = np.hanning(N_FFT + 1)[:-1]                                        # periodic Hann
    ang = 2 * np.pi * k * n / N_FFT
    return np.concatenate([np.cos(ang) * win, -np.sin(ang) * win])[:, None, :].astype(np.float32)


def apply_standin(model: SileroVAD16k, cfg: dict, seed: int) -> dict:
    """A Hann-windowed DFT as the STFT, seeded He-normal convolutions, PyTorch's LSTM init, a small output layer."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.stft_conv.weight.copy_(torch.from_numpy(dft_basis()))
        for conv in (model.conv1, model.conv2, model.conv3, model.conv4, model.final_conv):
            fan_in = conv.in_channels * conv.kernel_size[0]
            conv.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
            conv.bias.normal_(0.0, 0.01, generator=gen)
        bound = HIDDEN ** -0.5
        for p in model.lstm_cell.parameters():
            p.uniform_(-bound, bound, generator=gen)
        model.final_conv.weight.mul_(0.25)
    return {"kind": "stand-in", "seed": seed,
            "rule": "Hann DFT STFT basis, He-normal convs, LSTM U(-1/sqrt(128), 1/sqrt(128)), output conv x0.25"}


def export_module(model: SileroVAD16k, cfg: dict) -> nn.Module:
    return model


def check_onnx(onnx_model, cfg: dict) -> None:
    """Inputs input [B, 576] and state [2, B, 128]; outputs prob [B, 1] and stateN [2, B, 128]."""
    graph = onnx_model.graph
    inits = {i.name for i in graph.initializer}

    def dims(v):
        return [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]

    ins = {i.name: dims(i) for i in graph.input if i.name not in inits}
    outs = {o.name: dims(o) for o in graph.output}
    want_in = [t["name"] for t in cfg["inputs"]]
    want_out = [t["name"] for t in cfg["outputs"]]
    if list(ins) != want_in or list(outs) != want_out:
        raise PipelineError(f"Silero VAD ONNX has inputs {list(ins)} and outputs {list(outs)}, expected {want_in} "
                            f"and {want_out}; export with the silero_vad family's export_module")
    def fits(dims, want):     # want: ints must match; None: any; a symbolic dim of the exporter passes
        return len(dims) == len(want) and all(w is None or not isinstance(d, int) or d == w
                                              for d, w in zip(dims, want))

    (win, st), (prob, st_n) = ins.values(), outs.values()
    if not (fits(win, [None, WINDOW]) and isinstance(win[1], int) and fits(st, [2, None, HIDDEN])
            and fits(prob, [None, 1]) and fits(st_n, [2, None, HIDDEN])):
        raise PipelineError(f"Silero VAD ONNX shapes are {win}, {st} -> {prob}, {st_n}; expected [B, {WINDOW}], "
                            f"[2, B, {HIDDEN}] -> [B, 1], [2, B, {HIDDEN}]")
