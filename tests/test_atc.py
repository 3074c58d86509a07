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

from convert.atc import (V1_TO_V2, V2_TO_V1, build_atc_jobs, cann_key, choose_precision, find_om, precision_args,
                         run_atc, spellings, supports_v2, write_atc_script)
from pipeline.config import SCHEMA
from pipeline.errors import ConfigError, PipelineError
from pipeline.schema import validate

CN, SED = "convnext_base_clip_laion2b", "cnn8rnn_audioset_sed"
HERE = Path(__file__).parent


def convnext_cfg(**atc):
    raw = {"name": CN, "family": "timm_image",
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
def test_v1_names_map_to_v2_from_cann_6_3_rc2(v1, v2):
    assert precision_args(v1, "8.0.0") == [f"--precision_mode_v2={v2}"]
    assert precision_args(v1, "6.3.RC2") == [f"--precision_mode_v2={v2}"]      # first CANN with the v2 flag
    assert precision_args(v1, "6.3.RC1") == [f"--precision_mode={v1}"]
    assert precision_args(v1, "6.0.1") == [f"--precision_mode={v1}"]


@pytest.mark.parametrize("v2,v1", sorted(V2_TO_V1.items()))
def test_v2_names_map_to_v1_on_old_or_unknown_cann(v2, v1):
    assert precision_args(v2, "6.0.1") == [f"--precision_mode={v1}"]
    assert precision_args(v2, None) == [f"--precision_mode={v1}"]
    assert precision_args(v2, "9.2.0-beta.2") == [f"--precision_mode_v2={v2}"]
    assert precision_args(v2, None, v2_supported=True) == [f"--precision_mode_v2={v2}"]   # atc --help said so


def test_cann_version_order_and_v2_threshold():
    order = ["5.0.4", "5.1.RC2", "6.0.RC1", "6.0.1", "6.3.RC1", "6.3.RC2", "6.3.RC3", "7.0.RC1", "7.0.0",
             "8.0.RC1", "8.0.RC3", "8.0.0", "8.5.0"]
    assert sorted(order, key=cann_key) == order and len({cann_key(v) for v in order}) == len(order)
    assert cann_key("6.3.RC2.alpha003") == cann_key("6.3.RC2") and cann_key("8.0.rc3") == cann_key("8.0.RC3")
    assert [supports_v2(v) for v in ("7.0.RC1", "6.3.RC2", "6.3.RC2.alpha003", "6.3.RC1", "6.2.RC1", "6.0.1",
                                     "", None, "8.5.0", "latest")] == \
        [True, True, True, False, False, False, False, False, True, False]


def test_precision_choice_states_why():
    assert choose_precision("force_fp16", "8.0.RC3") == ("--precision_mode_v2=fp16", "CANN 8.0.RC3 >= 6.3.RC2")
    assert choose_precision("force_fp16", "6.0.1") == ("--precision_mode=force_fp16", "CANN 6.0.1 < 6.3.RC2")
    assert choose_precision("fp16", None, False) == ("--precision_mode=force_fp16",
                                                     "atc --help does not list --precision_mode_v2")
    assert choose_precision("origin", None) == ("--precision_mode=must_keep_origin_dtype", "CANN version unknown")
    assert choose_precision("allow_fp32_to_fp16", "8.0.RC1") == (
        "--precision_mode=allow_fp32_to_fp16", "allow_fp32_to_fp16 has no --precision_mode_v2 spelling")
    # a v2-only mode is kept for an unknown toolkit (atc.sh checks at run time), refused for a known old one
    assert choose_precision("mixed_hif8", None) == ("--precision_mode_v2=mixed_hif8",
                                                    "mixed_hif8 has no --precision_mode spelling")
    assert spellings("cube_fp16in_fp32out") == ("force_fp32", "cube_fp16in_fp32out")


def test_precision_errors():
    with pytest.raises(ConfigError) as e:
        precision_args("fp8", None)
    assert str(e.value) == ("atc.precision_mode 'fp8' is not an ATC precision mode; use one of force_fp16, force_fp32, "
                            "allow_fp32_to_fp16, must_keep_origin_dtype, allow_mix_precision, allow_mix_precision_fp16, "
                            "allow_mix_precision_bf16, allow_fp32_to_bf16 (or the v2 names fp16, origin, "
                            "cube_fp16in_fp32out, mixed_float16, mixed_bfloat16, cube_hif8, mixed_hif8)")
    with pytest.raises(ConfigError) as e:
        precision_args("mixed_hif8", "6.0.1")
    assert str(e.value) == ("atc.precision_mode 'mixed_hif8' exists only as --precision_mode_v2, which ATC has from "
                            "CANN 6.3.RC2 on (CANN 6.0.1 < 6.3.RC2); use a --precision_mode name or a newer toolkit")
    with pytest.raises(ConfigError, match=r"\(atc --help does not list --precision_mode_v2\)"):
        precision_args("cube_hif8", None, v2_supported=False)


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
            "  --input_format=ND \\\n  \"$PRECISION_FLAG\" \\\n  --keep_dtype=om/keep_dtype.cfg \\\n"
            "  --input_shape=logmel:1,1,-1,64 \\\n  '--dynamic_dims=101;301;1001' \\\n"
            f"  --output=om/{SED}_bs1 \\\n  --log=error\n") in text
    assert "--precision_mode=force_fp16" not in text.split("PRECISION_FLAG=--precision_mode=force_fp16")[1]
    assert 'export ASCEND_SLOG_PRINT_TO_STDOUT="${ASCEND_SLOG_PRINT_TO_STDOUT:-1}"' in text
    assert "eval" not in text
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
    print("ATC start working now, please wait for a moment.")
    if sys.argv[1:] == ["--help"]:
        print("  --precision_mode  ...\\n  --precision_mode_v2  ...")
        raise SystemExit(0)
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    with open(os.path.join(os.path.dirname(__file__), "argv.log"), "a") as f:
        f.write(os.getcwd() + " " + os.environ.get("ASCEND_SLOG_PRINT_TO_STDOUT", "-") + " "
                + " ".join(sys.argv[1:]) + "\\n")
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
        f"{build} 1 --framework=5 --model=model.sim.onnx --soc_version={want} --input_format=ND "
        f"--precision_mode_v2=fp16 --input_shape=logmel:1,1,-1,64 --dynamic_dims=101;301;1001 "
        f"--output=om/{SED}_bs1 --log=error\n")
    assert "atc.sh: precision flag --precision_mode_v2=fp16 (this atc lists --precision_mode_v2)" in p.stdout


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
    assert f"--output=om/{CN}_bs16 --log=error\n" in log
    assert log.startswith("# log settings: ASCEND_SLOG_PRINT_TO_STDOUT=1 (set by make om); --log=error unless")
    assert (tmp_path / "bin" / "argv.log").read_text().count(f"{build} 1 --framework=5") == 2


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
                            f"[ai.onnx::17::STFT]].; see {log} (it holds ATC's error-level log "
                            "(ASCEND_SLOG_PRINT_TO_STDOUT=1 --log=error); --log=info in atc.extra_args gives more); "
                            "pre-flight: `make preflight`")
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


