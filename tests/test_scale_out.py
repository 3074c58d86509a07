"""Resumable streaming runs and ENGINE=ray: identical outputs, faults (a killed worker, a killed driver, bad
files), logical NPUs with the ais_bench double inside the actors, and the one-line errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_env

SED = "cnn8rnn_audioset_sed"
HERE = Path(__file__).parent


def stage(args, env, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """CNN8RNN exported once (stand-in weights), and a folder of 24 short generated clips."""
    tmp = tmp_path_factory.mktemp("scale")
    env = run_env(tmp)
    p = stage(["export", "--model", SED], env)
    assert p.returncode == 0, p.stderr[-2000:]
    code = ("import sys; from pathlib import Path; from pipeline.config import load_config, load_family; "
            f"cfg = load_config('{SED}'); fam = load_family(cfg['family']); "
            "fam.generate_sources(cfg, Path(sys.argv[1]), count=24, seed=5)")
    subprocess.run([sys.executable, "-c", code, str(tmp / "clips")], cwd=ROOT, env=env, check=True)
    return tmp


def fresh(exported, tmp_path, name):
    """A build tree holding the exported model only, with its own results and logs."""
    root = tmp_path / name
    src = exported / "build" / SED
    dst = root / "build" / SED
    dst.mkdir(parents=True)
    for f in ("model.sim.onnx", "weights.json", "frontend.npz"):
        shutil.copy2(src / f, dst / f)
    return run_env(root), root


def arrays(root: Path, backend="ort-cpu") -> dict:
    base = root / "build" / SED / "outputs" / backend
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*.npy"))}


def journal_blocks(root: Path, backend="ort-cpu") -> int:
    j = root / "build" / SED / "infer-work" / backend / "journal.jsonl"
    return max(0, len(j.read_bytes().splitlines()) - 1) if j.exists() else 0


@pytest.fixture(scope="module")
def local_run(exported, tmp_path_factory):
    env, root = fresh(exported, tmp_path_factory.mktemp("local"), "local")
    p = stage(["run.infer", "--model", SED, "--backend", "ort-cpu", "--input", str(exported / "clips")], env)
    assert p.returncode == 0, p.stderr[-2000:]
    return root


@pytest.mark.e2e
def test_results_stream_to_jsonl(local_run):
    res = local_run / "results" / SED
    doc = json.loads((res / "inference_result.json").read_text())
    lines = [json.loads(x) for x in (res / "inference_result.jsonl").read_text().splitlines()]
    assert doc["samples_file"] == "inference_result.jsonl" and "samples" not in doc
    assert len(lines) == 24 == doc["sources_ok"] and [r["index"] for r in lines] == list(range(24))
    assert doc["first_sample"] == lines[0] and doc["failed_count"] == 0
    assert doc["timing"]["real_time_factor"] > 0


@pytest.mark.e2e
def test_killed_driver_resumes_with_identical_outputs(exported, local_run, tmp_path):
    env, root = fresh(exported, tmp_path, "killed")
    argv = [sys.executable, "-m", "run.infer", "--model", SED, "--backend", "ort-cpu", "--input", str(exported / "clips")]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and journal_blocks(root) < 8 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = journal_blocks(root)
    assert 8 <= killed_at < 24, killed_at
    # a kill in the middle of a write leaves the writer's temp file (what `make dataset` once carried into build/)
    work = root / "build" / SED / "infer-work" / "ort-cpu"
    (work / "inputs" / ".00023_000.x.npy.k1ll3d.tmp").write_bytes(b"half")
    p = stage(["run.infer", "--model", SED, "--backend", "ort-cpu", "--input", str(exported / "clips")], env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"resuming: {killed_at} of 24 block(s)" in p.stdout + p.stderr
    assert "removed the half-written files of the killed run" in p.stdout + p.stderr
    assert not list((root / "build" / SED).rglob("*.tmp"))
    doc = json.loads((root / "results" / SED / "inference_result.json").read_text())
    assert doc["timing"]["resumed_blocks"] == killed_at and doc["sources_ok"] == 24
    assert arrays(root) == arrays(local_run)                   # byte-identical to the uninterrupted run
    manifest = lambda r: json.loads((r / "build" / SED / "inputs" / "manifest.json").read_text())["items"]  # noqa: E731
    assert manifest(root) == manifest(local_run)


@pytest.mark.e2e
def test_journal_of_another_config_is_not_reused(exported, tmp_path):
    env, root = fresh(exported, tmp_path, "other")
    work = root / "build" / SED / "infer-work" / "ort-cpu"
    work.mkdir(parents=True)
    (work / "journal.jsonl").write_text(json.dumps({"run_key": "another run"}) + "\n" +
                                        json.dumps({"block": 0, "records": [], "stats": {}}) + "\n")
    clip = sorted((exported / "clips").iterdir())[0]
    p = stage(["run.infer", "--model", SED, "--backend", "ort-cpu", "--input", str(clip)], env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "belongs to another run" in p.stdout + p.stderr and "starting clean" in p.stdout + p.stderr


@pytest.mark.e2e
def test_bad_file_among_good_ones_is_listed_not_fatal(exported, tmp_path):
    env, root = fresh(exported, tmp_path, "bad")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for clip in sorted((exported / "clips").iterdir())[:4]:
        shutil.copy2(clip, folder / clip.name)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    p = stage(["run.infer", "--model", SED, "--backend", "ort-cpu", "--input", str(folder)], env)
    doc = json.loads((root / "results" / SED / "inference_result.json").read_text())
    assert doc["failed_count"] == 1 and doc["sources_ok"] == 4
    assert doc["failed"][0]["source"].endswith("broken.wav") and "cannot be decoded" in doc["failed"][0]["error"]
    # 1 of 5 is above the default limit (1%): the run finishes, results are written, the exit is non-zero
    assert p.returncode == 2 and "ERROR | 1 of 5 input file(s) failed" in p.stderr
    assert p.stderr.count("ERROR |") == 1 and "Traceback" not in p.stderr


# ---- ENGINE=ray -----------------------------------------------------------------------------------------
ray = pytest.importorskip("ray")


@pytest.mark.e2e
def test_ray_engine_matches_local_and_survives_a_killed_worker(exported, local_run, tmp_path):
    env, root = fresh(exported, tmp_path, "ray")
    env = {**env, "ENGINE": "ray", "WORKERS": "2", "RAY_DRIVER_BLOCKS": "0"}   # every block on the actors
    argv = [sys.executable, "-m", "run.infer", "--model", SED, "--backend", "ort-cpu", "--input", str(exported / "clips")]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    actors = root / "build" / SED / "infer-work" / "ort-cpu" / "actors"
    deadline, killed = time.time() + 300, None
    while proc.poll() is None and time.time() < deadline:
        pids = sorted(int(p.stem) for p in actors.glob("*.json")) if actors.exists() else []
        if pids and journal_blocks(root) >= 2:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert killed is not None, "no actor was seen running before the run ended"
    doc = json.loads((root / "results" / SED / "inference_result.json").read_text())
    assert doc["engine"]["engine"] == "ray" and doc["sources_ok"] == 24 and doc["failed_count"] == 0
    lines = (root / "results" / SED / "inference_result.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == list(range(24))       # no item lost or listed twice
    assert arrays(root) == arrays(local_run)                                   # byte-identical on ort-cpu


def fake_ais_bench(tmp_path: Path) -> str:
    pkg = tmp_path / "fakepkgs" / "ais_bench" / "infer"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "interface.py").write_text("from ais_bench_double import FakeInferSession as InferSession  # test double\n")
    return f"{tmp_path / 'fakepkgs'}:{HERE}"


@pytest.mark.e2e
def test_ray_npu_actors_each_see_their_own_device(exported, tmp_path):
    """Logical NPUs (RAY_NUM_NPUS=2), the fake atc and the ais_bench double: each actor opens device 0."""
    env, root = fresh(exported, tmp_path, "npu")
    atc_dir = tmp_path / "bin"
    atc_dir.mkdir()
    atc = atc_dir / "atc"
    atc.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / 'fake_atc.py'} \"$@\"\n")
    atc.chmod(0o755)
    env.update(PATH=f"{atc_dir}:{os.environ['PATH']}", PYTHONPATH=fake_ais_bench(tmp_path), SOC="Ascend310P3")
    p = stage(["convert", "--model", SED, "--backend", "om"], env)
    assert p.returncode == 0, p.stderr[-2000:]
    clips = sorted((exported / "clips").iterdir())[:4]
    folder = tmp_path / "four"
    folder.mkdir()
    for c in clips:
        shutil.copy2(c, folder / c.name)
    env.update(ENGINE="ray", WORKERS="2", RAY_NUM_NPUS="2")
    p = stage(["run.infer", "--model", SED, "--backend", "om", "--input", str(folder)], env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc = json.loads((root / "results" / SED / "inference_result.json").read_text())
    actors = doc["engine"]["actors"]
    assert doc["backend"] == "om" and doc["sources_ok"] == 4
    assert all(a["device_id"] == 0 and a["runner_device"] == "npu:0" for a in actors)
    assert {a["ascend_rt_visible_devices"] for a in actors} <= {"0", "1"} and all(a["ascend_rt_visible_devices"] for a in actors)
    p = stage(["run.infer", "--model", SED, "--backend", "om", "--input", str(folder)], {**env, "WORKERS": "3"})
    assert p.returncode == 2 and "WORKERS=3 but the Ray cluster has 2 NPU(s)" in p.stderr


@pytest.mark.parametrize("extra, message", [
    ({"WORKERS": "0"}, "WORKERS=0: give a positive number"),
    ({"RAY_ADDRESS": "127.0.0.1:9"}, "RAY_ADDRESS 127.0.0.1:9 is unreachable"),
])
@pytest.mark.e2e
def test_ray_bad_settings_are_one_line(exported, tmp_path, extra, message):
    env, _ = fresh(exported, tmp_path, "bad-ray")
    clip = sorted((exported / "clips").iterdir())[0]
    t0 = time.time()
    p = stage(["run.infer", "--model", SED, "--backend", "ort-cpu", "--input", str(clip)],
              {**env, "ENGINE": "ray", **extra}, timeout=120)
    assert p.returncode == 2 and message in p.stderr and p.stderr.count("ERROR |") == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and time.time() - t0 < 60


@pytest.mark.e2e
def test_ray_missing_is_one_line_with_the_install_command(exported, tmp_path):
    env, _ = fresh(exported, tmp_path, "no-ray")
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    clip = sorted((exported / "clips").iterdir())[0]
    p = stage(["run.infer", "--model", SED, "--backend", "ort-cpu", "--input", str(clip)],
              {**env, "ENGINE": "ray", "PYTHONPATH": str(tmp_path / "shadow")})
    assert p.returncode == 2 and "ENGINE=ray needs Ray Data, which is not installed" in p.stderr
    assert "pip install 'ray[data]==2.60.0'" in p.stderr


def test_default_path_never_imports_ray():
    code = ("import sys, run.infer, compare.__main__, dataset.__main__; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_same_outputs_sees_a_changed_byte_and_ignores_run_folders(tmp_path):
    from dataset.runs import same_outputs

    def tree(root: Path, value: float):
        out = root / "build" / SED / "outputs" / "ort-cpu" / "items"
        out.mkdir(parents=True)
        np.save(out / "00000_000.clipwise_output.npy", np.array([value], np.float32))
        (root / "build" / SED / "inputs").mkdir(parents=True)
        (root / "build" / SED / "inputs" / "manifest.json").write_text(json.dumps({"sources": [str(root / "in/a.wav")]}))
        res = root / "results" / SED
        res.mkdir(parents=True)
        (res / "inference_result.jsonl").write_text(json.dumps({"source": str(root / "in/a.wav"),
                                                                "summary": {"real_time_factor": value}}) + "\n")

    tree(tmp_path / "a", 1.0)
    tree(tmp_path / "b", 1.0)
    assert same_outputs(tmp_path / "a", tmp_path / "b", SED, "ort-cpu")["identical"]
    tree(tmp_path / "c", 1.0000001)
    diff = same_outputs(tmp_path / "a", tmp_path / "c", SED, "ort-cpu")
    assert not diff["identical"] and diff["differ"] == [f"build/{SED}/outputs/ort-cpu/items/00000_000.clipwise_output.npy"]
