"""Stateful families (contract hook state_carry), once for every stage: a tiny synthetic stateful ONNX through the
test family tests/stateful_family.py. The local engine equals a hand-written sequential loop; ENGINE=ray gives the
same bytes; compare's reference carries its own state; bench's pipeline figure and the static .om (fake ATC, the
ais_bench double) run it; and every bad input is one line."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import stateful_family as fam_module
from conftest import ROOT, use_fake_ascend
from pipeline import config as pconfig
from pipeline.batching import run_sequence
from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.runners import TensorMeta

HERE = Path(__file__).parent
NAME = "sdemo"


@pytest.fixture
def family(monkeypatch):
    """models.stateful_demo, as load_family finds a family (sys.modules), for this test only."""
    monkeypatch.setitem(sys.modules, f"models.{fam_module.NAME}", fam_module)
    monkeypatch.delitem(pconfig._FAMILIES, fam_module.NAME, raising=False)
    yield fam_module
    pconfig._FAMILIES.pop(fam_module.NAME, None)


def write_config(folder: Path, layout: str = "axis1", carry: str = "{stateN: state}", extra: str = "") -> str:
    onnx_path = fam_module.build_onnx(folder / f"stateful_{layout}.onnx", layout)
    state = "[2, 1, 4]" if layout == "axis1" else "[batch, 2, 4]"
    case = "{x: [1, 8], state: [2, 1, 4]}" if layout == "axis1" else "{x: [2, 8], state: [2, 2, 4]}"
    path = folder / f"{NAME}.yaml"
    path.write_text(f"name: {NAME}\nfamily: {fam_module.NAME}\n"
                    f"model: {{onnx: {onnx_path}, layout: {layout}, carry: {carry}}}\n"
                    f"inputs: [{{name: x, shape: [batch, 8]}}, {{name: state, shape: {state}}}]\n"
                    f"outputs: [{{name: y, shape: [batch, 4]}}, {{name: stateN, shape: {state}}}]\n"
                    f"export: {{parity_cases: [{case}]}}\n"
                    "atc: {batch_sizes: [1]}\ninfer: {batch_size: 2, samples: 5}\n"
                    "bench: {batch_sizes: [1, 2], warmup: 1, runs: 2, torch_baseline: false, pipeline_sources: 3}\n"
                    + extra)
    return str(path)


def export(path: str) -> None:
    from export.stage import export_model

    assert export_model(path) == 0


@pytest.fixture
def exported(tmp_path, isolated_dirs, family):
    path = write_config(tmp_path)
    export(path)
    from convert.stage import build_targets

    assert build_targets(path, "ort-cpu") == 0
    return path


def hand_loop(onnx_path: Path, sources: list, state0: np.ndarray) -> list[list[dict]]:
    """The sequence as anyone would write it: onnxruntime, one chunk at a time, the state carried by hand."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    runs = []
    for src in sources:
        state, outs = state0, []
        for row in np.load(src).astype(np.float32):
            y, state = sess.run(["y", "stateN"], {"x": row[None], "state": state})
            outs.append({"y": y, "stateN": state})
        runs.append(outs)
    return runs


def build(tmp: Path) -> Path:
    return tmp / "build" / NAME


def manifest(tmp: Path) -> dict:
    return json.loads((build(tmp) / "inputs" / "manifest.json").read_text())


def item_arrays(tmp: Path, backend: str) -> dict:
    base = build(tmp) / "outputs" / backend
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*.npy"))}


def check_against_loop(tmp: Path, backend: str, state0: np.ndarray) -> None:
    m = manifest(tmp)
    expect = hand_loop(build(tmp) / "model.sim.onnx", m["sources"], state0)
    assert len(m["items"]) == sum(len(e) for e in expect)
    for it in m["items"]:
        want = expect[it["source_index"]][it["chunk"]]
        for name in ("y", "stateN"):
            got = np.load(build(tmp) / "outputs" / backend / "items" / f"{it['id']}.{name}.npy")
            np.testing.assert_allclose(got, want[name], rtol=1e-6, atol=1e-7)
        fed = np.load(build(tmp) / "inputs" / it["files"]["state"])            # the state actually fed
        prev = state0 if it["chunk"] == 0 else expect[it["source_index"]][it["chunk"] - 1]["stateN"]
        np.testing.assert_allclose(fed, prev, rtol=1e-6, atol=1e-7)


