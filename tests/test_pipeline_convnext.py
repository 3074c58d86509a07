"""End to end through make, as a user runs it, in a temp build/results/logs tree."""
import json
import subprocess

import numpy as np
import pytest

from conftest import ROOT, run_env
from convert import aipp
from pipeline.config import load_config

MODEL = "convnext_base_clip_laion2b"
STAGES = ("-m export", "-m convert", "-m run.infer", "-m compare", "-m run.bench")
pytestmark = pytest.mark.e2e                 # `make all` per module: make check skips it


def make(tmp, *args, **env_extra):
    env = run_env(tmp)
    env.update(env_extra)
    return subprocess.run(["make", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    first = make(tmp, "all", f"MODEL={MODEL}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return tmp, first


def load(tmp, name):
    return json.loads((tmp / "results" / MODEL / name).read_text())


def infer_samples(tmp) -> list[dict]:
    """The per-source results of make infer (inference_result.jsonl, or the older inline list)."""
    inf = load(tmp, "inference_result.json")
    if "samples_file" in inf:
        lines = (tmp / "results" / MODEL / inf["samples_file"]).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    return inf["samples"]


def test_all_stages_ran_and_passed(run):
    tmp, first = run
    for stage in STAGES:
        assert stage in first.stdout
    assert f"PASSED | {MODEL} embedding: ort-fp16 vs ort-cpu fp32" in first.stdout
    assert "no Ascend toolchain here: the stages use ort-fp16" in first.stdout


def test_export_report(run):
    rep = load(run[0], "export.json")
    assert rep["opset"] == 17 and rep["parity"]["verdict"] == "PASSED"
    assert rep["parity"]["worst"] < 1e-5
    assert rep["weights"]["kind"] == "stand-in" and rep["weights"]["seed"] == 0 and "BatchNorm" in rep["weights"]["rule"]
    assert [a["path"].endswith("preprocess.json") for a in rep["artifacts"]] == [True]   # timm's data config
    pre = json.loads((run[0] / "build" / MODEL / "preprocess.json").read_text())
    assert pre["data_config"]["input_size"] == [3, 256, 256] and pre["labels"] is None
    assert rep["onnx_simplified"]["op_types"]["Conv"] == 40            # stem + 36 dw + 3 downsample
    assert len(rep["onnx_simplified"]["sha256"]) == 64
    assert rep["schema_version"] == 1


def test_accuracy_report(run):
    rep = load(run[0], "accuracy_eval.json")
    assert rep["verdict"] == "PASSED"
    s = rep["outputs"]["embedding"]["summary"]
    assert s["samples"] == 6 and s["failed_samples"] == 0
    assert 1e-5 < s["worst_rel_l2"] < 0.01          # fp16 error is visible, and inside the gate
    assert s["min_cosine"] >= 0.9999
    assert rep["target"]["backend"] == "ort-fp16" and rep["target"]["device"] == "cpu"
    assert (run[0] / "logs" / MODEL / "accuracy_eval.log").read_text().count("PASSED |") == 2


def test_inference_and_performance_reports(run):
    inf = load(run[0], "inference_result.json")
    assert inf["backend"] == "ort-fp16" and inf["device"] == "cpu" and inf["weights"]["kind"] == "stand-in"
    samples = infer_samples(run[0])
    assert len(samples) == 6 and all(s["summary"]["embedding_dim"] == 640 for s in samples)
    perf = load(run[0], "performance_eval.json")
    assert [r["batch_size"] for r in perf["results"]] == [1, 4]
    for r in perf["results"]:
        lat = r["latency_ms"]
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        runs = perf["method"]["measured_runs"]
        assert r["throughput_samples_per_s"] == pytest.approx(r["batch_size"] * runs / r["elapsed_s"])
        assert r["torch_eager"]["throughput_samples_per_s"] > 0 and r["speedup_vs_torch_eager"] > 0
    assert perf["infer_pipeline"]["items"] == 24 and "ratio_to_model_only" in perf["infer_pipeline"]   # bench.pipeline_sources


def test_second_run_does_nothing(run):
    again = make(run[0], "all", f"MODEL={MODEL}")
    assert again.returncode == 0
    assert not [s for s in STAGES if s in again.stdout], again.stdout


def one_error_line(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("ERROR |")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_bad_inputs_fail_cleanly(run, tmp_path):
    tmp = run[0]
    result = tmp / "results" / MODEL / "inference_result.json"
    before = result.read_bytes()
    (tmp_path / "cat.jpg").write_text("not an image")
    line = one_error_line(make(tmp, "infer", f"MODEL={MODEL}", f"INPUT={tmp_path / 'cat.jpg'}"))
    assert "cat.jpg is not an image Pillow can read" in line
    line = one_error_line(make(tmp, "infer", f"MODEL={MODEL}", f"INPUT={tmp_path / 'missing'}"))
    assert "does not exist; give an image file or a folder of images" in line
    assert result.read_bytes() == before                              # no half-written result
    assert not list((tmp / "build" / MODEL).glob("*.staging"))


def test_unknown_model_backend_and_missing_atc(run):
    p = make(run[0], "export", "MODEL=resnet9")
    assert p.returncode != 0 and "unknown MODEL 'resnet9'; available models:" in p.stderr
    p = make(run[0], "om", f"MODEL={MODEL}", "BACKEND=tpu")
    assert p.returncode != 0 and "unknown BACKEND 'tpu'; use one of: auto om ort-cann ort-fp16 ort-cpu" in p.stderr
    line = one_error_line(make(run[0], "om", f"MODEL={MODEL}", "BACKEND=om"))
    assert "BACKEND=om needs ATC" in line and "set_env.sh" in line


def test_wrong_weights_keep_previous_export(run, tmp_path, copy_of):
    import torch

    tree = copy_of(run[0])                  # the weights stamp changes there, not in the tree the next tests use
    onnx_path = tree / "build" / MODEL / "model.sim.onnx"
    before = onnx_path.stat().st_mtime_ns
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "pytorch_model.bin")
    line = one_error_line(make(tree, "export", f"MODEL={MODEL}", f"WEIGHTS={tmp_path / 'pytorch_model.bin'}"))
    assert "does not fit convnext_base" in line and "missing keys" in line
    assert onnx_path.stat().st_mtime_ns == before


def test_known_weights_through_onnx(run, tmp_path, copy_of):
    """A timm model with known weights -> safetensors -> make export/infer (fp32 target) -> same embedding."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from models.timm_image import torch_model as tm
    from pipeline.config import load_config
    from pipeline.metrics import rel_l2

    cfg = load_config(MODEL)
    model = tm.build(cfg)
    tm.apply_standin(model, cfg, seed=11)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(imgs / "a.png")
    tmp = copy_of(run[0])                   # other weights re-export there, not in the tree the next tests use
    p = make(tmp, "infer", f"MODEL={MODEL}", "BACKEND=ort-cpu", f"WEIGHTS={tmp_path}", f"INPUT={imgs}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "-m export" in p.stdout                                  # the weights changed: export reran
    inf = load(tmp, "inference_result.json")
    assert inf["weights"]["kind"] == "file" and inf["weights"]["format"] == "timm safetensors"
    item = infer_samples(tmp)[0]["items"][0]
    got = np.load(tmp / "build" / MODEL / "outputs" / "ort-cpu" / "items" / f"{item}.embedding.npy")
    x = np.load(tmp / "build" / MODEL / "inputs" / f"{item}.image.npy")
    assert x.dtype == np.uint8                                      # AIPP: the host saves the pixels
    x = aipp.network_feeds(load_config(MODEL), {"image": x})["image"]   # the reference's fp32 normalisation
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert rel_l2(got, ref) < 1e-5


def test_dataset_run_streams_and_leaves_the_main_build_alone(run):
    tmp = run[0]
    manifest = tmp / "build" / MODEL / "inputs" / "manifest.json"
    before = manifest.read_bytes()
    out = make(tmp, "dataset", f"MODEL={MODEL}", "COUNT=6")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert manifest.read_bytes() == before                       # `make infer`'s own inputs untouched
    ds = load(tmp, "dataset_run.json")
    assert ds["count"] == 6 and ds["small_count"] == 1 and ds["backend"] == "ort-fp16" and ds["device"] == "cpu"
    assert [r["inputs"] for r in ds["runs"]] == [1, 6] and ds["runs"][1]["items"] == 6
    assert ds["verdict"] == "PASSED" and ds["runs"][1]["compare"]["outputs"]["embedding"]["samples"] == 6
    perf = load(tmp, "performance_eval.json")
    bs = ds["runs"][1]["batch_size"]
    model_only = next(r["throughput_samples_per_s"] for r in perf["results"] if r["batch_size"] == bs)
    assert ds["model_only"]["basis"] == "items_per_s" and ds["model_only"]["value"] == model_only
    assert ds["ratio_to_model_only"] == pytest.approx(ds["runs"][1]["infer"]["end_to_end_items_per_s"] / model_only)
    assert 0 < ds["ratio_to_runner_calls"] <= 1
    for stage in ("infer", "compare"):
        m = ds["memory"][stage]
        assert 50 < m["small_mb"] < 4000 and 50 < m["full_mb"] < 4000
        assert m["ratio"] == pytest.approx(m["full_mb"] / m["small_mb"])
        trace = ds["runs"][1][stage]["memory_trace"]                 # marks over the 6 inputs (per batch or item)
        done = [t["done"] for t in trace]
        assert done == sorted(set(done)) and done[-1] == 6 and all(t["rss_mb"] > 50 for t in trace)
        assert m["in_run"]["first_mb"] == trace[0]["rss_mb"] and m["in_run"]["end_done"] == 6
        assert m["in_run"]["ratio"] == pytest.approx(max(t["rss_mb"] for t in trace[1:]) / trace[0]["rss_mb"])
    log = (tmp / "logs" / MODEL / "dataset.log").read_text()
    assert f"PASSED | {MODEL} embedding" in log and "peak RSS" in log
