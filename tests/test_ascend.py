"""Ascend path without hardware: golden ATC commands, ATC run and failure, npu-smi parsing, CANN discovery,
pre-flight, and the ais_bench runner against a test double that enforces the documented rules."""
import copy
import os
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ais_bench_double as double
from convert.atc import build_atc_jobs, find_om, run_atc, write_atc_script
from convert.preflight import check_model
from pipeline import ascend_env as ae
from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline import ais_runner

HERE = Path(__file__).parent
NPU_SMI = HERE / "data" / "npu_smi"


def cfg_with(model, **atc):
    cfg = copy.deepcopy(load_config(model))
    cfg["atc"].update(atc)
    return cfg


def argv(cfg, soc="Ascend310P3", cann=None):
    return [j.argv for j in build_atc_jobs(cfg, "model.sim.onnx", soc, cann)]


CN = "convnext_base_clip_laion2b"
SED = "cnn8rnn_audioset_sed"
BASE = ["atc", "--framework=5", "--model=model.sim.onnx", "--soc_version=Ascend310P3"]


def test_convnext_per_batch_force_fp16_old_and_new_cann():
    cfg = cfg_with(CN, batch_sizes=[1, 8])
    assert argv(cfg) == [
        BASE + ["--input_format=NCHW", "--precision_mode=force_fp16", "--insert_op_conf=aipp.cfg",
                "--input_shape=image:1,3,256,256", f"--output=om/{CN}_bs1"],
        BASE + ["--input_format=NCHW", "--precision_mode=force_fp16", "--insert_op_conf=aipp.cfg",
                "--input_shape=image:8,3,256,256", f"--output=om/{CN}_bs8"]]      # the config's static AIPP
    new = argv(cfg, cann="8.0.RC3")
    assert new[0][5] == "--precision_mode_v2=fp16" and not any(a.startswith("--precision_mode=") for a in new[0])


def test_convnext_dynamic_batch_keep_dtype_and_implmode():
    cfg = cfg_with(CN, batch_mode="dynamic_batch_size", batch_sizes=[1, 4, 8], keep_dtype=["/stem/stem.1/LayerNorm"],
                   op_precision_mode={"Gelu": "high_performance"})
    jobs = build_atc_jobs(cfg, "model.sim.onnx", "Ascend910B3", "7.0.0")
    assert len(jobs) == 1 and jobs[0].mode == "dymbatch" and jobs[0].batch is None
    assert jobs[0].argv == ["atc", "--framework=5", "--model=model.sim.onnx", "--soc_version=Ascend910B3",
                            "--input_format=NCHW", "--precision_mode_v2=fp16", "--keep_dtype=om/keep_dtype.cfg",
                            "--op_precision_mode=om/op_precision.ini", "--insert_op_conf=aipp.cfg",
                            "--input_shape=image:-1,3,256,256", "--dynamic_batch_size=1,4,8", f"--output=om/{CN}_dynbs"]
    side = dict(jobs[0].side_files)
    assert side.pop("aipp.cfg").startswith("# static AIPP written by make om")
    assert side == {"om/keep_dtype.cfg": "/stem/stem.1/LayerNorm\n", "om/op_precision.ini": "Gelu=high_performance\n"}


def test_mixed_precision_with_mixlist_and_origin_mode():
    cfg = cfg_with(CN, precision_mode="allow_mix_precision",
                   modify_mixlist={"black-list": {"to-add": ["SoftmaxV2"]}})
    a = argv(cfg)[0]
    assert "--precision_mode=allow_mix_precision" in a and "--modify_mixlist=om/modify_mixlist.json" in a
    assert "--precision_mode_v2=mixed_float16" in argv(cfg, cann="8.1.RC1")[0]
    origin = argv(cfg_with(CN, precision_mode="must_keep_origin_dtype", keep_dtype=["x"]))[0]
    assert "--precision_mode=must_keep_origin_dtype" in origin
    assert not any(x.startswith("--keep_dtype") for x in origin)       # ignored by ATC in this mode
    with pytest.raises(ConfigError, match="modify_mixlist only works with a mixed precision mode"):
        argv(cfg_with(CN, modify_mixlist={"black-list": {"to-add": ["SoftmaxV2"]}}))
    with pytest.raises(ConfigError, match="not an ATC precision mode"):
        argv(cfg_with(CN, precision_mode="fp8"))
    with pytest.raises(ConfigError, match=r"exists only as --precision_mode_v2, which ATC has from CANN 6\.3\.RC2 on"):
        argv(cfg_with(CN, precision_mode="mixed_hif8"), cann="6.0.1")