# ---- the local engine, compare, bench ---------------------------------------------------------------------------
def test_local_engine_equals_a_sequential_loop(exported, tmp_path):
    from run.infer import infer

    assert infer(exported, "ort-cpu") == 0
    state0 = np.zeros((2, 1, 4), np.float32)
    check_against_loop(tmp_path, "ort-cpu", state0)
    m = manifest(tmp_path)
    assert m["state_carry"] == {"stateN": "state"}
    assert all(("carried" in it) == (it["chunk"] > 0) for it in m["items"])
    assert all(it["carried"] == ["state"] for it in m["items"] if it["chunk"] > 0)
    # numpy context beside the inputs, JSON context in the manifest
    it = m["items"][1]
    assert it["context"] == {"_pos": 1} and it["context_files"] == {"_energy": f"context/{it['id']}._energy.npy"}
    row = np.load(m["sources"][0])[1]
    np.testing.assert_array_equal(np.load(build(tmp_path) / "inputs" / it["context_files"]["_energy"]), row * row)
    doc = json.loads((tmp_path / "results" / NAME / "inference_result.json").read_text())
    items = len(m["items"])
    assert doc["timing"]["device_runs"] == items == doc["timing"]["batches"]          # one item per device run
    assert doc["run_summary"]["files"] == 5 and doc["run_summary"]["chunks"] == items
    assert doc["run_summary"]["arrays_saved"] is True


def test_compare_reference_carries_its_own_state(exported, tmp_path):
    from compare.stage import compare
    from run.infer import infer

    assert infer(exported, "ort-cpu") == 0
    m = manifest(tmp_path)
    expect = hand_loop(build(tmp_path) / "model.sim.onnx", m["sources"], np.zeros((2, 1, 4), np.float32))
    # plant another state in every saved carried input: what a drifting target would have fed itself
    for it in m["items"]:
        if it["chunk"] > 0:
            np.save(build(tmp_path) / "inputs" / it["files"]["state"], np.full((2, 1, 4), 100.0, np.float32))

    def reference_is_the_loop():
        for it in m["items"]:
            got = np.load(build(tmp_path) / "outputs" / "reference" / f"{it['id']}.y.npy")
            np.testing.assert_allclose(got, expect[it["source_index"]][it["chunk"]]["y"], rtol=1e-6, atol=1e-7)

    assert compare(exported, "ort-cpu") == 0            # the target's own outputs still match a reference that
    reference_is_the_loop()                             # never read the planted state
    acc = json.loads((tmp_path / "results" / NAME / "accuracy_eval.json").read_text())
    assert acc["task"]["verdicts"][0]["passed"]         # the numpy context came back to compare
    # a target that drifts: its last chunk's output differs, the reference is unaffected and the gate sees it
    last = next(it for it in reversed(m["items"]) if it["chunk"] > 0)
    f = build(tmp_path) / "outputs" / "ort-cpu" / "items" / f"{last['id']}.y.npy"
    np.save(f, np.load(f) + 1.0)
    assert compare(exported, "ort-cpu") == 1
    reference_is_the_loop()
    acc = json.loads((tmp_path / "results" / NAME / "accuracy_eval.json").read_text())
    assert [r["item"] for r in acc["outputs"]["y"]["samples"] if not r["passed"]] == [last["id"]]


def test_compare_refuses_items_out_of_order(exported, tmp_path):
    from compare.stage import compare
    from pipeline import provenance
    from run.infer import infer

    assert infer(exported, "ort-cpu") == 0
    path = build(tmp_path) / "inputs" / "manifest.json"
    m = json.loads(path.read_text())
    first = [i for i, it in enumerate(m["items"]) if it["source_index"] == 0]
    m["items"][first[0]], m["items"][first[1]] = m["items"][first[1]], m["items"][first[0]]
    path.write_text(json.dumps(m))
    out = build(tmp_path) / "outputs" / "ort-cpu" / "manifest.json"
    om = json.loads(out.read_text())
    om["inputs_manifest_sha256"] = provenance.sha256_file(path)           # a tree merged or edited by hand
    out.write_text(json.dumps(om))
    with pytest.raises(PipelineError) as e:
        compare(exported, "ort-cpu")
    msg = str(e.value)
    assert "\n" not in msg, repr(msg)
    assert "items out of order for the carried state" in msg and "chunks [1, 0], expected 0..1" in msg
    assert "rerun `make infer MODEL=sdemo BACKEND=ort-cpu`" in msg and m["sources"][0] in msg