# ---- one atc.sh, any toolkit: tests/fake_atc.py as an old and a new CANN ------------------------------
def toolkit_atc(tmp_path):
    """tests/fake_atc.py as `atc` on PATH; FAKE_ATC_CANN in the environment picks the toolkit it imitates."""
    d = tmp_path / "cann" / "bin"
    d.mkdir(parents=True, exist_ok=True)
    atc = d / "atc"
    atc.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_atc.py"}" "$@"\n')
    atc.chmod(0o755)
    return atc


def script_for(tmp_path, cfg, soc="Ascend310P3"):
    build = tmp_path / "build"
    build.mkdir(exist_ok=True)
    (build / "model.sim.onnx").write_bytes(b"onnx")
    jobs = build_atc_jobs(cfg, "model.sim.onnx", "SOC_VERSION")
    return write_atc_script(jobs, build / "atc.sh", cfg["name"], soc), build


def run_script(tmp_path, script, cann, **env):
    atc = toolkit_atc(tmp_path)
    env = {**os.environ, "PATH": f"{atc.parent}:{os.environ['PATH']}", "FAKE_ATC_CANN": cann, **env}
    env.pop("ASCEND_SLOG_PRINT_TO_STDOUT", None) if "ASCEND_SLOG_PRINT_TO_STDOUT" not in env else None
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("cann,flag", [("5.1.RC2", "--precision_mode=force_fp16"),
                                       ("6.0.1", "--precision_mode=force_fp16"),
                                       ("6.3.RC1", "--precision_mode=force_fp16"),
                                       ("6.3.RC2", "--precision_mode_v2=fp16"),
                                       ("8.0.RC3", "--precision_mode_v2=fp16"),
                                       ("8.5.0", "--precision_mode_v2=fp16")])
