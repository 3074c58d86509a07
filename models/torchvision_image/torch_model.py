"""Torch side of the torchvision_image family: build by name, strict loading of torchvision's published files,
stand-in weights, and the preprocessing and class names of the weights enum (no download: all of it is offline).

The network is built by torchvision's own builder as it builds it for the weights (inception_v3/googlenet:
`transform_input` and the aux heads, ViT/MaxViT: the image size), with the download and load skipped, so a
published file loads strictly and computes what `get_model(arch, weights=...)` computes.
"""
from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
from torchvision import models as tvm
from torchvision.models._api import WeightsEnum
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import BasicBlock, Bottleneck

from modality.image import INTERPOLATIONS
from models import image_torch
from models.image_torch import check_onnx, export_module  # noqa: F401  (hooks of this family)
from pipeline.checkpoint import check_keys, find_checkpoint, read_state_dict
from pipeline.errors import ConfigError, UnknownModelError
from pipeline.provenance import sha256_file

HINT = "give torchvision's published state-dict file of this architecture (e.g. resnet18-f37072fd.pth)"
# torchvision/models/densenet.py `_load_state_dict`: old DenseNet files name 'norm.1' what is now 'norm1'
DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
# blocks whose forward adds their input (others declare use_res_connect / apply_residual); shortcut branch names
RESIDUAL_BLOCKS = (BasicBlock, Bottleneck, ResBottleneckBlock)
SHORTCUTS = ("downsample", "proj")
CLOSERS = "the last BatchNorm of each residual block, which torchvision's zero_init_residual zeroes in a ResNet"
_width = image_torch.width


def _where(cfg: dict) -> str:
    return cfg.get("_source", cfg["name"])


def weights_entry(cfg: dict):
    """torchvision's Weights for model.architecture / model.weights; UnknownModelError naming the closest."""
    arch, name = cfg["model"]["architecture"], cfg["model"]["weights"]
    pool = tvm.list_models(module=tvm)
    if arch not in pool:
        close = difflib.get_close_matches(arch, pool, n=5, cutoff=0.5)
        raise UnknownModelError(f"{_where(cfg)}: model.architecture '{arch}' is not a torchvision classification "
                                f"model; closest: {', '.join(close) or 'none'} "
                                "(see torchvision.models.list_models(module=torchvision.models))")
    enum = tvm.get_model_weights(arch)
    try:
        return enum[name]
    except KeyError:
        raise ConfigError(f"{_where(cfg)}: model.weights '{name}' is not a weights name of {arch}; available: "
                          f"{', '.join([w.name for w in enum] + ['DEFAULT'])}") from None


def resolve_preprocess(cfg: dict) -> dict:
    """What build/<m>/preprocess.json holds: the weights' transforms() and class names."""
    w = weights_entry(cfg)
    t = w.transforms()
    crop, resize = _crop(t), list(t.resize_size)
    interp = t.interpolation.value
    if len(resize) != 1 or interp not in INTERPOLATIONS:
        raise ConfigError(f"{_where(cfg)}: {w} resizes to {resize} with {interp}; the image layer does "
                          f"Resize(<one size>) with {', '.join(INTERPOLATIONS)}: pick other weights")
    cats, width = list(w.meta["categories"]), _width(cfg)
    known = cfg["model"]["head"] == "classifier" and width == len(cats)
    return {"architecture": cfg["model"]["architecture"], "weights": cfg["model"]["weights"], "weights_name": w.name,
            "weights_url": w.url, "head": cfg["model"]["head"], "num_classes": width,
            "labels_source": f"torchvision {w} meta['categories']" if known else None,
            "labels": cats if known else None,
            "label_ids": image_torch.imagenet_label_ids() if known and width == 1000 else None,
            "antialias": t.antialias,
            "data_config": {"input_size": [3, *crop], "resize_size": resize[0], "crop_pct": crop[0] / resize[0],
                            "crop_mode": "center", "interpolation": interp,
                            "mean": [float(v) for v in t.mean], "std": [float(v) for v in t.std]}}


def _crop(transforms) -> list[int]:
    """[H, W] of an ImageClassification transform's centre crop."""
    crop = list(transforms.crop_size)
    return crop * 2 if len(crop) == 1 else crop


_NO_WEIGHTS = type("NoWeights", (dict,), {})()


@contextmanager
def _without_download():
    """torchvision's builders with `weights=` get an empty state dict and skip loading it."""
    load = torch.nn.Module.load_state_dict

    def skip(self, sd, *a, **k):
        return None if sd is _NO_WEIGHTS else load(self, sd, *a, **k)

    with mock.patch.object(WeightsEnum, "get_state_dict", lambda self, *a, **k: _NO_WEIGHTS), \
            mock.patch.object(torch.nn.Module, "load_state_dict", skip):
        yield