def test_bench_runs_batch_one_and_the_pipeline_in_order(exported, tmp_path):
    from run.bench import bench

    assert bench(exported, "ort-cpu") == 0
    perf = json.loads((tmp_path / "results" / NAME / "performance_eval.json").read_text())
    assert [r["batch_size"] for r in perf["results"]] == [1]
    assert perf["results"][0]["shapes"] == {"x": [1, 8], "state": [2, 1, 4]}
    assert perf["skipped"] == [{"batch_size": 2, "reason": "a stateful model (state_carry) runs one item per device "
                                                           "run: bench it at batch 1"}]
    pipe = perf["infer_pipeline"]
    assert pipe["items"] == 2 + 5 + 4 and pipe["model_only_samples_per_s"] == perf["results"][0]["throughput_samples_per_s"]


# ---- ENGINE=ray ---------------------------------------------------------------------------------------------------
@pytest.fixture
def ray_cluster(isolated_dirs):
    """A local Ray cluster whose workers register the test family (worker_process_setup_hook)."""
    ray = pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False, runtime_env={"env_vars": env,
                                                   "worker_process_setup_hook": "stateful_family.register"})
    yield ray
    ray.shutdown()


@pytest.mark.e2e
def test_ray_engine_gives_the_local_bytes(exported, tmp_path, ray_cluster):
    import shutil

    from compare.stage import compare
    from run.infer import infer

    assert infer(exported, "ort-cpu") == 0
    local = item_arrays(tmp_path, "ort-cpu")
    local_manifest = manifest(tmp_path)
    shutil.rmtree(build(tmp_path) / "outputs")
    shutil.rmtree(build(tmp_path) / "inputs")
    assert infer(exported, "ort-cpu", engine="ray", workers="2") == 0
    doc = json.loads((tmp_path / "results" / NAME / "inference_result.json").read_text())
    assert doc["engine"]["engine"] == "ray" and doc["run_summary"]["files"] == 5
    assert item_arrays(tmp_path, "ort-cpu") == local and manifest(tmp_path) == local_manifest
    assert compare(exported, "ort-cpu", engine="ray", workers="2") == 0          # the reference on Ray actors
    check_against_loop(tmp_path, "ort-cpu", np.zeros((2, 1, 4), np.float32))


# ---- the static .om: fake ATC, ais_bench double -------------------------------------------------------------------
@pytest.fixture
def ascend(tmp_path, monkeypatch):
    return use_fake_ascend(tmp_path / "bin", monkeypatch)


@pytest.mark.parametrize("layout", [
    "axis0",
    "axis1",
])
def test_static_om_runs_the_sequence(tmp_path, isolated_dirs, family, ascend, layout):
    from compare.stage import compare
    from convert.stage import build_targets
    from run.infer import infer

    path = write_config(tmp_path, layout)
    export(path)
    assert build_targets(path, "om", soc="Ascend310P3") == 0
    assert infer(path, "om") == 0
    state0 = np.zeros((2, 1, 4) if layout == "axis1" else (1, 2, 4), np.float32)
    check_against_loop(tmp_path, "om", state0)
    assert compare(path, "om") == 0
    runs = [c for c in ascend.FakeInferSession.calls if c[0] == "infer"]
    assert len(runs) == len(manifest(tmp_path)["items"])                  # one device run per item
    # a chunk size the .om was not built for: one line that names the built shape
    folder = tmp_path / "six"
    folder.mkdir()
    np.save(folder / "short.npy", np.ones((3, 6), np.float32))
    with pytest.raises(InputError) as e:
        infer(path, "om", input=str(folder))
    msg = str(e.value)
    assert "\n" not in msg and "input x is [1, 6], the target was built for [1, 8]" in msg
    assert "rebuild the target (`make export om`) for the prepared one" in msg


# ---- bad input, one line each --------------------------------------------------------------------------------------
@pytest.mark.parametrize("carry, match", [
    ("{nope: state}", r"state_carry carries output 'nope', which the config does not have \(its outputs are "
                      r"\['y', 'stateN'\]\)"),
    ("{stateN: nope}", r"feeds output 'stateN' into input 'nope', which the config does not have \(its inputs are "
                       r"\['x', 'state'\]\)"),
    ("{stateN: x}", r"feeds the first input 'x'; the runners read the batch from the first input"),
    ("{y: state}", r"feeds output y \['batch', 4\] into input state \[2, 1, 4\]; a carried state keeps its shape"),
    ("{y: state, stateN: state}", r"feeds input\(s\) \['state'\] from more than one output"),
])
def test_bad_state_carry_is_one_config_line(tmp_path, family, carry, match):
    with pytest.raises(ConfigError, match=match) as e:
        pconfig.load_config(write_config(tmp_path, carry=carry))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / f"{NAME}.yaml"))


