"""Torch side shared by the image families: the stand-in rule, the export hooks and ImageNet label ids.

A family passes what differs: its resolved data config (mean/std of the calibration images) and how it finds the
norm scales that close a residual branch (timm: its `zero_init_last` marker; torchvision: the last BatchNorm of
each residual block).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from modality.image import random_images
from pipeline.atomic import write_json
from pipeline.errors import ToolchainError

EMBED_PARAMS = ("pos_embed", "cls_token", "class_token", "dist_token", "reg_token", "mask_token",
                "relative_position_bias_table")
LAYER_SCALES = ("gamma", "layer_scale")     # timm's and torchvision's names of layer-scale parameters
TARGET_LOGIT_STD = 3.0          # stand-in classifier: logits std on generated images (trained ImageNet: ~2-4)
CALIBRATION_BATCHES = (2, 8)    # stand-in BatchNorm statistics: batches x images
PREPROCESS_FILE = "preprocess.json"
LAYERS = (torch.nn.Linear, torch.nn.Conv2d)    # what a classifier head ends in


def width(cfg: dict) -> int:
    return cfg["outputs"][0]["shape"][-1]


def imagenet_label_ids(subset: str = "imagenet-1k") -> list[str]:
    """WordNet ids of an ImageNet subset in timm's (the standard) class order."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo(subset).label_names())


# --- export hooks ---

def export_module(model: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    return model


def write_preprocess(doc: dict, build_dir: Path) -> list[Path]:
    path = Path(build_dir) / PREPROCESS_FILE
    write_json(path, doc)
    return [path]


def check_onnx(onnx_model, cfg: dict) -> None:
    outs = onnx_model.graph.output
    want = cfg["outputs"][0]["name"]
    if [o.name for o in outs] != [want]:
        raise ToolchainError(f"exported ONNX has outputs {[o.name for o in outs]}, the config names ['{want}']")
    last = outs[0].type.tensor_type.shape.dim[-1].dim_value
    if last and last != width(cfg):
        raise ToolchainError(f"exported ONNX output {want} is {last} wide, the config says {width(cfg)}")


# --- stand-in weights ---

def standin_rule(closers: str) -> str:
    return ("parameters: layer-scale gammas and the norm scales that close a residual branch "
            f"({closers}) exp(N(-1.8, 0.6)) (median 0.17), other norm scales |N(1, 0.25)| with "
            "1% outlier channels x6, biases N(0, 0.05), position/class tokens N(0, 0.02), conv/linear weights "
            "N(0, 1/fan_in); BatchNorm running statistics re-estimated on generated images; a classifier head "
            f"scaled so its logits have std {TARGET_LOGIT_STD:g} on those images (an embedding head is kept)")


@torch.no_grad()
def apply_standin(model: torch.nn.Module, cfg: dict, seed: int, data: dict,
                  residual_closers: Callable, closers_text: str) -> dict:
    """Deterministic weights with trained-like statistics for any image architecture.

    A training init is far from a trained network (layer-scale gammas 1e-6 make blocks identities, BatchNorm
    stays at mean 0 / var 1, a random classifier gives logits with std ~30), so fp16 errors would be invisible or
    exaggerated. The rule (standin_rule): 1) draw parameters by role (for timm's ConvNeXt this is the former
    bespoke rule, so its stand-in is unchanged); 2) the norm scales that close a residual branch
    (`residual_closers(model, draw)` draws them and returns their names) get layer-scale magnitudes, so the
    identity path dominates as in a trained ResNet and fp32 rounding stays at a trained net's level (ResNet-50:
    torch fp32 vs fp64 6.7e-7, 1.3e-5 without); 3) BatchNorm layers alone go to train mode and re-estimate their
    running mean/var as the cumulative average over CALIBRATION_BATCHES of generated images (`data`: mean/std);
    4) a classifier head is scaled so its logits on those images have std TARGET_LOGIT_STD.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g) * std + mean

    # norm scales the architecture itself starts at zero: they close a residual branch even without a
    # marker (LeViT's bn_weight_init=0)
    zero_init = {n for n, p in model.named_parameters() if p.ndim == 1 and n.endswith("weight") and not p.any()}
    for name, p in model.named_parameters():
        if p.ndim == 0:
            continue
        if name.endswith(LAYER_SCALES):
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
    drawn = residual_closers(model, lambda shape: torch.exp(normal(shape, 0.6, -1.8)))
    for name, p in model.named_parameters():
        if name in zero_init and name not in drawn:
            p.copy_(torch.exp(normal(p.shape, 0.6, -1.8)))
    images = calibration_images(cfg, seed, data)
    calibrate_batchnorm(model, images)
    logit_std = scale_classifier(model, images, width(cfg)) if cfg["model"]["head"] == "classifier" else None
    return {"kind": "stand-in", "seed": seed, "rule": standin_rule(closers_text),
            **({"logit_std": round(logit_std, 4)} if logit_std is not None else {}),
            "note": "deterministic stand-in weights (no checkpoint given): trained-like statistics, not "
                    f"{cfg['model']['architecture']} weights"}


def calibration_images(cfg: dict, seed: int, data: dict) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    n, b = CALIBRATION_BATCHES
    shape = (b, 3, *cfg["inputs"][0]["shape"][2:])
    return [torch.from_numpy(random_images(shape, rng, data["mean"], data["std"])) for _ in range(n)]


def calibrate_batchnorm(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
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


def _out_width(m: torch.nn.Module) -> int | None:
    return m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels


def last_layer(model: torch.nn.Module, classes: int) -> tuple[str, torch.nn.Module] | None:
    """(name, module) of the model's last Linear/Conv2d that is `classes` wide: a torchvision classifier head."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYERS) and _out_width(m) == classes]
    return found[-1] if found else None


def head_layers(model: torch.nn.Module, classes: int) -> list[torch.nn.Module]:
    """The last Linear/Conv2d of each classifier head: of timm's get_classifier() (a distilled model has two;
    LeViT wraps it in a norm), else of the whole model, the last one `classes` wide (torchvision)."""
    if not hasattr(model, "get_classifier"):
        found = last_layer(model, classes)
        return [found[1]] if found else []
    heads = model.get_classifier()
    out = []
    for h in heads if isinstance(heads, tuple) else (heads,):
        layers = [m for m in h.modules() if isinstance(m, LAYERS)] if isinstance(h, torch.nn.Module) else []
        if layers:
            out.append(layers[-1])
    return out


def scale_classifier(model: torch.nn.Module, images: list[torch.Tensor], classes: int) -> float | None:
    heads = head_layers(model, classes)
    if not heads:
        return None
    logits = torch.cat([model(x).flatten(1) for x in images])
    std = float(logits.std())
    if std > 0:
        for head in heads:
            head.weight.mul_(TARGET_LOGIT_STD / std)
    return float(torch.cat([model(x).flatten(1) for x in images]).std())
