"""ATC command construction (golden argument lists for both models), the bash script, and run_atc against fake
`atc` executables written here (success banner + <prefix>_linux_x86_64.om, E19010 failure, silent exit 0)."""
import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from convert.atc import (V1_TO_V2, V2_TO_V1, build_atc_jobs, find_om, precision_args, run_atc, supports_v2,
                         write_atc_script)
from pipeline.config import SCHEMA
from pipeline.errors import ConfigError, PipelineError
from pipeline.schema import validate

CN, SED = "convnext_base_clip_laion2b", "cnn8rnn_audioset_sed"
HERE = Path(__file__).parent


def convnext_cfg(**atc):
    raw = {"name": CN, "family": "convnext_clip",
           "inputs": [{"name": "image", "shape": ["batch", 3, 256, 256]}],
           "outputs": [{"name": "embedding", "shape": ["batch", 640]}],
           "export": {"parity_cases": [{"image": [1, 3, 256, 256]}]},
           "atc": {"input_format": "NCHW", "batch_mode": "per_batch", "batch_sizes": [1, 8], **atc}}
    return {**validate(raw, SCHEMA, "", "test.yaml"), "_source": "test.yaml"}


def sed_cfg(**atc):
    raw = {"name": SED, "family": "cnn8rnn_sed",
           "inputs": [{"name": "logmel", "shape": ["batch", 1, "frames", 64]}],
           "outputs": [{"name": "segmentwise_output", "shape": ["batch", "segments", 447]},
                       {"name": "clipwise_output", "shape": ["batch", 447]}],
           "export": {"parity_cases": [{"logmel": [1, 1, 1001, 64]}]},
           "atc": {"input_format": "ND", "batch_mode": "per_batch", "batch_sizes": [1, 8],
                   "dynamic_dims": [[101], [301], [1001]], **atc}}
    return {**validate(raw, SCHEMA, "", "test.yaml"), "_source": "test.yaml"}


def argvs(cfg, soc="Ascend310P3", cann=None):
    return [j.argv for j in build_atc_jobs(cfg, "model.sim.onnx", soc, cann)]


HEAD = ["atc", "--framework=5", "--model=model.sim.onnx", "--soc_version=Ascend310P3"]


# ---- golden commands -----------------------------------------------------------------------------
def test_convnext_per_batch_force_fp16_unknown_cann_uses_v1():
    assert argvs(convnext_cfg()) == [
        HEAD + ["--input_format=NCHW", "--precision_mode=force_fp16", "--input_shape=image:1,3,256,256",
                f"--output=om/{CN}_bs1"],
        HEAD + ["--input_format=NCHW", "--precision_mode=force_fp16", "--input_shape=image:8,3,256,256",
                f"--output=om/{CN}_bs8"]]
    jobs = build_atc_jobs(convnext_cfg(), "model.sim.onnx", "Ascend310P3")
    assert [(j.prefix, j.batch, j.mode, j.gears, j.side_files) for j in jobs] == [
        (f"om/{CN}_bs1", 1, "static", [], {}), (f"om/{CN}_bs8", 8, "static", [], {})]


def test_convnext_per_batch_cann8_uses_v2_never_both():
    got = argvs(convnext_cfg(), soc="Ascend910B3", cann="8.0.RC3")
    assert got[1] == ["atc", "--framework=5", "--model=model.sim.onnx", "--soc_version=Ascend910B3",
                      "--input_format=NCHW", "--precision_mode_v2=fp16", "--input_shape=image:8,3,256,256",
                      f"--output=om/{CN}_bs8"]
    assert not any(a.startswith("--precision_mode=") for a in got[0] + got[1])