class FakeRunner:
    """Returns stateN of `shape` (a target built for another state shape)."""

    def __init__(self, shape=(2, 1, 4), meta=None):
        self.shape, self.meta, self.calls = shape, meta or [], []

    def get_input_metadata(self):
        return self.meta

    def infer(self, feeds):
        self.calls.append({k: v.copy() for k, v in feeds.items()})
        return {"y": np.zeros((1, 4), np.float32), "stateN": np.full(self.shape, len(self.calls), np.float32)}


def items(n=3):
    return [{"x": np.zeros((1, 8), np.float32), "state": np.zeros((2, 1, 4), np.float32)} for _ in range(n)]


def test_run_sequence_carries_and_checks():
    r = FakeRunner()
    done = run_sequence(r, items(), {"stateN": "state"}, ["x", "state"], where="a.npy", chunks=[0, 1, 2])
    assert [float(c["state"].max()) for c in r.calls] == [0.0, 1.0, 2.0]       # item k gets item k-1's stateN
    assert [float(fed["state"].max()) for fed, _ in done] == [0.0, 1.0, 2.0]
    with pytest.raises(PipelineError) as e:
        run_sequence(FakeRunner(shape=(2, 2, 4)), items(), {"stateN": "state"}, ["x", "state"], where="a.npy")
    assert str(e.value) == ("a.npy: output stateN of item 0 has shape [2, 2, 4], but it feeds input state of item 1, "
                            "prepared as [2, 1, 4]; the target was built for another state shape than the family "
                            "prepares: rebuild it (`make export om`) for the config's shapes")
    with pytest.raises(PipelineError, match=r"^a.npy: items out of order for the carried state: chunks \[0, 2, 1\], "
                                            r"expected 0..2 in order") as e:
        run_sequence(FakeRunner(), items(), {"stateN": "state"}, ["x", "state"], where="a.npy", chunks=[0, 2, 1])
    meta = [TensorMeta("x", "float32", [1, 10]), TensorMeta("state", "float32", [2, 1, 4])]
    with pytest.raises(PipelineError, match=r"^a.npy: input x is \[1, 8\], the target was built for \[1, 10\]; "):
        run_sequence(FakeRunner(meta=meta), items(), {"stateN": "state"}, ["x", "state"], where="a.npy")


def test_context_that_is_neither_json_nor_numpy_is_one_line(tmp_path):
    from run.engine import item_context, prepare_source, split_context

    item = {"x": np.zeros((1, 2)), "_n": np.int64(3), "_info": {"sr": 16000}, "_mask": np.ones(3, bool),
            "_win": (1, 2)}
    plain, arrays = split_context(item, "a.wav")
    assert plain == {"_n": 3, "_info": {"sr": 16000}, "_win": [1, 2]} and list(arrays) == ["_mask"]
    np.save(tmp_path / "m.npy", arrays["_mask"])
    back = item_context(tmp_path, {"context": plain, "context_files": {"_mask": "m.npy"}})
    assert back["_n"] == 3 and back["_mask"].tolist() == [True] * 3

    class Fam:
        @staticmethod
        def prepare(source, cfg, meta):
            return [{"x": np.zeros((1, 2), np.float32), "_seen": {1, 2}}]

    cfg = {"inputs": [{"name": "x"}]}
    p = prepare_source(Fam, cfg, None, 0, Path("clip.wav"))
    assert p["error"] == ("clip.wav: item context '_seen' is a set, which is neither JSON nor a numpy array; make the "
                          "family's prepare give JSON values (numbers, strings, lists, dicts) or numpy arrays (saved "
                          "as .npy beside the inputs)")


def test_labelled_scoring_runs_a_stateful_file_alone():
    from dataset.scoring import Runs

    cfg = {"inputs": [{"name": "x"}, {"name": "state"}], "infer": {"pad": "repeat", "batch_size": 4}}
    target = FakeRunner()
    runs = Runs(cfg, target, FakeRunner(), None, "y", 1, {"stateN": "state"})
    assert runs.run(target, items(1)[0]).shape == (1, 4) and len(target.calls) == 1
    assert target.calls[0]["state"].shape == (2, 1, 4)                 # never stacked or padded on axis 0
