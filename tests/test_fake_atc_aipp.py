"""tests/fake_atc.py's static AIPP (--insert_op_conf) and fp16 I/O (--input_fp16_nodes, --output_type) on a tiny
1x3x8x8 -> Conv ONNX: the uint8 NHWC input it records and builds, the numerics of the AIPP prologue against the
fp32 network fed the fp32 normalisation of the same pixels, ATC's rejections, and the dtypes in <om>.json.
The fake runs in-process (fake_atc.main) except for one run through the `atc` shell wrapper; see docs/aipp.md."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import fake_atc

HERE = Path(__file__).parent
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
IMAGENET = """
  min_chn_0: 123.675
  min_chn_1: 116.28
  min_chn_2: 103.53
  var_reci_chn_0: 0.0171247538316637
  var_reci_chn_1: 0.0175070028011204
  var_reci_chn_2: 0.0174291938997821
"""
# max over the 256 levels and 3 channels of |AIPP (fp16 min_chn/var_reci, fp16 output) - exact fp32 normalisation|
# (docs/aipp.md derives 1.6285e-3)
AIPP_INPUT_NOISE = 1.63e-3


def conf(body: str, head: str = "aipp_mode: static\n  input_format: RGB888_U8") -> str:
    return f"aipp_op {{\n  {head}\n{body}\n}}\n"


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with m.onnx (x: 1x3x8x8 float -> Conv 3x3 pad 1 -> y: 1x4x8x8) as the cwd."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def atc(*extra, shape="x:1,3,8,8"):
    """fake_atc.main with the usual ONNX arguments; returns (rc, <om>.json or None)."""
    rc = fake_atc.main(["--framework=5", "--model=m.onnx", "--output=o", "--soc_version=Ascend310P3",
                        f"--input_shape={shape}", *extra])
    meta = Path("o_linux_x86_64.om.json")
    return rc, (json.loads(meta.read_text()) if rc == 0 else None)


def with_aipp(text: str, *extra, **kw):
    Path("aipp.cfg").write_text(text)
    return atc("--insert_op_conf=aipp.cfg", *extra, **kw)


def om_run(feed):
    return ort.InferenceSession("o_linux_x86_64.om", providers=["CPUExecutionProvider"]).run(None, feed)[0]


def reference(nhwc_rgb: np.ndarray) -> np.ndarray:
    """The fp32 network on the exact fp32 normalisation of RGB pixels (NHWC uint8)."""
    x = ((nhwc_rgb / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)
    return ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def bound():
    """|conv(noise)| <= sum |w| per output channel times the input noise."""
    w = numpy_helper.to_array(onnx.load("m.onnx").graph.initializer[0])
    return np.abs(w).sum(axis=(1, 2, 3))[None, :, None, None] * AIPP_INPUT_NOISE + 1e-5


def pixels(*shape, seed=1):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---- what it builds ---------------------------------------------------------------------------------------------
def test_rgb888_imagenet_uint8_nhwc_in_and_fp32_network_out(work):
    rc, meta = with_aipp(conf(IMAGENET + "  src_image_size_w: 8\n  src_image_size_h: 8"))
    assert rc == 0
    assert meta["inputs"] == [{"name": "x", "dtype": "uint8", "shape": [1, 8, 8, 3], "format": "NHWC"}]
    assert meta["outputs"] == [{"name": "y", "dtype": "float32"}]
    assert meta["aipp"][0]["min_chn_0"] == pytest.approx(123.675) and meta["aipp"][0]["var_reci_chn_3"] == 1.0
    px = pixels(1, 8, 8, 3)
    got, ref = om_run({"x": px}), reference(px)
    assert got.dtype == np.float32 and (np.abs(got - ref) <= bound()).all()
    assert np.abs(got - ref).max() > 1e-5          # fp16 parameters and output rounding do show


def test_every_level_matches_the_numpy_emulation_of_the_documented_formula(work):
    """Each of the 256 levels in each channel: ((in - mean - fp16(min)) * fp16(var_reci)) rounded to fp16."""
    graph = onnx.load("m.onnx")
    graph.graph.node[0].CopyFrom(helper.make_node("Identity", ["x"], ["y"]))
    del graph.graph.initializer[:]
    graph.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16]))
    graph.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16]))
    onnx.save(graph, "m.onnx")
    rc, _ = with_aipp(conf(IMAGENET + "  mean_chn_1: 1"), shape="x:1,3,16,16")
    assert rc == 0
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got = om_run({"x": np.stack([levels] * 3, -1)[None]})[0]
    mins = np.float16([123.675, 116.28, 103.53]).astype(np.float32)
    var = np.float16([0.0171247538316637, 0.0175070028011204, 0.0174291938997821]).astype(np.float32)
    want = ((levels[None].astype(np.float32) - np.float32([0, 1, 0])[:, None, None] - mins[:, None, None])
            * var[:, None, None]).astype(np.float16).astype(np.float32)
    assert np.array_equal(got, want)
    exact = (levels[None] / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
    assert np.abs(got[[0, 2]] - exact[[0, 2]]).max() <= AIPP_INPUT_NOISE


def test_bgr_swap_then_crop_fields_in_any_order(work):
    """rbuv_swap_switch takes BGR bytes; the swap comes before the normalisation, so chn_0 is R; crop after it.
    input_format need not come first (protobuf text format)."""
    text = ("aipp_op {\n  crop: true\n  load_start_pos_w: 3\n  load_start_pos_h: 2\n  crop_size_w: 8\n"
            "  crop_size_h: 8\n  src_image_size_w: 12\n  src_image_size_h: 10\n  rbuv_swap_switch: true\n"
            f"{IMAGENET}  input_format: RGB888_U8\n  aipp_mode: static\n}}\n")
    rc, meta = with_aipp(text)
    assert rc == 0 and meta["inputs"][0]["shape"] == [1, 10, 12, 3]
    bgr = pixels(1, 10, 12, 3, seed=2)
    got, ref = om_run({"x": bgr}), reference(bgr[:, 2:10, 3:11, ::-1])
    assert (np.abs(got - ref) <= bound()).all()


def test_crop_size_zero_takes_the_model_size(work):
    rc, meta = with_aipp(conf(IMAGENET + "  src_image_size_w: 9\n  src_image_size_h: 9\n  crop: true\n"
                                         "  load_start_pos_w: 1"))
    assert rc == 0 and meta["inputs"][0]["shape"] == [1, 9, 9, 3]
    px = pixels(1, 9, 9, 3, seed=3)
    assert (np.abs(om_run({"x": px}) - reference(px[:, 0:8, 1:9])) <= bound()).all()


def test_xrgb8888_four_bytes_a_pixel_x_dropped(work):
    rc, meta = with_aipp(conf(IMAGENET + "  ax_swap_switch: true", head="aipp_mode: static\n  "
                                                                        "input_format: XRGB8888_U8"))
    assert rc == 0 and meta["inputs"][0]["shape"] == [1, 8, 8, 4]
    xrgb = pixels(1, 8, 8, 4, seed=4)
    assert (np.abs(om_run({"x": xrgb}) - reference(xrgb[..., 1:])) <= bound()).all()


def test_padding_after_normalisation(work):
    rc, meta = with_aipp(conf("  src_image_size_w: 6\n  src_image_size_h: 5\n  padding: true\n"
                              "  left_padding_size: 1\n  right_padding_size: 1\n  top_padding_size: 2\n"
                              "  bottom_padding_size: 1\n  padding_value: 0.5\n  var_reci_chn_0: 0.25"))
    assert rc == 0 and meta["inputs"][0]["shape"] == [1, 5, 6, 3]
    px = pixels(1, 5, 6, 3, seed=5)
    x = np.full((1, 3, 8, 8), 0.5, np.float32)
    x[:, :, 2:7, 1:7] = px.transpose(0, 3, 1, 2) * np.float32([0.25, 1, 1])[:, None, None]
    ref = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(om_run({"x": px}), ref, atol=1e-5)


def test_batch_and_src_sizes_default_to_the_model(work):
    rc, meta = with_aipp(conf(IMAGENET), shape="x:2,3,8,8")
    assert rc == 0 and meta["inputs"][0]["shape"] == [2, 8, 8, 3]


def test_ais_bench_double_reports_and_checks_the_uint8_input(work):
    import ais_bench_double as double

    assert with_aipp(conf(IMAGENET))[0] == 0
    session = double.FakeInferSession(0, str(work / "o_linux_x86_64.om"))
    (desc,) = session.get_inputs()
    assert (desc.name, desc.datatype, desc.shape, desc.size) == ("x", "dtype.uint8", [1, 8, 8, 3], 192)
    px = pixels(1, 8, 8, 3)
    assert (np.abs(session.infer([px])[0] - reference(px)) <= bound()).all()
    with pytest.raises(ValueError):
        session.infer([px.astype(np.float32)])                    # float32 NCHW is not what the .om takes
    with pytest.raises(RuntimeError):
        session.infer([pixels(1, 8, 8, 4)])                       # 256 bytes, the model wants 192


def test_through_the_atc_wrapper_with_a_relative_conf_path(work):
    (work / "cfg").mkdir()
    (work / "cfg" / "aipp.cfg").write_text(conf(IMAGENET))
    out = subprocess.run([sys.executable, str(HERE / "fake_atc.py"), "--framework=5", "--model=m.onnx",
                          "--output=o", "--soc_version=Ascend310P3", "--input_shape=x:1,3,8,8",
                          "--insert_op_conf=cfg/aipp.cfg"], capture_output=True, text=True, cwd=work)
    assert out.returncode == 0 and "ATC run success" in out.stdout
    assert json.loads((work / "o_linux_x86_64.om.json").read_text())["inputs"][0]["dtype"] == "uint8"


# ---- what it rejects --------------------------------------------------------------------------------------------
REJECT = {
    "aipp_mode missing": (conf(IMAGENET, head="input_format: RGB888_U8"), (), "E10052", "aipp_mode must be"),
    "aipp_mode not static/dynamic": (conf("", head="aipp_mode: on\n  input_format: RGB888_U8"), (), "E13005",
                                     "Unknown enumeration value"),
    "input_format missing": (conf("", head="aipp_mode: static"), (), "E10052", "Input format of AIPP conf"),
    "unknown field": (conf("  mean_chn_4: 1"), (), "E13005", 'no field named "mean_chn_4"'),
    "rotation_angle (template, not proto)": (conf("  rotation_angle: 0"), (), "E13005", "rotation_angle"),
    "field given twice": (conf("  crop: false\n  crop: false"), (), "E13005", "specified multiple times"),
    "var_reci given twice": (conf("  var_reci_chn_0: 1.0\n  var_reci_chn_0: 2.0"), (), "E10052",
                             "cannot be configured repeatedly"),
    "unknown top-level block": ("aipp { aipp_mode: static }\n", (), "E13005", "no field named"),
    "two blocks on one input": (conf("") + conf("  related_input_rank: 0"), (), "E10052", "same position"),
    "rank past the inputs": (conf("  related_input_rank: 1"), (), "E10052", "related_input_rank 1"),
    "--dynamic_dims": (conf(""), ("--dynamic_dims=1;2",), "E10001", "dynamic dims function does not support AIPP"),
    "fp16 on the AIPP input": (conf(""), ("--input_fp16_nodes=x",), "E10034", "connected to AIPP"),
    "src size vs model H/W": (conf("  src_image_size_w: 10\n  src_image_size_h: 8"), (), "E70014",
                              "W [10] do not match"),
    "crop window outside the source": (conf("  src_image_size_w: 8\n  src_image_size_h: 8\n  crop: true\n"
                                            "  load_start_pos_w: 2\n  crop_size_w: 8\n  crop_size_h: 8"), (),
                                       "E10052", "load_start_pos_w + crop_size_w"),
    "crop without src sizes": (conf("  crop: true"), (), "E10052", "only when crop and padding are off"),
    "padding over 32": (conf("  src_image_size_w: 8\n  src_image_size_h: 1\n  padding: true\n"
                             "  top_padding_size: 33"), (), "E10052", "[0,32]"),
    "resize": (conf("  resize: true"), (), "E10052", "resize is a reserved field"),
    "support_rotation": (conf("  support_rotation: true"), (), "E10052", "reserved"),
    "min_chn out of range": (conf("  min_chn_0: 300"), (), "E10052", "min_chn_0 must be in [0,255]"),
    "negative src size": (conf("  src_image_size_w: -8"), (), "E10052", "smaller than 0"),
    "--dynamic_image_size with src sizes": (conf("  src_image_size_w: 8\n  src_image_size_h: 8"),
                                            ("--dynamic_image_size=8,8;16,16",), "E10052", "must be set to '0'"),
}


@pytest.mark.parametrize("case", REJECT)
def test_rejects_what_atc_rejects(work, capsys, case):
    text, extra, code, words = REJECT[case]
    rc, _ = with_aipp(text, *extra)
    out = capsys.readouterr().out
    assert rc != 0 and fake_atc.FAILED in out and "ATC run success" not in out
    assert f"{code}: " in out and words in out, out
    assert not Path("o_linux_x86_64.om").exists()


def test_static_aipp_on_a_ranged_input_shape_is_refused(work, capsys):
    rc, _ = with_aipp(conf(""), shape="x:1~4,3,8,8")
    assert rc != 0 and "E10052: " in capsys.readouterr().out


def test_not_modelled_is_said_so(work, capsys):
    for text in (conf("  csc_switch: true"), conf("", head="aipp_mode: static\n  input_format: YUV420SP_U8"),
                 conf("  max_src_image_size: 192", head="aipp_mode: dynamic")):
        assert with_aipp(text)[0] != 0
        assert "not modelled by the fake ATC" in capsys.readouterr().out


# ---- fp16 I/O ---------------------------------------------------------------------------------------------------
def test_input_fp16_nodes_and_output_type_fp16(work):
    rc, meta = atc('--input_fp16_nodes="x"', "--output_type=FP16")
    assert rc == 0
    assert meta["inputs"] == [{"name": "x", "dtype": "float16", "shape": [1, 3, 8, 8]}]
    assert meta["outputs"] == [{"name": "y", "dtype": "float16"}]
    x = np.random.default_rng(6).normal(size=(1, 3, 8, 8)).astype(np.float16)
    got = om_run({"x": x})
    ref = ort.InferenceSession("m.onnx").run(None, {"x": x.astype(np.float32)})[0]
    assert got.dtype == np.float16 and np.array_equal(got, ref.astype(np.float16))


def test_aipp_with_fp16_output(work):
    rc, meta = with_aipp(conf(IMAGENET), "--output_type=FP16")
    assert rc == 0 and meta["inputs"][0]["dtype"] == "uint8" and meta["outputs"][0]["dtype"] == "float16"
    px = pixels(1, 8, 8, 3)
    got = om_run({"x": px})
    assert got.dtype == np.float16 and (np.abs(got.astype(np.float32) - reference(px)) <= bound() + 4e-3).all()


def test_output_type_per_node_needs_out_nodes(work, capsys):
    rc, meta = atc('--output_type="conv:0:FP16"', '--out_nodes="conv:0"')
    assert rc == 0 and meta["outputs"] == [{"name": "y", "dtype": "float16"}]
    assert atc("--output_type=conv:0:FP16")[0] != 0
    assert "E10001: " in capsys.readouterr().out


@pytest.mark.parametrize("value, words", [("FP64", "The value must be FP32, FP16, UINT8, INT8"),
                                          ("INT32", "The value must be FP32, FP16, UINT8, INT8"),
                                          ("conv:FP16", "Valid format"),
                                          ("conv:x:FP16", "not a positive integer")])
def test_output_type_values_omg_cc_refuses(work, capsys, value, words):
    assert atc(f"--output_type={value}", "--out_nodes=conv:0")[0] != 0
    out = capsys.readouterr().out
    assert "E10001: " in out and words in out


def test_input_fp16_nodes_unknown_name(work, capsys):
    assert atc("--input_fp16_nodes=x;image")[0] != 0
    assert "E10016: Op name image specified in --input_fp16_nodes is not found" in capsys.readouterr().out


def test_without_the_new_flags_the_onnx_is_copied_byte_for_byte(work):
    rc, meta = atc()
    assert rc == 0 and Path("o_linux_x86_64.om").read_bytes() == Path("m.onnx").read_bytes()
    assert meta["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}] and "outputs" not in meta
