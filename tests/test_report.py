"""make report: tables with linked numbers, honest device labels, plots, the publishing section."""
import json
import shutil

import pytest

from conftest import ROOT
from report.__main__ import main as report_main
from report.tables import device_label, get

MODEL = "convnext_base_clip_laion2b"


@pytest.fixture
def results(isolated_dirs):
    src = ROOT / "results" / MODEL
    if not (src / "accuracy_eval.json").exists():
        pytest.skip("no committed convnext results to build a report from")
    dst = isolated_dirs / "results" / MODEL
    dst.mkdir(parents=True)
    for name in ("export.json", "accuracy_eval.json", "performance_eval.json", "dataset_run.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return isolated_dirs


def test_report_tables_link_every_number(results):
    report_main(["--model", MODEL, "--publish"])
    md = (results / "results" / MODEL / "REPORT.md").read_text()
    acc = json.loads((results / "results" / MODEL / "accuracy_eval.json").read_text())
    worst = get(acc, "/outputs/embedding/summary/worst_rel_l2")
    assert f"{worst:.2e} [↗](accuracy_eval.json#/outputs/embedding/summary/worst_rel_l2)" in md
    assert "not an NPU" in md and "Ascend NPU (" not in md            # CPU evidence is never called NPU
    assert "batch_size * measured_runs / elapsed wall seconds" in md    # throughput with its definition
    assert "Precision doctor: not run" in md                           # missing files say so
    assert "Labelled accuracy" not in md                               # an embedding model: make accuracy cannot run
    plots = results / "results" / MODEL / "plots"
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert "latency_throughput.png" in pngs and "error_distribution.png" in pngs
    assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "![" in md and "plots/latency_throughput.png" in md
    ds_path = results / "results" / MODEL / "dataset_run.json"
    if ds_path.exists():                                               # dataset-scale run: count, memory, ratio
        ds = json.loads(ds_path.read_text())
        assert f"over {ds['count']} generated inputs" in md
        assert f"{ds['ratio_to_model_only']:.1%} [↗](dataset_run.json#/ratio_to_model_only)" in md
        assert f"{ds['memory']['infer']['full_mb']:.0f} [↗](dataset_run.json#/memory/infer/full_mb)" in md
        if ds["memory"]["infer"].get("in_run"):
            assert f"{ds['memory']['infer']['in_run']['ratio']:.2f}x [↗](dataset_run.json#/memory/infer/in_run/ratio)" in md
    else:
        assert "Dataset-scale run: not run" in md
    combined = (results / "results" / "REPORT.md").read_text()
    assert f"[{MODEL}/REPORT.md]({MODEL}/REPORT.md)" in combined


def test_publish_section_is_honest(results):
    report_main(["--model", MODEL, "--publish"])
    pub = results / "results" / MODEL / "publish"
    text = (pub / "README.md").read_text()
    head = text.split("---")[1]
    assert "\nhardware: NPU\n" in head and "  - ascend-npu" in head and "  - Ascend" in head and "  - NPU" in head
    assert "evidence_device: cpu" in head and "#+NPU" in text
    assert "measured on CPU with onnxruntime" in text
    assert json.loads((pub / "results" / "accuracy_eval.json").read_text())["verdict"] in ("PASSED", "FAILED")


def test_device_labels():
    assert device_label("om", "npu:0").startswith("Ascend NPU (npu:0;") and "not an NPU" not in device_label("om", "npu:0")
    assert device_label("nosuch", "cpu") == "not run"
    assert "not an NPU" in device_label("ort-fp16", "cpu") and "not an NPU" in device_label("ort-cpu", "cpu")
