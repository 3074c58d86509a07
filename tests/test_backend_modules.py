"""Backends as modules (convert/backends/): every registered backend runs here or says why not in one line,
`auto` over the registry on each kind of host (ort-cann included), the shared feed check, and ort-cann's refusal
to run on the CPU."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convert import backends
from convert.backends import Machine, plan
from convert.backends import ort_cann
from pipeline.runners import Runner
from pipeline.errors import ConfigError, PipelineError, ToolchainError

MODEL = "crepe_tiny"                   # frames [frames, 1024] float32 -> activation [frames, 360]
W = np.random.default_rng(0).normal(scale=0.05, size=(1024, 360)).astype(np.float32)
CANN = ("CANNExecutionProvider", "CPUExecutionProvider")
CPU = ("CPUExecutionProvider",)

WORKSTATION = Machine(atc=None, soc=None, soc_from="", npus=0, ais_bench=False, ort_providers=CPU)
TOOLKIT_NO_SOC = Machine(atc="/opt/atc", soc=None, soc_from="", npus=0, ais_bench=False, ort_providers=CPU)
TOOLKIT = Machine(atc="/opt/atc", soc="Ascend310P3", soc_from="SOC=", npus=0, ais_bench=False, ort_providers=CPU)
NPU_NO_AIS = Machine(atc="/opt/atc", soc="Ascend310P3", soc_from="npu-smi", npus=1, ais_bench=False, ort_providers=CPU)
NPU_HOST = Machine(atc="/opt/atc", soc="Ascend310P3", soc_from="npu-smi", npus=8, ais_bench=True, ort_providers=CPU)
NPU_NO_AIS_CANN = Machine(atc="/opt/atc", soc="Ascend310P3", soc_from="npu-smi", npus=1, ais_bench=False,
                          ort_providers=CANN)
NPU_NO_ATC_CANN = Machine(atc=None, soc=None, soc_from="", npus=2, ais_bench=True, ort_providers=CANN)
NPU_HOST_CANN = Machine(atc="/opt/atc", soc="Ascend310P3", soc_from="npu-smi", npus=8, ais_bench=True,
                        ort_providers=CANN)
NPU_NO_ORT = Machine(atc=None, soc=None, soc_from="", npus=1, ais_bench=False, ort_providers=None,
                     ort_error="ModuleNotFoundError: No module named 'onnxruntime'")


def tiny_onnx(path):
    """frames [n, 1024] -> activation = frames @ W [n, 360]: the config's input and output names."""
    graph = helper.make_graph([helper.make_node("MatMul", ["frames", "w"], ["activation"], name="mm")], "tiny",
                              [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["frames", 1024])],
                              [helper.make_tensor_value_info("activation", TensorProto.FLOAT, ["frames", 360])],
                              initializer=[numpy_helper.from_array(W, "w")])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def tiny_model(isolated_dirs):
    from pipeline.config import load_config
    from pipeline.paths import ModelPaths

    cfg = load_config(MODEL)
    paths = ModelPaths(cfg["name"])
    assert str(paths.build).startswith(str(isolated_dirs))
    tiny_onnx(paths.onnx_sim)
    return cfg, paths


# ---- every backend of the registry: runs here, or says why not ------------------------------------------
@pytest.mark.parametrize("name", list(backends.REGISTRY))
def test_every_backend_runs_here_or_says_why(name, tiny_model):
    cfg, paths = tiny_model
    b = backends.get(name)
    machine = backends.probe(cfg["atc"]["soc_version"])
    can_build, can_run, why = b.availability(machine)
    if not (can_build and can_run):
        assert why and "\n" not in why, why                              # one line: what is missing, how to fix
        if name == "om":
            assert "ATC" in why or "NPU" in why or "ais_bench" in why
        if name == "ort-cann":
            assert "NPU" in why or "onnxruntime-cann" in why
        if not can_build:
            with pytest.raises(PipelineError):
                b.check_build(machine)
        if b.needs_build:
            with pytest.raises(PipelineError, match=f"make om MODEL={MODEL} BACKEND={name}"):
                backends.load_target(cfg, name)
        return
    lines = []
    p = backends.build_targets(cfg, name, None, lines.append)           # `make om BACKEND=<name>`
    assert p.build == (name,) and p.run == name
    record = json.loads((paths.build / f"target-{name}.json").read_text())
    assert record["backend"] == name and record["model"] == MODEL
    assert (record["atc_script"] is not None) == b.writes_atc_script
    assert (record["preflight"] is not None) == (b.needs_preflight or b.reports_preflight)
    runner = backends.open_runner(cfg, name, 0)
    assert runner.device == b.device_id(0)
    rows = (runner.accepted_batch_sizes() or [3])[0]
    x = np.random.default_rng(1).normal(size=(rows, 1024)).astype(np.float32)
    with runner:
        out = runner.infer({"frames": x})
        desc = runner.describe()
    assert desc["backend"] == name
    np.testing.assert_allclose(out["activation"], x @ W, rtol=2e-2, atol=2e-2)