def test_convnext_dynamic_batch_size_one_job():
    jobs = build_atc_jobs(convnext_cfg(batch_mode="dynamic_batch_size", batch_sizes=[1, 4, 8]),
                          "model.sim.onnx", "Ascend310P3", "6.0.1")
    assert len(jobs) == 1
    assert jobs[0].argv == HEAD + ["--input_format=NCHW", "--precision_mode=force_fp16",
                                   "--input_shape=image:-1,3,256,256", "--dynamic_batch_size=1,4,8",
                                   f"--output=om/{CN}_dynbs"]
    assert (jobs[0].batch, jobs[0].mode, jobs[0].gears) == (None, "dymbatch", [1, 4, 8])


def test_convnext_allow_mix_precision_with_mixlist():
    cfg = convnext_cfg(precision_mode="allow_mix_precision",
                       modify_mixlist={"black-list": {"to-add": ["SoftmaxV2", "ReduceMeanD"]}})
    job = build_atc_jobs(cfg, "model.sim.onnx", "Ascend310P3", "6.0.1")[0]
    assert job.argv == HEAD + ["--input_format=NCHW", "--precision_mode=allow_mix_precision",
                               "--modify_mixlist=om/modify_mixlist.json", "--input_shape=image:1,3,256,256",
                               f"--output=om/{CN}_bs1"]
    assert json.loads(job.side_files["om/modify_mixlist.json"]) == {"black-list": {"to-add": ["SoftmaxV2", "ReduceMeanD"]}}
    assert argvs(cfg, cann="7.0.0")[0][5] == "--precision_mode_v2=mixed_float16"


def test_convnext_must_keep_origin_dtype_drops_keep_dtype_and_maps_to_origin():
    cfg = convnext_cfg(precision_mode="must_keep_origin_dtype", keep_dtype=["Pow_458"],
                       op_precision_mode={"Gelu": "high_performance"})
    old = argvs(cfg, cann="6.0.1")[0]
    assert old == HEAD + ["--input_format=NCHW", "--precision_mode=must_keep_origin_dtype",
                          "--op_precision_mode=om/op_precision.ini", "--input_shape=image:1,3,256,256",
                          f"--output=om/{CN}_bs1"]
    assert argvs(cfg, cann="8.1.RC1")[0][5] == "--precision_mode_v2=origin"


def test_force_fp16_keep_dtype_and_op_precision_files():
    cfg = convnext_cfg(keep_dtype=["Pow_458", "ReduceMean_459", "OpType::SoftmaxV2"],
                       op_precision_mode={"Gelu": "high_performance", "LayerNorm": "high_precision"},
                       extra_args=["--log=error", "--enable_small_channel=1"])
    job = build_atc_jobs(cfg, "model.sim.onnx", "Ascend310P3")[0]
    assert job.argv == HEAD + ["--input_format=NCHW", "--precision_mode=force_fp16",
                               "--keep_dtype=om/keep_dtype.cfg", "--op_precision_mode=om/op_precision.ini",
                               "--input_shape=image:1,3,256,256", f"--output=om/{CN}_bs1", "--log=error",
                               "--enable_small_channel=1"]
    assert job.side_files == {"om/keep_dtype.cfg": "Pow_458\nReduceMean_459\nOpType::SoftmaxV2\n",
                              "om/op_precision.ini": "Gelu=high_performance\nLayerNorm=high_precision\n"}


@pytest.mark.parametrize("v1,v2", sorted(V1_TO_V2.items()))
def test_v1_names_map_to_v2_on_new_cann(v1, v2):
    assert precision_args(v1, "8.0.0") == [f"--precision_mode_v2={v2}"]
    assert precision_args(v1, "6.3.RC2") == [f"--precision_mode={v1}"]


@pytest.mark.parametrize("v2,v1", sorted(V2_TO_V1.items()))
def test_v2_names_map_to_v1_on_old_or_unknown_cann(v2, v1):
    assert precision_args(v2, "6.0.1") == [f"--precision_mode={v1}"]
    assert precision_args(v2, None) == [f"--precision_mode={v1}"]
    assert precision_args(v2, "9.2.0-beta.2") == [f"--precision_mode_v2={v2}"]


