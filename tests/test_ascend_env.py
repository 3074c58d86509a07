"""Environment detection without Ascend hardware: npu-smi parsing on captured outputs (tests/data/npu_smi/),
--soc_version derivation (A3 board query included), CANN discovery in fake install trees, ais_bench flavour
detection on fake packages, and the doctor report."""
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

import ais_bench_double as double
from pipeline import ascend_env as ae
from convert import doctor

DATA = Path(__file__).parent / "data"
CN = "convnext_base_clip_laion2b"
SMI = DATA / "npu_smi"


def chips(name):
    return ae.parse_npu_smi_info((SMI / name).read_text())


def test_310p3_duo_two_chips_on_one_card():
    info = chips("310p3_duo.txt")
    assert (info["version"], info["driver_version"]) == ("24.1.rc2", "24.1.rc2")
    assert [(c["npu"], c["chip"], c["device"], c["name"], c["health"], c["power_w"], c["temp_c"], c["bus_id"],
             c["ddr_used_mb"], c["ddr_total_mb"], "hbm_used_mb" in c) for c in info["chips"]] == [
        (1, 0, 0, "310P3", "OK", None, 59.0, "0000:01:00.0", 1397, 44280, False),
        (1, 1, 1, "310P3", "OK", None, 58.0, "0000:01:00.0", 1520, 43693, False)]


def test_910b_hbm_and_the_process_table_is_ignored():
    info = chips("910b4-1_procs.txt")
    assert info["version"] == "25.2.2"
    assert [(c["npu"], c["chip"], c["device"], c["name"], c["power_w"], c["ddr_used_mb"], c["hbm_used_mb"],
             c["hbm_total_mb"], c["memory_used_mb"]) for c in info["chips"]] == [
        (0, 0, None, "910B4-1", 78.2, 0, 61825, 65536, 61825),
        (1, 0, None, "910B4-1", 77.9, 0, 61825, 65536, 61825)]
    assert ae.soc_from_name(info["chips"][0]["name"]) == "Ascend910B4-1"


def test_collapsed_spacing_and_alarm_health():
    info = chips("310b1_collapsed.txt")
    assert info["version"] == "23.0.5"                 # not the word after `npu-smi` in the shell prompt line
    assert [(c["npu"], c["chip"], c["name"], c["health"], c["memory_used_mb"], c["memory_total_mb"])
            for c in info["chips"]] == [(0, 0, "310B1", "Alarm", 600, 7578), (1, 0, "310B1", "Alarm", 597, 7578)]
    assert ae.soc_from_name("310B1") == "Ascend310B1"


def test_a3_table_needs_the_board_query():
    info = chips("a3.txt")
    assert [(c["npu"], c["chip"], c["device"], c["name"], c["hbm_used_mb"]) for c in info["chips"]] == [
        (0, 0, 0, "Ascend910", 3419), (0, 1, 1, "Ascend910", 2874)]
    assert ae.soc_from_name("Ascend910") is None
    board = ae.parse_board_info((SMI / "a3_board_doc.txt").read_text())
    assert board == {"NPU ID": "0", "NPU Name": "9392", "Chip ID": "0", "Chip Name": "Ascend910"}
    assert ae.soc_from_name("Ascend910", board) == "Ascend910_9392"


def test_soc_names():
    a2 = ae.parse_board_info((SMI / "a2_board_doc.txt").read_text())
    assert ae.soc_from_name("910B4", a2) == "Ascend910B4"
    assert [ae.soc_from_name(n) for n in ("310P3", "910B3", "Ascend 910B4", "310", "Ascend950PR", "")] == [
        "Ascend310P3", "Ascend910B3", "Ascend910B4", "Ascend310", None, None]
    assert ae.soc_from_name("Ascend950PR", {"Chip Name": "Ascend950PR", "NPU Name": "9572"}) == "Ascend950PR_9572"


