"""Host side shared by the image families (timm_image, torchvision_image): config sections, heads, labels, the
image layer and the outputs. NumPy + Pillow only (modality.image), so it runs on an Ascend host without torch.

A family's torch side resolves its preprocessing and class names at `make export` (`resolve_preprocess(cfg)`)
into build/<model>/preprocess.json: {architecture, [weights,] data_config, labels, label_ids, ...}; the host
reads that file, and asks the torch side directly only where it is installed. Any field of the config's
`preprocess` section overrides the resolved data config; the input size is the config's input shape. A family
module holds only what differs: its `model` keys, how to build by name, where preprocessing comes from.
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np

from modality import image as img
from pipeline import classify
from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import ROOT, ModelPaths
from pipeline.schema import ListOf, OneOf, Opt

PREPROCESS_FILE = "preprocess.json"
IDENTITY_KEYS = ("architecture", "weights")       # the `model` keys a preprocess.json was resolved for

HEAD_SCHEMA = {
    "num_classes": Opt(int, None, help="head width; default: the pretrained head's"),
    "head": Opt(OneOf(("classifier", "embedding")), "classifier",
                help="classifier: top-k labels; embedding: embedding summary and normalised embedding"),
}
PREPROCESS_SCHEMA = {    # null/absent = the resolved data config (build/<m>/preprocess.json)
    "resize_size": Opt(int, None, help="shorter side before the crop (torchvision's Resize); null: from crop_pct"),
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
    "task_gate": Opt(classify.TASK_GATE_SCHEMA, {}, help="classifier: make compare's top-1 / top-5 gate"),
}
# Per config (capabilities()): a classifier head has labels and the task gate, an embedding head an embedding.
CAPABILITIES = frozenset({"labels", "embedding", "task_metrics"})
# Pillow's decode and resize release the GIL: a prepare thread per core measured 1.5x one on ConvNeXt (make bench)
PREPARE_THREADS = 0
softmax = classify.softmax


def capabilities(cfg: dict) -> frozenset:
    return frozenset({"labels", "task_metrics"} if cfg["model"]["head"] == "classifier" else {"embedding"})


def task_metrics(cfg: dict, source, ref_items: list, tgt_items: list, meta: dict) -> dict:
    return classify.classifier_task_metrics(cfg, source, ref_items, tgt_items, meta)


def task_gate(cfg: dict, per_source: list) -> list:
    return classify.classifier_task_gate(cfg, per_source)


def compare_gate(cfg: dict, output: str) -> dict | None:
    return dict(classify.LOGITS_GATE) if cfg["model"]["head"] == "classifier" else None


def width(cfg: dict) -> int:
    return cfg["outputs"][0]["shape"][-1]


def check_config(cfg: dict, source: str) -> None:
    ins, outs = cfg["inputs"], cfg["outputs"]
    shape = ins[0]["shape"] if len(ins) == 1 else []
    if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise ConfigError(f"{source}: inputs must be one NCHW image, e.g. [batch, 3, 224, 224] (H, W as integers)")
    if len(outs) != 1 or len(outs[0]["shape"]) != 2 or not isinstance(outs[0]["shape"][1], int):
        raise ConfigError(f"{source}: outputs must be one tensor [batch, N] (N = classes or embedding width)")
    m, pre, post = cfg["model"], cfg["preprocess"], cfg["postprocess"]
    if m["num_classes"] is not None and m["num_classes"] != width(cfg):
        raise ConfigError(f"{source}: model.num_classes is {m['num_classes']} but the output shape says "
                          f"{width(cfg)}; make them agree")
    for key in ("mean", "std"):
        if pre[key] is not None and len(pre[key]) != 3:
            raise ConfigError(f"{source}: preprocess.{key} needs 3 values (R, G, B)")
    if pre["std"] is not None and min(pre["std"]) <= 0:
        raise ConfigError(f"{source}: preprocess.std values must be > 0")
    if pre["crop_pct"] is not None and not 0 < pre["crop_pct"] <= 1:
        raise ConfigError(f"{source}: preprocess.crop_pct must be in (0, 1]")
    if pre["resize_size"] is not None and pre["resize_size"] < 1:
        raise ConfigError(f"{source}: preprocess.resize_size must be a positive number of pixels")
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
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != width(cfg):
        raise ConfigError(f"{where}: postprocess.labels_file {rel} has {len(names)} names but the head has "
                          f"{width(cfg)} classes; give one name per class, in output order")
    return names


# --- what make export resolved (build/<m>/preprocess.json) ---

def host_artifacts(cfg: dict) -> list[str]:
    return [PREPROCESS_FILE]


_RESOLVED: dict = {}


def resolved(cfg: dict) -> dict:
    """build/<m>/preprocess.json for this model; the family's torch side is asked only where it is installed."""
    path = ModelPaths(cfg["name"]).build / PREPROCESS_FILE
    if path.is_file():
        key = (str(path), path.stat().st_mtime_ns)
        if key not in _RESOLVED:
            _RESOLVED.clear()
            _RESOLVED[key] = json.loads(path.read_text(encoding="utf-8"))
        doc = _RESOLVED[key]
        if all(doc.get(k) == cfg["model"][k] for k in IDENTITY_KEYS if k in cfg["model"]):
            return doc
    try:
        torch_side = importlib.import_module(f"models.{cfg['family']}.torch_model")
    except ImportError:
        raise PipelineError(f"{path} is missing or was written for another model; run make export "
                            f"MODEL={cfg['name']} first (it resolves the preprocessing and class names)") from None
    return torch_side.resolve_preprocess(cfg)