def test_precision_errors_and_v1_only_names():
    assert precision_args("allow_fp32_to_fp16", "8.0.RC1") == ["--precision_mode=allow_fp32_to_fp16"]
    assert [supports_v2(v) for v in ("7.0.RC1", "6.3.RC2", "", None, "8.5.0")] == [True, False, False, False, True]
    with pytest.raises(ConfigError) as e:
        precision_args("fp8", None)
    assert str(e.value) == ("atc.precision_mode 'fp8' is not an ATC precision mode; use one of force_fp16, force_fp32, "
                            "allow_fp32_to_fp16, must_keep_origin_dtype, allow_mix_precision, allow_mix_precision_fp16, "
                            "allow_mix_precision_bf16, allow_fp32_to_bf16 (or the v2 names fp16, origin, "
                            "cube_fp16in_fp32out, mixed_float16, mixed_bfloat16, cube_hif8, mixed_hif8)")
    with pytest.raises(ConfigError, match="'mixed_hif8' needs CANN 7.0 or newer"):
        precision_args("mixed_hif8", "6.0.1")


def test_chip_specific_precision_modes():
    with pytest.raises(ConfigError, match="allow_mix_precision_bf16 uses bfloat16, which Ascend310P3 lacks"):
        argvs(convnext_cfg(precision_mode="allow_mix_precision_bf16"))
    assert argvs(convnext_cfg(precision_mode="mixed_bfloat16"), "Ascend910B3", "8.0.0")[0][5] == \
        "--precision_mode_v2=mixed_bfloat16"
    with pytest.raises(ConfigError, match="mixed_hif8 uses hifloat8, only Ascend 950 chips have it"):
        argvs(convnext_cfg(precision_mode="mixed_hif8"), "Ascend910_9391", "8.5.0")
    # a placeholder soc (atc.sh without a known chip) defers the chip check
    assert argvs(convnext_cfg(precision_mode="mixed_bfloat16"), "SOC_VERSION", "8.0.0")[0][3] == "--soc_version=SOC_VERSION"


def test_mixlist_needs_mixed_mode_and_known_keys():
    with pytest.raises(ConfigError, match="modify_mixlist only works with a mixed precision mode"):
        argvs(convnext_cfg(modify_mixlist={"black-list": {"to-add": ["SoftmaxV2"]}}))
    with pytest.raises(ConfigError, match="takes black-list / white-list, each with to-add / to-remove"):
        argvs(convnext_cfg(precision_mode="allow_mix_precision", modify_mixlist={"blacklist": {"add": ["X"]}}))


def test_cnn8rnn_dims_gears_per_batch():
    jobs = build_atc_jobs(sed_cfg(), "model.sim.onnx", "Ascend310P3")
    assert [j.argv for j in jobs] == [
        HEAD + ["--input_format=ND", "--precision_mode=force_fp16", "--input_shape=logmel:1,1,-1,64",
                "--dynamic_dims=101;301;1001", f"--output=om/{SED}_bs1"],
        HEAD + ["--input_format=ND", "--precision_mode=force_fp16", "--input_shape=logmel:8,1,-1,64",
                "--dynamic_dims=101;301;1001", f"--output=om/{SED}_bs8"]]
    assert [(j.batch, j.mode, j.gears) for j in jobs] == [(1, "dymdims", [[101], [301], [1001]]),
                                                          (8, "dymdims", [[101], [301], [1001]])]


def test_cnn8rnn_fixed_frames_static_and_missing_gears():
    assert argvs(sed_cfg(dynamic_dims=[], fixed_dims={"frames": 1001}, batch_sizes=[1])) == [
        HEAD + ["--input_format=ND", "--precision_mode=force_fp16", "--input_shape=logmel:1,1,1001,64",
                f"--output=om/{SED}_bs1"]]
    with pytest.raises(ConfigError) as e:
        argvs(sed_cfg(dynamic_dims=[]))
    assert str(e.value) == ("test.yaml: input logmel has dynamic axis 'frames' that ATC needs fixed: add "
                            "atc.fixed_dims: {frames: <size>} or atc.dynamic_dims gears")