def test_audio_static_frames_and_dynamic_dims_gears():
    assert argv(cfg_with(SED)) == [BASE + ["--input_format=ND", "--precision_mode=force_fp16",
                                           "--input_shape=logmel:1,1,1001,64", f"--output=om/{SED}_bs1"]]
    gears = cfg_with(SED, fixed_dims={}, dynamic_dims=[[101], [301], [1001]], batch_sizes=[1, 4])
    jobs = build_atc_jobs(gears, "model.sim.onnx", "Ascend310P3")
    assert [j.argv[6:] for j in jobs] == [
        ["--input_shape=logmel:1,1,-1,64", "--dynamic_dims=101;301;1001", f"--output=om/{SED}_bs1"],
        ["--input_shape=logmel:4,1,-1,64", "--dynamic_dims=101;301;1001", f"--output=om/{SED}_bs4"]]
    assert jobs[0].mode == "dymdims"
    with pytest.raises(ConfigError, match="dynamic axis 'frames' that ATC needs fixed"):
        argv(cfg_with(SED, fixed_dims={}))
    with pytest.raises(ConfigError, match="cannot combine --dynamic_batch_size with --dynamic_dims"):
        argv(cfg_with(SED, fixed_dims={}, dynamic_dims=[[101]], batch_mode="dynamic_batch_size"))
    with pytest.raises(ConfigError, match="dynamic_dims needs atc.input_format: ND"):
        argv(cfg_with(SED, fixed_dims={}, dynamic_dims=[[101]], input_format="NCHW"))


@pytest.fixture
def fake_atc(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    atc = bin_dir / "atc"
    atc.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / 'fake_atc.py'} \"$@\"\n")
    atc.chmod(0o755)
    return atc


def build_dir_with_onnx(tmp_path):
    d = tmp_path / "build"
    d.mkdir()
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 256, 256])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3, 256, 256])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["image"], ["embedding"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(d / "model.sim.onnx"))
    return d


def test_run_atc_success_names_and_permissions(tmp_path, fake_atc):
    d = build_dir_with_onnx(tmp_path)
    cfg = cfg_with(CN, batch_sizes=[1, 16], keep_dtype=["n1"])
    jobs = build_atc_jobs(cfg, "model.sim.onnx", "Ascend310P3")
    oms = run_atc(jobs, d, tmp_path / "atc.log", str(fake_atc), 60)
    assert [Path(o["path"]).name for o in oms] == [f"{CN}_bs1_linux_x86_64.om", f"{CN}_bs16_linux_x86_64.om"]
    assert stat.S_IMODE((d / "om" / f"{CN}_bs1_linux_x86_64.om").stat().st_mode) == 0o640
    assert stat.S_IMODE((d / "om").stat().st_mode) == 0o750
    assert "ATC run success" in (tmp_path / "atc.log").read_text()
    assert find_om(d, f"om/{CN}_bs1").name == f"{CN}_bs1_linux_x86_64.om"     # bs1 does not pick up bs16


def test_run_atc_failures_are_one_line(tmp_path, fake_atc, monkeypatch):
    d = build_dir_with_onnx(tmp_path)
    jobs = build_atc_jobs(cfg_with(CN), "model.sim.onnx", "Ascend310P3")
    monkeypatch.setenv("FAKE_ATC_FAIL", "1")
    with pytest.raises(PipelineError, match=r"ATC failed for om/\S+_bs1: E19010: No parser is registered for Op"):
        run_atc(jobs, d, tmp_path / "atc.log", str(fake_atc), 60)
    monkeypatch.delenv("FAKE_ATC_FAIL")
    monkeypatch.setenv("FAKE_ATC_SILENT", "1")
    with pytest.raises(PipelineError, match="exit code 0, no 'ATC run success' line"):
        run_atc(jobs, d, tmp_path / "atc.log", str(fake_atc), 60)


