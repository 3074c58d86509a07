"""Torch side of the generic timm image family: build by name, strict checkpoint loading, stand-in weights.

Checkpoints go through timm's own per-architecture filter (the `checkpoint_filter_fn` of the model's module,
the function timm's pretrained loader applies), so published timm and original layouts load without key
remaps written here; OpenCLIP full-CLIP files of a timm image tower keep working (ConvNeXt's filter converts
them; for other towers the generic `visual.trunk.` rule below does).
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

import numpy as np
import timm
import torch

from modality.image import random_images
from pipeline.atomic import write_json
from pipeline.checkpoint import check_keys, read_state_dict
from pipeline.errors import ConfigError, ToolchainError, UnknownModelError, WeightsError
from pipeline.provenance import sha256_file

# first existing file wins, as in timm's local-dir loader
CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                    "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
FILTER_NAMES = ("checkpoint_filter_fn", "checkpoint_filter_fn_classifier", "_filter_fn")
HINT = "give a timm model.safetensors / pytorch_model.bin or an OpenCLIP open_clip_pytorch_model.bin"
EMBED_PARAMS = ("pos_embed", "cls_token", "dist_token", "reg_token", "mask_token", "relative_position_bias_table")
TARGET_LOGIT_STD = 3.0          # stand-in classifier: logits std on generated images (trained ImageNet: ~2-4)
CALIBRATION_BATCHES = (2, 8)    # stand-in BatchNorm statistics: batches x images


def _width(cfg: dict) -> int:
    return cfg["outputs"][0]["shape"][-1]


def check_architecture(name: str, where: str = "config") -> None:
    """ConfigError naming the closest timm names when `name` is not a timm model (or pretrained tag)."""
    base, _, tag = name.partition(".")
    if timm.is_model(base) and (not tag or timm.list_pretrained(name) == [name]):
        return
    pool = timm.list_pretrained() if tag else timm.list_models()
    close = difflib.get_close_matches(name, pool, n=5, cutoff=0.5)
    raise UnknownModelError(f"{where}: model.architecture '{name}' is not a timm model; closest: {', '.join(close) or 'none'} "
                      "(see timm.list_models() / timm.list_pretrained())")


def pretrained_cfg(name: str, where: str = "config") -> dict:
    from timm.models import get_pretrained_cfg

    check_architecture(name, where)
    pcfg = get_pretrained_cfg(name)
    return pcfg.to_dict() if pcfg is not None else {}


def resolve_preprocess(cfg: dict) -> dict:
    """What build/<m>/preprocess.json holds: timm's pretrained data config and the class names."""
    from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config

    name = cfg["model"]["architecture"]
    pcfg = pretrained_cfg(name, cfg.get("_source", cfg["name"]))
    data = resolve_data_config(pretrained_cfg=pcfg)
    width, labels, source = _width(cfg), None, None
    subset = infer_imagenet_subset({"num_classes": width})
    if cfg["model"]["head"] == "classifier" and width == pcfg.get("num_classes") and subset:
        labels, source = list(ImageNetInfo(subset).label_descriptions()), f"timm ImageNetInfo('{subset}')"
    return {"architecture": name, "pretrained_tag": pcfg.get("tag"), "head": cfg["model"]["head"],
            "num_classes": width, "labels_source": source, "labels": labels,
            "data_config": {"input_size": list(data["input_size"]), "crop_pct": float(data["crop_pct"]),
                            "crop_mode": data["crop_mode"], "interpolation": data["interpolation"],
                            "mean": [float(v) for v in data["mean"]], "std": [float(v) for v in data["std"]]}}


def build(cfg: dict) -> torch.nn.Module:
    name, width = cfg["model"]["architecture"], _width(cfg)
    pcfg = pretrained_cfg(name, cfg.get("_source", cfg["name"]))
    trained = pcfg.get("num_classes")
    if cfg["model"]["num_classes"] is None and trained and trained != width:
        raise ConfigError(f"{cfg['name']}: {name} has a {trained}-wide head (timm pretrained cfg) but the output "
                          f"shape says {width}; set outputs to [batch, {trained}], or model.num_classes: {width} "
                          "for a new head")
    # a headless pretrained cfg (num_classes 0, e.g. MIM) with an embedding head: the pooled features
    headless = cfg["model"]["head"] == "embedding" and trained == 0 and cfg["model"]["num_classes"] is None
    kwargs = {"num_classes": 0 if headless else width}
    size = tuple(cfg["inputs"][0]["shape"][2:])
    if pcfg.get("fixed_input_size") and tuple(pcfg.get("input_size", (3, *size))[1:]) != size:
        kwargs["img_size"] = size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, AssertionError, RuntimeError) as exc:
        raise ConfigError(f"{cfg['name']}: timm cannot build {name} for input {list(size)} "
                          f"({str(exc).splitlines()[0][:120]}); use its input size "
                          f"{list(pcfg.get('input_size', ['?'])[1:])}") from None
    if cfg["model"]["fused_attn"] is not None:     # timm's attention modules read this flag per call
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = cfg["model"]["fused_attn"]
    return model.eval()