def test_gear_rules():
    with pytest.raises(ConfigError, match="cannot combine --dynamic_batch_size with --dynamic_dims"):
        argvs(sed_cfg(batch_mode="dynamic_batch_size"))
    with pytest.raises(ConfigError, match="dynamic_dims needs atc.input_format: ND"):
        argvs(sed_cfg(input_format="NCHW"))
    with pytest.raises(ConfigError, match=r"--dynamic_batch_size needs 2 to 100 gears, the config gives 1"):
        argvs(convnext_cfg(batch_mode="dynamic_batch_size", batch_sizes=[8]))
    with pytest.raises(ConfigError, match=r"--dynamic_dims needs 2 to 100 gears, the config gives 1"):
        argvs(sed_cfg(dynamic_dims=[[1001]]))
    with pytest.raises(ConfigError, match=r"gears repeat a value \(\[\[101\], \[101\]\]\)"):
        argvs(sed_cfg(dynamic_dims=[[101], [101]]))
    with pytest.raises(ConfigError, match=r"each atc.dynamic_dims gear needs 1 value\(s\), got \[101, 64\]"):
        argvs(sed_cfg(dynamic_dims=[[101, 64], [301, 64]]))
    with pytest.raises(ConfigError, match="atc.dynamic_dims is set but no input axis is left dynamic"):
        argvs(sed_cfg(fixed_dims={"frames": 1001}))


def test_extra_args_cannot_repeat_managed_flags():
    with pytest.raises(ConfigError) as e:
        argvs(convnext_cfg(extra_args=["--precision_mode=force_fp32"]))
    assert str(e.value) == ("test.yaml: atc.extra_args sets --precision_mode, which comes from atc.precision_mode; "
                            "remove it from extra_args")
    with pytest.raises(ConfigError, match="is not an ATC option; write --name=value"):
        argvs(convnext_cfg(extra_args=["log=error"]))


# ---- the script ----------------------------------------------------------------------------------
def test_script_is_quoted_atomic_and_executable(tmp_path):
    jobs = build_atc_jobs(sed_cfg(keep_dtype=["OpType::DynamicGRUV2"]), "model.sim.onnx", "SOC_VERSION")
    path = write_atc_script(jobs, tmp_path / "atc.sh", SED, None)
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert "#   source /usr/local/Ascend/ascend-toolkit/set_env.sh" in text
    assert "#   source /usr/local/Ascend/cann/set_env.sh" in text
    assert ("atc \\\n  --framework=5 \\\n  --model=model.sim.onnx \\\n  \"--soc_version=$SOC_VERSION\" \\\n"
            "  --input_format=ND \\\n  --precision_mode=force_fp16 \\\n  --keep_dtype=om/keep_dtype.cfg \\\n"
            "  --input_shape=logmel:1,1,-1,64 \\\n  '--dynamic_dims=101;301;1001' \\\n"
            f"  --output=om/{SED}_bs1\n") in text
    assert "cat > om/keep_dtype.cfg <<'ATC_CFG'\nOpType::DynamicGRUV2\nATC_CFG\n" in text
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert not list(tmp_path.glob(".atc.sh.*"))                        # atomic write left no temp file


def fake_bin(tmp_path, name, body):
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    p.chmod(0o755)
    return p


FAKE_ATC_OK = """
    import os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    with open(os.path.join(os.path.dirname(__file__), "argv.log"), "a") as f:
        f.write(os.getcwd() + " " + " ".join(sys.argv[1:]) + "\\n")
    print("ATC start working now, please wait for a moment.")
    with open(args["output"] + "_linux_x86_64.om", "wb") as f:
        f.write(("om for " + args["input_shape"]).encode())
    print("ATC run success, welcome to the next use.")
"""


