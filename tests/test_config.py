import shutil

import pytest

from pipeline.config import available_models, load_config
from pipeline.errors import ConfigError
from pipeline.paths import CONFIG_DIR


def write_variant(tmp_path, name, edit):
    src = (CONFIG_DIR / f"{name}.yaml").read_text()
    out = tmp_path / f"{name}.yaml"
    out.write_text(edit(src))
    return str(out)


@pytest.mark.parametrize("model", available_models())
def test_every_config_loads(model):
    cfg = load_config(model)
    assert cfg["name"] == model
    assert 11 <= cfg["export"]["opset"] <= 18
    assert cfg["inputs"] and cfg["outputs"]
    assert cfg["compare"]["gate"]["max_rel_l2"] <= 0.01
    assert cfg["compare"]["gate"]["min_cosine"] >= 0.9999


def test_unknown_key_is_one_line(tmp_path):
    path = write_variant(tmp_path, "convnext_base_clip_laion2b", lambda s: s.replace("  opset: 17", "  opsett: 17"))
    with pytest.raises(ConfigError, match=r"unknown key 'export\.opsett'; known keys here: .*opset"):
        load_config(path)


def test_wrong_type(tmp_path):
    path = write_variant(tmp_path, "convnext_base_clip_laion2b", lambda s: s.replace("  batch_size: 4", "  batch_size: four"))
    with pytest.raises(ConfigError, match=r"'infer\.batch_size' must be an integer, got 'four'"):
        load_config(path)


def test_missing_required_key(tmp_path):
    path = write_variant(tmp_path, "convnext_base_clip_laion2b", lambda s: s.replace("family: convnext_clip\n", ""))
    with pytest.raises(ConfigError, match=r"missing required key 'family'"):
        load_config(path)


def test_opset_outside_atc_range(tmp_path):
    path = write_variant(tmp_path, "convnext_base_clip_laion2b", lambda s: s.replace("  opset: 17", "  opset: 20"))
    with pytest.raises(ConfigError, match="ATC accepts ONNX opsets 11 to 18"):
        load_config(path)


def test_unknown_family(tmp_path):
    path = write_variant(tmp_path, "convnext_base_clip_laion2b", lambda s: s.replace("family: convnext_clip", "family: nosuch"))
    with pytest.raises(ConfigError, match="family 'nosuch' has no module models/nosuch"):
        load_config(path)


def test_unknown_model_names_available():
    with pytest.raises(ConfigError, match="unknown model 'resnet9'.*available models: .*convnext_base_clip_laion2b"):
        load_config("resnet9")


def test_bad_yaml(tmp_path):
    path = write_variant(tmp_path, "convnext_base_clip_laion2b", lambda s: s + "\n  : [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)


def test_family_section_validated(tmp_path):
    path = write_variant(tmp_path, "convnext_base_clip_laion2b",
                         lambda s: s.replace("  crop_pct: 1.0", "  crop_pct: 1.0\n  crop_mode: squash"))
    with pytest.raises(ConfigError, match=r"unknown key 'preprocess\.crop_mode'"):
        load_config(path)


def test_name_must_match_file(tmp_path):
    src = CONFIG_DIR / "convnext_base_clip_laion2b.yaml"
    shutil.copy(src, tmp_path / "other.yaml")
    with pytest.raises(ConfigError, match="differs from the file name 'other'"):
        load_config(str(tmp_path / "other.yaml"))
