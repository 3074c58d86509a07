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

import timm
import torch

from models import image_torch
from models.image_torch import check_onnx, export_module  # noqa: F401  (hooks of this family)
from pipeline.checkpoint import check_keys, find_checkpoint, read_state_dict
from pipeline.errors import ConfigError, UnknownModelError
from pipeline.provenance import sha256_file

# first existing file wins, as in timm's local-dir loader
CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                    "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
FILTER_NAMES = ("checkpoint_filter_fn", "checkpoint_filter_fn_classifier", "_filter_fn")
HINT = "give a timm model.safetensors / pytorch_model.bin or an OpenCLIP open_clip_pytorch_model.bin"
_width = image_torch.width


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
    width, labels, ids, source = _width(cfg), None, None, None
    subset = infer_imagenet_subset({"num_classes": width})
    if cfg["model"]["head"] == "classifier" and width == pcfg.get("num_classes") and subset:
        labels, source = list(ImageNetInfo(subset).label_descriptions()), f"timm ImageNetInfo('{subset}')"
        ids = image_torch.imagenet_label_ids(subset)
    return {"architecture": name, "pretrained_tag": pcfg.get("tag"), "head": cfg["model"]["head"],
            "num_classes": width, "labels_source": source, "labels": labels, "label_ids": ids,
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


def export_artifacts(model: torch.nn.Module, cfg: dict, build_dir: Path) -> list[Path]:
    return image_torch.write_preprocess(resolve_preprocess(cfg), build_dir)


# --- checkpoints ---

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
    ckpt = find_checkpoint(Path(path), CHECKPOINT_NAMES)
    raw, wrapper = read_state_dict(ckpt, HINT)
    fmt = ("OpenCLIP" if any(k.startswith("visual.") for k in raw)
           else "timm safetensors" if ckpt.suffix == ".safetensors" else "timm pickle")
    sd = filter_checkpoint(raw, model)
    sd = check_keys(sd, model.state_dict(), ckpt, f"{cfg['model']['architecture']} ({cfg['name']})")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return {"kind": "file", "path": str(ckpt), "sha256": sha256_file(ckpt), "format": fmt, "wrapper": wrapper,
            "bytes": ckpt.stat().st_size, "filter": getattr(timm_filter(model), "__qualname__", None)}


# --- stand-in weights ---

CLOSERS = "the ones timm's zero_init_last zeroes, or the architecture starts at zero"


def apply_standin(model: torch.nn.Module, cfg: dict, seed: int) -> dict:
    """The image families' stand-in rule (models/image_torch.py); residual branches through timm's own
    `zero_init_last` marker. Checked on a CNN and a transformer (tests/test_timm_family.py): per-layer activation
    std within one decade of 1, logits std < 10."""
    data = resolve_preprocess(cfg)["data_config"]
    return image_torch.apply_standin(model, cfg, seed, data, _scale_residual_branches, CLOSERS)


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