def test_atc_script_runs_unchanged(tmp_path, fake_atc):
    import subprocess

    d = build_dir_with_onnx(tmp_path)
    jobs = build_atc_jobs(cfg_with(CN, keep_dtype=["n1"]), "model.sim.onnx", "SOC_VERSION")
    script = write_atc_script(jobs, d / "atc.sh", CN, None)
    env = dict(os.environ, PATH=f"{fake_atc.parent}:{os.environ['PATH']}", SOC_VERSION="Ascend310P3")
    p = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "ATC run success" in p.stdout
    assert (d / "om" / f"{CN}_bs1_linux_x86_64.om").exists() and (d / "om" / "keep_dtype.cfg").read_text() == "n1\n"
    p = subprocess.run(["bash", str(script)], cwd=tmp_path, env={**env, "SOC_VERSION": ""}, capture_output=True, text=True)
    assert p.returncode != 0 and "set SOC_VERSION" in p.stderr          # no npu-smi here to detect it


@pytest.mark.parametrize("name,version,chips,soc", [
    ("310p3", "22.0.0", [("310P3", "OK", 1074, 21534), ("310P3", "OK", 1070, 21534)], "Ascend310P3"),
    ("910b3", "23.0.7", [("910B3", "OK", 3338, 65536), ("910B3", "Warning", 3337, 65536)], "Ascend910B3"),
    ("310", "21.0.3.1", [("310", "OK", 5324, 8192)], "Ascend310"),
    ("a3", "26.0.rc2", [("Ascend910", "OK", 3419, 65536), ("Ascend910", "OK", 2874, 65536)], None),
])
def test_npu_smi_parsing(name, version, chips, soc):
    info = ae.parse_npu_smi_info((NPU_SMI / f"{name}.txt").read_text())
    assert info["version"] == version
    assert [(c["name"], c["health"], c["memory_used_mb"], c["memory_total_mb"]) for c in info["chips"]] == chips
    assert ae.soc_from_name(info["chips"][0]["name"]) == soc


def test_a3_soc_from_board_query():
    board = ae.parse_board_info((NPU_SMI / "a3_board.txt").read_text())
    assert ae.soc_from_name("Ascend910", board) == "Ascend910_9391"


def test_find_toolkit_layouts(tmp_path, monkeypatch):
    home = tmp_path / "ascend-toolkit" / "8.0.RC3"
    (home / "x86_64-linux").mkdir(parents=True)
    (home / "x86_64-linux" / "ascend_toolkit_install.info").write_text("package_name=Ascend-cann-toolkit\nversion=8.0.RC3\n")
    tk = ae.find_toolkit({"ASCEND_TOOLKIT_HOME": str(home)})
    assert tk["home"] == str(home) and tk["version"] == "8.0.RC3"
    monkeypatch.setattr(ae, "SET_ENV_CANDIDATES", (str(tmp_path / "cann" / "set_env.sh"),))
    (tmp_path / "cann").mkdir()
    (tmp_path / "cann" / "set_env.sh").write_text("export X=1\n")
    tk = ae.find_toolkit({})
    assert tk["set_env"] == str(tmp_path / "cann" / "set_env.sh") and tk["home"] == str(tmp_path / "cann")


def graph(nodes, inputs, outputs, opset=17):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", opset)])


def test_preflight_flags_stft_missing_keep_node_and_dynamic_dims():
    cfg = load_config(SED)
    sig = helper.make_tensor_value_info("signal", TensorProto.FLOAT, [1, "samples", 1])
    out = helper.make_tensor_value_info("spec", TensorProto.FLOAT, None)
    step = helper.make_tensor("step", TensorProto.INT64, [], [320])
    model = graph([helper.make_node("STFT", ["signal", "step"], ["spec"], name="stft0")], [sig], [out])
    model.graph.initializer.append(step)
    codes = {(f["level"], f["code"]) for f in check_model(model, cfg)}
    assert ("error", "unsupported_op") in codes and ("error", "dynamic_dim") in codes
    stft = next(f for f in check_model(model, cfg) if f["code"] == "unsupported_op")
    assert "STFT" in stft["message"] and "host" in stft["fix"]
    cfg2 = copy.deepcopy(cfg)
    cfg2["atc"]["keep_dtype"] = ["stft0", "Pow_458", "OpType::SoftmaxV2"]
    keep = [f for f in check_model(model, cfg2) if f["code"] == "keep_dtype"]
    assert len(keep) == 1 and "'Pow_458'" in keep[0]["message"]
    clean = graph([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], opset=13)
    assert check_model(clean, cfg) == []
    assert any(f["code"] == "opset" and f["level"] == "error" for f in check_model(
        graph([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], opset=20), cfg))


