"""The backend registry: `auto` per stage on each kind of host, make doctor agreeing with the stages, and the
batching rule (any number of inputs on targets with built batch sizes)."""
import numpy as np
import pytest

from convert import backends
from convert.backends import Machine, plan
from pipeline.batching import plan_runs, run_rows, split
from pipeline.errors import ConfigError, ToolchainError

WORKSTATION = Machine(atc=None, soc=None, soc_from="", npus=0, ais_bench=False, ort_providers=("CPUExecutionProvider",))
TOOLKIT_NO_SOC = Machine(atc="/opt/atc", soc=None, soc_from="", npus=0, ais_bench=False, ort_providers=("CPUExecutionProvider",))
TOOLKIT = Machine(atc="/opt/atc", soc="Ascend310P3", soc_from="SOC=", npus=0, ais_bench=False, ort_providers=("CPUExecutionProvider",))
NPU_NO_AIS = Machine(atc="/opt/atc", soc="Ascend310P3", soc_from="npu-smi", npus=1, ais_bench=False, ort_providers=("CPUExecutionProvider",))
NPU_HOST = Machine(atc="/opt/atc", soc="Ascend310P3", soc_from="npu-smi", npus=8, ais_bench=True, ort_providers=("CPUExecutionProvider",))


# auto on each kind of host: tests/test_backend_modules.py::test_auto_per_stage_on_each_host


def test_explicit_backends_and_their_refusals():
    assert plan("ort-cpu", WORKSTATION).build == ("ort-cpu",)
    assert plan("om", WORKSTATION).run == "om"          # running a copied .om needs no ATC
    with pytest.raises(ToolchainError, match="needs ATC"):
        backends.check_build("om", WORKSTATION)
    with pytest.raises(ConfigError, match="SOC="):
        backends.check_build("om", TOOLKIT_NO_SOC)
    backends.check_build("om", TOOLKIT)
    with pytest.raises(ConfigError, match="unknown BACKEND 'npu'"):
        plan("npu", NPU_HOST)


def test_the_registry_is_the_makefiles_list():
    import subprocess

    names = subprocess.run(["python3", "-m", "convert.backends", "names"], capture_output=True, text=True,
                           cwd=__import__("pathlib").Path(__file__).resolve().parent.parent).stdout.split()
    assert names == list(backends.NAMES) and "ort-cann" in names
    for b in backends.REGISTRY.values():
        assert b.device_kind in ("npu", "cpu")


def test_doctor_prints_the_stages_own_plan(monkeypatch):
    from convert import doctor

    monkeypatch.setattr(backends, "probe", lambda cfg_soc=None, soc_arg=None: TOOLKIT)
    lines, plans = doctor.stage_lines(["cnn8rnn_audioset_sed"], "auto")
    p = plan("auto", TOOLKIT)
    assert plans["cnn8rnn_audioset_sed"]["build"] == list(p.build) and plans["cnn8rnn_audioset_sed"]["run"] == p.run
    assert "doctor | cnn8rnn_audioset_sed: BACKEND=auto: make om builds om + ort-fp16" in lines
    assert "doctor | cnn8rnn_audioset_sed: BACKEND=auto: make infer / compare / bench run ort-fp16 (cpu)" in lines
    # the stages resolve through the same function
    assert backends.run_backend({"atc": {"soc_version": None}}, "auto")[0] == "ort-fp16"


# ---- batching ---------------------------------------------------------------------------------------------
class BuiltSizesRunner:
    """Takes only its built batch sizes, like a static .om set; output row i = 2 * input row i."""

    def __init__(self, sizes):
        self.sizes, self.calls = sizes, []

    def accepted_batch_sizes(self):
        return self.sizes

    def infer(self, feeds):
        n = feeds["x"].shape[0]
        if self.sizes and n not in self.sizes:
            raise AssertionError(f"batch {n} not built ({self.sizes})")
        self.calls.append(n)
        return {"y": feeds["x"] * 2.0}


@pytest.mark.parametrize("sizes", [[1, 4], [1, 8], [4], None])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 101])
def test_any_count_runs_on_built_sizes(sizes, n):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    r = BuiltSizesRunner(sizes)
    out, runs = run_rows(r, {"x": x}, "repeat")
    np.testing.assert_array_equal(out["y"], x * 2)           # only real rows come back, in order
    assert runs == len(r.calls)
    if sizes:
        full, rest = divmod(n, max(sizes))
        assert runs == full + (1 if rest else 0)              # padding the rest costs one run, never more
        assert sum(r.calls) >= n


def test_zero_padding_and_split_by_rows():
    r = BuiltSizesRunner([4])
    seen = []
    r.infer = lambda feeds: (seen.append(feeds["x"].copy()), {"y": feeds["x"]})[1]
    run_rows(r, {"x": np.ones((2, 1), np.float32)}, "zeros")
    assert seen[0][:, 0].tolist() == [1, 1, 0, 0]
    run_rows(r, {"x": np.array([[1.0], [5.0]], np.float32)}, "repeat")
    assert seen[1][:, 0].tolist() == [1, 5, 5, 5]
    parts = split({"y": np.arange(6)}, [1, 3, 2])
    assert [p["y"].tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]


def test_plan_runs_prefers_fewer_runs():
    assert plan_runs(6, [1, 4]) == [(4, 4), (2, 4)]
    assert plan_runs(5, [1, 4]) == [(4, 4), (1, 1)]
    assert plan_runs(5, [1, 8]) == [(5, 8)]
    assert plan_runs(3, [2, 3]) == [(3, 3)]
    assert plan_runs(7, None) == [(7, 7)]