def fake_npu_smi(tmp_path, table, board=None):
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    p = d / "npu-smi"
    p.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import sys
        open({str(tmp_path / 'calls.log')!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
        if sys.argv[1:] == ["info"]:
            print(open({str(SMI / table)!r}).read())
        elif sys.argv[1:3] == ["info", "-t"] and {board!r}:
            print(open({str(SMI / (board or 'x'))!r}).read())
        else:
            sys.exit(3)
    """))
    p.chmod(0o755)
    return str(p)


def test_probe_npus_a3_runs_the_board_query(tmp_path):
    res = ae.probe_npus(fake_npu_smi(tmp_path, "a3.txt", "a3_board_doc.txt"))
    assert res["soc_version"] == "Ascend910_9392" and len(res["chips"]) == 2 and res["error"] is None
    assert (tmp_path / "calls.log").read_text() == "info\ninfo -t board -i 0 -c 0\n"


def test_probe_npus_310p_no_board_query(tmp_path):
    res = ae.probe_npus(fake_npu_smi(tmp_path, "310p3.txt"))
    assert (res["soc_version"], res["npu_smi_version"], res["driver_version"]) == ("Ascend310P3", "22.0.0", "22.0.2")
    assert (tmp_path / "calls.log").read_text() == "info\n"


def test_probe_without_npu_smi(monkeypatch):
    monkeypatch.setattr(ae.shutil, "which", lambda name: None)
    assert ae.probe_npus() == {"npu_smi": None, "npu_smi_version": None, "driver_version": None, "chips": [],
                               "soc_version": None, "error": None}


# ---- CANN discovery --------------------------------------------------------------------------------
def classic_tree(root: Path, version="8.3.RC2") -> Path:
    """/usr/local/Ascend/ascend-toolkit/{set_env.sh, latest -> <version>/, <version>/aarch64-linux/...info}."""
    tk = root / "Ascend" / "ascend-toolkit"
    (tk / version / "aarch64-linux").mkdir(parents=True)
    shutil.copy(DATA / "cann" / "ascend_toolkit_install.info", tk / version / "aarch64-linux")
    (tk / "latest").symlink_to(version)
    (tk / "set_env.sh").write_text("export ASCEND_TOOLKIT_HOME=...\n")
    return tk


def test_classic_layout_via_set_env_and_latest(tmp_path, monkeypatch):
    tk = classic_tree(tmp_path)
    monkeypatch.setattr(ae, "SET_ENV_CANDIDATES", (str(tmp_path / "nowhere/set_env.sh"), str(tk / "set_env.sh")))
    assert ae.find_toolkit({}) == {"home": str(tk / "latest"), "set_env": str(tk / "set_env.sh"), "version": "8.3.RC2"}


def test_env_var_wins_and_version_cfg(tmp_path, monkeypatch):
    home = tmp_path / "custom"
    home.mkdir()
    shutil.copy(DATA / "cann" / "version.cfg", home)
    monkeypatch.setattr(ae, "SET_ENV_CANDIDATES", ())
    assert ae.find_toolkit({"ASCEND_HOME_PATH": str(home)})["version"] == "8.0.RC2"
    assert ae.find_toolkit({"ASCEND_TOOLKIT_HOME": str(home), "ASCEND_HOME_PATH": "/x"})["home"] == str(home)
    assert ae.find_toolkit({}) == {"home": None, "set_env": None, "version": None}


def test_new_layout_versioned_folder_under_home(tmp_path, monkeypatch):
    """Default candidates with HOME pointing at a fake tree: ~/Ascend/cann-8.5.0/set_env.sh, version from the name."""
    (tmp_path / "Ascend" / "cann-8.5.0").mkdir(parents=True)
    (tmp_path / "Ascend" / "cann-8.5.0" / "set_env.sh").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path))
    if any(Path(p).exists() for p in ("/usr/local/Ascend",)):
        pytest.skip("a real /usr/local/Ascend install would be found first")
    tk = ae.find_toolkit({})
    assert tk == {"home": str(tmp_path / "Ascend" / "cann-8.5.0"),
                  "set_env": str(tmp_path / "Ascend" / "cann-8.5.0" / "set_env.sh"), "version": "8.5.0"}


def test_version_file_parsers():
    assert ae.parse_install_info((DATA / "cann" / "ascend_toolkit_install.info").read_text()) == "8.3.RC2"
    assert ae.parse_version_cfg((DATA / "cann" / "version.cfg").read_text()) == "8.0.RC2"
    assert ae.parse_install_info("package_name=Ascend-cann-toolkit\nversion=9.2.0-beta.2\n") == "9.2.0-beta.2"
    assert ae.parse_version_cfg("runtime_running_version=[7.7.T20.0.B210:8.1.RC1]\n") == "8.1.RC1"


def test_find_atc_inside_the_toolkit_and_on_path(tmp_path, monkeypatch):
    tk = classic_tree(tmp_path)
    atc = tk / "8.3.RC2" / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\n")
    atc.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert ae.find_atc({"home": str(tk / "latest")}) == {"path": str(tk / "latest" / "bin" / "atc"),
                                                          "version": "8.3.RC2", "on_path": False}
    monkeypatch.setenv("PATH", f"{atc.parent}:/usr/bin:/bin")
    assert ae.find_atc(None) == {"path": str(atc), "version": "8.3.RC2", "on_path": True}


# ---- Python packages ------------------------------------------------------------------------------
@pytest.fixture
def fake_ais_bench(tmp_path, monkeypatch):
    def install(flavour):
        root = tmp_path / f"pkgs{flavour}"
        pkg = root / "ais_bench" / "infer"
        pkg.mkdir(parents=True)
        (root / "ais_bench" / "__init__.py").write_text("")
        (pkg / "__init__.py").write_text("")
        (pkg / "interface.py").write_text("import ais_bench_double as d  # test double\n"
                                          f"InferSession = d.session_class({flavour!r})\n")
        if flavour == "2025":
            (pkg / "interface_check.py").write_text("")
        for m in [m for m in sys.modules if m == "ais_bench" or m.startswith("ais_bench.")]:
            monkeypatch.delitem(sys.modules, m)
        monkeypatch.syspath_prepend(str(root))
        return pkg
    yield install
    for m in [m for m in sys.modules if m.startswith("ais_bench.") or m == "ais_bench"]:
        del sys.modules[m]


@pytest.mark.parametrize("generation,label,era,reset,free,finalize", [
    ("2023-early", "sumary, infer without dymbatch", "before 2023-09-08", "reset_sumaryinfo", False, "instance"),
    ("2023-late", "sumary, dymbatch", "2023-09-08 .. 2023-10", "reset_sumaryinfo", True, "static"),
    ("2024", "summary, dymbatch", "2023-11 .. 2024-06", "reset_summaryinfo", True, "static"),
    ("2025", "summary, dymbatch, interface_check, list-only feeds", "2024-11 or later", "reset_summaryinfo", True,
     "static")])
def test_ais_bench_flavour_from_features(fake_ais_bench, generation, label, era, reset, free, finalize):
    """The label is built from what the installed InferSession has (class introspection, no NPU call)."""
    fake_ais_bench(generation)
    got = ae.ais_bench_flavour()
    assert (got["importable"], got["flavour"], got["era"], got["api"]["reset"], got["has_free_resource"],
            got["finalize"]) == (True, label, era, reset, free, finalize)
    assert got["has_summary"] == (got["api"]["summary"] == "summary") and got["has_sumary_only"] != got["has_summary"]
    assert got["api"]["set_dynamic_batchsize"] is True
    assert got["api"]["infer_out_array"] is (generation != "2023-early")       # 9d6da90: infer() has no out_array


def test_label_follows_features_not_years(fake_ais_bench, monkeypatch):
    """A 2024-06..11 install (interface_check, tuples still accepted) and a source-less 2023 build."""
    (fake_ais_bench("2024") / "interface_check.py").write_text("")
    got = ae.ais_bench_flavour()
    assert (got["flavour"], got["era"]) == ("summary, dymbatch, interface_check", "2024-06 .. 2024-11")
    monkeypatch.setattr(ae, "_source", lambda func: None)          # e.g. only .pyc files installed
    api = ae.ais_bench_api(double.session_class("2023-early"))
    assert (api["infer_dymbatch"], api["list_only_feeds"]) == (None, None)
    assert ae.api_label(api, False) == "sumary, dymbatch unknown"
    assert ae.ais_bench_api(double.session_class("2023-late"))["infer_dymbatch"] is True   # _dymbatch_prepare


def test_live_session_features(tmp_path):
    """On a live session the instance's infer_mode_switch is read (what the runner does per .om)."""
    from test_ais_runner import write_om

    om = str(write_om(tmp_path, "m_bs1", [1, 3, 4, 4]))
    for gen, dymbatch in (("2023-early", False), ("2023-late", True), ("2025", True)):
        sess = double.session_class(gen)(0, om)
        assert ae.ais_bench_api(sess)["infer_dymbatch"] is dymbatch
    sess.infer_mode_switch = {"static": None}
    assert ae.ais_bench_api(sess)["infer_dymbatch"] is False


def test_ais_bench_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "ais_bench", None)
    got = ae.ais_bench_flavour()
    assert got["importable"] is False and got["import_error"].startswith("ModuleNotFoundError")


def test_torch_npu_from_metadata_only(monkeypatch):
    monkeypatch.setattr(ae, "_dist_version", lambda *names: "2.1.0.post8" if "torch_npu" in names else None)
    assert ae.torch_npu_info() == {"version": "2.1.0.post8"}
    assert "torch" not in ae.__dict__                  # detection never imports torch


# ---- doctor -----------------------------------------------------------------------------------------
def test_doctor_reports_missing_pieces_and_writes_env_info(isolated_dirs, monkeypatch, capsys):
    env = {"toolkit": {"home": None, "set_env": None, "version": None},
           "atc": {"path": None, "version": None, "on_path": False},
           "npu": {"npu_smi": None, "npu_smi_version": None, "driver_version": None, "chips": [],
                   "soc_version": None, "error": None},
           "ais_bench": {"ais_bench": None, "aclruntime": None, "importable": False, "flavour": None,
                         "import_error": "ModuleNotFoundError: No module named 'ais_bench'"},
           "torch_npu": {"version": None}}
    monkeypatch.setattr(doctor, "collect", lambda: env)
    assert doctor.main(["--model", CN]) == 0
    out = capsys.readouterr().out.splitlines()
    missing = [line for line in out if line.startswith("MISSING | ")]
    assert [m.split(":")[0] for m in missing] == ["MISSING | CANN toolkit (atc, ACL runtime)",
                                                  "MISSING | npu-smi / NPU driver",
                                                  "MISSING | ais_bench/aclruntime (ModuleNotFoundError"]
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in missing[0]
    assert ("pip3 install -v 'git+https://gitee.com/ascend/tools.git#egg=aclruntime&subdirectory="
            "ais-bench_workload/tool/ais_bench/backend' && pip3 install -v 'git+https://gitee.com/ascend/tools.git"
            "#egg=ais_bench&subdirectory=ais-bench_workload/tool/ais_bench'") in missing[2]
    assert any(line.startswith(f"doctor | {CN}: BACKEND=auto: make infer / compare / bench run ") for line in out)
    data = json.loads((isolated_dirs / "results" / "env_info.json").read_text())
    assert list(data)[:2] == ["schema_version", "stage"] and data["stage"] == "doctor"
    assert data["missing"] == missing and data["ready_for_om"] is False and data["toolkit"]["version"] is None


def test_doctor_on_a_full_ascend_host(isolated_dirs, monkeypatch, capsys, tmp_path):
    npu = ae.probe_npus(fake_npu_smi(tmp_path, "910b3.txt"))
    env = {"toolkit": {"home": "/usr/local/Ascend/ascend-toolkit/latest", "set_env": "/s.sh", "version": "8.0.RC3"},
           "atc": {"path": "/usr/local/Ascend/ascend-toolkit/latest/bin/atc", "version": "8.0.RC3", "on_path": True},
           "npu": npu, "torch_npu": {"version": None},
           "ais_bench": {"ais_bench": "0.0.2", "aclruntime": "0.0.2", "importable": True,
                         "flavour": "summary, dymbatch, interface_check, list-only feeds",
                         "has_summary": True, "has_sumary_only": False, "has_free_resource": True,
                         "has_reset_summaryinfo": True, "finalize": "static"}}
    monkeypatch.setattr(doctor, "collect", lambda: env)
    assert doctor.main(["--model", CN]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "doctor | NPU 1 chip 0: 910B3, health Warning, memory 0 / 0 MB, HBM 3337 / 65536 MB" in out
    assert "doctor | --soc_version: Ascend910B3 (make om uses it; override with SOC=...)" in out
    assert ("doctor | ais_bench 0.0.2 / aclruntime 0.0.2: API summary, dymbatch, interface_check, list-only feeds "
            "(summary(), free_resource yes, finalize static)") in out
    assert not [line for line in out if line.startswith("MISSING")]
    assert double.FLAVOUR["name"] == "2025"              # the double's default is untouched by these tests
