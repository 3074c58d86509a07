"""Static AIPP (convert/aipp.py): the aipp_op file from the model's preprocessing, the ATC flags, the refusals,
the uint8 NHWC feeds on every target, the emulation's arithmetic and the input noise it adds; fp16 I/O flags."""
import numpy as np
import pytest

from convert import aipp
from convert.atc import build_atc_jobs
from models import torchvision_image as fam
from pipeline.errors import ConfigError, PipelineError
from pipeline.runners import Runner, TensorMeta
from test_torchvision_family import variant

MZ_MIN = (123.675, 116.28, 103.53)                             # ModelZoo MobileNetV2 aipp_TorchVision.config
MZ_VAR = (0.0171247538, 0.0175070028, 0.0174291939)


def mnv2(tmp_path, name="mnv2_aipp", atc=None, **changes):
    return variant(tmp_path, name, base="mobilenet_v2_imagenet1k", atc=atc or {"aipp": True}, **changes)


def test_the_file_holds_modelzoos_constants_and_parses_back(tmp_path):
    cfg = mnv2(tmp_path)
    p = aipp.plan(cfg)
    fields = aipp.parse_text(aipp.config_text(p))
    assert fields["aipp_mode"] == "static" and fields["input_format"] == "RGB888_U8"
    assert (fields["src_image_size_w"], fields["src_image_size_h"], fields["crop"]) == (224, 224, False)
    assert fields["rbuv_swap_switch"] is False and fields["csc_switch"] is False
    assert [fields[f"mean_chn_{i}"] for i in range(3)] == [0, 0, 0]
    assert [fields[f"min_chn_{i}"] for i in range(3)] == pytest.approx(MZ_MIN, abs=1e-9)
    assert [fields[f"var_reci_chn_{i}"] for i in range(3)] == pytest.approx(MZ_VAR, abs=1e-10)


def test_atc_gets_the_file_and_the_fp16_io_flags(tmp_path):
    cfg = mnv2(tmp_path, atc={"aipp": True, "output_fp16": True, "batch_sizes": [1, 4]})
    jobs = build_atc_jobs(cfg, "model.sim.onnx", "Ascend310P3")
    assert len(jobs) == 2
    for job in jobs:
        assert "--insert_op_conf=aipp.cfg" in job.argv and "--output_type=FP16" in job.argv
        assert job.side_files["aipp.cfg"] == aipp.config_text(aipp.plan(cfg))
    plain = variant(tmp_path, "tv_fp16in", base="resnet18_tv_standin", atc={"input_fp16_nodes": ["image"]})
    assert "--input_fp16_nodes=image" in build_atc_jobs(plain, "m.onnx", "Ascend310P3")[0].argv
    assert aipp.device_inputs(plain)[0]["dtype"] == "float16"
    bad = variant(tmp_path, "tv_badfp16", base="resnet18_tv_standin", atc={"input_fp16_nodes": ["img"]})
    with pytest.raises(ConfigError, match=r"atc.input_fp16_nodes names \['img'\], which are not inputs"):
        build_atc_jobs(bad, "m.onnx", "Ascend310P3")


def test_what_atc_refuses_is_one_line_and_fallback_only_when_asked(tmp_path):
    with pytest.raises(ConfigError, match=r"ATC refuses AIPP and --input_fp16_nodes on the same input \(image\)"):
        aipp.plan(mnv2(tmp_path, "a1", atc={"aipp": True, "input_fp16_nodes": ["image"]}))
    with pytest.raises(ConfigError, match=r"atc.aipp has unknown key\(s\) \['mean'\]"):
        aipp.plan(mnv2(tmp_path, "a2", atc={"aipp": {"mean": [1, 2, 3]}}))
    with pytest.raises(ConfigError, match=r"input_format YUV420SP_U8 is not supported here"):
        aipp.plan(mnv2(tmp_path, "a3", atc={"aipp": {"input_format": "YUV420SP_U8"}}))
    assert aipp.plan(mnv2(tmp_path, "a4", atc={"aipp": {"fallback": True}, "input_fp16_nodes": ["image"]})) is None


def test_a_model_whose_input_is_no_image_is_refused_naming_the_input():
    from pipeline.config import load_config

    cfg = load_config("cnn8rnn_audioset_sed")
    cfg["atc"]["aipp"] = True
    with pytest.raises(ConfigError, match=r"atc.aipp: input \S+ .* is not a 4-D NCHW image with 3 channels"):
        aipp.plan(cfg)


