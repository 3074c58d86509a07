"""The generic timm image family: image layer vs timm's eval transform, configs, heads, checkpoints, stand-ins."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, run_env
from convert import aipp
from modality import image as img
from models import timm_image as fam
from models.timm_image import torch_model as tm
from pipeline.config import CONFIG_DIR, MORE_DIR, load_config
from pipeline.errors import ConfigError, InputError, PipelineError, WeightsError
from pipeline.metrics import rel_l2

CLIP = "convnext_base_clip_laion2b"
TIMM_CONFIGS = sorted(p.stem for d in (CONFIG_DIR, MORE_DIR) for p in d.glob("*.yaml")
                      if yaml.safe_load(p.read_text()).get("family") == "timm_image")
CLASSIFIERS = [n for n in TIMM_CONFIGS if n != CLIP]


@pytest.fixture(scope="module")
def clip_cfg():
    return load_config(CLIP)


def variant(tmp_path, base: str, name: str, **changes) -> dict:
    """A config file `name` in tmp_path: `base` with top-level sections replaced; loaded and validated."""
    src = CONFIG_DIR / f"{base}.yaml"
    raw = yaml.safe_load((src if src.exists() else MORE_DIR / f"{base}.yaml").read_text())
    raw.update(name=name, **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(str(path))


# --- modality/image.py against timm.data.create_transform ---

DATA_CONFIGS = {
    "clip256": dict(input_size=[3, 256, 256], crop_pct=1.0, crop_mode="center", interpolation="bicubic",
                    mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]),
    "in1k224": dict(input_size=[3, 224, 224], crop_pct=0.875, crop_mode="center", interpolation="bilinear",
                    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    "squash": dict(input_size=[3, 224, 224], crop_pct=0.9, crop_mode="squash", interpolation="nearest",
                   mean=[0.5] * 3, std=[0.5] * 3),
    "border": dict(input_size=[3, 224, 224], crop_pct=1.0, crop_mode="border", interpolation="bicubic",
                   mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    "nonsquare": dict(input_size=[3, 192, 256], crop_pct=0.95, crop_mode="center", interpolation="bicubic",
                      mean=[0.5] * 3, std=[0.5] * 3),
}
IMAGES = [((320, 240), "RGB"), ((200, 300), "RGB"), ((256, 256), "RGBA"), ((999, 101), "L"), ((64, 48), "P"),
          ((257, 700), "CMYK"), ((20, 12), "RGB")]       # the last is smaller than every crop


def timm_eval(data: dict):
    from timm.data import create_transform

    return create_transform(input_size=tuple(data["input_size"]), is_training=False, crop_pct=data["crop_pct"],
                            crop_mode=data["crop_mode"], interpolation=data["interpolation"],
                            mean=tuple(data["mean"]), std=tuple(data["std"]))


@pytest.mark.parametrize("data_name", sorted(DATA_CONFIGS))
@pytest.mark.parametrize("size,mode", IMAGES)
def test_preprocess_matches_timm(data_name, size, mode):
    data = DATA_CONFIGS[data_name]
    rng = np.random.default_rng(sum(size))
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)
    ours = img.preprocess(img.to_rgb(im), data)
    ref = timm_eval(data)(im.convert("RGB")).numpy()
    assert ours.shape == ref.shape == tuple(data["input_size"])
    assert ours.dtype == np.float32
    assert np.max(np.abs(ours - ref)) < 1e-5


def test_clip_preprocessing_is_unchanged(clip_cfg, isolated_dirs):
    """timm's pretrained cfg gives exactly the values the bespoke family hard-coded."""
    assert fam.data_config(clip_cfg) == {**DATA_CONFIGS["clip256"]}


# --- host side: sources, errors, outputs ---

@pytest.fixture
def built(isolated_dirs, clip_cfg):
    """build/<clip>/preprocess.json as make export writes it, in a temp build tree."""
    from pipeline.paths import ModelPaths

    tm.export_artifacts(None, clip_cfg, ModelPaths(CLIP).build)
    return ModelPaths(CLIP).build