def build(cfg: dict) -> torch.nn.Module:
    w = weights_entry(cfg)
    arch, m, width = cfg["model"]["architecture"], cfg["model"], _width(cfg)
    crop = _crop(w.transforms())
    size = cfg["inputs"][0]["shape"][2:]
    if size != crop:
        raise ConfigError(f"{_where(cfg)}: {w} takes {crop[0]}x{crop[1]} images (its transforms() crop), the "
                          f"input shape says {size[0]}x{size[1]}; set inputs to [batch, 3, {crop[0]}, {crop[1]}]")
    classes = len(w.meta["categories"])
    if m["head"] == "classifier" and m["num_classes"] is None and width != classes:
        raise ConfigError(f"{_where(cfg)}: {w} has a {classes}-wide head but the output shape says {width}; set "
                          f"outputs to [batch, {classes}], or model.num_classes: {width} for a new head")
    if m["num_classes"] is not None and m["num_classes"] != classes:
        return tvm.get_model(arch, weights=None, num_classes=width).eval()
    with _without_download():
        model = tvm.get_model(arch, weights=w)
    if m["head"] == "embedding":
        _drop_head(model, cfg, classes)
    return model.eval()


def _drop_head(model: torch.nn.Module, cfg: dict, classes: int) -> None:
    """An embedding head: the classifier's last layer becomes an identity (its input is the embedding)."""
    name, layer = image_torch.last_layer(model, classes)
    dim = layer.in_features if isinstance(layer, torch.nn.Linear) else layer.in_channels
    if dim != _width(cfg):
        raise ConfigError(f"{_where(cfg)}: the {cfg['model']['architecture']} embedding (the input of {name}) is "
                          f"{dim} wide, the output shape says {_width(cfg)}; set outputs to [batch, {dim}]")
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, torch.nn.Identity())
    model.dropped_head = name


def export_artifacts(model: torch.nn.Module, cfg: dict, build_dir: Path) -> list[Path]:
    return image_torch.write_preprocess(resolve_preprocess(cfg), build_dir)


# --- checkpoints ---

def load_weights(model: torch.nn.Module, path: Path, cfg: dict) -> dict:
    w = weights_entry(cfg)
    published = w.url.rsplit("/", 1)[-1]
    ckpt = find_checkpoint(Path(path), (published, "model.safetensors", "pytorch_model.bin"))
    sd, wrapper = read_state_dict(ckpt, HINT)
    renamed = {DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in sd.items()}
    remap = "torchvision DenseNet (denselayer norm.1 -> norm1, ...)" if renamed.keys() != sd.keys() else None
    head = getattr(model, "dropped_head", None)                 # an embedding head: the classifier is not used
    sd = {k: v for k, v in renamed.items() if not (head and k.startswith(head + "."))}
    sd = check_keys(sd, model.state_dict(), ckpt, f"torchvision {cfg['model']['architecture']} ({cfg['name']})")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    sha = sha256_file(ckpt)
    hash_prefix = published.rsplit("-", 1)[-1].split(".")[0]     # torch.hub's check: the name holds the sha256's head
    return {"kind": "file", "path": str(ckpt), "sha256": sha, "bytes": ckpt.stat().st_size,
            "format": "torchvision state dict" + (" (safetensors)" if ckpt.suffix == ".safetensors" else ""),
            "wrapper": wrapper, "key_remap": remap, "dropped_head": head, "weights": str(w),
            "published_file": published, "is_published_file": sha.startswith(hash_prefix)}


# --- stand-in weights ---

def apply_standin(model: torch.nn.Module, cfg: dict, seed: int) -> dict:
    """The image families' stand-in rule (models/image_torch.py); residual branches: residual_closers."""
    data = resolve_preprocess(cfg)["data_config"]
    return image_torch.apply_standin(model, cfg, seed, data, residual_closers, CLOSERS)


def residual_closers(model: torch.nn.Module, draw) -> set[str]:
    """The last BatchNorm of each residual block's branch (not of its shortcut) gets a layer-scale magnitude,
    as zero_init_residual would start it at zero; returns the parameter names it drew."""
    drawn = set()
    for prefix, block in model.named_modules():
        if not (isinstance(block, RESIDUAL_BLOCKS) or getattr(block, "use_res_connect", False)
                or getattr(block, "apply_residual", False)):
            continue
        norms = [(n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 and m.weight is not None and n.split(".")[0] not in SHORTCUTS]
        if norms:
            name, bn = norms[-1]
            bn.weight.copy_(draw(bn.weight.shape))
            drawn.add(f"{prefix}.{name}.weight")
    return drawn