@pytest.mark.parametrize("script", ["model", "npu-smi"])
def test_script_runs_unchanged_and_finds_the_soc(tmp_path, script):
    """bash build/<model>/atc.sh from the repo root with the fake atc (and a fake npu-smi for the chip)."""
    build = tmp_path / "repo" / "build" / SED
    build.mkdir(parents=True)
    (build / "model.sim.onnx").write_bytes(b"onnx")
    fake_bin(tmp_path, "atc", FAKE_ATC_OK)
    fake_bin(tmp_path, "npu-smi", f"print(open({str(HERE / 'data/npu_smi/310p3_duo.txt')!r}).read())")
    jobs = build_atc_jobs(sed_cfg(batch_sizes=[1]), "model.sim.onnx", "SOC_VERSION")
    soc = "Ascend910B3" if script == "model" else None
    write_atc_script(jobs, build / "atc.sh", SED, soc)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    env.pop("SOC_VERSION", None)
    p = subprocess.run(["bash", f"build/{SED}/atc.sh"], cwd=tmp_path / "repo", env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (build / "om" / f"{SED}_bs1_linux_x86_64.om").read_text() == "om for logmel:1,1,-1,64"
    want = "Ascend910B3" if soc else "Ascend310P3"
    assert (tmp_path / "bin" / "argv.log").read_text() == (
        f"{build} --framework=5 --model=model.sim.onnx --soc_version={want} --input_format=ND "
        f"--precision_mode=force_fp16 --input_shape=logmel:1,1,-1,64 --dynamic_dims=101;301;1001 "
        f"--output=om/{SED}_bs1\n")


def test_script_refuses_to_guess_an_a3_chip(tmp_path):
    build = tmp_path / "b"
    build.mkdir()
    fake_bin(tmp_path, "atc", FAKE_ATC_OK)
    fake_bin(tmp_path, "npu-smi", f"print(open({str(HERE / 'data/npu_smi/a3.txt')!r}).read())")
    write_atc_script(build_atc_jobs(convnext_cfg(), "m.onnx", "SOC_VERSION"), build / "atc.sh", CN, None)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    env.pop("SOC_VERSION", None)
    p = subprocess.run(["bash", str(build / "atc.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "set SOC_VERSION" in p.stderr and "<Chip Name>_<NPU Name>" in p.stderr
    assert not (tmp_path / "bin" / "argv.log").exists()


# ---- run_atc ---------------------------------------------------------------------------------------
def test_run_atc_success_records_permissions_and_log(tmp_path):
    build = tmp_path / "build"
    (build / "om").mkdir(parents=True)
    (build / "om" / f"{CN}_bs4_linux_x86_64.om").write_text("stale from an older config")
    atc = fake_bin(tmp_path, "atc", FAKE_ATC_OK)
    cfg = convnext_cfg(batch_sizes=[1, 16], keep_dtype=["Pow_458"])
    oms = run_atc(build_atc_jobs(cfg, "model.sim.onnx", "Ascend310P3"), build, tmp_path / "logs" / "atc.log",
                  str(atc), 60)
    files = sorted(p.name for p in (build / "om").iterdir())
    assert files == [f"{CN}_bs16_linux_x86_64.om", f"{CN}_bs1_linux_x86_64.om", "keep_dtype.cfg"]
    bs1 = build / "om" / f"{CN}_bs1_linux_x86_64.om"
    assert [(o["batch"], o["mode"], o["gears"], o["path"], o["sha256"]) for o in oms] == [
        (1, "static", [], str(bs1), hashlib.sha256(b"om for image:1,3,256,256").hexdigest()),
        (16, "static", [], str(build / "om" / f"{CN}_bs16_linux_x86_64.om"),
         hashlib.sha256(b"om for image:16,3,256,256").hexdigest())]
    assert stat.S_IMODE(bs1.stat().st_mode) == 0o640
    assert stat.S_IMODE((build / "om").stat().st_mode) == 0o750
    assert (build / "om" / "keep_dtype.cfg").read_text() == "Pow_458\n"
    log = (tmp_path / "logs" / "atc.log").read_text()
    assert log.count("ATC run success, welcome to the next use.") == 2
    assert f"$ cd {build} && {atc} --framework=5 --model=model.sim.onnx --soc_version=Ascend310P3" in log


def test_run_atc_failure_is_one_line_with_the_error_code(tmp_path):
    atc = fake_bin(tmp_path, "atc", """
        print("ATC start working now, please wait for a moment.")
        print("E19010: No parser is registered for Op [/STFT, optype [ai.onnx::17::STFT]].")
        print("ATC run failed, Please check the detail log, Try 'atc --help' for more information")
        raise SystemExit(1)
    """)
    log = tmp_path / "atc.log"
    with pytest.raises(PipelineError) as e:
        run_atc(build_atc_jobs(convnext_cfg(), "model.sim.onnx", "Ascend310P3"), tmp_path / "b", log, str(atc), 60)
    assert str(e.value) == (f"ATC failed for om/{CN}_bs1: E19010: No parser is registered for Op [/STFT, optype "
                            f"[ai.onnx::17::STFT]].; see {log} (pre-flight: `make preflight`; more detail: add "
                            "--log=error to atc.extra_args)")
    assert "\n" not in str(e.value) and "exit code 1" in log.read_text()


def test_run_atc_exit_0_without_success_line_fails(tmp_path):
    atc = fake_bin(tmp_path, "atc", """
        import sys
        args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
        open(args["output"] + ".om", "w").write("half")
        print("ATC start working now, please wait for a moment.")
    """)
    with pytest.raises(PipelineError, match=rf"ATC failed for om/{CN}_bs1: exit code 0, no 'ATC run success' line"):
        run_atc(build_atc_jobs(convnext_cfg(), "model.sim.onnx", "Ascend310P3"), tmp_path / "b",
                tmp_path / "atc.log", str(atc), 60)


def test_run_atc_timeout_and_missing_binary(tmp_path):
    atc = fake_bin(tmp_path, "atc", """
        import subprocess, sys
        subprocess.run(["sleep", "30"])
    """)
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match=rf"ATC did not finish within 1 s for om/{CN}_bs1; raise atc.timeout_s"):
        run_atc(build_atc_jobs(convnext_cfg(), "model.sim.onnx", "Ascend310P3"), tmp_path / "b",
                tmp_path / "atc.log", str(atc), 1)
    assert time.monotonic() - t0 < 15                   # the whole process group (ATC's workers) was killed
    with pytest.raises(PipelineError, match="cannot run /nonexistent/atc: No such file or directory"):
        run_atc(build_atc_jobs(convnext_cfg(), "model.sim.onnx", "Ascend310P3"), tmp_path / "b",
                tmp_path / "atc.log", "/nonexistent/atc", 5)


def test_find_om_exact_names_not_glob_prefixes(tmp_path):
    om = tmp_path / "om"
    om.mkdir()
    for n in ("m_bs1.om", "m_bs16.om", "m_bs1x_linux_x86_64.om"):
        (om / n).write_text(n)
    assert find_om(tmp_path, "om/m_bs1").name == "m_bs1.om"
    (om / "m_bs16.om").rename(om / "m_bs16_linux_aarch64.om")
    assert find_om(tmp_path, "om/m_bs16").name == "m_bs16_linux_aarch64.om"
    (om / "m_bs1_linux_x86_64.om").write_text("x")
    with pytest.raises(PipelineError, match=r"2 file\(s\) match om/m_bs1.om / om/m_bs1_<os>_<arch>.om .*"
                                            r"\(m_bs1.om, m_bs1_linux_x86_64.om\)"):
        find_om(tmp_path, "om/m_bs1")
    with pytest.raises(PipelineError, match=r"0 file\(s\) match om/m_bs2"):
        find_om(tmp_path, "om/m_bs2")