def test_a_squash_crop_goes_to_the_device(tmp_path):
    cfg = mnv2(tmp_path, "sq", preprocess={"crop_mode": "squash", "crop_pct": 0.875})
    p = aipp.plan(cfg)
    assert p["src"] == [256, 256] and p["crop"] == [16, 16, 224, 224]
    fields = aipp.parse_text(aipp.config_text(p))
    assert (fields["load_start_pos_w"], fields["crop_size_h"], fields["src_image_size_h"]) == (16, 224, 256)
    assert aipp.device_inputs(cfg)[0]["shape"] == ["batch", 256, 256, 3]
    host = aipp.plan(mnv2(tmp_path, "sqh", atc={"aipp": {"crop": "host"}},
                          preprocess={"crop_mode": "squash", "crop_pct": 0.875}))
    assert host["src"] == [224, 224] and host["crop"] is None


def test_emulation_noise_is_within_the_derived_bound(tmp_path):
    p = aipp.plan(mnv2(tmp_path))
    bound = aipp.noise_bound(p)
    assert 1.0e-3 < bound["max_abs_parameters_only"] < 1.2e-3 and 1.5e-3 < bound["max_abs"] < 1.7e-3
    px = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    n = aipp.noise(px, p)
    assert 0 < n["max_abs"] <= bound["max_abs"] + 1e-7 and n["rel_l2"] < 2e-3
    ref = aipp.reference(px, p)
    assert ref.shape == (2, 3, 224, 224) and ref.dtype == np.float32
    from modality.image import normalize
    assert np.array_equal(ref[1], normalize(px[1], p["mean"], p["std"]))      # bit for bit the non-AIPP host path
    emu = aipp.emulate(px, p)
    assert np.array_equal(emu, emu.astype(np.float16).astype(np.float32))     # fp16 values


class Echo(Runner):
    backend, device = "ort-cpu", "cpu"

    def _activate(self): ...
    def _deactivate(self): ...
    def _infer(self, feeds): return {"y": feeds["image"].copy()}
    def get_input_metadata(self): return [TensorMeta("image", "float32", [None, 3, 224, 224])]
    def get_output_names(self): return ["y"]
    def describe(self): return {"backend": "ort-cpu"}


def test_cpu_targets_take_the_pixels_and_refuse_wrong_feeds_in_one_line(tmp_path):
    p = aipp.plan(mnv2(tmp_path))
    px = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    with aipp.HostAipp(Echo(), p, "reference") as ref, aipp.HostAipp(Echo(), p, "emulate") as emu:
        assert ref.get_input_metadata()[0].dtype == "uint8"
        assert np.array_equal(ref.infer({"image": px})["y"], aipp.reference(px, p))
        assert np.array_equal(emu.infer({"image": px})["y"], aipp.emulate(px, p))
        with pytest.raises(PipelineError, match=r"input image has shape \[1, 200, 224, 3\], the target takes "
                                                r"\[\?, 224, 224, 3\] \(dim 1 must be 224\)"):
            ref.infer({"image": px[:1, :200]})
        with pytest.raises(PipelineError, match=r"input image is float32, the target takes uint8"):
            ref.infer({"image": px.astype(np.float32)})
        assert ref.describe()["aipp"]["mode"] == "reference"


def test_prepare_follows_the_target_uint8_or_float(tmp_path):
    cfg = mnv2(tmp_path)
    from PIL import Image
    src = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(src)
    meta_u8 = [TensorMeta("image", "uint8", [None, 224, 224, 3])]
    (item,) = fam.prepare(src, cfg, meta_u8)
    assert item["image"].dtype == np.uint8 and item["image"].shape == (1, 224, 224, 3)
    (flt,) = fam.prepare(src, cfg, [TensorMeta("image", "float32", [None, 3, 224, 224])])
    p = aipp.plan(cfg)
    assert np.array_equal(flt["image"], aipp.reference(item["image"], p))     # the same pixels, either way
    x = fam.random_input("image", [2, 224, 224, 3], np.random.default_rng(0), cfg)
    assert x.dtype == np.uint8 and x.shape == (2, 224, 224, 3)


def test_bytes_per_item(tmp_path):
    b = aipp.io_bytes(mnv2(tmp_path, atc={"aipp": True, "output_fp16": True}))
    assert (b["input_bytes"], b["output_bytes"]) == (224 * 224 * 3, 1000 * 2)
    plain = aipp.io_bytes(variant(tmp_path, "plain", base="mobilenet_v2_imagenet1k", atc={"aipp": False}))
    assert plain["input_bytes"] == 4 * 3 * 224 * 224 and plain["input_bytes"] / b["input_bytes"] == 4