# ---- the runner against the double --------------------------------------------------------------------
@pytest.fixture
def om_target(tmp_path, fake_atc, monkeypatch):
    """A real (tiny) ONNX compiled by the fake atc into per-batch .om files, as `make om` would."""
    from pipeline.paths import ModelPaths

    monkeypatch.setenv("PIPELINE_BUILD_DIR", str(tmp_path / "b"))
    cfg = cfg_with(CN, batch_sizes=[1, 2], aipp=False)        # the float input path (AIPP: tests/test_aipp_om.py)
    d = ModelPaths(CN).build
    d.mkdir(parents=True)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 256, 256])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])
    model = graph([helper.make_node("ReduceMean", ["image"], ["embedding"], axes=[2, 3], keepdims=0)], [x], [y], opset=13)
    onnx.save(model, str(d / "model.sim.onnx"))
    oms = run_atc(build_atc_jobs(cfg, "model.sim.onnx", "Ascend310P3"), d, tmp_path / "atc.log", str(fake_atc), 60)
    monkeypatch.setattr(ais_runner, "session_factory", double.FakeInferSession)
    return cfg, {"backend": "om", "oms": oms, "soc_version": "Ascend310P3", "precision": "force_fp16"}


@pytest.mark.parametrize("flavour", double.GENERATIONS)
def test_runner_against_double(om_target, flavour, monkeypatch):
    monkeypatch.setitem(double.FLAVOUR, "name", flavour)
    double.FakeInferSession.calls.clear()
    cfg, target = om_target
    x = np.random.default_rng(0).normal(size=(2, 3, 256, 256))          # float64: the runner must cast
    with ais_runner.AisBenchRunner(target, device_id=3, cfg=cfg) as r:
        assert [m.shape for m in r.get_input_metadata()] == [[1, 3, 256, 256]]
        out = r.infer({"image": x})
        assert r.last_device_ms is not None and r.last_device_ms >= 0
        r.infer({"image": x[:1]})
        with pytest.raises(PipelineError, match=r"no .om for batch 4 \(built: \[1, 2\]\)"):
            r.infer({"image": np.zeros((4, 3, 256, 256), np.float32)})
    assert np.allclose(out["embedding"], x.astype(np.float32).mean(axis=(2, 3)), atol=1e-6)
    assert r.device == "npu:3"
    frees = [c for c in double.FakeInferSession.calls if c[0] == "free"]
    assert len(frees) == (0 if flavour == "2023-early" else 2)


def test_double_enforces_the_contract(om_target):
    cfg, target = om_target
    sess = double.FakeInferSession(0, str(Path(target["oms"][0]["path"]).resolve()
                                          if Path(target["oms"][0]["path"]).is_absolute() else
                                          Path(os.environ["PIPELINE_BUILD_DIR"]) / CN / target["oms"][0]["path"].split(f"{CN}/", 1)[-1]))
    good = np.zeros((1, 3, 256, 256), np.float32)
    with pytest.raises(ValueError, match="the list be checked is not a list!"):
        sess.infer((good,))
    with pytest.raises(ValueError, match="dtype float64, model wants float32"):
        sess.infer([good.astype(np.float64)])
    with pytest.raises(ValueError, match="infer mode is illegal, Please check."):
        sess.infer([good], mode="dynbatch")
    with pytest.raises(RuntimeError, match=r"^\[-1\]\[ACL: general failure\] "):
        sess.infer([np.zeros((1, 3, 255, 256), np.float32)])


def test_om_path_rules(tmp_path):
    om = tmp_path / "m.om"
    om.write_bytes(b"x")
    om.chmod(0o666)
    assert ais_runner.check_om_path(om) == om.resolve()
    assert stat.S_IMODE(om.stat().st_mode) & 0o022 == 0                   # our own file: permissions fixed
    link = tmp_path / "link.om"
    link.symlink_to(om)
    with pytest.raises(PipelineError, match="is a symlink"):
        ais_runner.check_om_path(link)
    spaced = tmp_path / "my model.om"
    spaced.write_bytes(b"x")
    with pytest.raises(PipelineError, match="characters ais_bench refuses"):
        ais_runner.check_om_path(spaced)


