"""The family contract, written once: every hook a stage may call on a model family.

A family is `models/<family>/__init__.py` (host side: NumPy only, runs on an Ascend host without torch) plus
`models/<family>/torch_model.py` (torch side: export and the PyTorch baseline only). Stages never touch the
modules directly: `pipeline.config.load_family(name)` returns a `Family`, whose attributes are exactly the
hooks declared here (optional ones fall back to their default) and whose `has(capability)` tells what the
stages show. `models/README.md` states the same table; `tests/test_contract.py` holds code and text together.
It sits in pipeline/, below the families that fulfil it (models/), so the config loader can hold them to it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError


@dataclass(frozen=True)
class Hook:
    name: str
    side: str             # "host" (models/<f>/__init__.py) or "torch" (models/<f>/torch_model.py)
    required: bool
    signature: str
    returns: str
    default: Any = None   # for optional hooks: a value, or a callable with the hook's signature


def _none(*_a, **_k):
    return None


def _empty_list(*_a, **_k):
    return []


def _empty_dict(*_a, **_k):
    return {}


HOOKS: tuple[Hook, ...] = (
    # --- host side: config ---
    Hook("MODEL_SCHEMA", "host", False, "dict", "pipeline.schema spec of the config's `model` section", {}),
    Hook("PREPROCESS_SCHEMA", "host", False, "dict", "spec of the `preprocess` section", {}),
    Hook("POSTPROCESS_SCHEMA", "host", False, "dict", "spec of the `postprocess` section", {}),
    Hook("CAPABILITIES", "host", False, "frozenset[str]", "names from contract.CAPABILITIES", frozenset()),
    Hook("PREPARE_THREADS", "host", False, "int",
         "threads make infer prepares sources in, in one process, when infer.prepare_threads is 0 (auto): 0 = one "
         "per core, for a prepare that releases the GIL most of its time (Pillow's decode and resize)", 1),
    Hook("capabilities", "host", False, "(cfg) -> frozenset[str]",
         "per-config capabilities, for families whose configs differ (a classifier or an embedding head)", None),
    Hook("complete_config", "host", False, "(cfg, source) -> None",
         "fills, in place, what the config may omit and the family's own source declares (an ONNX family reads "
         "inputs/outputs from the graph); runs before the generic checks; ConfigError (one line)", _none),
    Hook("check_config", "host", False, "(cfg, source) -> None", "raises ConfigError (one line)", _none),
    Hook("source_onnx", "host", False, "(cfg) -> tuple[Path, dict] | None",
         "a family that brings its own ONNX file: (path, provenance); make export checks and simplifies it instead "
         "of exporting from PyTorch. None: a PyTorch family", _none),
    # --- host side: inputs ---
    Hook("find_sources", "host", True, "(input_arg, cfg) -> list[Path]",
         "the accepted files of a file or folder INPUT, sorted; PipelineError if none"),
    Hook("generate_sources", "host", True, "(cfg, out_dir, count=None, seed=None) -> list[Path]",
         "deterministic sample files (count defaults to infer.samples, seed to infer.seed)"),
    Hook("prepare", "host", True, "(source, cfg, input_meta) -> list[dict]",
         "model-input items {input_name: array, batch dim 1}; keys starting with '_' are context that "
         "postprocess gets back (JSON values, kept in the manifest, or numpy arrays, saved as .npy beside the "
         "inputs; anything else is an error); PipelineError for a bad file"),
    Hook("postprocess", "host", True, "(cfg, source, items, meta) -> (summary, arrays)",
         "items: outputs (+ context) of each prepared item; meta: build/<m>/weights.json; a JSON-able summary "
         "and named arrays saved as .npy"),
    Hook("random_input", "host", True, "(name, shape, rng, cfg) -> np.ndarray",
         "a realistic seeded input of that shape (parity, bench, precision)"),
    Hook("state_carry", "host", False, "(cfg) -> dict[str, str]",
         "{output name: input name} carried from each item to the next item of the same source (an LSTM's state): "
         "prepare gives a source's items in order, each with every input (state inputs hold the initial state); for "
         "item k > 0 the stages feed item k-1's outputs instead. The stages then run a source's items in order, one "
         "item per device run (pipeline.batching.run_sequence). {} = stateless", _empty_dict),
    Hook("host_artifacts", "host", False, "(cfg) -> list[str]",
         "file names in build/<m>/ that prepare/postprocess read (written by export_artifacts); copied with "
         "the build folder to an Ascend host and into scratch trees", _empty_list),
    Hook("labels", "host", False, "(cfg, meta) -> list[str] | None",
         "class names in output order (capability `labels`)", _none),
    Hook("label_ids", "host", False, "(cfg, meta) -> list[str] | None",
         "stable class ids in output order (e.g. ImageNet WordNet ids), for labelled sets named by id "
         "(capability `labels`)", _none),
    # --- host side: what the stages show ---
    Hook("bench_extras", "host", False, "(cfg, feeds, model_ms) -> dict",
         "extra figures of a bench row (front-end cost, audio seconds)", _empty_dict),
    Hook("frames_from_outputs", "host", False, "(cfg, outputs, frames) -> np.ndarray",
         "the frame matrix (frames, classes) from one item's raw outputs (capability `frame_output`)", _none),
    Hook("run_summary", "host", False, "(cfg, summaries: list[tuple[str, dict]]) -> dict",
         "figures over the whole run from (source, summary) of every file that succeeded, in source order (each "
         "summary also holds RUN_ARRAYS_KEY: {array name: path of its saved .npy}); called once at the end of make "
         "infer, written into inference_result.json (`run_summary`) and shown in the report: scalars as lines, "
         "{columns, rows} values as tables", _empty_dict),
    Hook("text_outputs", "host", False, "(cfg, summary, arrays) -> dict[str, str]",
         "text files beside a file's arrays, by suffix (e.g. {'f0.csv': ...}), written atomically", _empty_dict),
    Hook("report_plots", "host", False, "(cfg, source, ref_items, tgt_arrays, meta, out_dir) -> list[tuple]",
         "(caption, png path) of the family's own plots for one file, reference (raw outputs + context) against "
         "target (its saved arrays)", _empty_list),
    Hook("task_metrics", "host", False, "(cfg, source, ref_items, tgt_items, meta) -> dict",
         "task figures of one source, target against reference (capability `task_metrics`)", _empty_dict),
    Hook("compare_gate", "host", False, "(cfg, output) -> dict | None",
         "the family's default tensor gate for an output where the config sets none (compare.gate, "
         "compare.per_output): a classifier's logits at their measured fp16 scale", _none),
    Hook("task_gate", "host", False, "(cfg, per_source) -> list[dict]",
         "one verdict per metric family: {name, passed, line, figures, gate} (capability `task_metrics`)",
         _empty_list),
    Hook("aipp_source", "host", False, "(cfg) -> dict | str | None",
         "what Ascend's AIPP may take over from prepare (atc.aipp): {mean, std, value_scale (255), sent_size [H, W] "
         "of the uint8 pixels the host sends when the device crops, device_crop [top, left, H, W] or None}; a str "
         "says which part of the preprocessing AIPP cannot express; None: no AIPP for this family", _none),
    # --- torch side ---
    Hook("build", "torch", True, "(cfg) -> nn.Module", "the network in eval mode, published module names"),
    Hook("load_weights", "torch", True, "(model, path, cfg) -> dict",
         "strict load of a published file or folder; provenance {kind: file, path, sha256, format, ...}"),
    Hook("apply_standin", "torch", True, "(model, cfg, seed) -> dict",
         "deterministic stand-in weights with trained-like statistics; {kind: stand-in, seed, rule, ...}"),
    Hook("default_weights", "torch", False, "(cfg) -> Path | None",
         "weights to use when neither WEIGHTS= nor weights.dir is given (e.g. shipped in a wheel)", _none),
    Hook("export_module", "torch", True, "(model, cfg) -> nn.Module",
         "forward(*inputs in config order) returns the outputs in config order"),
    Hook("export_artifacts", "torch", False, "(model, cfg, build_dir) -> list[Path]",
         "extra files the host side needs, written into build_dir", _empty_list),
    Hook("check_onnx", "torch", False, "(onnx_model, cfg) -> None",
         "raise PipelineError when the exported graph is wrong for this family", _none),
)

HOOKS_BY_NAME = {h.name: h for h in HOOKS}

# What a family can declare; each names the contract keys the stages then read.
CAPABILITIES = {
    "time_input": "inputs are recordings: every summary has `duration_s` (seconds of audio), bench_extras returns "
                  "`audio_s_per_batch` and `real_time_factor`; infer, dataset and bench report the real-time "
                  "factor (seconds of audio per second of wall time)",
    "frame_output": "postprocess returns a `framewise` (frames, classes) array and the summary `frame_hop_s`; "
                    "frames_from_outputs gives the reference's; the report draws the heat map",
    "labels": "labels(cfg, meta) gives class names; the summary has `top_k` [{label, score}]",
    "embedding": "postprocess returns an `embedding` array; the report plots the difference per dimension",
    "task_metrics": "task_metrics/task_gate give a task-level gate on top of the tensor gate in make compare",
}

# the keys that capabilities make part of the contract
DURATION_KEY = "duration_s"
AUDIO_PER_BATCH_KEY = "audio_s_per_batch"
RTF_KEY = "real_time_factor"
FRAME_ARRAY = "framewise"
FRAME_HOP_KEY = "frame_hop_s"
EMBEDDING_ARRAY = "embedding"
TOP_K_KEY = "top_k"
# what make infer adds to each per-file summary it hands to run_summary: {array name: path of the saved .npy}
RUN_ARRAYS_KEY = "_arrays"


def check_state_carry(cfg: dict, carry, source: str) -> None:
    """A family's state_carry(cfg) against the config's tensors, at config load: one ConfigError line."""
    if not carry:
        return
    hint = "state_carry(cfg) returns {output name: input name}, e.g. {'stateN': 'state'}"
    if not isinstance(carry, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in carry.items()):
        raise ConfigError(f"{source}: the {cfg['family']} family's state_carry gives {carry!r}; {hint}")
    ins = {t["name"]: t for t in cfg["inputs"]}
    outs = {t["name"]: t for t in cfg["outputs"]}
    for out, inp in carry.items():
        if out not in outs:
            raise ConfigError(f"{source}: state_carry carries output '{out}', which the config does not have (its "
                              f"outputs are {list(outs)}); name an output of the model, or fix the config's outputs")
        if inp not in ins:
            raise ConfigError(f"{source}: state_carry feeds output '{out}' into input '{inp}', which the config does "
                              f"not have (its inputs are {list(ins)}); name an input of the model")
    fed = list(carry.values())
    twice = sorted({n for n in fed if fed.count(n) > 1})
    if twice:
        raise ConfigError(f"{source}: state_carry feeds input(s) {twice} from more than one output; carry one output "
                          "into each state input")
    first = cfg["inputs"][0]["name"]
    if first in fed:
        raise ConfigError(f"{source}: state_carry feeds the first input '{first}'; the runners read the batch from the "
                          "first input, so list a per-item input (the audio chunk) first and the state after it")
    for out, inp in carry.items():
        o, i = outs[out], ins[inp]
        if o["dtype"] != i["dtype"]:
            raise ConfigError(f"{source}: state_carry feeds output {out} ({o['dtype']}) into input {inp} "
                              f"({i['dtype']}); a carried state keeps its dtype: make them equal")
        fixed = all(isinstance(d, int) for d in o["shape"] + i["shape"])
        if len(o["shape"]) != len(i["shape"]) or (fixed and o["shape"] != i["shape"]):
            raise ConfigError(f"{source}: state_carry feeds output {out} {o['shape']} into input {inp} {i['shape']}; "
                              "a carried state keeps its shape: make them equal")


class Family:
    """A model family seen through the contract: attributes are hooks, nothing else."""

    def __init__(self, name: str, host_module, source: str = "config"):
        self.name = name
        self._host = host_module
        self._torch = None
        self._source = source
        caps = frozenset(getattr(host_module, "CAPABILITIES", frozenset()))
        unknown = caps - set(CAPABILITIES)
        if unknown:
            raise ConfigError(f"models/{name}: unknown capabilities {sorted(unknown)}; "
                              f"declare some of: {', '.join(CAPABILITIES)}")
        missing = [h.name for h in HOOKS if h.required and h.side == "host" and not hasattr(host_module, h.name)]
        if missing:
            raise ConfigError(f"models/{name}/__init__.py lacks required hooks {missing}; see models/README.md")
        self.capabilities = caps

    def has(self, capability: str, cfg: dict | None = None) -> bool:
        """Whether the family (for this config, when it declares per-config capabilities) has `capability`."""
        if capability not in CAPABILITIES:
            raise KeyError(f"'{capability}' is not a capability of the family contract")
        caps = self.capabilities
        if cfg is not None and hasattr(self._host, "capabilities"):
            caps = frozenset(self._host.capabilities(cfg))
        return capability in caps

    def _torch_module(self):
        if self._torch is None:
            self._torch = importlib.import_module(f"models.{self.name}.torch_model")
        return self._torch

    def __getattr__(self, name: str) -> Callable | Any:
        hook = HOOKS_BY_NAME.get(name)
        if hook is None:
            raise AttributeError(f"'{name}' is not a hook of the family contract (pipeline/contract.py)")
        module = self._host if hook.side == "host" else self._torch_module()
        if hasattr(module, name):
            return getattr(module, name)
        if hook.required:
            where = "__init__.py" if hook.side == "host" else "torch_model.py"
            raise ConfigError(f"models/{self.name}/{where} lacks the required hook {name}{hook.signature}; "
                              "see models/README.md")
        return hook.default
