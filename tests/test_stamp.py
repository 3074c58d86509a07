"""make reruns only what depends on a change: config slices derived from the keys each stage read, fingerprints."""
import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline.config import gate_for, load_config, save_reads
from pipeline.paths import ROOT, ModelPaths
from pipeline.stamp import SLICE_STAGES, fingerprint, write_slices

SEEDS = ("convnext_base_clip_laion2b", "cnn8rnn_audioset_sed")


# Each stage's reads, in the ways stage code reads a config (item access, .get, `in`, iteration, dict(...),
# json.dumps of a section, gate_for), and, written out by hand, the key paths that reading covers.
def read_export(c):
    c["name"], c["family"], dict(c["model"]), json.dumps(c["export"])
    [t["name"] for t in c["inputs"] + c["outputs"]]
    c["weights"]["standin_seed"], c["weights"].get("dir"), c["simplify"]["enabled"]
    {**c["preprocess"]}


def read_om(c):
    c["name"]
    for key, value in c["atc"].items():
        pass
    c["fp16"]["keep_nodes"], c["fp16"].get("keep_op_types"), c["inputs"][0]["shape"]


def read_infer(c):
    c["name"], dict(c["preprocess"]), [k for k in c["postprocess"]]
    c["infer"]["batch_size"], c["infer"]["samples"], c["infer"]["seed"]
    c["onnxruntime"]["intra_op_threads"], c["onnxruntime"]["graph_optimization"], c["inputs"], c["outputs"]


def read_compare(c):
    c["name"]
    for t in c["outputs"]:
        gate = gate_for(c, t["name"])
        gate["max_rel_l2"], gate["min_cosine"], gate.get("max_violation_fraction")
    c["compare"]["rtol"], c["compare"]["atol_scale"], c["infer"]["batch_size"]


def read_bench(c):
    c["name"], list(c["bench"].items()), c["infer"]["batch_size"], c["onnxruntime"].copy(), c["inputs"]


READERS = {"export": read_export, "om": read_om, "infer": read_infer, "compare": read_compare, "bench": read_bench}


def expected_reads(stage: str, cfg: dict) -> set[tuple]:
    gates = {("compare", "per_output", t["name"]) for t in cfg["outputs"]}
    gates |= {("compare", "gate", k) for k in ("max_rel_l2", "min_cosine", "max_violation_fraction")}
    return {
        "export": {("name",), ("family",), ("model",), ("export",), ("inputs",), ("outputs",),
                   ("weights", "standin_seed"), ("weights", "dir"), ("simplify", "enabled"), ("preprocess",)},
        "om": {("name",), ("atc",), ("fp16", "keep_nodes"), ("fp16", "keep_op_types"), ("inputs",)},
        "infer": {("name",), ("preprocess",), ("postprocess",), ("infer", "batch_size"), ("infer", "samples"),
                  ("infer", "seed"), ("onnxruntime", "intra_op_threads"), ("onnxruntime", "graph_optimization"),
                  ("inputs",), ("outputs",)},
        "compare": {("name",), ("outputs",), ("compare", "rtol"), ("compare", "atol_scale"),
                    ("infer", "batch_size")} | gates,
        "bench": {("name",), ("bench",), ("infer", "batch_size"), ("onnxruntime",), ("inputs",)},
    }[stage]


def record_runs(model: str) -> None:
    """One run per stage: each loads the config for its stage, reads, and saves its keys."""
    for stage, read in READERS.items():
        cfg = load_config(model, stage=stage)
        read(cfg)
        save_reads(cfg)


def leaf_paths(node, at=()):
    """Every key path down to scalars and empty containers, through lists by index."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            if not (at == () and k.startswith("_")):
                yield from leaf_paths(v, at + (k,))
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from leaf_paths(v, at + (i,))
    else:
        yield at


def edited(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "_edited"
    if value is None:
        return 0.5
    return ["edited"] if isinstance(value, list) else {"edited": 1}


def with_edit(cfg, path):
    out = copy.deepcopy(cfg)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = edited(node[path[-1]])
    return out


def mtimes(cfg_dir):
    return {p.name: p.stat().st_mtime_ns for p in sorted(cfg_dir.glob("*.json")) if not p.name.endswith(".keys.json")}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Per seed config: the cfg folder after one recorded run per stage and one `pipeline.stamp config`."""
    base = tmp_path_factory.mktemp("stamp")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPELINE_BUILD_DIR", str(base / "build"))
        for model in SEEDS:
            record_runs(model)
            cfg = load_config(model)
            cfg_dir = ModelPaths(model).build / "cfg"
            write_slices(cfg, cfg_dir)
            out[model] = (cfg, cfg_dir)
    return out