def test_device_time_both_forms():
    assert ais_runner.device_ms(double.Summary([(10.0, 12.5)])) == 2.5
    assert ais_runner.device_ms(double.Summary([3.25])) == 3.25
    assert ais_runner.device_ms(double.Summary([])) is None
    assert ais_runner.numpy_dtype("dtype.float16") == "float16" and ais_runner.numpy_dtype(1) == "float16"


@pytest.mark.e2e
def test_om_backend_end_to_end_through_make(tmp_path, fake_atc):
    """make om/infer/compare/bench BACKEND=om with the fake atc and the ais_bench double standing in for CANN."""
    import json
    import subprocess

    from conftest import ROOT, run_env

    pkg = tmp_path / "fakepkgs" / "ais_bench" / "infer"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "interface.py").write_text("from ais_bench_double import FakeInferSession as InferSession  # test double\n")
    env = run_env(tmp_path)
    env.update(PATH=f"{fake_atc.parent}:{os.environ['PATH']}", PYTHONPATH=f"{tmp_path / 'fakepkgs'}:{HERE}")
    p = subprocess.run(["make", "compare", "bench", f"MODEL={SED}", "BACKEND=om", "SOC=Ascend310P3"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"PASSED | {SED} clipwise_output: om vs ort-cpu fp32" in p.stdout
    res = tmp_path / "results" / SED
    inf = json.loads((res / "inference_result.json").read_text())
    assert inf["backend"] == "om" and inf["device"] == "npu:0"
    samples = [json.loads(x) for x in (res / "inference_result.jsonl").read_text().splitlines()]
    assert samples and all(s["summary"]["windows"] >= 1 for s in samples)  # static 1001-frame .om: windows
    perf = json.loads((res / "performance_eval.json").read_text())
    assert [(r["batch_size"], r["shapes"]["logmel"][2]) for r in perf["results"]] == [(1, 1001)]
    assert perf["results"][0]["ais_bench_throughput"] > 0 and len(perf["skipped"]) == 3   # 2 shapes x bs 1, 2
    target = json.loads((tmp_path / "build" / SED / "target-om.json").read_text())
    assert target["soc_version"] == "Ascend310P3" and target["oms"][0]["path"].endswith("_bs1_linux_x86_64.om")


# ---- issue 12: the hosts people have, any batch count -------------------------------------------------------
def _fake_ais_pythonpath(tmp_path) -> str:
    pkg = tmp_path / "fakepkgs" / "ais_bench" / "infer"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "interface.py").write_text("from ais_bench_double import FakeInferSession as InferSession  # test double\n")
    return f"{tmp_path / 'fakepkgs'}:{HERE}"


def _images(folder: Path, n: int, src: Path) -> Path:
    folder.mkdir(parents=True)
    files = sorted(src.iterdir())
    for i in range(n):
        f = files[i % len(files)]
        os.link(f, folder / f"img_{i:03d}{f.suffix}")
    return folder


@pytest.mark.e2e
def test_clip_any_count_on_static_om_through_make(tmp_path, fake_atc):
    """Default CLIP config (6 samples, batch 4, .om for batch 1 and 4) with the double, then folders of 1, 5, 13."""
    import json
    import subprocess

    from conftest import ROOT, run_env

    env = run_env(tmp_path)
    env.update(PATH=f"{fake_atc.parent}:{os.environ['PATH']}", PYTHONPATH=_fake_ais_pythonpath(tmp_path))
    make = ["make", f"MODEL={CN}", "BACKEND=om", "SOC=Ascend310P3"]
    p = subprocess.run([*make, "compare", "bench"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = tmp_path / "results" / CN
    inf = json.loads((res / "inference_result.json").read_text())
    assert inf["backend"] == "om" and inf["timing"]["items"] == 6 and inf["timing"]["device_runs"] == 2
    assert f"PASSED | {CN}: om (npu:0) against onnxruntime CPU fp32" in p.stdout
    samples = tmp_path / "build" / CN / "samples"
    for n, runs in ((1, 1), (5, 2), (13, 4)):          # 13 = 3 full batches of 4 + 1 on the batch-1 .om
        folder = _images(tmp_path / f"in{n}", n, samples)
        p = subprocess.run([*make, "compare", f"INPUT={folder}"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=1500)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        inf = json.loads((res / "inference_result.json").read_text())
        assert inf["timing"]["items"] == n == inf["sources_ok"] and inf["timing"]["device_runs"] == runs, inf["timing"]
        acc = json.loads((res / "accuracy_eval.json").read_text())
        assert acc["verdict"] == "PASSED" and acc["outputs"]["embedding"]["summary"]["samples"] == n
        lines = (res / "inference_result.jsonl").read_text().splitlines()
        assert len(lines) == n                                     # results count only real items


@pytest.mark.e2e
def test_toolkit_only_host_make_all_builds_om_and_runs_ort_fp16(tmp_path, fake_atc):
    """atc on PATH, SOC given, no NPU and no ais_bench: make om builds the .om and ort-fp16; the run stages say
    in one line that the .om is not run here; make doctor predicted exactly that."""
    import json
    import subprocess

    from conftest import ROOT, run_env

    env = run_env(tmp_path)
    env.update(PATH=f"{fake_atc.parent}:{os.environ['PATH']}", SOC="Ascend310P3")
    doc = subprocess.run(["make", "doctor", f"MODEL={SED}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert doc.returncode == 0, doc.stderr[-2000:]
    assert f"doctor | {SED}: BACKEND=auto: make om builds om + ort-fp16" in doc.stdout
    assert f"doctor | {SED}: BACKEND=auto: make infer / compare / bench run ort-fp16 (cpu)" in doc.stdout
    p = subprocess.run(["make", "all", f"MODEL={SED}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout + p.stderr
    note = "the .om is built but not run here (no NPU visible)"
    for stage in ("om |", "infer |", "compare |", "bench |"):
        assert any(line.startswith(stage) and note in line for line in out.splitlines()), stage
    build = tmp_path / "build" / SED
    assert json.loads((build / "target-om.json").read_text())["oms"] and (build / "target-ort-fp16.json").exists()
    inf = json.loads((tmp_path / "results" / SED / "inference_result.json").read_text())
    assert inf["backend"] == "ort-fp16" and inf["device"] == "cpu"
    env_info = json.loads((tmp_path / "results" / "env_info.json").read_text())
    assert env_info["stage_plans"]["models"][SED]["build"] == ["om", "ort-fp16"]
    assert env_info["stage_plans"]["models"][SED]["run"] == inf["backend"]


@pytest.mark.parametrize("gears", [[1, 4], [1, 8]])
@pytest.mark.parametrize("generation", ["2023-early", "2025"])
def test_any_count_on_dynamic_batch_gears_with_the_double(tmp_path, fake_atc, monkeypatch, gears, generation):
    """A dynamic-batch .om (gears [1,4] / [1,8]) through pipeline.batching at 1, 2, 3, 5, 6 and 101 rows."""
    from pipeline.batching import run_rows

    from pipeline.paths import ModelPaths

    monkeypatch.setitem(double.FLAVOUR, "name", generation)
    monkeypatch.setenv("PIPELINE_BUILD_DIR", str(tmp_path / "b"))
    d = ModelPaths(CN).build
    d.mkdir(parents=True)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])
    onnx.save(graph([helper.make_node("ReduceMean", ["image"], ["embedding"], axes=[2, 3], keepdims=0)], [x], [y],
                    opset=13), str(d / "model.sim.onnx"))
    cfg = cfg_with(CN, batch_mode="dynamic_batch_size", batch_sizes=gears, aipp=False)     # float feeds here
    cfg["inputs"][0]["shape"] = ["batch", 3, 8, 8]
    oms = run_atc(build_atc_jobs(cfg, "model.sim.onnx", "Ascend310P3"), d, tmp_path / "atc.log", str(fake_atc), 60)
    monkeypatch.setattr(ais_runner, "session_factory", double.FakeInferSession)
    target = {"backend": "om", "oms": oms, "soc_version": "Ascend310P3", "precision": "force_fp16"}
    runner = ais_runner.AisBenchRunner(target, 0, cfg)
    with runner:
        assert runner.accepted_batch_sizes() == gears
        for n in (1, 2, 3, 5, 6, 101):
            feeds = {"image": np.random.default_rng(n).normal(size=(n, 3, 8, 8)).astype(np.float32)}
            out, runs = run_rows(runner, feeds)
            np.testing.assert_allclose(out["embedding"], feeds["image"].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
            assert runs == -(-n // max(gears)) if n >= max(gears) else runs == 1