def test_prepare_reads_each_format(clip_cfg, built, tmp_path):
    paths = fam.generate_sources(clip_cfg, tmp_path / "s", count=6)
    assert {p.suffix for p in paths} == {".png", ".jpg", ".webp"}
    for p in paths:
        items = fam.prepare(p, clip_cfg, [])
        assert items[0]["image"].shape == (1, 3, 256, 256) and np.isfinite(items[0]["image"]).all()
    assert fam.host_artifacts(clip_cfg) == ["preprocess.json"]


def test_generated_sources_are_deterministic(clip_cfg, tmp_path):
    a = fam.generate_sources(clip_cfg, tmp_path / "a", count=3)
    b = fam.generate_sources(clip_cfg, tmp_path / "b", count=3)
    assert [x.read_bytes() for x in a] == [y.read_bytes() for y in b]


def test_bad_images(clip_cfg, built, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is text, not a JPEG")
    with pytest.raises(InputError, match=r"notes\.jpg is not an image Pillow can read; give JPEG, PNG or WebP"):
        fam.prepare(bad, clip_cfg, [])
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(fam.generate_sources(clip_cfg, tmp_path, count=2)[1].read_bytes()[:400])
    with pytest.raises(InputError, match=r"cut\.jpg cannot be read as an image"):
        fam.prepare(cut, clip_cfg, [])
    with pytest.raises(InputError, match="does not exist; give an image file or a folder"):
        fam.find_sources(str(tmp_path / "nope"), clip_cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        fam.find_sources(str(tmp_path / "empty"), clip_cfg)


def test_host_without_timm_needs_the_export_file(clip_cfg, isolated_dirs, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "models.timm_image.torch_model", None)     # as on an Ascend host
    src = fam.generate_sources(clip_cfg, tmp_path, count=1)[0]
    with pytest.raises(PipelineError, match=r"preprocess\.json is missing .*run make export MODEL=convnext_base"):
        fam.prepare(src, clip_cfg, [])


def test_embedding_summary(clip_cfg, built):
    emb = np.arange(640, dtype=np.float32)[None] / 640.0
    summary, arrays = fam.postprocess(clip_cfg, None, [{"embedding": emb}], {})
    assert summary["embedding_dim"] == 640 and summary["finite"]
    assert summary["l2_norm"] == pytest.approx(float(np.linalg.norm(emb)), rel=1e-6)
    assert np.linalg.norm(arrays["embedding_normalized"]) == pytest.approx(1.0, rel=1e-6)
    assert fam.labels(clip_cfg, {}) is None and fam.capabilities(clip_cfg) == {"embedding"}


def test_classifier_top5_imagenet_labels(tmp_path, isolated_dirs):
    cfg = load_config("resnet50_a1_in1k")
    from pipeline.paths import ModelPaths

    tm.export_artifacts(None, cfg, ModelPaths(cfg["name"]).build)
    logits = np.zeros((1, 1000), np.float32)
    logits[0, [1, 207, 340, 947, 999]] = [5, 4, 3, 2, 1]
    summary, arrays = fam.postprocess(cfg, None, [{"logits": logits}], {})
    top = summary["top_k"]
    assert [t["index"] for t in top] == [1, 207, 340, 947, 999]
    assert top[0]["label"].startswith("goldfish") and top[2]["label"].startswith("zebra")
    assert top[0]["score"] == pytest.approx(float(fam.softmax(logits[0])[1]), abs=1e-6)
    assert arrays["probabilities"].sum() == pytest.approx(1.0, abs=1e-5)
    assert fam.capabilities(cfg) == {"labels", "task_metrics"}
    ids = fam.label_ids(cfg, {})                 # WordNet ids in output order, from timm's ImageNetInfo
    assert len(ids) == 1000 and ids[1] == "n01443537" and ids[340] == "n02391049"      # goldfish, zebra


def test_labels_file(tmp_path):
    good = tmp_path / "three.txt"
    good.write_text("cat\ndog\nbird\n")
    cfg = variant(tmp_path, "resnet50_a1_in1k", "three_classes", model={"architecture": "resnet18",
                  "num_classes": 3}, outputs=[{"name": "logits", "shape": ["batch", 3]}],
                  postprocess={"labels_file": str(good)})
    summary, _ = fam.postprocess(cfg, None, [{"logits": np.array([[0.0, 2.0, 1.0]], np.float32)}], {})
    assert [t["label"] for t in summary["top_k"]] == ["dog", "bird", "cat"]
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    with pytest.raises(ConfigError, match=r"labels_file .*two\.txt has 2 names but the head has 3 classes"):
        variant(tmp_path, "resnet50_a1_in1k", "three_bad", model={"architecture": "resnet18", "num_classes": 3},
                outputs=[{"name": "logits", "shape": ["batch", 3]}], postprocess={"labels_file": str(tmp_path / "two.txt")})


# --- every timm config ---

@pytest.mark.parametrize("name", TIMM_CONFIGS)
def test_config_is_short_and_matches_timm(name):
    from timm.data import resolve_model_data_config

    cfg = load_config(name)
    if name != CLIP:
        lines = [ln for ln in open(cfg["_path"]).read().splitlines() if ln.strip() and not ln.startswith("#")]
        assert len(lines) <= 10, "a timm config is about ten lines"
    model = tm.build(cfg)
    assert model.num_classes == cfg["outputs"][0]["shape"][-1]
    doc = tm.resolve_preprocess(cfg)
    ref = resolve_model_data_config(model)
    assert doc["data_config"] == {k: list(v) if isinstance(v, tuple) else v for k, v in ref.items()}
    assert (doc["labels"] is not None) == (cfg["model"]["head"] == "classifier")


def test_unknown_architecture_names_closest(tmp_path):
    cfg = variant(tmp_path, "resnet50_a1_in1k", "typo", model={"architecture": "resnet51.a1_in1k"})
    with pytest.raises(ConfigError, match=r"'resnet51\.a1_in1k' is not a timm model; closest: resnet50\.a1_in1k"):
        tm.build(cfg)
    cfg = variant(tmp_path, "resnet50_a1_in1k", "typo2", model={"architecture": "efficentnet_b0"})
    with pytest.raises(ConfigError, match=r"closest: efficientnet_b0"):
        tm.build(cfg)


def test_head_width_must_match_timm(tmp_path):
    cfg = variant(tmp_path, "resnet50_a1_in1k", "wide", outputs=[{"name": "logits", "shape": ["batch", 10]}])
    with pytest.raises(ConfigError, match=r"1000-wide head .* set outputs to \[batch, 1000\], or model.num_classes: 10"):
        tm.build(cfg)


# --- checkpoints ---

@pytest.fixture(scope="module")
def known(clip_cfg):
    """A timm model with known weights (OpenCLIP's projection has no bias, so head.fc.bias is zero)."""
    model = tm.build(clip_cfg)
    tm.apply_standin(model, clip_cfg, seed=7)
    with torch.no_grad():
        model.head.fc.bias.zero_()
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, 256, 256)).astype(np.float32))
    with torch.no_grad():
        y = model(x).numpy()
    return model, x, y