def test_reference_needs_no_make_om(tiny_model):
    cfg, paths = tiny_model
    assert backends.REFERENCE == "ort-cpu" and backends.reference().is_reference
    assert not (paths.build / "target-ort-cpu.json").exists()
    assert backends.load_target(cfg, "ort-cpu")["onnx"]["path"] == str(paths.onnx_sim)
    with backends.reference_runner(cfg) as r:
        x = np.ones((2, 1024), np.float32)
        np.testing.assert_allclose(r.infer({"frames": x})["activation"], x @ W, rtol=1e-5, atol=1e-5)


# ---- the registry is the only list --------------------------------------------------------------------
def test_registry_and_names_for_make():
    assert backends.NAMES == ("auto", *backends.REGISTRY)
    assert set(backends.REGISTRY) == {"om", "ort-cann", "ort-fp16", "ort-cpu"}
    assert [b.name for b in backends.AUTO_ORDER] == ["om", "ort-cann", "ort-fp16"]
    for b in backends.REGISTRY.values():
        assert b.device_kind in ("npu", "cpu") and b.batching in ("any", "built") and b.what and b.short
        assert backends.get(b.name) is b
    with pytest.raises(ConfigError, match="unknown BACKEND 'npu'; use one of: auto, om, ort-cann"):
        backends.get("npu")
    assert backends.check_name("auto") == "auto"
    # the Makefile asks for the names with the system python, before the venv exists: stdlib only at import
    code = ("import sys, convert.backends; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'onnx', 'onnxruntime', 'yaml', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=backends.__file__.rsplit(
        "/convert/", 1)[0], check=True).stdout.strip()
    assert out == "[]"
    names = subprocess.run([sys.executable, "-m", "convert.backends", "names"], capture_output=True, text=True,
                           cwd=backends.__file__.rsplit("/convert/", 1)[0], check=True).stdout.split()
    assert tuple(names) == backends.NAMES


def test_what_each_backend_tells_its_callers(tmp_path):
    from pipeline.paths import ModelPaths

    paths = ModelPaths("m")
    om, cann, fp16, cpu = (backends.get(n) for n in ("om", "ort-cann", "ort-fp16", "ort-cpu"))
    assert om.onnx_for_host(paths) is None                                # the config's static dims
    assert fp16.onnx_for_host(paths) == paths.onnx_fp16
    assert cpu.onnx_for_host(paths) == cann.onnx_for_host(paths) == paths.onnx_sim
    assert om.ray_resources(4) == {"num_cpus": 0, "resources": {"NPU": 1}, "runner_threads": 0}
    assert cann.ray_resources(4)["resources"] == {"NPU": 1}
    assert fp16.ray_resources(4) == {"num_cpus": 1, "runner_threads": 4}
    assert om.device_id(3) == "npu:3" and cann.device_id("0+1") == "npu:0+1" and cpu.device_id(3) == "cpu"
    assert cann.device_label("npu:0").startswith("Ascend NPU (npu:0; ")
    for b in (fp16, cpu):
        assert "not an NPU" in b.device_label("cpu") and not b.measures_npu
    assert om.measures_npu and cann.measures_npu
    assert om.needs_preflight and om.writes_atc_script and not cann.needs_preflight and not cann.writes_atc_script
    assert not cpu.needs_build and cpu.is_reference


