"""Image in: find and generate sources, decode any PIL mode to RGB, timm's eval resize/crop, normalise.

NumPy + Pillow only (no torch), so it runs on an Ascend host. A data config is a dict in timm's terms:
`input_size` [3, H, W], `crop_pct`, `crop_mode` (center | squash | border), `interpolation` (nearest, bilinear,
bicubic, box, hamming, lanczos), `mean`, `std`, and optionally `resize_size`. `resize_crop` follows timm's
`transforms_imagenet_eval`, with S = resize_size when given (torchvision's `Resize(S)`: exact, where
floor(size / crop_pct) can be a pixel off, e.g. inception_v3's 342 / 299), else floor(size / crop_pct):
- center: the shorter side to S (per axis for a non-square target without resize_size), keep the aspect ratio,
  centre crop;
- squash: both sides to S, centre crop;
- border: the longer side to S, keep the aspect ratio, centre crop or pad with the mean colour.
An image smaller than the crop is resized up, never refused.

Host stages (pipeline.stage_clock): "decode" (file -> RGB), "resize" (resize + crop), "normalise" (uint8 HWC ->
float32 CHW). With AIPP on the .om (convert.aipp) the NPU normalises: the host then feeds `pixels()`, uint8 HWC,
and skips the normalise stage. `draft_size(data_cfg)` gives a JPEG's DCT-domain downscale request
(PIL Image.draft: decode at 1/2, 1/4 or 1/8 scale, still at least the pre-crop size) for load_image(draft=...);
it changes pixels (a scaled IDCT, then the resize), so it is opt-in: never used unless the caller asks.

Decoding: any file Pillow cannot decode is that file's InputError. Pillow refuses images above twice
Image.MAX_IMAGE_PIXELS (decompression bombs; Pillow's default 89,478,485 pixels, so 178,956,970); the environment
variable PIPELINE_MAX_IMAGE_PIXELS sets MAX_IMAGE_PIXELS for trusted large files.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.stage_clock import stage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CROP_MODES = ("center", "squash", "border")
MAX_PIXELS_ENV = "PIPELINE_MAX_IMAGE_PIXELS"
PIL_DEFAULT_MAX_PIXELS = 89_478_485      # Pillow's Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# sample files: (format, PIL mode, (width, height)), cycled
SAMPLE_KINDS = [("png", "RGB", (320, 240)), ("jpg", "RGB", (200, 300)), ("webp", "RGBA", (256, 256)),
                ("png", "L", (500, 375)), ("jpg", "RGB", (640, 480)), ("png", "P", (300, 300))]


def find_image_files(input_arg: str) -> list[Path]:
    """INPUT as a file or a folder (searched recursively): the image files in it, sorted."""
    from . import find_files

    return find_files(input_arg, IMAGE_SUFFIXES, "an image file", "a folder of images", "images",
                      "a folder of JPEG/PNG/WebP files")


def generate_images(out_dir: Path, count: int, seed: int) -> list[Path]:
    """Deterministic sample images of different sizes, PIL modes and formats (colour fields plus shapes)."""
    from PIL import Image, ImageDraw

    from pipeline.atomic import atomic_path

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ext, mode, (w, h) = SAMPLE_KINDS[i % len(SAMPLE_KINDS)]
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


def max_image_pixels() -> int:
    """Pillow's MAX_IMAGE_PIXELS: $PIPELINE_MAX_IMAGE_PIXELS, else Pillow's default (89,478,485)."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return PIL_DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{MAX_PIXELS_ENV}={raw} is not a positive whole number of pixels; set it like "
                          f"{MAX_PIXELS_ENV}=400000000 or unset it (default {PIL_DEFAULT_MAX_PIXELS:,})")
    return int(raw)