@pytest.fixture(scope="module")
def clip_model(clip_cfg):
    """A CLIP-config model for the refusals (a refused load leaves the model untouched)."""
    return tm.build(clip_cfg)


@pytest.fixture(scope="module")
def checkpoints(known, tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("ckpt")
    sd = {k: v.contiguous() for k, v in known[0].state_dict().items()}
    save_file(sd, str(d / "model.safetensors"))
    torch.save(sd, d / "pytorch_model.bin")
    clip = {f"visual.trunk.{k}": v for k, v in sd.items() if not k.startswith("head.fc.")}
    clip["visual.head.proj.weight"] = sd["head.fc.weight"]
    clip.update({"token_embedding.weight": torch.zeros(8, 4), "positional_embedding": torch.zeros(77, 4),
                 "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(12, 4),
                 "ln_final.weight": torch.ones(4), "text_projection": torch.zeros(4, 4), "logit_scale": torch.tensor(4.6)})
    torch.save(clip, d / "open_clip_pytorch_model.bin")
    return d


@pytest.mark.parametrize("fname,fmt", [("model.safetensors", "timm safetensors"),
                                       ("pytorch_model.bin", "timm pickle"),
                                       ("open_clip_pytorch_model.bin", "OpenCLIP")])
def test_format_loads_and_reproduces(clip_cfg, known, checkpoints, fname, fmt):
    _, x, y = known
    fresh = tm.build(clip_cfg)
    prov = tm.load_weights(fresh, checkpoints / fname, clip_cfg)
    assert prov["format"] == fmt and prov["kind"] == "file" and len(prov["sha256"]) == 64 and prov["wrapper"] is None
    assert prov["filter"] == "checkpoint_filter_fn"          # timm's own ConvNeXt filter
    with torch.no_grad():
        assert rel_l2(fresh(x).numpy(), y) < 1e-5


def test_folder_prefers_safetensors(clip_cfg, checkpoints):
    prov = tm.load_weights(tm.build(clip_cfg), checkpoints, clip_cfg)
    assert prov["path"].endswith("model.safetensors")


def test_wrong_keys_are_named(clip_cfg, clip_model, tmp_path):
    sd = dict(clip_model.state_dict())
    del sd["head.norm.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"does not fit convnext_base.*1 missing keys \['head\.norm\.weight'\], "
                                           r"1 unexpected keys \['extra\.weight'\]"):
        tm.load_weights(clip_model, tmp_path / "pytorch_model.bin", clip_cfg)


def test_other_model_is_refused(clip_cfg, clip_model, tmp_path):
    import timm

    torch.save(timm.create_model("convnext_tiny", num_classes=640).state_dict(), tmp_path / "tiny.bin")
    with pytest.raises(WeightsError, match=r"162 missing keys \['stages\.2\.blocks\.9\.gamma'"):
        tm.load_weights(clip_model, tmp_path / "tiny.bin", clip_cfg)
    torch.save(timm.create_model("convnext_base", num_classes=1000).state_dict(), tmp_path / "in1k.bin")
    with pytest.raises(WeightsError, match=r"head\.fc\.weight is \(1000, 1024\), expected \(640, 1024\)"):
        tm.load_weights(clip_model, tmp_path / "in1k.bin", clip_cfg)


def test_other_architecture_is_refused(tmp_path):
    """A ResNet-18 checkpoint given to a ResNet-50 config: the missing and unexpected keys are named."""
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18").state_dict(), str(tmp_path / "model.safetensors"))
    cfg = load_config("resnet50_a1_in1k")
    with pytest.raises(WeightsError, match=r"does not fit resnet50\.a1_in1k .*\d+ missing keys \['layer1\.0\.conv3"
                                           r".*unexpected keys"):
        tm.load_weights(tm.build(cfg), tmp_path, cfg)


def test_corrupt_and_missing(clip_cfg, clip_model, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot read checkpoint .*model.safetensors"):
        tm.load_weights(clip_model, tmp_path / "model.safetensors", clip_cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="has none of model.safetensors"):
        tm.load_weights(clip_model, tmp_path / "empty", clip_cfg)
    with pytest.raises(WeightsError, match="does not exist; pass WEIGHTS"):
        tm.load_weights(clip_model, tmp_path / "nope.bin", clip_cfg)


# --- stand-in weights ---

def layer_stds(model, x) -> dict:
    """std of every conv / linear / norm output (the per-layer activations)."""
    kinds = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)
    stds, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, kinds):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: stds.__setitem__(n, float(o.std()))))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return stds, logits


