"""Offline ATC pre-flight on small ONNX graphs built here: a clean one passes; STFT, ops missing from the parser
map (also inside If branches), custom domains, keep_dtype names of missing nodes, dynamic axes without gears,
config/graph input mismatches are findings; the CLI prints one line per finding and exits non-zero on errors."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from convert import preflight
from convert.preflight import check_config, check_model, parser_knows, run_preflight
from pipeline.config import SCHEMA
from pipeline.schema import validate

CN = "convnext_base_clip_laion2b"


def cfg_for(inputs, **atc):
    raw = {"name": "t", "family": "timm_image", "inputs": inputs,
           "outputs": [{"name": "y", "shape": ["batch", 4]}],
           "export": {"parity_cases": []}, "atc": atc}
    return {**validate(raw, SCHEMA, "", "t.yaml"), "_source": "t.yaml"}


IMG = [{"name": "x", "shape": ["batch", 4, 8, 8]}]
AUDIO = [{"name": "logmel", "shape": ["batch", 1, "frames", 64]}]


def model(nodes, inputs, outputs, opset=13, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def clean():
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.ones(16, np.float32))
    return model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv0"),
                  helper.make_node("Relu", ["c"], ["r"], name="relu0"),
                  helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap0"),
                  helper.make_node("Flatten", ["p"], ["y"], name="flat0")],
                 [vi("x", ["batch", 4, 8, 8])], [vi("y", ["batch", 4])], inits=[w])


def codes(findings):
    return [(f["level"], f["code"]) for f in findings]


def test_clean_graph_passes(tmp_path):
    path = tmp_path / "model.sim.onnx"
    onnx.save(clean(), str(path))
    rep = run_preflight(path, cfg_for(IMG, batch_sizes=[1, 8]))
    assert (rep["verdict"], rep["errors"], rep["warnings"], rep["findings"]) == ("PASSED", 0, 0, [])
    assert rep["onnx"]["bytes"] == path.stat().st_size and len(rep["onnx"]["sha256"]) == 64


def test_stft_is_an_error_with_the_host_fix():
    m = model([helper.make_node("STFT", ["signal", "step"], ["spec"], name="stft0")],
              [vi("signal", [1, 16000, 1]), vi("step", [], TensorProto.INT64)], [vi("spec", None)], opset=17)
    found = check_model(m, cfg_for([{"name": "signal", "shape": [1, 16000, 1]}]))
    stft = [f for f in found if f["code"] == "unsupported_op"]
    assert stft == [{"level": "error", "code": "unsupported_op",
                     "message": "1 STFT node(s): ATC has no ONNX parser for STFT",
                     "fix": "compute the spectrogram on the host (NumPy) and feed it to the model"}]
    assert ("warning", "opset") in codes(found)


def test_ops_outside_the_parser_map_for_this_opset():
    hs = model([helper.make_node("HardSwish", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])], opset=13)
    assert parser_knows("HardSwish", 14) and not parser_knows("HardSwish", 13)
    assert [f["message"] for f in check_model(hs, cfg_for([{"name": "x", "shape": [1, 4]}]))] == [
        "1 HardSwish node(s): not in ATC's ONNX parser map for opset 13 (ATC would stop with E19010 "
        "'No parser is registered')"]
    assert parser_knows("LayerNormalization", 17) and not parser_knows("LayerNormalization", 16)
    assert parser_knows("Constant", 11) and parser_knows("GRU", 18) and not parser_knows("Loop", 13)


def test_unsupported_op_inside_an_if_branch_and_custom_domain():
    then_g = helper.make_graph([helper.make_node("Unique", ["x"], ["u"]), helper.make_node("Scan", ["x"], ["w"])],
                               "then", [], [vi("u", None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["v"])], "else", [], [vi("v", None)])
    m = model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
               helper.make_node("FastGelu", ["x"], ["z"], domain="com.microsoft", name="fg")],
              [vi("x", [4]), vi("c", [], TensorProto.BOOL)], [vi("y", None), vi("z", [4])])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    found = check_model(m, cfg_for([{"name": "x", "shape": [4]}]))
    assert codes(found) == [("error", "unsupported_op"), ("warning", "newer_parser"), ("error", "custom_domain")]
    assert found[0]["message"] == "1 Scan node(s): ATC has no ONNX parser for Scan"
    assert found[1]["message"] == ("1 Unique node(s): only recent toolkits parse Unique (hicann/ops-nn "
                                   "index/unique_with_counts_and_sorting/framework/unique_onnx_plugin.cpp); older ones "
                                   "stop with E19010 'No parser is registered'")
    assert found[2]["message"] == "node fg (com.microsoft::FastGelu) is a custom op"


def test_keep_dtype_names_must_exist_optype_entries_pass():
    found = check_model(clean(), cfg_for(IMG, keep_dtype=["relu0", "Pow_458", "OpType::SoftmaxV2"]))
    assert found == [{"level": "error", "code": "keep_dtype",
                      "message": "atc.keep_dtype names node 'Pow_458', which is not in the ONNX",
                      "fix": "use node names of the simplified ONNX (model.sim.onnx) or OpType::<AscendIRType> entries"}]


def audio_model():
    return model([helper.make_node("Relu", ["logmel"], ["y"])], [vi("logmel", ["batch", 1, "frames", 64])],
                 [vi("y", ["batch", 1, "frames", 64])], opset=17)


def test_dynamic_non_batch_axis_needs_gears_or_a_fixed_size():
    cfg = cfg_for(AUDIO, input_format="ND")
    found = check_model(audio_model(), cfg) + check_config(audio_model(), cfg)
    assert codes(found) == [("warning", "opset"), ("error", "dynamic_dim"), ("error", "atc_config")]
    assert found[1]["message"] == ("input logmel axis 2 ('frames') is dynamic and ATC needs static shapes or gears")
    assert found[1]["fix"] == "add atc.fixed_dims: {frames: <size>} or atc.dynamic_dims gears"
    assert found[2]["message"].startswith("t.yaml: input logmel has dynamic axis 'frames' that ATC needs fixed")
    gears = cfg_for(AUDIO, input_format="ND", dynamic_dims=[[101], [301], [1001]])
    fixed = cfg_for(AUDIO, input_format="ND", fixed_dims={"frames": 1001})
    for ok in (gears, fixed):
        assert codes(check_model(audio_model(), ok) + check_config(audio_model(), ok)) == [("warning", "opset")]
    nchw = cfg_for(AUDIO, dynamic_dims=[[101], [301]])             # gears need ND: the ATC check says so
    assert [f["message"] for f in check_config(audio_model(), nchw)] == [
        "t.yaml: atc.dynamic_dims needs atc.input_format: ND"]


def test_config_inputs_must_match_the_graph():
    m = clean()
    found = check_config(m, cfg_for([{"name": "image", "shape": ["batch", 4, 8, 8]}]))
    assert [f["message"] for f in found] == [
        "config input 'image' is not an input of the ONNX (inputs: x)",
        "ONNX input 'x' is missing from the config inputs"]
    fixed_batch = clean()
    fixed_batch.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    found = check_config(fixed_batch, cfg_for(IMG, batch_sizes=[1, 8]))
    assert [f["message"] for f in found] == [
        "input x axis 0 is fixed to 1 in the ONNX but ATC would get 8"]


def test_int64_compute_and_opset_range():
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    m = model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Add", ["s", "one"], ["t"], name="add64"),
               helper.make_node("Reshape", ["x", "t"], ["y"])], [vi("x", [2, 3])], [vi("y", None)], inits=[one])
    found = check_model(m, cfg_for([{"name": "x", "shape": [2, 3]}]))
    assert codes(found) == [("warning", "int64_compute")]
    assert found[0]["message"].startswith("1 node(s) compute in int64 (e.g. add64)")
    new = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1])], [vi("y", [1])], opset=20)
    assert [f["message"] for f in check_model(new, cfg_for([{"name": "x", "shape": [1]}]))] == [
        "ONNX opset 20 is outside ATC's range 11-18"]


# ---- the CLI (make preflight) ------------------------------------------------------------------------
def convnext_like(extra=()):
    w = helper.make_tensor("w", TensorProto.FLOAT, [640, 3], np.ones(1920, np.float32))
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w"], ["embedding"], transB=1, name="fc"), *extra]
    return model(nodes, [vi("image", ["batch", 3, 256, 256])], [vi("embedding", ["batch", 640])], inits=[w])


def test_cli_passed_and_failed(isolated_dirs, capsys):
    from pipeline.paths import ModelPaths

    paths = ModelPaths(CN)
    paths.build.mkdir(parents=True)
    onnx.save(convnext_like(), str(paths.onnx_sim))
    assert preflight.main(["--model", CN]) == 0
    assert capsys.readouterr().out == f"PASSED | preflight {CN}: 0 error(s), 0 warning(s) for ATC\n"
    bad = convnext_like([helper.make_node("DFT", ["embedding"], ["d"], name="dft")])
    onnx.save(bad, str(paths.onnx_sim))
    assert preflight.main(["--model", CN]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "ERROR | 1 DFT node(s): ATC has no ONNX parser for DFT; fix: compute it on the host, or as a Conv1D with "
        "a fixed DFT basis",
        f"FAILED | preflight {CN}: 1 error(s), 0 warning(s) for ATC"]
    rep = json.loads((paths.results / "preflight.json").read_text())
    assert (rep["stage"], rep["model"], rep["verdict"], rep["errors"]) == ("preflight", CN, "FAILED", 1)


def test_cli_missing_onnx_is_one_line(isolated_dirs, capsys):
    with pytest.raises(SystemExit) as e:
        preflight.main(["--model", CN])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR | ") and err.count("\n") == 1
    assert f"model.sim.onnx is missing; run `make export MODEL={CN}` first" in err


def test_report_names_the_ascend_op_types(tmp_path):
    """Per ONNX op type, the AI Core type ATC makes of it (what a mixlist must name), None where unknown."""
    path = tmp_path / "model.sim.onnx"
    extra = [helper.make_node("Div", ["embedding", "embedding"], ["q"], name="div"),
             helper.make_node("Softmax", ["q"], ["s"], name="sm")]
    onnx.save(convnext_like(extra), str(path))
    rep = run_preflight(path, cfg_for([{"name": "image", "shape": ["batch", 3, 256, 256]}]))
    assert rep["ascend_op_types"] == {"Div": ["RealDiv"], "Flatten": None, "Gemm": ["MatMulV2"],
                                      "GlobalAveragePool": ["ReduceMeanD"], "Softmax": ["SoftmaxV2"]}


def test_recurrences_atc_would_build_differently():
    """ATC's parser reads hidden_size and direction only and DynamicGRUV2 is reset-after: a reset-before GRU or an
    LSTM with clip is an error naming the unroll fix; a reset-after GRU passes; a reverse-only GRU is a warning."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 12, 4], np.zeros(48, np.float32))
    r = helper.make_tensor("R", TensorProto.FLOAT, [1, 12, 4], np.zeros(48, np.float32))
    w4 = helper.make_tensor("W4", TensorProto.FLOAT, [1, 16, 4], np.zeros(64, np.float32))
    r4 = helper.make_tensor("R4", TensorProto.FLOAT, [1, 16, 4], np.zeros(64, np.float32))
    xs, ys = [vi("x", [5, 1, 4])], [vi("y", None)]

    def rnn(op, **attrs):
        ins = ["x", "W", "R"] if op == "GRU" else ["x", "W4", "R4"]
        return model([helper.make_node(op, ins, ["y"], name="rnn", hidden_size=4, **attrs)], xs, ys,
                     inits=[w, r] if op == "GRU" else [w4, r4])

    assert codes(check_model(rnn("GRU", linear_before_reset=1), cfg_for(IMG))) == []
    found = check_model(rnn("GRU"), cfg_for(IMG))
    assert codes(found) == [("error", "gru_reset")] and "export.unroll_recurrence" in found[0]["fix"]
    found = check_model(rnn("LSTM", clip=3.0), cfg_for(IMG))
    assert codes(found) == [("error", "rnn_attrs")] and "clip" in found[0]["message"]
    assert codes(check_model(rnn("GRU", linear_before_reset=1, direction="reverse"), cfg_for(IMG))) == \
        [("warning", "gru_reverse")]