def test_one_script_runs_on_old_and_new_toolkits(tmp_path, cann, flag):
    script, build = script_for(tmp_path, convnext_cfg(batch_sizes=[1]))
    p = run_script(tmp_path, script, cann)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ATC run success, welcome to the next use." in p.stdout
    why = "this atc lists" if "_v2" in flag else "this atc does not list"
    assert f"atc.sh: precision flag {flag} ({why} --precision_mode_v2" in p.stdout
    meta = json.loads((build / "om" / f"{CN}_bs1_linux_x86_64.om.json").read_text())
    assert meta["precision"] == flag


def test_the_old_baked_in_v2_flag_fails_on_an_old_toolkit(tmp_path, monkeypatch):
    """What atc.sh used to do (v2 written in where CANN >= 7 was seen) fails on CANN 6.0.1, as the real one does."""
    atc = toolkit_atc(tmp_path)
    monkeypatch.setenv("FAKE_ATC_CANN", "6.0.1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.sim.onnx").write_bytes(b"onnx")
    jobs = build_atc_jobs(convnext_cfg(), "model.sim.onnx", "Ascend310P3", "8.0.RC3")
    assert "--precision_mode_v2=fp16" in jobs[0].argv
    log = tmp_path / "atc.log"
    with pytest.raises(PipelineError) as e:
        run_atc(jobs, tmp_path / "b", log, str(atc), 60)
    assert str(e.value).startswith(f"ATC failed for om/{CN}_bs1: ERROR: unknown command line flag "
                                   "'precision_mode_v2' (this ATC predates --precision_mode_v2, CANN < 6.3.RC2); ")
    assert "exit code 255" in log.read_text()


def test_script_modes_with_one_spelling(tmp_path):
    script, build = script_for(tmp_path, convnext_cfg(batch_sizes=[1], precision_mode="allow_fp32_to_fp16"))
    p = run_script(tmp_path, script, "8.0.RC3")
    assert p.returncode == 0 and "precision flag --precision_mode=allow_fp32_to_fp16 (allow_fp32_to_fp16 has no " \
        "--precision_mode_v2 spelling)" in p.stdout
    (tmp_path / "hif8").mkdir()
    script, build = script_for(tmp_path / "hif8", convnext_cfg(batch_sizes=[1], precision_mode="mixed_hif8"), "SOC_X")
    p = run_script(tmp_path, script, "6.0.1")
    assert p.returncode == 1 and not (build / "om" / f"{CN}_bs1_linux_x86_64.om").exists()
    assert p.stderr.strip() == ("atc.sh: atc.precision_mode mixed_hif8 needs --precision_mode_v2, which this atc "
                                "lacks (CANN 6.3.RC2 or newer has it)")
    p = run_script(tmp_path, script, "8.5.0")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads((build / "om" / f"{CN}_bs1_linux_x86_64.om.json").read_text())["precision"] == \
        "--precision_mode_v2=mixed_hif8"


