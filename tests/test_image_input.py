"""modality/image.py: an explicit resize size (torchvision's Resize) and bad files, a decompression bomb among
them, each that file's one-line InputError."""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modality import image as img
from pipeline.errors import ConfigError, InputError

PHOTOS = ["chelsea.png", "camera.png"]


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height (valid CRC), with no pixel data: Pillow sees the size on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("crop,resize", [(200, 241), (224, 232)])
def test_resize_size_is_exact_where_crop_pct_is_a_pixel_off(crop, resize):
    """Resize(241) + CenterCrop(200): crop_pct 200/241 gives floor(200 / crop_pct) = 240, and a crop_pct written
    with three digits (224/232 = 0.966) gives 231; resize_size gives torchvision's numbers."""
    from torchvision import transforms as T

    pct = crop / resize if crop == 200 else round(crop / resize, 3)
    data = dict(input_size=[3, crop, crop], crop_pct=pct, crop_mode="center", interpolation="bilinear",
                mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    ref_t = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(data["mean"], data["std"])])
    im = img.load_image(Path(__file__).parent / "data" / "photos" / "coffee.png")
    ref = ref_t(im).numpy()
    assert np.max(np.abs(img.preprocess(im, {**data, "resize_size": resize}) - ref)) < 1e-6
    assert np.max(np.abs(img.preprocess(im, data) - ref)) > 0.1        # one pixel off in scale


def test_bomb_is_an_input_error_naming_the_limit_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(img.MAX_PIXELS_ENV, raising=False)
    bomb = tmp_path / "huge.png"
    png_header_only(bomb, 30000, 30000)
    assert bomb.stat().st_size < 100
    with pytest.raises(InputError) as err:
        img.load_image(bomb)
    msg = str(err.value)
    assert "\n" not in msg
    assert "huge.png has 900,000,000 pixels, above the decompression-bomb limit of 178,956,970" in msg
    assert "MAX_IMAGE_PIXELS 89,478,485" in msg and "set PIPELINE_MAX_IMAGE_PIXELS=450000000 or more" in msg


def test_max_pixels_variable_sets_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(path)          # 4,800 pixels
    monkeypatch.setenv(img.MAX_PIXELS_ENV, "2000")
    with pytest.raises(InputError, match=r"small\.png has 4,800 pixels, above the decompression-bomb limit of 4,000 "
                                         r"\(twice Pillow's MAX_IMAGE_PIXELS 2,000\); .*=2400 or more"):
        img.load_image(path)
    monkeypatch.setenv(img.MAX_PIXELS_ENV, "2400")
    assert img.load_image(path).size == (80, 60)
    monkeypatch.setenv(img.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=r"PIPELINE_MAX_IMAGE_PIXELS=lots is not a positive whole number"):
        img.load_image(path)


def test_any_decoder_failure_is_that_files_input_error(tmp_path, monkeypatch):
    """A decoder may raise anything (here a RuntimeError out of Pillow's plugin); it stays one file's error."""
    from PIL import PngImagePlugin

    path = tmp_path / "odd.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)

    def broken(self, *a, **k):
        raise RuntimeError("decoder state machine confused\nsecond line")
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    with pytest.raises(InputError, match=r"^\S*odd\.png cannot be read as an image \(decoder state machine "
                                         r"confused\); replace or remove the file$"):
        img.load_image(path)
