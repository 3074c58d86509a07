"""Natural-looking test images from a few real photos: seeded crops, flips, colour and exposure changes, small
rotations, rescaling and JPEG re-encoding, as a camera or a user would vary them. The originals come first.
When the photos folder has a `labels.csv` (file,label), the out folder gets one too: a variant keeps its
photo's label (a small labelled set for `make accuracy`); photos without a label are left out of it.

`python -m modality.photo_variants <photos folder> <out folder> <count> [seed]` (NumPy + Pillow only).
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from modality.image import find_image_files, load_image
from pipeline.atomic import atomic_path, write_text


def variant(im, rng: np.random.Generator):
    """One seeded variant of an RGB PIL image."""
    from PIL import Image, ImageEnhance

    w, h = im.size
    scale, aspect = rng.uniform(0.35, 1.0), np.exp(rng.uniform(-0.25, 0.25))
    cw, ch = min(w, int(w * np.sqrt(scale * aspect))), min(h, int(h * np.sqrt(scale / aspect)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = im.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = out.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR, expand=False)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(float(rng.uniform(0.75, 1.25)))
    side = int(rng.integers(200, 641))
    ratio = side / max(out.size)
    return out.resize((max(16, int(out.size[0] * ratio)), max(16, int(out.size[1] * ratio))),
                      Image.Resampling.BICUBIC)


def write_variants(photos: list[Path], out_dir: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` files: the photos themselves (as PNG), then seeded variants cycling over them (JPEG, quality 70-95)."""
    rng = np.random.default_rng(seed)
    images = [load_image(p) for p in photos]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = i % len(images)
        original = i < len(images)
        im = images[src] if original else variant(images[src], rng)
        path = out_dir / f"{i:04d}_{photos[src].stem}{'' if original else '_v'}.{'png' if original else 'jpg'}"
        with atomic_path(path) as tmp:
            if original:
                im.save(tmp, format="PNG")
            else:
                im.save(tmp, format="JPEG", quality=int(rng.integers(70, 96)))
        paths.append(path)
    _write_labels(photos, paths, out_dir)
    return paths


def _write_labels(photos: list[Path], paths: list[Path], out_dir: Path) -> None:
    src = photos[0].parent / "labels.csv"
    if not src.is_file():
        return
    labels = {row["file"]: row["label"] for row in csv.DictReader(io.StringIO(src.read_text(encoding="utf-8")))}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label"])
    for i, path in enumerate(paths):
        label = labels.get(photos[i % len(photos)].name)
        if label:
            writer.writerow([path.name, label])
    write_text(out_dir / "labels.csv", buf.getvalue())


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (3, 4):
        print("usage: python -m modality.photo_variants <photos folder> <out folder> <count> [seed]", file=sys.stderr)
        return 2
    paths = write_variants(find_image_files(args[0]), Path(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else 0)
    print(f"photo_variants | {len(paths)} image(s) in {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
