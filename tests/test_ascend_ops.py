"""The ONNX -> Ascend op-type map for mixlists: the mappings read in the upstream parser and fusion sources,
the ops a mixlist cannot change, the --modify_mixlist JSON, and that the table stays sourced and consistent."""
import json
import re
import subprocess
import sys

import pytest

from convert.ascend_ops import FUSIONS, ROWS, ascend_op_types, describe, mixlist_for
from conftest import ROOT


@pytest.mark.parametrize("onnx,opset,want", [
    ("Div", 17, ["RealDiv"]),                            # not "Div": ATC's type is RealDiv
    ("Softmax", 11, ["SoftmaxV2"]), ("Softmax", 17, ["SoftmaxV2"]),
    ("MatMul", 17, ["BatchMatMulV2", "MatMulV2"]),
    ("Gemm", 13, ["MatMulV2"]),
    ("Conv", 17, ["Conv2D", "Conv3D"]),
    ("Erf", 17, ["Erf", "Gelu"]),                        # the exact-GELU pattern is fused into Gelu
    ("Pow", 13, ["Pow", "LayerNorm"]),                   # a decomposed LayerNorm is fused into LayerNorm
    ("ReduceMean", 11, ["ReduceMean", "ReduceMeanD", "LayerNorm"]),
    ("ReduceMean", 17, ["ReduceMean", "ReduceMeanD", "LayerNorm"]),
    ("LayerNormalization", 17, ["LayerNorm"]),
    ("Sigmoid", 17, ["Sigmoid"]), ("Add", 17, ["Add"]), ("Mul", 17, ["Mul"]),
    ("GlobalAveragePool", 17, ["ReduceMeanD"]),
    ("HardSwish", 14, ["HardSwish"]),
])
def test_verified_mappings(onnx, opset, want):
    assert ascend_op_types(onnx, opset) == want


@pytest.mark.parametrize("onnx,opset,says", [
    ("GRU", 17, "DynamicGRUV2"),                         # fp16-only kernel: a mixlist cannot keep it in fp32
    ("LSTM", 17, "CommonLSTM"),
    ("Einsum", 17, "EinsumFusionPass"),
    ("Gelu", 17, "not an ONNX op at opset 17"),          # opset 20 op; ATC reads 11-18
    ("LayerNormalization", 16, "no parser registration for opset 16"),
    ("HardSwish", 13, "no parser registration for opset 13"),
    ("STFT", 17, "no known mapping"),
])
def test_no_mixlist_type_and_why(onnx, opset, says):
    assert ascend_op_types(onnx, opset) is None
    assert says in describe(onnx, opset)


def test_describe_names_the_source():
    gru = describe("GRU", 17)
    assert "float16 x and weights only" in gru and "gru_fusion_pass.cc" in gru and "dynamic_gru_v2.py" in gru
    assert describe("Div", 13) == ("Div -> RealDiv; ONNX Div is RealDiv in ATC; source: MATH "
                                   "common/src/framework/similar_opp_onnx_plugin.cpp")
    assert "gelu_onnx_fusion_pass.cc" in describe("Erf", 17) and "GeluONNXFusionPass" in describe("Erf", 17)


def test_mixlist_for_is_atc_json_and_lists_the_unmapped():
    mixlist, unmapped = mixlist_for(["Softmax", "Div", "GRU", "Erf", "Softmax", "STFT"], 17)
    assert mixlist == {"black-list": {"to-add": ["Erf", "Gelu", "RealDiv", "SoftmaxV2"]}}
    assert unmapped == ["GRU", "STFT"]
    assert json.loads(json.dumps(mixlist)) == mixlist
    assert mixlist_for([], 17) == ({"black-list": {"to-add": []}}, [])
    assert mixlist_for(["LayerNormalization"], 13) == ({"black-list": {"to-add": []}}, ["LayerNormalization"])


def test_mixlist_is_accepted_by_the_atc_command_builder():
    from convert.atc import build_atc_jobs
    from pipeline.config import SCHEMA
    from pipeline.schema import validate

    mixlist, _ = mixlist_for(["Softmax", "ReduceMean"], 17)
    raw = {"name": "m", "family": "timm_image", "inputs": [{"name": "x", "shape": ["batch", 3, 8, 8]}],
           "outputs": [{"name": "y", "shape": ["batch", 4]}], "export": {"parity_cases": []},
           "atc": {"precision_mode": "allow_mix_precision", "modify_mixlist": mixlist}}
    job = build_atc_jobs({**validate(raw, SCHEMA, "", "t.yaml"), "_source": "t.yaml"}, "m.onnx", "Ascend310P3")[0]
    assert json.loads(job.side_files["om/modify_mixlist.json"]) == {
        "black-list": {"to-add": ["LayerNorm", "ReduceMean", "ReduceMeanD", "SoftmaxV2"]}}


def test_table_is_sourced_and_consistent():
    onnx_names = {r[0] for r in ROWS}
    for i, (onnx, lo, hi, parsed, types, source, note) in enumerate(ROWS):
        assert lo <= hi <= 18 and re.fullmatch(r"[A-Z][A-Za-z0-9]+", parsed), onnx
        assert re.match(r"(NN|MATH|CD) \S+\.(cpp|cc|py)", source), f"{onnx}: cite the upstream file"
        assert types is None or (types and all(re.fullmatch(r"[A-Z][A-Za-z0-9]+", t) for t in types)), onnx
        assert (types is not None) or note, f"{onnx}: say why no mixlist type"
        if parsed == "PartitionedCall":
            assert note, f"{onnx}: say what the subgraph holds"
        others = [r for j, r in enumerate(ROWS) if r[0] == onnx and j != i]
        assert all(r[2] < lo or r[1] > hi for r in others), f"{onnx}: opset ranges overlap"
    assert set(FUSIONS) <= onnx_names
    # an ONNX name that differs from ATC's never leaks into a mixlist
    leaked = {"Div", "Softmax", "GRU", "LayerNormalization", "Gemm", "Conv", "GlobalAveragePool", "Where"}
    assert not leaked & {t for r in ROWS if r[4] for t in r[4]}


def test_imports_without_numpy_or_torch():
    code = "import sys; sys.modules['numpy'] = None; sys.modules['torch'] = None; import convert.ascend_ops"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
