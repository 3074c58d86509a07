"""modality.photo_variants: seeded natural-looking variants of the real photos, with their labels carried."""
import csv
import hashlib

import numpy as np
from PIL import Image

from conftest import ROOT
from modality.image import find_image_files
from modality.photo_variants import write_variants

PHOTOS = ROOT / "tests" / "data" / "photos"


def digest(paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_variants_are_seeded_varied_and_labelled(tmp_path):
    photos = find_image_files(str(PHOTOS))
    a = write_variants(photos, tmp_path / "a", 12, seed=3)
    b = write_variants(photos, tmp_path / "b", 12, seed=3)
    c = write_variants(photos, tmp_path / "c", 12, seed=4)
    assert digest(a) == digest(b) and digest(a)[len(photos):] != digest(c)[len(photos):]
    assert [p.suffix for p in a[:len(photos)]] == [".png"] * len(photos)
    first = np.asarray(Image.open(a[0]).convert("RGB"))
    assert first.shape == np.asarray(Image.open(photos[0]).convert("RGB")).shape      # originals unchanged in size
    sizes = {Image.open(p).size for p in a[len(photos):]}
    assert len(sizes) == len(a) - len(photos) and all(200 <= max(s) <= 640 for s in sizes)
    rows = list(csv.DictReader(open(tmp_path / "a" / "labels.csv")))
    by_name = {r["file"]: r["label"] for r in rows}
    assert by_name[a[photos.index(PHOTOS / "coffee.png")].name] == "espresso"
    assert all(not f.startswith(("0000_astronaut", "0005_astronaut")) for f in by_name)   # unlabelled photo left out
    assert len(rows) == sum(1 for i in range(12) if photos[i % len(photos)].name != "astronaut.png")
