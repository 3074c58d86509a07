"""Host side of the generic timm image family: any timm image model by name, classifier or embedding head.

NumPy + Pillow only (modality.image), so it runs on an Ascend host without torch or timm. timm's preprocessing
(its pretrained data config) and the class names are resolved by `make export` (torch side) and written to
build/<model>/preprocess.json; the host reads that file. Any field of the config's `preprocess` section
overrides it; the input size is the config's input shape.

A config is about ten lines: `model.architecture` (a timm name, e.g. resnet50.a1_in1k), the input shape
[batch, 3, H, W] and the output shape [batch, N] (N = classes, or the embedding width), one parity case.
Shapes stay in the config so that load_config needs neither timm nor a build folder; `make export` checks
them against the timm model and names the right values when they differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modality import image as img
from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import ROOT
from pipeline.schema import ListOf, OneOf, Opt

PREPROCESS_FILE = "preprocess.json"
DATA_KEYS = ("crop_pct", "crop_mode", "interpolation", "mean", "std")

MODEL_SCHEMA = {
    "architecture": Opt(str, help="a timm model name, e.g. resnet50.a1_in1k (timm.list_models / list_pretrained)"),
    "num_classes": Opt(int, None, help="head width; default: timm's pretrained cfg"),
    "head": Opt(OneOf(("classifier", "embedding")), "classifier",
                help="classifier: top-k labels; embedding: embedding summary and normalised embedding"),
    "fused_attn": Opt((bool, type(None)), None,
                      help="false: attention without F.scaled_dot_product_attention (timm's own path), for "
                           "exporters that cannot trace it; null: timm's default"),
}
PREPROCESS_SCHEMA = {    # null/absent = timm's pretrained data config (build/<m>/preprocess.json)
    "crop_pct": Opt(float, None),
    "crop_mode": Opt(OneOf(img.CROP_MODES), None),
    "interpolation": Opt(OneOf(img.INTERPOLATIONS), None),
    "mean": Opt(ListOf(float), None),
    "std": Opt(ListOf(float), None),
}
POSTPROCESS_SCHEMA = {
    "top_k": Opt(int, 5, help="classifier: labels shown per image"),
    "labels_file": Opt(str, "", help="classifier: class names, one a line, in output order (repo-relative)"),
    "first_values": Opt(int, 8, help="embedding: leading values shown in the result"),
}
# Per config one of them holds (head: classifier -> labels, head: embedding -> embedding); see capabilities().
CAPABILITIES = frozenset({"labels", "embedding"})


def capabilities(cfg: dict) -> frozenset:
    """The capabilities of one config (ready for a per-config contract hook)."""
    return frozenset({"labels" if cfg["model"]["head"] == "classifier" else "embedding"})


def _width(cfg: dict) -> int:
    return cfg["outputs"][0]["shape"][-1]


def check_config(cfg: dict, source: str) -> None:
    ins, outs = cfg["inputs"], cfg["outputs"]
    shape = ins[0]["shape"] if len(ins) == 1 else []
    if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise ConfigError(f"{source}: inputs must be one NCHW image, e.g. [batch, 3, 224, 224] (H, W as integers)")
    if len(outs) != 1 or len(outs[0]["shape"]) != 2 or not isinstance(outs[0]["shape"][1], int):
        raise ConfigError(f"{source}: outputs must be one tensor [batch, N] (N = classes or embedding width)")
    m, pre, post = cfg["model"], cfg["preprocess"], cfg["postprocess"]
    if m["num_classes"] is not None and m["num_classes"] != _width(cfg):
        raise ConfigError(f"{source}: model.num_classes is {m['num_classes']} but the output shape says "
                          f"{_width(cfg)}; make them agree")
    for key in ("mean", "std"):
        if pre[key] is not None and len(pre[key]) != 3:
            raise ConfigError(f"{source}: preprocess.{key} needs 3 values (R, G, B)")
    if pre["std"] is not None and min(pre["std"]) <= 0:
        raise ConfigError(f"{source}: preprocess.std values must be > 0")
    if pre["crop_pct"] is not None and not 0 < pre["crop_pct"] <= 1:
        raise ConfigError(f"{source}: preprocess.crop_pct must be in (0, 1]")
    if post["top_k"] < 1:
        raise ConfigError(f"{source}: postprocess.top_k must be at least 1")
    if post["labels_file"]:
        if m["head"] != "classifier":
            raise ConfigError(f"{source}: postprocess.labels_file is for a classifier head; "
                              "remove it or set model.head: classifier")
        read_labels_file(cfg, source)


def read_labels_file(cfg: dict, source: str | None = None) -> list[str]:
    rel = cfg["postprocess"]["labels_file"]
    where = source or cfg.get("_source", cfg["name"])
    path = Path(rel) if Path(rel).is_absolute() else ROOT / rel
    if not path.is_file():
        raise ConfigError(f"{where}: postprocess.labels_file {rel} does not exist; give a text file with one "
                          "class name a line")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != _width(cfg):
        raise ConfigError(f"{where}: postprocess.labels_file {rel} has {len(labels)} names but the head has "
                          f"{_width(cfg)} classes; give one name per class, in output order")
    return labels


# --- what make export resolved (build/<m>/preprocess.json) ---

def host_artifacts(cfg: dict) -> list[str]:
    return [PREPROCESS_FILE]


_RESOLVED: dict = {}


def resolved(cfg: dict) -> dict:
    """build/<m>/preprocess.json for this architecture; timm is asked directly only where it is installed."""
    from pipeline.paths import ModelPaths

    path = ModelPaths(cfg["name"]).build / PREPROCESS_FILE
    if path.is_file():
        key = (str(path), path.stat().st_mtime_ns)
        if key not in _RESOLVED:
            _RESOLVED.clear()
            _RESOLVED[key] = json.loads(path.read_text(encoding="utf-8"))
        if _RESOLVED[key].get("architecture") == cfg["model"]["architecture"]:
            return _RESOLVED[key]
    try:
        from .torch_model import resolve_preprocess
    except ImportError:
        raise PipelineError(f"{path} is missing or was written for another architecture; run make export "
                            f"MODEL={cfg['name']} first (it resolves timm's preprocessing)") from None
    return resolve_preprocess(cfg)


def data_config(cfg: dict) -> dict:
    """timm's pretrained data config, overridden by the config's `preprocess` fields and input shape."""
    data = dict(resolved(cfg)["data_config"])
    data.update({k: v for k, v in cfg["preprocess"].items() if v is not None})
    data["input_size"] = [3, *cfg["inputs"][0]["shape"][2:]]
    return data


def labels(cfg: dict, meta: dict) -> list[str] | None:
    """Class names in output order: postprocess.labels_file, else the ones export found (ImageNet)."""
    if cfg["model"]["head"] != "classifier":
        return None
    if cfg["postprocess"]["labels_file"]:
        return read_labels_file(cfg)
    return resolved(cfg).get("labels")


# --- inputs ---

def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    return img.find_image_files(input_arg)


def generate_sources(cfg: dict, out_dir: Path, count: int | None = None, seed: int | None = None) -> list[Path]:
    return img.generate_images(out_dir, count or cfg["infer"]["samples"],
                               cfg["infer"]["seed"] if seed is None else seed)


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    x = img.preprocess(img.load_image(source), data_config(cfg))
    return [{cfg["inputs"][0]["name"]: x[None]}]


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    data = data_config(cfg)
    return img.random_images(shape, rng, data["mean"], data["std"])


# --- outputs ---

def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - np.max(x))
    return e / e.sum()


def postprocess(cfg: dict, source: Path, items: list[dict], meta: dict):
    out = np.asarray(items[0][cfg["outputs"][0]["name"]][0], dtype=np.float32)
    finite = bool(np.isfinite(out).all())
    if cfg["model"]["head"] == "embedding":
        norm = float(np.linalg.norm(out))
        summary = {"embedding_dim": int(out.shape[-1]), "l2_norm": norm,
                   "first_values": [round(float(v), 6) for v in out[:cfg["postprocess"]["first_values"]]],
                   "finite": finite}
        return summary, {"embedding": out, "embedding_normalized": out / (norm if norm > 0 else 1.0)}
    names = labels(cfg, meta) or [f"class_{i}" for i in range(out.shape[-1])]
    probs = softmax(out)
    idx = np.argsort(-probs, kind="stable")[:cfg["postprocess"]["top_k"]]
    summary = {"num_classes": int(out.shape[-1]), "finite": finite,
               "top_k": [{"index": int(i), "label": names[i], "score": round(float(probs[i]), 6),
                          "logit": round(float(out[i]), 4)} for i in idx]}
    return summary, {"logits": out, "probabilities": probs.astype(np.float32)}