@pytest.mark.parametrize("base,size", [("resnet50_a1_in1k", 64), ("vit_small_patch16_224_augreg_in21k_ft_in1k", 64)])
def test_standin_statistics(tmp_path, isolated_dirs, base, size):
    """CNN (BatchNorm) and transformer: per-layer activation std within one decade of 1, logits std < 10."""
    cfg = variant(tmp_path, base, f"small_{size}", inputs=[{"name": "image", "shape": ["batch", 3, size, size]}],
                  export={"parity_cases": [{"image": [1, 3, size, size]}]})
    model = tm.build(cfg)
    prov = tm.apply_standin(model, cfg, seed=0)
    assert prov["kind"] == "stand-in" and "BatchNorm" in prov["rule"]
    data = fam.data_config(cfg)
    x = torch.from_numpy(img.random_images((4, 3, size, size), np.random.default_rng(99), data["mean"], data["std"]))
    stds, logits = layer_stds(model, x)
    assert len(stds) > 50
    outside = {k: v for k, v in stds.items() if not 0.1 <= v <= 10}
    assert not outside, outside
    assert float(logits.std()) < 10 and float(logits.abs().max()) < 40
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if bns:                                   # calibrated, not timm's 0/1 init
        assert all(float(m.running_var.mean()) != 1.0 for m in bns)
    again = tm.build(cfg)
    tm.apply_standin(again, cfg, seed=0)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_clip_standin_keeps_layer_scale(known):
    a = known[0]
    gammas = torch.cat([p.flatten() for n, p in a.named_parameters() if n.endswith("gamma")])
    assert gammas.min() > 1e-3 and 0.05 < gammas.median() < 1.0    # not timm's 1e-6 layer scale