def export_module(model: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    return model


def export_artifacts(model: torch.nn.Module, cfg: dict, build_dir: Path) -> list[Path]:
    path = Path(build_dir) / "preprocess.json"
    write_json(path, resolve_preprocess(cfg))
    return [path]


def check_onnx(onnx_model, cfg: dict) -> None:
    outs = onnx_model.graph.output
    want = cfg["outputs"][0]["name"]
    if [o.name for o in outs] != [want]:
        raise ToolchainError(f"exported ONNX has outputs {[o.name for o in outs]}, the config names ['{want}']")
    last = outs[0].type.tensor_type.shape.dim[-1].dim_value
    if last and last != _width(cfg):
        raise ToolchainError(f"exported ONNX output {want} is {last} wide, the config says {_width(cfg)}")


# --- checkpoints ---

def find_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise WeightsError(f"weights folder {path} has none of {', '.join(CHECKPOINT_NAMES)}; "
                           "put the published checkpoint there or pass WEIGHTS=<file>")
    raise WeightsError(f"weights path {path} does not exist; pass WEIGHTS=<file or folder>")


def timm_filter(model: torch.nn.Module):
    """timm's checkpoint filter of the model's architecture module, or None."""
    module = sys.modules.get(type(model).__module__)
    return next((getattr(module, n) for n in FILTER_NAMES if callable(getattr(module, n, None))), None)


def open_clip_tower(sd: dict, model: torch.nn.Module) -> dict:
    """OpenCLIP `visual.trunk.*` + bias-free `visual.head.proj` -> timm keys; the text tower is dropped."""
    out = {k[len("visual.trunk."):]: v for k, v in sd.items() if k.startswith("visual.trunk.")}
    proj = sd.get("visual.head.proj.weight")
    if proj is not None:
        head = model.pretrained_cfg.get("classifier", "head.fc")
        out[f"{head}.weight"], out[f"{head}.bias"] = proj, torch.zeros(proj.shape[0], dtype=proj.dtype)
    return out


def _misfit(sd: dict, expected: dict) -> int:
    return len(set(sd) ^ set(expected))


def filter_checkpoint(sd: dict, model: torch.nn.Module) -> dict:
    """timm's filter where it brings the keys closer to the model; else the file's own keys (named on error)."""
    expected = model.state_dict()
    if set(sd) == set(expected):
        return sd
    out, fn = sd, timm_filter(model)
    if fn is not None:
        try:
            out = fn(dict(sd), model)
        except Exception:       # a foreign dict: the strict check names its own keys
            out = sd
    if any(k.startswith("visual.trunk.") for k in out):
        out = open_clip_tower(out, model)
    return out if _misfit(out, expected) <= _misfit(sd, expected) else sd


def load_weights(model: torch.nn.Module, path: Path, cfg: dict) -> dict:
    ckpt = find_checkpoint(Path(path))
    raw = read_state_dict(ckpt, HINT)
    fmt = ("OpenCLIP" if any(k.startswith("visual.") for k in raw)
           else "timm safetensors" if ckpt.suffix == ".safetensors" else "timm pickle")
    sd = filter_checkpoint(raw, model)
    check_keys(sd, model.state_dict(), ckpt, f"{cfg['model']['architecture']} ({cfg['name']})")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return {"kind": "file", "path": str(ckpt), "sha256": sha256_file(ckpt), "format": fmt,
            "bytes": ckpt.stat().st_size, "filter": getattr(timm_filter(model), "__qualname__", None)}


# --- stand-in weights ---

STANDIN_RULE = ("parameters: layer-scale gammas and the norm scales that close a residual branch (the ones timm's "
                "zero_init_last zeroes, or the architecture starts at zero) exp(N(-1.8, 0.6)) (median 0.17), other norm scales |N(1, 0.25)| with "
                "1% outlier channels x6, biases N(0, 0.05), position/class tokens N(0, 0.02), conv/linear weights "
                "N(0, 1/fan_in); BatchNorm running statistics re-estimated on generated images; a classifier head "
                f"scaled so its logits have std {TARGET_LOGIT_STD:g} on those images (an embedding head is kept)")


@torch.no_grad()
def apply_standin(model: torch.nn.Module, cfg: dict, seed: int) -> dict:
    """Deterministic weights with trained-like statistics for any timm architecture.

    timm's training init is far from a trained network (layer-scale gammas 1e-6 make blocks identities, BatchNorm
    stays at mean 0 / var 1, a random classifier gives logits with std ~30), so fp16 errors would be invisible or
    exaggerated. The rule (STANDIN_RULE): 1) draw parameters by role (for ConvNeXt this is the former bespoke
    rule, so its stand-in is unchanged); 2) the norm scales that close a residual branch (found through timm's
    own `zero_init_last` marker) get layer-scale magnitudes, so the identity path dominates as in a trained
    ResNet and fp32 rounding stays at a trained net's level (ResNet-50: torch fp32 vs fp64 6.7e-7, 1.3e-5
    without); 3) BatchNorm layers alone go to train mode and re-estimate their running mean/var as the
    cumulative average over CALIBRATION_BATCHES of generated images; 4) a classifier head is scaled so its
    logits on those images have std TARGET_LOGIT_STD. Checked on a CNN and a transformer
    (tests/test_timm_family.py): per-layer activation std within one decade of 1, logits std < 10.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g) * std + mean

    # norm scales the architecture itself starts at zero: they close a residual branch even without a
    # `zero_init_last` marker (LeViT's bn_weight_init=0)
    zero_init = {n for n, p in model.named_parameters() if p.ndim == 1 and n.endswith("weight") and not p.any()}
    for name, p in model.named_parameters():
        if p.ndim == 0:
            continue
        if name.endswith("gamma"):
            p.copy_(torch.exp(normal(p.shape, 0.6, -1.8)))
        elif p.ndim == 1 and name.endswith("weight"):          # norm scale
            w = normal(p.shape, 0.25, 1.0).abs()
            outliers = torch.rand(p.shape, generator=g) < 0.01
            p.copy_(torch.where(outliers, w * 6.0, w))
        elif name.endswith("bias"):
            p.copy_(normal(p.shape, 0.05))
        elif any(k in name for k in EMBED_PARAMS):
            p.copy_(normal(p.shape, 0.02))
        else:                                                   # conv / linear weights
            p.copy_(normal(p.shape, 1.0 / p[0].numel() ** 0.5))
    drawn = _scale_residual_branches(model, lambda shape: torch.exp(normal(shape, 0.6, -1.8)))
    for name, p in model.named_parameters():
        if name in zero_init and name not in drawn:
            p.copy_(torch.exp(normal(p.shape, 0.6, -1.8)))
    images = _calibration_images(cfg, seed)
    _calibrate_batchnorm(model, images)
    logit_std = _scale_classifier(model, images) if cfg["model"]["head"] == "classifier" else None
    return {"kind": "stand-in", "seed": seed, "rule": STANDIN_RULE,
            **({"logit_std": round(logit_std, 4)} if logit_std is not None else {}),
            "note": "deterministic stand-in weights (no checkpoint given): trained-like statistics, not "
                    f"{cfg['model']['architecture']} weights"}


def _scale_residual_branches(model: torch.nn.Module, draw) -> set[str]:
    """The norm scales that close a residual branch (those timm's `zero_init_last` zeroes) get layer-scale
    magnitudes: trained residual CNNs keep them small, so the identity path dominates as in a trained net.
    Returns the parameter names it drew."""
    drawn = set()
    for prefix, mod in model.named_modules():
        if not callable(getattr(mod, "zero_init_last", None)):
            continue
        before = {n: p.clone() for n, p in mod.named_parameters()}
        mod.zero_init_last()
        for n, p in mod.named_parameters():
            if torch.equal(p, before[n]):
                continue
            p.copy_(draw(p.shape) if not p.any() else before[n])
            drawn.add(f"{prefix}.{n}" if prefix else n)
    return drawn


def _calibration_images(cfg: dict, seed: int) -> list[torch.Tensor]:
    data = resolve_preprocess(cfg)["data_config"]
    rng = np.random.default_rng(seed)
    n, b = CALIBRATION_BATCHES
    shape = (b, 3, *cfg["inputs"][0]["shape"][2:])
    return [torch.from_numpy(random_images(shape, rng, data["mean"], data["std"])) for _ in range(n)]


def _calibrate_batchnorm(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average over the calibration batches
        m.train()
    try:
        for x in images:
            model(x)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()


def _head_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The last Linear/Conv2d of each classifier head (a distilled model has two; LeViT wraps it in a norm)."""
    heads = model.get_classifier() if hasattr(model, "get_classifier") else None
    out = []
    for h in heads if isinstance(heads, tuple) else (heads,):
        layers = [m for m in h.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))] \
            if isinstance(h, torch.nn.Module) else []
        if layers:
            out.append(layers[-1])
    return out


def _scale_classifier(model: torch.nn.Module, images: list[torch.Tensor]) -> float | None:
    heads = _head_layers(model)
    if not heads:
        return None
    logits = torch.cat([model(x).flatten(1) for x in images])
    std = float(logits.std())
    if std > 0:
        for head in heads:
            head.weight.mul_(TARGET_LOGIT_STD / std)
    return float(torch.cat([model(x).flatten(1) for x in images]).std())
