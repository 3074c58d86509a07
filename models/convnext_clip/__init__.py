"""Host side of the timm ConvNeXt CLIP image towers: image decoding, preprocessing, output summary.

NumPy + Pillow only, so it runs on an Ascend host without torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.schema import ListOf, OneOf, Opt

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

MODEL_SCHEMA = {
    "architecture": Opt(str, "convnext_base", help="timm architecture name"),
    "num_classes": Opt(int, 640, help="embedding width (head.fc out features)"),
}
PREPROCESS_SCHEMA = {
    "input_size": Opt(int, 256),
    "crop_pct": Opt(float, 1.0),
    "interpolation": Opt(OneOf(("bicubic", "bilinear")), "bicubic"),
    "mean": Opt(ListOf(float), [0.48145466, 0.4578275, 0.40821073]),
    "std": Opt(ListOf(float), [0.26862954, 0.26130258, 0.27577711]),
}
POSTPROCESS_SCHEMA = {
    "first_values": Opt(int, 8, help="how many leading embedding values to show in the result"),
}


def check_config(cfg: dict, source: str) -> None:
    from pipeline.errors import ConfigError

    pre = cfg["preprocess"]
    if len(pre["mean"]) != 3 or len(pre["std"]) != 3 or min(pre["std"]) <= 0:
        raise ConfigError(f"{source}: preprocess.mean and preprocess.std need 3 values each, std > 0")
    if not 0 < pre["crop_pct"] <= 1:
        raise ConfigError(f"{source}: preprocess.crop_pct must be in (0, 1]")
    shape = cfg["inputs"][0]["shape"]
    if len(cfg["inputs"]) != 1 or shape[1:] != [3, pre["input_size"], pre["input_size"]]:
        raise ConfigError(f"{source}: inputs must be one NCHW image [batch, 3, {pre['input_size']}, {pre['input_size']}]")


def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    path = Path(input_arg)
    if not path.exists():
        raise PipelineError(f"INPUT {input_arg} does not exist; give an image file or a folder of images")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PipelineError(f"INPUT folder {input_arg} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                            "point INPUT at a folder of JPEG/PNG/WebP files")
    return files


def generate_sources(cfg: dict, out_dir: Path, count: int | None = None, seed: int | None = None) -> list[Path]:
    """Deterministic sample images of different sizes, modes and formats."""
    from PIL import Image, ImageDraw

    from pipeline.atomic import atomic_path

    count = count or cfg["infer"]["samples"]
    rng = np.random.default_rng(cfg["infer"]["seed"] if seed is None else seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = [("png", "RGB", (320, 240)), ("jpg", "RGB", (200, 300)), ("webp", "RGBA", (256, 256)),
             ("png", "L", (500, 375)), ("jpg", "RGB", (640, 480)), ("png", "P", (300, 300))]
    paths = []
    for i in range(count):
        ext, mode, (w, h) = kinds[i % len(kinds)]
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy) + 0.5 * i)], -1)
        img = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(img, "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
            x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
        im = im.convert(mode)
        path = out_dir / f"sample_{i:04d}.{ext}"
        with atomic_path(path) as tmp:
            im.save(tmp, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext])
        paths.append(path)
    return paths


def load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except UnidentifiedImageError:
        raise PipelineError(f"{path} is not an image Pillow can read; give JPEG, PNG or WebP files") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise PipelineError(f"{path} cannot be read as an image ({exc}); replace or remove the file") from None


def _to_rgb(im):
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):   # high bit-depth grey: scale to 8 bit
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = (arr / (hi if hi > 0 else 1.0) * 255.0).round().astype(np.uint8)
        im = Image.fromarray(arr, "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def preprocess_image(im, pre: dict) -> np.ndarray:
    """timm eval transform: shorter side to floor(size / crop_pct), center crop, CLIP mean/std -> (3, H, W) float32."""
    from PIL import Image

    size = pre["input_size"]
    scale = int(np.floor(size / pre["crop_pct"]))
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = scale, int(scale * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[pre["interpolation"]]
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), resample)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    x = preprocess_image(load_image(source), cfg["preprocess"])
    return [{cfg["inputs"][0]["name"]: x[None]}]


def postprocess(cfg: dict, source: Path, items: list[dict], meta: dict):
    name = cfg["outputs"][0]["name"]
    emb = np.asarray(items[0][name][0], dtype=np.float32)
    norm = float(np.linalg.norm(emb))
    n = cfg["postprocess"]["first_values"]
    summary = {
        "embedding_dim": int(emb.shape[-1]),
        "l2_norm": norm,
        "first_values": [round(float(v), 6) for v in emb[:n]],
        "finite": bool(np.isfinite(emb).all()),
    }
    return summary, {"embedding": emb, "embedding_normalized": emb / (norm if norm > 0 else 1.0)}


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """Normalised natural-looking images: smooth colour fields plus texture, in CLIP-normalised units."""
    b, c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    imgs = []
    for _ in range(b):
        f = rng.uniform(1, 8, size=(c, 2))
        ph = rng.uniform(0, 2 * np.pi, size=(c,))
        field = 0.5 + 0.35 * np.sin(f[:, :1, None] * xx * np.pi + f[:, 1:, None] * yy * np.pi + ph[:, None, None])
        field = field + rng.normal(0, 0.08, size=(c, h, w))
        imgs.append(field.clip(0, 1))
    x = np.stack(imgs).astype(np.float32)
    mean = np.asarray(cfg["preprocess"]["mean"], np.float32)[:, None, None]
    std = np.asarray(cfg["preprocess"]["std"], np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)