def infer_samples(results_dir) -> list[dict]:
    """The per-source results of make infer (inference_result.jsonl, or the older inline list)."""
    inf = json.loads((results_dir / "inference_result.json").read_text())
    if "samples_file" in inf:
        lines = (results_dir / inf["samples_file"]).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    return inf["samples"]


# --- a small classifier end to end: known weights -> export -> infer -> same logits, top-5 labels ---

@pytest.mark.e2e
def test_small_classifier_export_and_infer(tmp_path):
    import timm
    from safetensors.torch import save_file

    cfg = variant(tmp_path, "mobilenetv3_large_100_ra_in1k", "mnv3_small_shape",
                  inputs=[{"name": "image", "shape": ["batch", 3, 96, 96]}],
                  export={"parity_cases": [{"image": [2, 3, 96, 96]}]}, infer={"batch_size": 2, "samples": 3})
    ref = timm.create_model("mobilenetv3_large_100", num_classes=1000).eval()
    tm.apply_standin(ref, cfg, seed=5)                           # known weights with BatchNorm statistics
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    env = run_env(tmp_path)
    for stage in (["export", "--weights", str(tmp_path / "model.safetensors")],
                  ["run.infer", "--backend", "ort-cpu"]):
        p = subprocess.run([sys.executable, "-m", stage[0], "--model", cfg["_path"], *stage[1:]], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
    res = tmp_path / "results" / cfg["name"]
    exp = json.loads((res / "export.json").read_text())
    assert exp["parity"]["verdict"] == "PASSED" and exp["weights"]["format"] == "timm safetensors"
    assert [a["path"].endswith("preprocess.json") for a in exp["artifacts"]] == [True]
    build = tmp_path / "build" / cfg["name"]
    for sample in infer_samples(res):
        top = sample["summary"]["top_k"]
        assert len(top) == 5 and all(t["label"] and not t["label"].startswith("class_") for t in top)
        item = sample["items"][0]
        x = np.load(build / "inputs" / f"{item}.image.npy")
        assert x.dtype == np.uint8 and x.shape == (1, 96, 96, 3)          # AIPP: the host saves the pixels
        x = aipp.reference(x, aipp.plan(cfg))                             # what the fp32 reference feeds the network
        got = np.load(build / "outputs" / "ort-cpu" / "items" / f"{item}.logits.npy")
        with torch.no_grad():
            assert rel_l2(got, ref(torch.from_numpy(x)).numpy()) < 1e-5