def data_config(cfg: dict) -> dict:
    """The resolved data config, overridden by the config's `preprocess` fields and input shape."""
    data = dict(resolved(cfg)["data_config"])
    override = {k: v for k, v in cfg["preprocess"].items() if v is not None}
    if "crop_pct" in override:          # a crop_pct of the config replaces a resolved resize size
        data.pop("resize_size", None)
    data.update(override)
    data["input_size"] = [3, *cfg["inputs"][0]["shape"][2:]]
    return data


def labels(cfg: dict, meta: dict) -> list[str] | None:
    """Class names in output order: postprocess.labels_file, else the ones export found (ImageNet)."""
    if cfg["model"]["head"] != "classifier":
        return None
    if cfg["postprocess"]["labels_file"]:
        return read_labels_file(cfg)
    return resolved(cfg).get("labels")


def label_ids(cfg: dict, meta: dict) -> list[str] | None:
    """WordNet ids in output order (n01440764, ...) for an ImageNet head, else None."""
    if cfg["model"]["head"] != "classifier" or cfg["postprocess"]["labels_file"]:
        return None
    return resolved(cfg).get("label_ids")


# --- inputs ---

def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    return img.find_image_files(input_arg)


def generate_sources(cfg: dict, out_dir: Path, count: int | None = None, seed: int | None = None) -> list[Path]:
    return img.generate_images(out_dir, count or cfg["infer"]["samples"],
                               cfg["infer"]["seed"] if seed is None else seed)


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    """The model input of one image: float32 NCHW normalised, or, for a target that takes uint8 NHWC pixels (an
    AIPP .om, or a CPU target behind convert.aipp.HostAipp), the uint8 pixels of the size it takes."""
    name = cfg["inputs"][0]["name"]
    size = pixel_size(cfg, input_meta)
    if size:
        return [{name: img.load_pixels(source, pixel_config(cfg, size))[None]}]
    x = img.preprocess(img.load_image(source), data_config(cfg))
    return [{name: x[None]}]


def pixel_size(cfg: dict, input_meta) -> list[int] | None:
    """[H, W] when the target's image input is uint8 NHWC (AIPP), else None."""
    for m in input_meta or []:
        if m.name == cfg["inputs"][0]["name"] and str(m.dtype) == "uint8" and len(m.shape or []) == 4:
            return [int(m.shape[1]), int(m.shape[2])]
    return None


