"""Host-side image preprocessing of the ConvNeXt CLIP family against timm's own eval transform."""
import numpy as np
import pytest
from PIL import Image

from models import convnext_clip as fam
from pipeline.config import load_config
from pipeline.errors import PipelineError

MODEL = "convnext_base_clip_laion2b"


@pytest.fixture(scope="module")
def cfg():
    return load_config(MODEL)


def timm_transform(cfg):
    from timm.data import create_transform

    pre = cfg["preprocess"]
    return create_transform(input_size=(3, pre["input_size"], pre["input_size"]), is_training=False,
                            interpolation=pre["interpolation"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                            crop_pct=pre["crop_pct"], crop_mode="center")


@pytest.mark.parametrize("size,mode", [((320, 240), "RGB"), ((200, 300), "RGB"), ((256, 256), "RGBA"),
                                       ((999, 101), "L"), ((64, 48), "P"), ((257, 700), "CMYK")])
def test_preprocess_matches_timm(cfg, tmp_path, size, mode):
    rng = np.random.default_rng(sum(size))
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB").convert(mode)
    ours = fam.preprocess_image(fam._to_rgb(im), cfg["preprocess"])
    ref = timm_transform(cfg)(im.convert("RGB")).numpy()
    assert ours.shape == ref.shape == (3, 256, 256)
    assert ours.dtype == np.float32
    assert np.max(np.abs(ours - ref)) < 1e-5


def test_prepare_reads_each_format(cfg, tmp_path):
    paths = fam.generate_sources(cfg, tmp_path, count=6)
    assert {p.suffix for p in paths} == {".png", ".jpg", ".webp"}
    for p in paths:
        items = fam.prepare(p, cfg, [])
        assert items[0]["image"].shape == (1, 3, 256, 256)
        assert np.isfinite(items[0]["image"]).all()


def test_generated_sources_are_deterministic(cfg, tmp_path):
    a = fam.generate_sources(cfg, tmp_path / "a", count=3)
    b = fam.generate_sources(cfg, tmp_path / "b", count=3)
    assert [x.read_bytes() for x in a] == [y.read_bytes() for y in b]


def test_not_an_image(cfg, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is text, not a JPEG")
    with pytest.raises(PipelineError, match=r"notes\.jpg is not an image Pillow can read; give JPEG, PNG or WebP"):
        fam.prepare(bad, cfg, [])


def test_truncated_image(cfg, tmp_path):
    good = fam.generate_sources(cfg, tmp_path, count=2)[1]          # a JPEG
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:400])
    with pytest.raises(PipelineError, match=r"cut\.jpg cannot be read as an image"):
        fam.prepare(cut, cfg, [])


def test_missing_input_and_empty_folder(cfg, tmp_path):
    with pytest.raises(PipelineError, match="does not exist; give an image file or a folder"):
        fam.find_sources(str(tmp_path / "nope"), cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="holds no images"):
        fam.find_sources(str(tmp_path / "empty"), cfg)


def test_postprocess_summary(cfg):
    emb = np.arange(640, dtype=np.float32)[None] / 640.0
    summary, arrays = fam.postprocess(cfg, None, [{"embedding": emb}], {})
    assert summary["embedding_dim"] == 640
    assert summary["l2_norm"] == pytest.approx(float(np.linalg.norm(emb)), rel=1e-6)
    assert np.linalg.norm(arrays["embedding_normalized"]) == pytest.approx(1.0, rel=1e-6)
