"""TEST FAMILY (tests only, no config in configs/): a tiny stateful model, registered as `models.stateful_demo`.

`register()` puts this module into sys.modules under the name `pipeline.config.load_family` imports, in the test
process and (as Ray's worker_process_setup_hook) in every Ray worker. The model is a synthetic ONNX built with
onnx.helper (`build_onnx`), brought as the family's own file (source_onnx), so no torch side:

    m = mean(x)                       x [batch, 8]: one chunk of a sequence
    stateN = 0.5 * state + m          state [2, batch, 4] (layout axis1, like silero-vad) or [batch, 2, 4] (axis0)
    y = stateN[0] @ W + stateN[1]     y [batch, 4]

A source is a .npy file [chunks, 8]; prepare gives one item per row, the state zeros; state_carry (model.carry,
default {stateN: state}) carries stateN into the next chunk's state. Context: `_pos` (JSON) and `_energy` (a numpy
array, saved as .npy). The capability task_metrics checks that the context reaches compare as prepare gave it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline import provenance
from pipeline.errors import InputError
from pipeline.schema import MapOf, OneOf, Opt

NAME = "stateful_demo"
WIDTH, STATE = 8, 4
W = (np.arange(STATE * STATE, dtype=np.float32).reshape(STATE, STATE) - 7.5) / 8.0

MODEL_SCHEMA = {
    "onnx": Opt(str, "", help="the synthetic ONNX (tests build it with build_onnx)"),
    "layout": Opt(OneOf(("axis1", "axis0")), "axis1"),
    "carry": Opt(MapOf(str), {"stateN": "state"}),
}
CAPABILITIES = frozenset({"task_metrics"})


def register() -> None:
    sys.modules[f"models.{NAME}"] = sys.modules[__name__]


# ---- the model -------------------------------------------------------------------------------------------------
def build_onnx(path: Path, layout: str = "axis1") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    axis = 0 if layout == "axis1" else 1
    state = [2, "B", STATE] if layout == "axis1" else ["B", 2, STATE]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(0, np.int64), "i0"), numpy_helper.from_array(np.array(1, np.int64), "i1")]
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["state", "half"], ["hs"])]
    if layout == "axis1":
        nodes.append(helper.make_node("Add", ["hs", "m"], ["stateN"]))            # [2,B,4] + [B,1]
    else:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax3"))
        nodes += [helper.make_node("Unsqueeze", ["m", "ax3"], ["m3"]), helper.make_node("Add", ["hs", "m3"], ["stateN"])]
    nodes += [helper.make_node("Gather", ["stateN", "i0"], ["s0"], axis=axis),
              helper.make_node("Gather", ["stateN", "i1"], ["s1"], axis=axis),
              helper.make_node("MatMul", ["s0", "W"], ["p"]), helper.make_node("Add", ["p", "s1"], ["y"])]
    graph = helper.make_graph(
        nodes, "stateful_demo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", WIDTH]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, state)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", STATE]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, state)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def initial_state(cfg: dict) -> np.ndarray:
    return np.zeros((2, 1, STATE) if cfg["model"]["layout"] == "axis1" else (1, 2, STATE), np.float32)


def source_onnx(cfg: dict):
    path = Path(cfg["model"]["onnx"])
    return path, {"kind": "onnx", **provenance.file_record(path), "format": "onnx"}


def state_carry(cfg: dict) -> dict:
    return dict(cfg["model"]["carry"])


# ---- inputs ----------------------------------------------------------------------------------------------------
def find_sources(input_arg, cfg: dict) -> list[Path]:
    p = Path(input_arg)
    files = sorted(p.glob("*.npy")) if p.is_dir() else [p] if p.suffix == ".npy" and p.exists() else []
    if not files:
        raise InputError(f"{input_arg}: no .npy sequences; give a .npy file [chunks, {WIDTH}] or a folder of them")
    return files


def generate_sources(cfg: dict, out_dir, count=None, seed=None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg["infer"]["seed"] if seed is None else seed)
    paths = []
    for i in range(count or cfg["infer"]["samples"]):
        p = out_dir / f"seq_{i:02d}.npy"
        np.save(p, rng.standard_normal((2 + (i * 3) % 4, WIDTH)).astype(np.float32))   # 2..5 chunks
        paths.append(p)
    return paths


def prepare(source, cfg: dict, input_meta) -> list[dict]:
    a = np.load(source).astype(np.float32)
    return [{"x": row[None], "state": initial_state(cfg), "_pos": k, "_energy": (row * row).astype(np.float32)}
            for k, row in enumerate(a)]


def random_input(name, shape, rng, cfg):
    return rng.standard_normal(shape).astype(np.float32)


# ---- outputs ---------------------------------------------------------------------------------------------------
def postprocess(cfg: dict, source, items: list[dict], meta: dict):
    y = np.concatenate([it["y"] for it in items]).astype(np.float32)
    assert all(isinstance(it["_energy"], np.ndarray) for it in items)
    return {"chunks": len(items), "y_sum": float(y.sum()),
            "energy": float(sum(float(it["_energy"].sum()) for it in items))}, {"y": y}


def run_summary(cfg: dict, summaries: list) -> dict:
    from pipeline.contract import RUN_ARRAYS_KEY

    return {"files": len(summaries), "chunks": sum(s["chunks"] for _, s in summaries),
            "arrays_saved": all(Path(s[RUN_ARRAYS_KEY]["y"]).is_file() for _, s in summaries),
            "per_file": {"columns": ["file", "chunks"], "rows": [[Path(src).name, s["chunks"]] for src, s in summaries]}}


def task_metrics(cfg: dict, source, ref_items: list, tgt_items: list, meta: dict) -> dict:
    energy = [it["_energy"] for it in ref_items]
    return {"context_is_numpy": all(isinstance(e, np.ndarray) and e.shape == (WIDTH,) for e in energy),
            "positions": [it["_pos"] for it in ref_items]}


def task_gate(cfg: dict, per_source: list) -> list:
    ok = all(s["context_is_numpy"] and s["positions"] == list(range(len(s["positions"]))) for s in per_source)
    return [{"name": "context", "passed": ok, "line": f"numpy context back in compare: {ok}", "figures": {},
             "gate": {}}]