# ---- auto over the registry ------------------------------------------------------------------------------
@pytest.mark.parametrize("machine, build, run, note", [
    (WORKSTATION, ("ort-fp16",), "ort-fp16", "no Ascend toolchain here: the stages use ort-fp16"),
    (TOOLKIT_NO_SOC, ("ort-fp16",), "ort-fp16", "no --soc_version is known"),
    (TOOLKIT, ("om", "ort-fp16"), "ort-fp16", "the .om is built but not run here (no NPU visible)"),
    (NPU_NO_AIS, ("om", "ort-fp16"), "ort-fp16", "ais_bench does not import"),
    (NPU_HOST, ("om",), "om", None),
    (NPU_HOST_CANN, ("om",), "om", None),
    (NPU_NO_AIS_CANN, ("om", "ort-cann"), "ort-cann", "the .om is built but not run here (ais_bench does not import): "
                                                       "infer/compare/bench run ort-cann"),
    (NPU_NO_ATC_CANN, ("ort-cann",), "ort-cann", "the stages use ort-cann"),
])
def test_auto_per_stage_on_each_host(machine, build, run, note):
    p = plan("auto", machine)
    assert p.build == build and p.run == run
    if note:
        assert any(note in n for n in p.notes), p.notes
    else:
        assert not p.notes


@pytest.mark.parametrize("machine, why", [
    (WORKSTATION, "no NPU visible"), (TOOLKIT, "no NPU visible"),
    (NPU_NO_AIS, "onnxruntime has no CANNExecutionProvider here"), (NPU_NO_ORT, "onnxruntime does not import here"),
])
def test_auto_says_why_ort_cann_is_unavailable(machine, why):
    p = plan("auto", machine)
    line = next(n for n in p.notes if n.startswith("ort-cann: unavailable here: "))
    assert why in line
    if "onnxruntime" in why:
        assert "pip install onnxruntime-cann==" in line and "set_env.sh" in line


def test_todays_notes_are_kept_word_for_word():
    assert plan("auto", TOOLKIT).notes[0] == (
        "the .om is built but not run here (no NPU visible): infer/compare/bench run ort-fp16, the CPU emulation of "
        "ATC's force_fp16; run them with BACKEND=om on the NPU host")
    assert plan("auto", WORKSTATION).notes[0] == (
        "no Ascend toolchain here: the stages use ort-fp16, the CPU emulation of ATC's force_fp16")
    assert backends.describe_plan(plan("auto", TOOLKIT))[:2] == [
        "BACKEND=auto: make om builds om + ort-fp16",
        "BACKEND=auto: make infer / compare / bench run ort-fp16 (cpu)"]


def test_auto_picks_ort_cann_when_the_probes_find_it(monkeypatch):
    """The real probes (npu-smi, ais_bench, onnxruntime), monkeypatched: an NPU, no ais_bench, onnxruntime-cann."""
    import onnxruntime

    from pipeline import ascend_env

    monkeypatch.setattr(ascend_env, "probe_npus", lambda smi=None: {"chips": [{"npu": 0}], "soc_version": "Ascend310P3"})
    monkeypatch.setattr(ascend_env, "ais_bench_flavour", lambda: {"importable": False})
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(CANN))
    monkeypatch.setattr("shutil.which", lambda name: None)
    m = backends.probe(None, "")
    assert (m.npus, m.soc, m.soc_from, m.atc, m.ais_bench) == (1, "Ascend310P3", "npu-smi", None, False)
    p = plan("auto", m)
    assert p.build == ("ort-cann",) and p.run == "ort-cann"
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(CPU))
    p = plan("auto", backends.probe(None, ""))
    assert p.run == "ort-fp16"
    assert any("onnxruntime has no CANNExecutionProvider" in n for n in p.notes)


def test_a_workstation_never_imports_onnxruntime_to_plan(monkeypatch):
    m = Machine(atc=None, soc=None, soc_from="", npus=0, ais_bench=False)      # ort_providers not given
    assert plan("auto", m).run == "ort-fp16"
    assert "ort_providers" not in m._known                                  # no NPU: the provider probe is skipped


