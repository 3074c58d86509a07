"""The family contract: stages use only declared hooks and keys, the README states the same table, and every
family and config goes stand-in build -> export -> parity -> host prepare/postprocess on generated inputs."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.contract import CAPABILITIES, HOOKS, HOOKS_BY_NAME, Family
from pipeline.config import available_models, known_families, load_config, load_family
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["export", "convert", "run", "compare", "report", "precision", "dataset", "pipeline"]
FAMILY_ATTRS = {"has", "capabilities", "name"}
# result keys a stage may only reach through pipeline.contract constants or a family hook
MAGIC = ["duration_s", "framewise", "segmentwise_output", "frontend.npz", "frames_from_segments", "bundled_labels",
         "audio_s_per_batch"]


def stage_files():      # the contract itself (pipeline/contract.py) declares the keys and loads the torch side
    return [p for d in STAGES for p in sorted((ROOT / d).glob("*.py")) if p != ROOT / "pipeline" / "contract.py"]


def family_attribute_uses(path: Path) -> list[tuple[str, int]]:
    """Attributes read on anything named `family` (family.x, self.family.x, job.family.x)."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            base = node.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
            if name == "family":
                uses.append((node.attr, node.lineno))
    return uses


def test_stages_call_only_declared_hooks():
    bad = [f"{p.relative_to(ROOT)}:{line} family.{attr}" for p in stage_files()
           for attr, line in family_attribute_uses(p) if attr not in HOOKS_BY_NAME and attr not in FAMILY_ATTRS]
    assert not bad, f"stages call hooks the contract (pipeline/contract.py) does not declare: {bad}"


def test_stages_probe_no_hooks_and_use_no_magic_keys():
    bad = []
    for p in stage_files():
        text = p.read_text()
        outside = re.search(r"hasattr\(\s*(self\.)?family", text) or "import_module(f\"models." in text
        if outside and p != ROOT / "pipeline" / "config.py":          # load_family: the one entry point
            bad.append(f"{p.relative_to(ROOT)}: reaches a family outside the contract")
        for key in MAGIC:
            if f'"{key}"' in text or f"'{key}'" in text:
                bad.append(f"{p.relative_to(ROOT)}: literal {key!r} (use a pipeline.contract constant or a hook)")
    assert not bad, bad


def test_the_checker_catches_an_undeclared_hook(tmp_path):
    f = tmp_path / "stage.py"
    f.write_text("def main(family):\n    return family.frames_from_segments(1)\n")
    assert ("frames_from_segments", 2) in family_attribute_uses(f)
    assert "frames_from_segments" not in HOOKS_BY_NAME


def test_readme_states_the_contract():
    text = (ROOT / "models" / "README.md").read_text()
    hooks_text, caps_text = text.split("## Capabilities")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", hooks_text, re.M)}
    cap_rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|.*$", caps_text, re.M)}
    for h in HOOKS:
        assert h.name in rows, f"models/README.md lacks hook {h.name}"
        assert h.signature.replace("|", "\\|") in rows[h.name] or h.signature in rows[h.name], h.name
        assert ("| yes |" if h.required else "| no |") in rows[h.name], h.name
    for cap in CAPABILITIES:
        assert cap in cap_rows, f"models/README.md lacks capability {cap}"
    assert cap_rows <= set(CAPABILITIES), f"README names capabilities the contract lacks: {cap_rows - set(CAPABILITIES)}"
    documented = set(rows)
    assert documented <= set(HOOKS_BY_NAME), f"README names hooks the contract lacks: {documented - set(HOOKS_BY_NAME)}"


def test_family_wrapper_refuses_undeclared_and_gives_defaults():
    class Host:
        CAPABILITIES = frozenset({"labels"})

        def find_sources(self): ...

    host = Host()
    for name in ("generate_sources", "prepare", "postprocess", "random_input"):
        setattr(host, name, lambda *a: None)
    fam = Family("demo", host)
    assert fam.has("labels") and not fam.has("time_input")
    assert fam.bench_extras({}, {}, 1.0) == {} and fam.host_artifacts({}) == [] and fam.labels({}, {}) is None
    with pytest.raises(AttributeError, match="not a hook"):
        fam.frames_from_segments
    with pytest.raises(KeyError):
        fam.has("heatmap")
    del host.prepare
    with pytest.raises(ConfigError, match="lacks required hooks"):
        Family("demo", host)