# ---- ATC's log reaches logs/<model>/atc.log ----------------------------------------------------------
def test_run_atc_brings_the_atc_log_into_atc_log(tmp_path, monkeypatch):
    atc = toolkit_atc(tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.sim.onnx").write_bytes(b"onnx")
    monkeypatch.delenv("ASCEND_SLOG_PRINT_TO_STDOUT", raising=False)
    monkeypatch.setenv("FAKE_ATC_FAIL", "1")
    log = tmp_path / "atc.log"
    with pytest.raises(PipelineError, match=r": E19010: No parser is registered .*it holds ATC's error-level log"):
        run_atc(build_atc_jobs(convnext_cfg(), "model.sim.onnx", "Ascend310P3"), tmp_path / "b", log, str(atc), 60)
    text = log.read_text()
    assert "] onnx parser failed: no parser for op type STFT" in text and "[ERROR] GE(" in text
    assert "[INFO]" not in text                                        # --log=error filters the level
    # the user's own choice wins: info level from extra_args, console logging switched off
    monkeypatch.setenv("ASCEND_SLOG_PRINT_TO_STDOUT", "0")
    with pytest.raises(PipelineError) as e:
        run_atc(build_atc_jobs(convnext_cfg(extra_args=["--log=info"]), "model.sim.onnx", "Ascend310P3"),
                tmp_path / "b", log, str(atc), 60)
    assert ("ATC's --log=info log is in plog files under $HOME/ascend/log/debug/plog/ (or "
            "$ASCEND_PROCESS_LOG_PATH/debug/plog/); ASCEND_SLOG_PRINT_TO_STDOUT=1 puts it in this log") in str(e.value)
    text = log.read_text()
    command = next(ln for ln in text.splitlines() if ln.startswith("$ cd "))
    assert "[ERROR] GE(" not in text and command.endswith(f"--output=om/{CN}_bs1 --log=info")
    assert text.startswith("# log settings: ASCEND_SLOG_PRINT_TO_STDOUT=0;")


def test_make_om_decides_the_flag_for_its_toolkit(tmp_path, monkeypatch):
    from convert.ascend import precision_flag

    atc = str(toolkit_atc(tmp_path))
    cfg = convnext_cfg()
    assert precision_flag(cfg, "6.3.RC2", "/nonexistent/atc") == (None, "--precision_mode_v2=fp16",
                                                                    "CANN 6.3.RC2 >= 6.3.RC2")
    monkeypatch.setenv("FAKE_ATC_CANN", "6.0.1")                        # version unknown: ask atc --help
    assert precision_flag(cfg, None, atc) == (False, "--precision_mode=force_fp16",
                                              "atc --help does not list --precision_mode_v2")
    monkeypatch.setenv("FAKE_ATC_CANN", "8.0.RC3")
    assert precision_flag(cfg, None, atc) == (True, "--precision_mode_v2=fp16", "atc --help lists --precision_mode_v2")
    assert precision_flag(cfg, None, "/nonexistent/atc") == (None, "--precision_mode=force_fp16",
                                                             "CANN version unknown")


def test_a_fixed_first_axis_is_taken_as_written_and_needs_one_batch_size():
    """silero-vad's carried LSTM state is [2, batch, 128]: its first axis is not the batch."""
    from convert.atc import input_shape

    raw = {"name": "vad", "family": "silero_vad",
           "inputs": [{"name": "input", "shape": [1, 576]}, {"name": "state", "shape": [2, 1, 128]}],
           "outputs": [{"name": "prob", "shape": [1, 1]}], "export": {"parity_cases": []},
           "atc": {"input_format": "ND", "batch_sizes": [1]}}
    cfg = {**validate(raw, SCHEMA, "", "vad.yaml"), "_source": "vad.yaml"}
    assert input_shape(cfg, 1) == ("input:1,576;state:2,1,128", 0)
    cfg["atc"]["batch_sizes"] = [1, 4]
    with pytest.raises(ConfigError, match=r"\['input', 'state'\] have a fixed first axis.*atc.batch_sizes: \[1\]"):
        input_shape(cfg, 4)