def test_explicit_backends_and_their_refusals():
    assert plan("ort-cpu", WORKSTATION).build == ("ort-cpu",)
    assert plan("om", WORKSTATION).run == "om"                   # running a copied .om needs no ATC
    assert plan("ort-cann", WORKSTATION) == backends.Plan(("ort-cann",), "ort-cann", ())
    with pytest.raises(ToolchainError, match="needs ATC"):
        backends.check_build("om", WORKSTATION)
    with pytest.raises(ConfigError, match="SOC="):
        backends.check_build("om", TOOLKIT_NO_SOC)
    backends.check_build("om", TOOLKIT)
    with pytest.raises(ToolchainError, match="BACKEND=ort-cann cannot be built here: onnxruntime has no CANN"):
        backends.check_build("ort-cann", NPU_NO_AIS)
    backends.check_build("ort-cann", NPU_NO_AIS_CANN)
    for name in ("ort-fp16", "ort-cpu"):
        backends.check_build(name, WORKSTATION)
    with pytest.raises(ConfigError, match="unknown BACKEND 'npu'"):
        plan("npu", NPU_HOST)


def test_stamp_and_show(isolated_dirs, monkeypatch, capsys):
    from pipeline.paths import ModelPaths

    monkeypatch.setattr(backends, "probe", lambda cfg_soc=None, soc_arg=None: TOOLKIT)
    assert backends.main(["show", "--model", MODEL, "--backend", "auto"]) == 0
    assert "BACKEND=auto: make om builds om + ort-fp16" in capsys.readouterr().out
    assert backends.main(["stamp", "--model", MODEL, "--backend", "auto"]) == 0
    text = (ModelPaths(MODEL).build / "plan-auto.stamp").read_text()
    assert "build=om,ort-fp16\nrun=ort-fp16\nsoc=Ascend310P3\n" in text
    assert "backends=om:10 ort-cann:00 ort-fp16:11 ort-cpu:11\n" in text


# ---- the feed check every runner shares ----------------------------------------------------------------
class BuiltRunner:
    """A target with built batch sizes and a gear rule of its own (like a static .om set)."""

    backend = "fake"
    unsupported_fix = "rebuild it"

    def __init__(self, sizes):
        self.sizes = sizes

    def get_input_metadata(self):
        from pipeline.runners import TensorMeta

        return [TensorMeta("x", "float32", [1, 3])]          # the first .om's shape: batch 1

    def accepted_batch_sizes(self):
        return self.sizes

    def unsupported(self, shapes):
        return "batch 2 is not a gear" if shapes["x"][0] == 2 else None


def test_feed_check(tiny_model):
    cfg, _ = tiny_model
    with backends.open_runner(cfg, "ort-cpu") as r:
        ok = r.check_feeds({"frames": np.ones((2, 1024), np.float64)})
        assert ok["frames"].dtype == np.float32 and ok["frames"].flags.c_contiguous
        with pytest.raises(PipelineError, match=r"needs input\(s\) \['frames'\]"):
            r.check_feeds({"image": np.ones((2, 1024), np.float32)})
        with pytest.raises(PipelineError, match="dim 1 must be 1024"):
            r.check_feeds({"frames": np.ones((2, 1000), np.float32)})
        with pytest.raises(PipelineError, match="2 dims"):
            r.check_feeds({"frames": np.ones((1024,), np.float32)})
        with pytest.raises(PipelineError, match="is complex64, the target takes float32"):
            r.check_feeds({"frames": np.ones((2, 1024), np.complex64)})         # never cast across kinds
    built = BuiltRunner([1, 4])
    Runner.check_feeds(built, {"x": np.ones((4, 3), np.float32)})        # built sizes: the metadata's batch 1 is not the rule
    with pytest.raises(PipelineError, match="cannot run these inputs: batch 2 is not a gear"):   # the runner's rule
        Runner.check_feeds(built, {"x": np.ones((2, 3), np.float32)})
    with pytest.raises(PipelineError, match=r"dim 1 must be 3"):
        Runner.check_feeds(built, {"x": np.ones((4, 5), np.float32)})
    anysize = BuiltRunner(None)                                    # any batch size: a fixed dim 0 is checked
    with pytest.raises(PipelineError, match=r"dim 0 must be 1"):
        Runner.check_feeds(anysize, {"x": np.ones((4, 3), np.float32)})
    ints = BuiltRunner(None)
    ints.get_input_metadata = lambda: [type("M", (), {"name": "x", "dtype": "int32", "shape": [None]})()]
    assert Runner.check_feeds(ints, {"x": np.ones(3, np.int64)})["x"].dtype == np.int32      # within a kind: cast
    with pytest.raises(PipelineError, match="is float32, the target takes int32"):
        Runner.check_feeds(ints, {"x": np.ones(3, np.float32)})