def pixel_config(cfg: dict, size: list[int]) -> dict:
    """The data config that yields uint8 pixels of `size`: the model's input size (the host crops), or the
    squash-resized size before AIPP's centre crop (aipp_source's sent_size)."""
    data = data_config(cfg)
    if list(size) == list(data["input_size"][1:]):
        return data
    src = aipp_source(cfg)
    if not isinstance(src, dict) or list(size) != list(src["sent_size"]):
        raise PipelineError(f"the target takes {size[0]}x{size[1]} uint8 pixels, which is neither the model's "
                            f"{data['input_size'][1]}x{data['input_size'][2]} nor the size before AIPP's crop; "
                            "rebuild the target (`make om`) for this config")
    return {**data, "input_size": [3, *size], "crop_mode": "squash", "crop_pct": 1.0, "resize_size": None}


def aipp_source(cfg: dict) -> dict | str:
    """What AIPP can take over: the mean/std normalisation (x / 255 folded into the scale) and, where the size
    before the crop is fixed (crop_mode squash), the centre crop; resizing stays on the host."""
    data = data_config(cfg)
    mean, std = data["mean"], data["std"]
    if len(mean) != 3 or len(std) != 3:
        return "the preprocessing's mean/std are not 3 per-channel values (a per-pixel mean image is not AIPP's)"
    _, h, w = data["input_size"]
    out = {"mean": list(mean), "std": list(std), "value_scale": 255.0, "sent_size": [h, w], "device_crop": None}
    if data["crop_mode"] == "squash":
        sh, sw = (int(data["resize_size"]),) * 2 if data.get("resize_size") else \
            (math.floor(h / data["crop_pct"]), math.floor(w / data["crop_pct"]))
        if sh >= h and sw >= w and (sh, sw) != (h, w) and max(sh, sw) <= 4096:
            out["sent_size"] = [sh, sw]
            out["device_crop"] = [int(round((sh - h) / 2.0)), int(round((sw - w) / 2.0)), h, w]
    return out


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """Seeded images: float32 NCHW normalised, or uint8 NHWC pixels for a shape [N, H, W, 3] (an AIPP target)."""
    data = data_config(cfg)
    if len(shape) == 4 and shape[3] == 3 and shape[1] != 3:
        b, h, w, c = shape
        x = img.random_images((b, c, h, w), rng, [0.0] * c, [1.0] * c)
        return np.ascontiguousarray((x.clip(0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1))
    return img.random_images(shape, rng, data["mean"], data["std"])


# --- outputs ---

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
    top = classify.top_k(probs, cfg["postprocess"]["top_k"])
    summary = {"num_classes": int(out.shape[-1]), "finite": finite,
               "top_k": [{"index": int(i), "label": names[i], "score": round(float(probs[i]), 6),
                          "logit": round(float(out[i]), 4)} for i in top]}
    return summary, {"logits": out, "probabilities": probs.astype(np.float32)}


SIMILARITY_FILES = 50        # the run summary's cosine matrix covers at most this many files


def run_summary(cfg: dict, summaries: list) -> dict:
    """Embedding head: the cosine similarity matrix between the files' embeddings (the first SIMILARITY_FILES
    files, rounded to 3 decimals, named by file); a classifier head has no run-level figures."""
    from pipeline.contract import EMBEDDING_ARRAY, RUN_ARRAYS_KEY

    if cfg["model"]["head"] != "embedding" or not summaries:
        return {}
    shown = summaries[:SIMILARITY_FILES]
    vecs = []
    for _source, summary in shown:
        v = np.load(summary[RUN_ARRAYS_KEY][EMBEDDING_ARRAY]).astype(np.float64).ravel()
        n = np.linalg.norm(v)
        vecs.append(v / n if n > 0 else v)
    sim = np.stack(vecs) @ np.stack(vecs).T
    names = [Path(source).name for source, _ in shown]
    note = (f"the first {len(shown)} of {len(summaries)} files (the matrix is capped at {SIMILARITY_FILES})"
            if len(summaries) > len(shown) else f"all {len(shown)} file(s)")
    return {"files": len(summaries),
            "cosine_similarity": {
                "title": "Cosine similarity between the files' embeddings",
                "files": names, "columns": ["file", *[str(i + 1) for i in range(len(names))]],
                "rows": [[f"{i + 1} {name}", *[round(float(x), 3) for x in row]]
                         for i, (name, row) in enumerate(zip(names, sim))],
                "note": f"Rows and columns: {note}, in input order; 1.000 = same direction."}}
