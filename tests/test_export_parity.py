"""Export parity against PyTorch in float64, with the limit raised to FLOOR_FACTOR x the model's own fp32 rounding:
a deep model whose rounding alone exceeds the fixed 1e-5 passes, an export that moves the outputs by 1e-3 fails
with one ParityError line and leaves nothing behind, a model that cannot run in float64 keeps the fixed limit."""
import json
import types

import numpy as np
import pytest
import torch

from export.__main__ import main as export_main
from export.stage import FLOOR_FACTOR
from pipeline import config as pconfig
from pipeline.contract import Family

FAMILY = "parity_demo"


class DeepResidual(torch.nn.Module):
    """128 residual tanh blocks with orthogonal weights of gain 1.5: stable outputs, but each block amplifies the
    rounding of the ones before (fp32 against float64: ~1e-4 relative L2)."""

    def __init__(self, depth=128, width=64, gain=1.5):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        for layer in self.layers:
            torch.nn.init.orthogonal_(layer.weight, gain)
            torch.nn.init.normal_(layer.bias, 0, 0.1)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x)) + x
        return x


class BrokenExport(torch.nn.Module):
    """Right in PyTorch, 1e-3 off in the exported graph (as a wrong constant or op would be)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return y * (1 + 1e-3) if torch.onnx.is_in_onnx_export() else y


class Float32Only(torch.nn.Module):
    """Casts its weight to float32 inside: a float64 copy cannot run it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(64, 64) / 8)

    def forward(self, x):
        return torch.tanh(x @ self.w.float())


def family(build, wrap=lambda m: m):
    host = types.SimpleNamespace(
        find_sources=lambda *a: [], generate_sources=lambda *a, **k: [], prepare=lambda *a: [],
        postprocess=lambda *a: ({}, {}),
        random_input=lambda name, shape, rng, cfg: rng.standard_normal(shape).astype(np.float32))
    fam = Family(FAMILY, host)
    fam._torch = types.SimpleNamespace(
        build=lambda cfg: build().eval(), export_module=lambda model, cfg: wrap(model),
        apply_standin=lambda model, cfg, seed: {"kind": "stand-in", "seed": seed, "rule": "the test's own init"},
        load_weights=lambda *a: pytest.fail("no weights in this test"))
    return fam


@pytest.fixture
def run_export(tmp_path, isolated_dirs, monkeypatch, capfd):
    cfg = tmp_path / "parity_demo.yaml"
    cfg.write_text(f"name: parity_demo\nfamily: {FAMILY}\ninputs: [{{name: x, shape: [batch, 64]}}]\n"
                   "outputs: [{name: y, shape: [batch, 64]}]\nexport: {parity_cases: [{x: [4, 64]}]}\n")

    def run(fam):
        monkeypatch.setitem(pconfig._FAMILIES, FAMILY, fam)
        torch.manual_seed(0)
        try:
            code = export_main(["--model", str(cfg)])
        except SystemExit as exc:
            code = exc.code
        err = capfd.readouterr().err
        res = tmp_path / "results" / "parity_demo" / "export.json"
        log = tmp_path / "logs" / "parity_demo" / "export.log"
        return code, log.read_text() if log.exists() else "", err, json.loads(res.read_text()) if res.exists() else None
    return run


def test_deep_model_passes_on_its_own_rounding_floor(run_export):
    code, out, err, rep = run_export(family(DeepResidual))
    assert code == 0, err
    par = rep["parity"]
    assert par["verdict"] == "PASSED" and par["reference"] == "PyTorch eager float64"
    assert par["floor"] > 1e-5 and par["worst"] > 1e-5          # the fixed limit alone would have failed it
    assert par["limit"] == pytest.approx(FLOOR_FACTOR * par["floor"]) and par["worst"] < par["limit"]
    assert par["fixed_limit"] == 1e-5 and par["floor_factor"] == FLOOR_FACTOR
    case = par["cases"][0]["outputs"]["y"]
    assert case["floor_rel_l2"] == par["floor"] and case["rel_l2_onnx"] < case["limit"]
    assert f"= max(1e-05, {FLOOR_FACTOR:g} x fp32 floor {par['floor']:.1e})" in out
    assert "PASSED | export parity parity_demo" in out


def test_broken_export_fails_with_one_line_and_no_artifact(run_export, tmp_path):
    code, out, err, rep = run_export(family(lambda: DeepResidual(depth=8), BrokenExport))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("ERROR | the ONNX differs from PyTorch eager float64 (relative L2 1.00e-03 > limit ")
    assert "try another opset or exporter" in lines[0]
    assert rep is None                                            # no export.json
    build = tmp_path / "build" / "parity_demo"
    assert not (build / "model.onnx").exists() and not (build / "weights.json").exists()
    assert not (build / ".staging-export").exists()


def test_model_without_float64_keeps_the_fixed_limit(run_export):
    code, out, err, rep = run_export(family(Float32Only))
    assert code == 0, err
    par = rep["parity"]
    assert par["reference"].startswith("PyTorch eager float32 (no float64 run: RuntimeError")
    assert par["floor"] is None and par["limit"] == 1e-5 and par["verdict"] == "PASSED"
    assert "export | no float64 run of parity_demo (RuntimeError" in out and "limit 1.0e-05, fixed" in out