@pytest.mark.parametrize("model", SEEDS)
def test_recorded_keys_are_exactly_what_the_stage_read(recorded, model):
    cfg, cfg_dir = recorded[model]
    for stage in READERS:
        keys = json.loads((cfg_dir / f"{stage}.keys.json").read_text())["keys"]
        assert {tuple(k) for k in keys} == expected_reads(stage, cfg), stage


CASES = [(m, p) for m in SEEDS for p in leaf_paths(load_config(m))]


@pytest.mark.parametrize("model, path", CASES, ids=[f"{m[:8]}:{'.'.join(map(str, p))}" for m, p in CASES])
def test_an_edit_changes_exactly_the_slices_of_the_stages_that_read_it(recorded, tmp_path, model, path):
    cfg, cfg_dir = recorded[model]
    work = tmp_path / "cfg"
    shutil.copytree(cfg_dir, work)                            # copy2: mtimes kept
    before = mtimes(work)
    readers = {s for s in READERS if any(path[:len(k)] == k for k in expected_reads(s, cfg))}
    changed = write_slices(with_edit(cfg, path), work)
    after = mtimes(work)
    assert set(changed) == readers
    assert {k[:-5] for k in after if after[k] != before[k]} == readers


def test_unread_key_and_unchanged_config_rewrite_nothing(recorded, tmp_path):
    cfg, cfg_dir = recorded["convnext_base_clip_laion2b"]
    work = tmp_path / "cfg"
    shutil.copytree(cfg_dir, work)
    before = mtimes(work)
    assert set(before) == {f"{s}.json" for s in SLICE_STAGES}
    assert write_slices(cfg, work) == [] and mtimes(work) == before
    assert write_slices(with_edit(cfg, ("description",)), work) == [] and mtimes(work) == before


def test_bench_sees_infer_batch_size_and_compare_a_new_per_output_gate(recorded, tmp_path):
    cfg, cfg_dir = recorded["convnext_base_clip_laion2b"]
    work = tmp_path / "cfg"
    shutil.copytree(cfg_dir, work)
    edit = with_edit(cfg, ("infer", "batch_size"))
    assert set(write_slices(edit, work)) == {"infer", "compare", "bench"}
    edit["compare"]["per_output"]["embedding"] = {"max_rel_l2": 0.02, "min_cosine": 0.999,
                                                  "max_violation_fraction": None}
    assert write_slices(edit, work) == ["compare"]          # absent before: a key read with .get/`in` counts


def test_first_slices_are_the_whole_config_and_keep_their_mtime_when_keys_appear(isolated_dirs):
    model = "cnn8rnn_audioset_sed"
    cfg = load_config(model)
    cfg_dir = ModelPaths(model).build / "cfg"
    assert write_slices(cfg, cfg_dir) == list(SLICE_STAGES)   # no keys yet: every stage depends on everything
    whole = json.loads((cfg_dir / "bench.json").read_text())["values"]
    assert whole == [[[], json.loads(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}))]]
    before = mtimes(cfg_dir)
    record_runs(model)
    edit = with_edit(cfg, ("compare", "gate", "min_cosine"))
    assert write_slices(edit, cfg_dir) == ["compare"]        # whole -> recorded keys: only the reader reruns
    after = mtimes(cfg_dir)
    assert {k for k in after if after[k] != before[k]} == {"compare.json"}
    assert json.loads((cfg_dir / "om.json").read_text())["keys_from"] == "om.keys.json"


@pytest.mark.parametrize("edit_first, expected", [(False, []), (True, ["export", "om"])])
def test_a_key_first_read_by_a_later_run(isolated_dirs, edit_first, expected):
    """The old slice does not hold the key: the value the later run saw decides whether the stage reruns."""
    model = "convnext_base_clip_laion2b"
    record_runs(model)
    cfg = load_config(model)
    cfg_dir = ModelPaths(model).build / "cfg"
    write_slices(cfg, cfg_dir)
    later = load_config(model, stage="om")
    later["atc"], later["export"]["opset"]                    # the next om run also reads export.opset
    save_reads(later)
    now = with_edit(cfg, ("export", "opset")) if edit_first else cfg
    assert write_slices(now, cfg_dir) == expected
    assert [["export", "opset"], now["export"]["opset"]] in json.loads((cfg_dir / "om.json").read_text())["values"]


def test_unreadable_keys_or_slice_fall_back_to_a_rerun(isolated_dirs):
    model = "convnext_base_clip_laion2b"
    record_runs(model)
    cfg = load_config(model)
    cfg_dir = ModelPaths(model).build / "cfg"
    write_slices(cfg, cfg_dir)
    (cfg_dir / "bench.json").write_text("not json")
    (cfg_dir / "om.keys.json").write_text("{")                # the whole config again
    assert write_slices(cfg, cfg_dir) == ["om", "bench"]
    assert json.loads((cfg_dir / "om.json").read_text())["keys_from"].startswith("no keys file")


