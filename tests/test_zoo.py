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


def test_committed_zoo_list_covers_the_families():
    from zoo import listing

    doc = listing.load_list(ROOT / "configs" / "zoo.yaml")
    archs = [e["architecture"] for e in doc["models"]]
    assert len(archs) >= 30 and len(set(archs)) == len(archs)
    from pipeline.config import available_models        # a swept model never runs a committed config instead
    assert "efficientnet_b0.ra_in1k" in archs and not {e["name"] for e in doc["models"]} & set(available_models())
    prefixes = {"resnet", "regnet", "efficientnet", "mobilenetv3", "ghostnet", "repvgg", "convnext", "densenet",
                "vit", "deit", "swin", "beit", "eva", "maxvit", "coatnet", "efficientformer", "mobilevit",
                "poolformer", "levit"}
    assert all(any(a.startswith(p) for a in archs) for p in prefixes)


# --- the fix paths, with the stages replaced by stand-ins that write what the real stages write ---------------

MIX = {"option": "allow_mix_precision + modify_mixlist black-list ['SoftmaxV2']", "passed": True,
       "fp32_compute_share": 0.3, "emulated_keep_op_types": ["Softmax"],
       "atc": {"precision_mode": "allow_mix_precision", "modify_mixlist": {"black-list": {"to-add": ["SoftmaxV2"]}},
               "keep_dtype": []}}


def _fake_run(calls, results_root, doctor):
    from zoo.stages import Outcome

    def run(target, model, backend, limit_s, log, env):
        from pipeline.config import load_config

        cfg = load_config(model)
        res = results_root / model
        res.mkdir(parents=True, exist_ok=True)
        calls.append(target + ("+fused_attn_off" if cfg["model"]["fused_attn"] is False else "")
                     + ("+keep" if cfg["fp16"]["keep_nodes"] or cfg["fp16"]["keep_op_types"] else ""))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        rc, msg, error = 0, "", None
        if target == "export":
            if cfg["model"]["fused_attn"] is not False:     # what make export records (pipeline.errors.cli)
                rc, msg = 2, "torch.onnx.export failed: TypeError: argument 'is_causal' must be bool, not Tensor"
                error = {"code": "export-failed", "type": "ExportError", "message": msg, "details": {"failing_call": {
                    "function": "forward", "file": "timm/layers/attention.py",
                    "line": "x = F.scaled_dot_product_attention("}}}
            else:
                doc = {"parity": {"worst": 1e-6}, "weights": {"kind": "stand-in"}, "opset": 17,
                       "onnx_simplified": {"nodes": 10, "bytes": 2**20, "op_types": {"MatMul": 6, "Softmax": 4}}}
                (res / "export.json").write_text(json.dumps(doc))
        elif target == "preflight":
            (res / "preflight.json").write_text(json.dumps({"findings": [], "warnings": 0}))
        elif target == "compare":
            fixed = bool(cfg["fp16"]["keep_nodes"] or cfg["fp16"]["keep_op_types"])
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


@pytest.mark.parametrize("doctor", ["keep_dtype", "mixlist"])
def test_export_fix_and_fp16_fix_are_proven_by_the_stages_after_them(tmp_path, monkeypatch, capsys, doctor):
    import zoo.stage as zm
    from zoo import listing
    from zoo.__main__ import main as zoo_main

    for k, v in run_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    lst = tmp_path / "zoo.yaml"
    lst.write_text("models: [vit_tiny_patch16_224.augreg_in21k_ft_in1k]\n")
    calls = []
    monkeypatch.setattr(zm, "run", _fake_run(calls, tmp_path / "results" / "zoo" / "models", doctor))
    assert zoo_main(["--list", str(lst)]) == 0
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
    assert "PASSED | zoo zoo_vit_tiny_patch16_224_augreg_in21k_ft_in1k: adapts with a fix" in capsys.readouterr().out


def test_bad_list_is_one_line(tmp_path):
    env = run_env(tmp_path)
    lst = tmp_path / "zoo.yaml"
    lst.write_text("timeout_s: {exprot: 3}\nmodels: [resnet18.a1_in1k]\n")
    p = subprocess.run([sys.executable, "-m", "zoo", "--list", str(lst)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"ERROR | {lst}: timeout_s names unknown stage(s) ['exprot']; stages: "
                                             "export, preflight, om, compare, precision, bench"]