@pytest.mark.parametrize("family", known_families())
def test_family_host_side_needs_no_torch(family):
    code = (f"import sys; import models.{family}; from pipeline.config import load_family; load_family({family!r}); "
            "bad = [m for m in ('torch', 'timm', 'torchcrepe', 'torchaudio') if m in sys.modules]; "
            "assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.mark.parametrize("family", known_families())
def test_every_family_has_a_config(family):
    assert any(load_config(m)["family"] == family for m in available_models()), f"family {family} has no config"


# ---- every config through the contract ------------------------------------------------------------------
def smoke_shapes(cfg) -> dict:
    """The first parity case at batch 1: the smallest shape the config itself declares."""
    case = cfg["export"]["parity_cases"][0] if cfg["export"]["parity_cases"] else {}
    out = {}
    for t in cfg["inputs"]:
        shape = list(case.get(t["name"], [d if isinstance(d, int) else 1 for d in t["shape"]]))
        if isinstance(t["shape"][0], str):
            shape[0] = 1
        out[t["name"]] = shape
    return out


@pytest.mark.parametrize("model", available_models())
def test_config_through_the_contract(model, tmp_path, monkeypatch):
    """Stand-in build -> ONNX export -> parity -> generated sources -> prepare -> ORT -> postprocess."""
    import torch

    from export.stage import export_onnx, torch_outputs
    from pipeline.metrics import rel_l2
    from pipeline.runners import OrtRunner

    monkeypatch.setenv("PIPELINE_BUILD_DIR", str(tmp_path / "build"))
    cfg = load_config(model)
    fam = load_family(cfg["family"])
    if fam.source_onnx is not HOOKS_BY_NAME["source_onnx"].default:
        pytest.skip("brings its own ONNX, no torch side: tests/test_onnx_family.py takes it through the stages")
    torch.manual_seed(0)
    net = fam.build(cfg)
    prov = fam.apply_standin(net, cfg, 0)
    assert prov["kind"] == "stand-in"
    module = fam.export_module(net.eval(), cfg)
    rng = np.random.default_rng(0)
    feeds = {n: fam.random_input(n, s, rng, cfg) for n, s in smoke_shapes(cfg).items()}
    onnx_path = tmp_path / "model.onnx"
    export_onnx(module, cfg, feeds, onnx_path)
    import onnx

    fam.check_onnx(onnx.load(str(onnx_path)), cfg)
    build = tmp_path / "build" / cfg["name"]
    build.mkdir(parents=True)
    for f in fam.export_artifacts(net, cfg, build):
        assert Path(f).exists()
    for name in fam.host_artifacts(cfg):
        assert (build / name).exists(), f"host_artifacts names {name}, which export_artifacts did not write"
    ref = torch_outputs(module, feeds, cfg)
    with OrtRunner(onnx_path) as r:
        got = r.infer(feeds)
        assert set(got) == {t["name"] for t in cfg["outputs"]}
        for name in ref:
            assert rel_l2(got[name], ref[name]) < cfg["export"]["parity_max_rel_l2"], name
        sources = fam.generate_sources(cfg, tmp_path / "src", count=2, seed=3)
        assert len(sources) == 2 and all(Path(s).exists() for s in sources)
        meta = {"kind": "stand-in", "seed": 0, **prov}
        for src in sources[:1]:
            items = fam.prepare(src, cfg, r.get_input_metadata())
            assert items and all(n in items[0] for n in feeds)
            outs = []
            for it in items:
                o = r.infer({n: it[n] for n in feeds})
                outs.append({**o, **{k: v for k, v in it.items() if k.startswith("_")}})
            summary, arrays = fam.postprocess(cfg, Path(src), outs, meta)
    import json

    json.dumps(summary)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in arrays.values())
    if fam.has("time_input", cfg):
        from pipeline.contract import DURATION_KEY

        assert summary[DURATION_KEY] > 0
    if fam.has("labels", cfg):
        from pipeline.contract import TOP_K_KEY

        assert summary[TOP_K_KEY] and all("label" in k for k in summary[TOP_K_KEY])
    if fam.has("embedding", cfg):
        from pipeline.contract import EMBEDDING_ARRAY

        assert EMBEDDING_ARRAY in arrays
    if fam.has("frame_output", cfg):
        from pipeline.contract import FRAME_ARRAY

        assert arrays[FRAME_ARRAY].ndim == 2


