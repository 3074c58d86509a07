"""Precision doctor on a model built to fail in fp16: a LayerNorm (opset 13, decomposed) over large activations."""
import numpy as np
import onnx
import pytest
import torch

from precision.fix import candidates, evaluate, search
from precision.layerwise import flops, layer_compare, node_origin

CFG = {"compare": {"gate": {"max_rel_l2": 0.01, "min_cosine": 0.9999, "max_violation_fraction": None},
                   "per_output": {}}}


class LoudNorm(torch.nn.Module):
    """Activations around 300: (x - mean)^2 reaches 1e5, beyond fp16's 65504, in the variance path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(64, 256)
        self.norm = torch.nn.LayerNorm(256)
        self.out = torch.nn.Linear(256, 32)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.inp(x) * 300.0)))


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    path = tmp_path_factory.mktemp("prec") / "loud.onnx"
    x = torch.randn(4, 64)
    torch.onnx.export(LoudNorm().eval(), (x,), str(path), input_names=["x"], output_names=["y"], opset_version=13,
                      dynamo=False)
    model = onnx.load(str(path))
    feeds = [{"x": np.random.default_rng(i).normal(size=(4, 64)).astype(np.float32)} for i in range(2)]
    return model, feeds


def test_fp16_fails_and_the_culprit_ranks_first(loud):
    model, feeds = loud
    assert not evaluate(model, feeds, CFG)["passed"]
    rows = layer_compare(model, feeds)
    pow_node = next(r for r in rows if r["op_type"] == "Pow")
    assert pow_node["overflow"] > 0                                   # the fp32 reference exceeds 65504 here
    assert candidates(rows)[0] == pow_node["node"]                    # first culprit in topological order
    assert node_origin(pow_node["node"]) == "norm"


def test_generated_keep_list_turns_failed_into_passed(loud):
    model, feeds = loud
    rows = layer_compare(model, feeds)
    result = search(model, feeds, CFG, rows)
    assert not result["before"]["passed"] and result["passed"] and result["after"]["passed"]
    names = {n.name for n in model.graph.node}
    assert result["keep"] and set(result["keep"]) <= names          # ATC would find every name
    kept_types = {n.op_type for n in model.graph.node if n.name in set(result["keep"])}
    assert "Pow" in kept_types and kept_types <= {"Pow", "ReduceMean", "Add", "Sqrt", "Sub", "Div"}
    for node in result["keep"]:                                      # minimal: no kept node can be dropped
        trial = [n for n in result["keep"] if n != node]
        assert not evaluate(model, feeds, CFG, trial)["passed"]
    after = layer_compare(model, feeds, keep_nodes=result["keep"])
    assert max(r["rel_l2"] for r in after) < 0.01


def test_compute_share_estimate(loud):
    model, feeds = loud
    rows = layer_compare(model, feeds)
    fl = flops(model, rows)
    gemms = [fl[r["node"]] for r in rows if r["op_type"] in ("Gemm", "MatMul")]
    assert max(gemms) == pytest.approx(2 * 4 * 256 * 64) or max(gemms) == pytest.approx(2 * 4 * 32 * 256)
    assert sum(fl.values()) > sum(gemms)
