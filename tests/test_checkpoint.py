"""pipeline.checkpoint: as strict as PyTorch's load_state_dict(strict=True) and no stricter, wrappers taken off,
torchvision's published state-dict layouts (a resnet18 stand-in, an old-format DenseNet) loaded strictly."""
import re

import numpy as np
import pytest
import torch
import yaml
from torchvision import models as tvm

from models.torchvision_image import torch_model as tv
from pipeline.checkpoint import check_keys, read_state_dict, unwrap
from pipeline.config import MORE_DIR, load_config
from pipeline.errors import WeightsError

X = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32))


@pytest.fixture(scope="module")
def resnet18():
    """The resnet18_tv_standin config, a model with known weights and BatchNorm statistics, its output on X, and
    its state dict."""
    cfg = load_config("resnet18_tv_standin")
    model = tv.build(cfg)
    g = torch.Generator().manual_seed(3)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.num_batches_tracked.fill_(7)
    with torch.no_grad():
        y = model(X)
    return cfg, model, y, {k: v.clone() for k, v in model.state_dict().items()}


def drop_counters(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


VARIANTS = {   # name: (how the file holds the state dict, the wrapper the weights record names)
    "plain": (lambda sd: sd, None),
    "no_counters": (drop_counters, None),
    "state_dict_dataparallel": (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 90},
                                "state_dict + module. prefix"),
    "model": (lambda sd: {"model": drop_counters(sd), "optimizer": {"lr": torch.tensor(0.1)}}, "model"),
    "model_state": (lambda sd: {"model_state": sd}, "model_state"),
    "model_state_dict": (lambda sd: {"model_state_dict": sd, "epoch": 3}, "model_state_dict"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_torchvision_layouts_load_strictly(resnet18, tmp_path, variant):
    cfg, _, y, sd = resnet18
    wrap, wrapper = VARIANTS[variant]
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(wrap(sd), path)
    fresh = tv.build(cfg)
    prov = tv.load_weights(fresh, tmp_path, cfg)          # a folder: the published file name is found
    assert prov["wrapper"] == wrapper and prov["path"] == str(path) and prov["key_remap"] is None
    assert prov["is_published_file"] is False                # the name's hash prefix is not this file's sha256
    with torch.no_grad():
        assert torch.equal(fresh(X), y)
    counters = [v for k, v in fresh.state_dict().items() if k.endswith("num_batches_tracked")]
    assert len(counters) == 20


MUTATIONS = {   # what PyTorch's strict load does with each, and so must we
    "no_counters": (drop_counters, True),
    "missing_weight": (lambda sd: {k: v for k, v in sd.items() if k != "layer4.1.bn2.weight"}, False),
    "extra_key": (lambda sd: {**sd, "fc2.weight": torch.zeros(3, 3)}, False),
    "resnet34": (lambda sd: tvm.resnet34().state_dict(), False),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_as_strict_as_pytorch_and_no_stricter(resnet18, tmp_path, mutation):
    cfg, model, _, sd = resnet18
    change, accepted = MUTATIONS[mutation]
    changed = dict(change(sd))                              # a plain dict, as a file read back gives
    try:
        tvm.resnet18().load_state_dict(changed, strict=True)
        torch_accepts = True
    except RuntimeError:
        torch_accepts = False
    assert torch_accepts is accepted
    ours = tmp_path / "x.pth"
    if accepted:
        filled = check_keys(changed, model.state_dict(), ours, "resnet18")
        assert set(filled) == set(model.state_dict())
    else:
        with pytest.raises(WeightsError, match=r"x\.pth does not fit resnet18: \d+ missing keys .*unexpected keys"):
            check_keys(changed, model.state_dict(), ours, "resnet18")


def test_other_architecture_names_missing_and_unexpected(resnet18, tmp_path):
    cfg = resnet18[0]
    torch.save(tvm.mobilenet_v2().state_dict(), tmp_path / "model.pth")
    with pytest.raises(WeightsError, match=r"does not fit torchvision resnet18 \(resnet18_tv_standin\): 102 missing "
                                           r"keys \['conv1\.weight', 'bn1\.weight', 'bn1\.bias'\], 314 unexpected "
                                           r"keys \['features\.0\.0\.weight'"):
        tv.load_weights(tv.build(cfg), tmp_path / "model.pth", cfg)


def test_old_densenet_file_is_remapped(tmp_path):
    """torchvision's published densenet121 file names 'denselayer1.norm.1' what the module calls 'norm1' and
    predates num_batches_tracked; torchvision remaps it in densenet._load_state_dict, and so do we."""
    raw = yaml.safe_load((MORE_DIR / "resnet18_tv_standin.yaml").read_text())
    raw.update(name="densenet121_tv", model={"architecture": "densenet121", "weights": "IMAGENET1K_V1"})
    (tmp_path / "densenet121_tv.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(str(tmp_path / "densenet121_tv.yaml"))
    ref = tvm.densenet121().eval()
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
           for k, v in drop_counters(ref.state_dict()).items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    model = tv.build(cfg)
    prov = tv.load_weights(model, tmp_path, cfg)
    assert prov["key_remap"].startswith("torchvision DenseNet") and prov["wrapper"] is None
    with torch.no_grad():
        assert torch.equal(model(X), ref(X))


def test_unwrap_and_foreign_files(tmp_path):
    t = torch.ones(2)
    assert unwrap({"a": t}) == ({"a": t}, None)
    assert unwrap({"model": {"state_dict": {"module.a": t}}})[1] == "model + state_dict + module. prefix"
    assert unwrap({"module.a": t, "b": t})[1] is None           # a prefix on some keys only is not DataParallel's
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match=r"odd\.pth does not hold a state dict of tensors; give it"):
        read_state_dict(tmp_path / "odd.pth", "give it")