# ---- ort-cann: its target record, and its runner on a faked onnxruntime-cann ---------------------------------
def test_ort_cann_target_record(tiny_model):
    cfg, paths = tiny_model
    cfg["atc"]["keep_dtype"] = ["mm"]
    lines = []
    rec = backends.get("ort-cann").build(cfg, paths, lines.append, NPU_NO_AIS_CANN)
    assert rec["provider"] == "CANNExecutionProvider" and rec["onnx"]["sha256"]
    assert rec["provider_options"] == {"enable_cann_graph": "1", "dump_graphs": "0", "dump_om_model": "0",
                                       "precision_mode": "force_fp16"}
    assert rec["not_applied"] == {"keep_dtype": ["mm"]}
    assert "not applied by the provider: atc.keep_dtype" in lines[0]


class FakeSession:
    """onnxruntime.InferenceSession as onnxruntime-cann would make it: `refuse` lists the option keys this provider
    build does not know; `providers` is what the session got."""

    created = []

    def __init__(self, path, so=None, providers=None, refuse=(), got=CANN):
        name, options = providers[0]
        for key in options:
            if key in refuse:
                raise RuntimeError(f'[ONNXRuntimeError] : 1 : FAIL : Unknown provider option: "{key}".')
        FakeSession.created.append(dict(options))
        self.options, self.got = options, list(got)

    def get_providers(self):
        return self.got

    def get_provider_options(self):
        return {"CANNExecutionProvider": dict(self.options)}

    def get_inputs(self):
        return [type("I", (), {"name": "frames", "type": "tensor(float)", "shape": ["frames", 1024]})()]

    def get_outputs(self):
        return [type("O", (), {"name": "activation"})()]

    def run(self, names, feeds):
        assert feeds["frames"].dtype == np.float32
        return [feeds["frames"] @ W]


def _fake_ort(monkeypatch, available=CANN, **session):
    import onnxruntime

    FakeSession.created = []
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: FakeSession(*a, **k, **session))


def test_ort_cann_refuses_a_session_without_the_cann_provider(tiny_model, monkeypatch):
    cfg, paths = tiny_model
    _fake_ort(monkeypatch, got=CPU)                  # registered, but the session fell back to the CPU
    runner = ort_cann.make_runner(paths.onnx_sim, ort_cann.provider_options(cfg)[0], device=1)
    with pytest.raises(PipelineError, match="refusing to run ort-cann on the CPU"):
        runner.activate()
    assert not runner.is_active
    _fake_ort(monkeypatch, available=CPU)            # plain onnxruntime: no provider at all
    with pytest.raises(PipelineError, match="onnxruntime has no CANNExecutionProvider here.*onnxruntime-cann=="):
        runner.activate()


def test_ort_cann_runner_adapts_to_the_provider_options_this_build_knows(tiny_model, monkeypatch):
    """A newer provider parses precision_mode_v2 only, an older one lacks dump_om_model: renamed or dropped, said."""
    cfg, paths = tiny_model
    _fake_ort(monkeypatch, refuse=("precision_mode", "dump_om_model"))
    target = backends.get("ort-cann").build(cfg, paths, lambda line: None, NPU_NO_AIS_CANN)
    runner = backends.get("ort-cann").open_runner(cfg, target, 1)
    assert runner.device == "npu:1"
    with runner:
        assert runner.options == {"device_id": "1", "enable_cann_graph": "1", "dump_graphs": "0",
                                  "precision_mode_v2": "fp16"}
        assert set(runner.dropped_options) == {"precision_mode", "dump_om_model"}
        x = np.ones((2, 1024), np.float32)
        np.testing.assert_allclose(runner.infer({"frames": x})["activation"], x @ W, rtol=1e-5)
        with pytest.raises(PipelineError, match="dim 1 must be 1024"):          # the shared feed check
            runner.infer({"frames": np.ones((2, 8), np.float32)})
        desc = runner.describe()
    assert desc["backend"] == "ort-cann" and desc["device"] == "npu:1"
    assert desc["providers"] == list(CANN) and desc["provider_options_effective"]["precision_mode_v2"] == "fp16"
    assert "precision_mode" in desc["dropped_options"]