# ---- contract gaps: default weights, run_summary, its report ------------------------------------------------------
class _WeightsFamily:
    name = "demo"

    def __init__(self, default):
        self._default = default

    def default_weights(self, cfg):
        """The trained weights shipped in the demo wheel: assets/demo.pth."""
        if isinstance(self._default, Exception):
            raise self._default
        return self._default


WEIGHTS_CFG = {"name": "demo", "_source": "configs/demo.yaml", "weights": {"dir": "", "wheel": {}}}


def test_missing_default_weights_are_one_line_never_a_silent_standin(tmp_path):
    from export.weights import describe, resolve_weights, standin_reason
    from pipeline.errors import WeightsError

    missing = tmp_path / "assets" / "demo.pth"
    with pytest.raises(WeightsError) as e:
        resolve_weights(WEIGHTS_CFG, None, _WeightsFamily(missing))
    assert str(e.value) == (f"configs/demo.yaml: the demo family's default weights {missing} do not exist (The trained "
                            "weights shipped in the demo wheel: assets/demo.pth); pass WEIGHTS=<file>, or put the "
                            "published weights into weights/demo (weights.dir)")
    with pytest.raises(WeightsError, match=r"^configs/demo.yaml: the demo family's default weights could not be "
                                           r"fetched \(.*\): OSError: network is unreachable; pass WEIGHTS=<file>"):
        resolve_weights(WEIGHTS_CFG, None, _WeightsFamily(OSError("network is unreachable")))
    missing.parent.mkdir()
    missing.write_bytes(b"x")
    assert resolve_weights(WEIGHTS_CFG, None, _WeightsFamily(missing)) == missing
    assert resolve_weights(WEIGHTS_CFG, None, _WeightsFamily(None)) is None        # no default: the stand-in
    why = standin_reason({"weights": {"dir": "weights/demo"}})
    assert why == "no WEIGHTS=, weights.dir weights/demo is absent or empty, no weights.wheel and the family has no " \
                  "default weights"
    assert describe({"kind": "stand-in", "seed": 0, "why": why}) == f"stand-in, seed 0 ({why})"


def test_image_embedding_run_summary_caps_its_similarity_matrix(tmp_path, monkeypatch):
    import models.image_host as host
    from pipeline.contract import RUN_ARRAYS_KEY

    rng = np.random.default_rng(0)
    summaries = []
    for i in range(5):
        p = tmp_path / f"{i}.embedding.npy"
        np.save(p, (rng.standard_normal(16) if i != 3 else np.load(tmp_path / "0.embedding.npy") * 2).astype(np.float32))
        summaries.append((f"/data/img_{i}.jpg", {"l2_norm": 1.0, RUN_ARRAYS_KEY: {"embedding": str(p)}}))
    cfg = {"model": {"head": "embedding"}}
    out = host.run_summary(cfg, summaries)
    sim = out["cosine_similarity"]
    assert out["files"] == 5 and sim["files"] == [f"img_{i}.jpg" for i in range(5)]
    assert sim["columns"] == ["file", "1", "2", "3", "4", "5"] and sim["rows"][0][0] == "1 img_0.jpg"
    assert [r[i + 1] for i, r in enumerate(sim["rows"])] == [1.0] * 5 and sim["rows"][0][4] == 1.0   # 0 and 3 align
    assert "all 5 file(s)" in sim["note"]
    monkeypatch.setattr(host, "SIMILARITY_FILES", 3)
    capped = host.run_summary(cfg, summaries)["cosine_similarity"]
    assert len(capped["rows"]) == 3 and "the first 3 of 5 files (the matrix is capped at 3)" in capped["note"]
    assert host.run_summary({"model": {"head": "classifier"}}, summaries) == {}


def test_report_shows_the_run_summary():
    from report.tables import run_summary_lines

    doc = {"run_summary": {"files": 2, "speech_share": 0.123456, "nested": {"a": [1, {"b": 2}]},
                           "per_file": {"columns": ["file", "s"], "rows": [["a.wav", 1.5], ["b.wav", 0]],
                                        "note": "all files"}}}
    lines = run_summary_lines(doc)
    assert lines[0] == "- files: 2 [↗](inference_result.json#/run_summary/files)"
    assert lines[1] == "- speech_share: 0.1235 [↗](inference_result.json#/run_summary/speech_share)"
    text = "\n".join(lines)
    assert "| file | s |\n|---|---|\n| a.wav | 1.5 |\n| b.wav | 0 |\n\nall files" in text
    assert '```json' in text and run_summary_lines({}) == []