def load_image(path: Path, draft: tuple[int, int] | None = None):
    """Decode an image file to an RGB PIL image; InputError for anything Pillow cannot decode.

    draft (w, h): let a JPEG decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps it at least w x h
    (PIL Image.draft); other formats ignore it. Changes pixels: opt-in only (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_image_pixels()
    try:
        with stage("decode"), Image.open(path) as im:
            if draft and im.format == "JPEG":
                im.draft("RGB", draft)
            im.load()
            return to_rgb(im)
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image Pillow can read; give JPEG, PNG or WebP files") from None
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        need = f"{(int(found.group(1)) + 1) // 2}" if found else "<pixels>"
        raise InputError(f"{path} has {size}, above the decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS:,} "
                         f"(twice Pillow's MAX_IMAGE_PIXELS {Image.MAX_IMAGE_PIXELS:,}); if the file is trusted, "
                         f"set {MAX_PIXELS_ENV}={need} or more, else remove it") from None
    except Exception as exc:        # a decoder can raise anything on a broken file; it is that file's error
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(f"{path} cannot be read as an image ({why}); replace or remove the file") from None


def to_rgb(im):
    """Any PIL mode to RGB: high bit-depth grey scaled to 8 bit, palette transparency kept through RGBA."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = (arr / (hi if hi > 0 else 1.0) * 255.0).round().astype(np.uint8)
        im = Image.fromarray(arr, "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def _resample(name: str):
    from PIL import Image

    return {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}[name]


def _resize(im, w: int, h: int, interpolation: str):
    w, h = max(1, w), max(1, h)
    return im if (w, h) == im.size else im.resize((w, h), _resample(interpolation))


def _crop_or_pad(im, out_h: int, out_w: int, fill):
    from PIL import Image

    w, h = im.size
    if out_w > w or out_h > h:                  # pad (left/top get the smaller half), as timm/torchvision
        pad_l, pad_t = max(out_w - w, 0) // 2, max(out_h - h, 0) // 2
        canvas = Image.new("RGB", (max(w, out_w), max(h, out_h)), fill)
        canvas.paste(im, (pad_l, pad_t))
        im, (w, h) = canvas, canvas.size
    top, left = int(round((h - out_h) / 2.0)), int(round((w - out_w) / 2.0))
    return im.crop((left, top, left + out_w, top + out_h))


def draft_size(data_cfg: dict) -> tuple[int, int]:
    """The size a JPEG may be decoded down to before resize_crop: the pre-crop scale on both axes (so the decoded
    image still covers it whatever the crop mode), for load_image(draft=...)."""
    _, out_h, out_w = data_cfg["input_size"]
    if data_cfg.get("resize_size"):
        s = int(data_cfg["resize_size"])
        return s, s
    return math.floor(out_w / data_cfg["crop_pct"]), math.floor(out_h / data_cfg["crop_pct"])


def resize_crop(im, data_cfg: dict):
    """timm's eval resize + crop (torchvision's with resize_size) of an RGB PIL image to input_size (H, W)."""
    with stage("resize"):
        return _resize_crop(im, data_cfg)


def _resize_crop(im, data_cfg: dict):
    _, out_h, out_w = data_cfg["input_size"]
    crop_pct, mode, interp = data_cfg["crop_pct"], data_cfg["crop_mode"], data_cfg["interpolation"]
    scale_h, scale_w = math.floor(out_h / crop_pct), math.floor(out_w / crop_pct)
    if data_cfg.get("resize_size"):
        scale_h = scale_w = int(data_cfg["resize_size"])
    w, h = im.size
    fill = (0, 0, 0)
    if mode == "squash":
        im = _resize(im, scale_w, scale_h, interp)
    elif mode == "border":
        ratio = max(h / scale_h, w / scale_w)
        im = _resize(im, round(w / ratio), round(h / ratio), interp)
        fill = tuple(round(255 * v) for v in data_cfg["mean"])
    elif scale_h == scale_w:                    # torchvision Resize(int): shorter side, long side truncated
        short, long = min(w, h), max(w, h)
        new_long = int(scale_h * long / short)
        im = _resize(im, *((scale_h, new_long) if w <= h else (new_long, scale_h)), interp)
    else:                                       # timm ResizeKeepRatio: shorter side relative to the target
        ratio = min(h / scale_h, w / scale_w)
        im = _resize(im, round(w / ratio), round(h / ratio), interp)
    return _crop_or_pad(im, out_h, out_w, fill)


def normalize(rgb: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W): x / 255, then (x - mean) / std per channel."""
    with stage("normalise"):
        x = rgb.astype(np.float32) / 255.0
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(im, data_cfg: dict) -> np.ndarray:
    """RGB PIL image -> model input (3, H, W) float32, as timm's eval transform computes it."""
    return normalize(np.asarray(resize_crop(im, data_cfg)), data_cfg["mean"], data_cfg["std"])


def pixels(im, data_cfg: dict) -> np.ndarray:
    """RGB PIL image -> uint8 (H, W, 3) after the eval resize/crop: what the host feeds an AIPP .om (the NPU does
    the x / 255, mean and std of normalize)."""
    rgb = resize_crop(im, data_cfg)
    with stage("to-array"):
        return np.ascontiguousarray(np.asarray(rgb, np.uint8))


def load_pixels(path: Path, data_cfg: dict, draft: bool = False) -> np.ndarray:
    """File -> uint8 (H, W, 3) model pixels for an AIPP target; draft=True decodes JPEGs DCT-downscaled (opt-in)."""
    return pixels(load_image(path, draft_size(data_cfg) if draft else None), data_cfg)


def random_images(shape, rng: np.random.Generator, mean, std) -> np.ndarray:
    """Seeded natural-looking images (B, C, H, W): smooth colour fields plus texture, normalised."""
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
    mean = np.asarray(mean, np.float32)[:, None, None]
    std = np.asarray(std, np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)