MAKEFILE = """\
B := $(PIPELINE_BUILD_DIR)
M := convnext_base_clip_laion2b
.SECONDARY:
all: $(foreach s,export om infer compare bench,$(B)/$(M)/$(s).done)
# the rules of the project Makefile
$(B)/%/cfg.stamp: cfgs/%.yaml
\t@$(PY) -m pipeline.stamp config --model cfgs/$*.yaml
\t@touch $@
$(B)/%/cfg/export.json $(B)/%/cfg/om.json $(B)/%/cfg/infer.json $(B)/%/cfg/compare.json $(B)/%/cfg/bench.json: $(B)/%/cfg.stamp ;
$(B)/%/export.done: $(B)/%/cfg/export.json
\t@$(PY) stage.py export && touch $@
$(B)/%/om.done: $(B)/%/cfg/om.json
\t@$(PY) stage.py om && touch $@
$(B)/%/infer.done: $(B)/%/cfg/infer.json
\t@$(PY) stage.py infer && touch $@
$(B)/%/compare.done: $(B)/%/cfg/compare.json
\t@$(PY) stage.py compare && touch $@
$(B)/%/bench.done: $(B)/%/cfg/bench.json
\t@$(PY) stage.py bench && touch $@
"""

STAGE_SCRIPT = """\
import sys
from pipeline.config import load_config
stage = sys.argv[1]
cfg = load_config("cfgs/convnext_base_clip_laion2b.yaml", stage=stage)
READS = {"export": [("export", "opset"), ("model",)], "om": [("atc", "batch_sizes"), ("fp16",)],
         "infer": [("infer", "batch_size"), ("infer", "samples")],
         "compare": [("compare", "gate", "min_cosine"), ("infer", "batch_size")],
         "bench": [("bench", "runs"), ("infer", "batch_size")]}
for path in READS[stage]:
    node = cfg
    for key in path:
        node = node[key]
open("ran.txt", "a").write(stage + "\\n")
# no save_reads: the reads are saved when the process exits
"""


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_make_reruns_exactly_the_stages_that_read_an_edited_key(tmp_path):
    (tmp_path / "cfgs").mkdir()
    yaml_path = tmp_path / "cfgs" / "convnext_base_clip_laion2b.yaml"
    shutil.copy(ROOT / "configs" / "convnext_base_clip_laion2b.yaml", yaml_path)
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    env.update(PIPELINE_BUILD_DIR=str(tmp_path / "build"), PYTHONPATH=str(ROOT), PY=sys.executable)
    ran = tmp_path / "ran.txt"

    def make():
        ran.write_text("")
        subprocess.run(["make", "-s"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
        return set(ran.read_text().split())

    def edit(path, value):
        data = yaml.safe_load(yaml_path.read_text())
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
        stamp = (tmp_path / "build" / "convnext_base_clip_laion2b" / "cfg.stamp").stat().st_mtime_ns
        os.utime(yaml_path, ns=(stamp + 10**8, stamp + 10**8))   # newer than the stamp whatever the clock tick

    assert make() == set(READERS)                 # first run: everything
    assert make() == set()                        # nothing changed
    edit(("compare", "gate", "min_cosine"), 0.99995)
    assert make() == {"compare"}                  # the first edit after the recorded runs, too
    edit(("infer", "batch_size"), 7)
    assert make() == {"infer", "compare", "bench"}
    edit(("description",), "edited")
    assert make() == set()                        # a key no stage reads
    edit(("bench", "runs"), 13)
    assert make() == {"bench"}
    assert make() == set()


def test_failed_process_records_nothing_and_save_is_idempotent(isolated_dirs):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("from pipeline.config import load_config; c = load_config('cnn8rnn_audioset_sed', stage='om'); "
            "c['atc']['batch_sizes']; raise RuntimeError('crash')")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "RuntimeError" in r.stderr
    keys = ModelPaths("cnn8rnn_audioset_sed").build / "cfg" / "om.keys.json"
    assert not keys.exists()
    cfg = load_config("cnn8rnn_audioset_sed", stage="om")
    cfg["atc"]["batch_sizes"]
    save_reads(cfg)
    first = (keys.read_text(), keys.stat().st_mtime_ns)
    save_reads(cfg)
    assert (keys.read_text(), keys.stat().st_mtime_ns) == first
    other = load_config("cnn8rnn_audioset_sed", stage="om")
    other["fp16"]["keep_nodes"]
    save_reads(other)                                          # a second run: union with the first
    assert json.loads(keys.read_text())["keys"] == [["atc", "batch_sizes"], ["fp16", "keep_nodes"]]


def test_fingerprint_sees_content_changes(tmp_path):
    f = tmp_path / "w" / "model.safetensors"
    f.parent.mkdir()
    f.write_bytes(b"a")
    first = fingerprint(f.parent)
    f.write_bytes(b"ab")
    assert fingerprint(f.parent) != first
    assert fingerprint(tmp_path / "missing") == [f"{tmp_path / 'missing'} missing"]
