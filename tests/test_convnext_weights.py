"""The three published checkpoint formats load strictly and reproduce the network that wrote them."""
import numpy as np
import pytest
import torch

from models.convnext_clip import torch_model as tm
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.metrics import rel_l2

MODEL = "convnext_base_clip_laion2b"


@pytest.fixture(scope="module")
def cfg():
    return load_config(MODEL)


@pytest.fixture(scope="module")
def known(cfg):
    """A timm model with known weights (OpenCLIP's projection has no bias, so head.fc.bias is zero)."""
    model = tm.build(cfg)
    tm.apply_standin(model, cfg, seed=7)
    with torch.no_grad():
        model.head.fc.bias.zero_()
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, 256, 256)).astype(np.float32))
    with torch.no_grad():
        y = model(x).numpy()
    return model, x, y


@pytest.fixture(scope="module")
def checkpoints(known, tmp_path_factory):
    from safetensors.torch import save_file

    model = known[0]
    d = tmp_path_factory.mktemp("ckpt")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
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
def test_format_loads_and_reproduces(cfg, known, checkpoints, fname, fmt):
    _, x, y = known
    fresh = tm.build(cfg)
    prov = tm.load_weights(fresh, checkpoints / fname, cfg)
    assert prov["format"] == fmt and prov["kind"] == "file" and len(prov["sha256"]) == 64
    with torch.no_grad():
        got = fresh(x).numpy()
    assert rel_l2(got, y) < 1e-5


def test_folder_prefers_safetensors(cfg, checkpoints):
    prov = tm.load_weights(tm.build(cfg), checkpoints, cfg)
    assert prov["path"].endswith("model.safetensors")


def test_wrong_keys_are_named(cfg, tmp_path):
    sd = tm.build(cfg).state_dict()
    del sd["head.norm.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(PipelineError, match=r"does not fit convnext_base .*1 missing keys \['head\.norm\.weight'\], "
                                            r"1 unexpected keys \['extra\.weight'\]"):
        tm.load_weights(tm.build(cfg), tmp_path / "pytorch_model.bin", cfg)


def test_other_model_is_refused(cfg, tmp_path):
    import timm

    torch.save(timm.create_model("convnext_tiny", num_classes=640).state_dict(), tmp_path / "tiny.bin")
    with pytest.raises(PipelineError, match=r"162 missing keys \['stages\.2\.blocks\.9\.gamma'"):
        tm.load_weights(tm.build(cfg), tmp_path / "tiny.bin", cfg)
    in1k = timm.create_model("convnext_base", num_classes=1000).state_dict()   # ImageNet head, same keys
    torch.save(in1k, tmp_path / "in1k.bin")
    with pytest.raises(PipelineError, match=r"head\.fc\.weight is \(1000, 1024\), expected \(640, 1024\)"):
        tm.load_weights(tm.build(cfg), tmp_path / "in1k.bin", cfg)


def test_corrupt_and_missing(cfg, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(PipelineError, match="cannot read checkpoint .*model.safetensors"):
        tm.load_weights(tm.build(cfg), tmp_path / "model.safetensors", cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="has none of model.safetensors"):
        tm.load_weights(tm.build(cfg), tmp_path / "empty", cfg)
    with pytest.raises(PipelineError, match="does not exist; pass WEIGHTS"):
        tm.load_weights(tm.build(cfg), tmp_path / "nope.bin", cfg)


def test_standin_is_deterministic_and_not_identity(cfg):
    a, b = tm.build(cfg), tm.build(cfg)
    tm.apply_standin(a, cfg, 0)
    tm.apply_standin(b, cfg, 0)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    gammas = torch.cat([p.flatten() for n, p in a.named_parameters() if n.endswith("gamma")])
    assert gammas.min() > 1e-3 and 0.05 < gammas.median() < 1.0    # not timm's 1e-6 layer scale
