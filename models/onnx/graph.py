"""The inputs and outputs an ONNX file declares, as config tensors (host side: the onnx package, no torch)."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import tensor_name
from pipeline.errors import ConfigError

# ONNX TensorProto element types the pipeline feeds and reads (pipeline.config.DTYPES)
ELEM_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8"}
UNKNOWN = "?"          # a dim the ONNX leaves without size or name


def load(path: Path, where: str):
    """The model without external data; ConfigError (one line) when the file is not ONNX."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:      # protobuf decode errors have many types
        raise ConfigError(f"{where}: {path} is not a readable ONNX file ({type(exc).__name__}); give the .onnx "
                          "file itself (model.onnx or weights.wheel.file)") from None


def dims(value_info) -> list | None:
    """Fixed dims as ints, named ones by name, unknown ones as '?'; dim 0 is the batch axis unless fixed."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = [d.dim_value if d.dim_value > 0 else (d.dim_param or UNKNOWN) for d in t.shape.dim]
    if out and isinstance(out[0], str):
        out[0] = "batch"
    return out


def tensors(model, kind: str, where: str) -> list[dict]:
    """Config tensors {name, shape, dtype, onnx_name} of the graph's inputs (initializers left out) or outputs."""
    inits = {i.name for i in model.graph.initializer}
    values = model.graph.input if kind == "input" else model.graph.output
    out = []
    for v in values:
        if v.name in inits:
            continue
        shape, dtype = dims(v), ELEM_DTYPES.get(v.type.tensor_type.elem_type)
        if shape is None or dtype is None:
            what = "no shape" if shape is None else f"element type {v.type.tensor_type.elem_type}"
            raise ConfigError(f"{where}: {kind} '{v.name}' of the ONNX has {what}; declare it in the config "
                              f"({kind}s: [{{name, shape, dtype}}], dtype one of {', '.join(ELEM_DTYPES.values())})")
        out.append({"name": tensor_name(v.name), "shape": shape, "dtype": dtype, "onnx_name": v.name})
    return out


def complete(declared: list[dict], graph: list[dict], kind: str, where: str) -> list[dict]:
    """The config's tensors with missing shape/dtype taken from the graph; all graph tensors when none declared."""
    if not declared:
        return [{k: t[k] for k in ("name", "shape", "dtype")} for t in graph]
    by_name = {t["name"]: t for t in graph}
    out = []
    for t in declared:
        g = by_name.get(t["name"])
        if g is None:
            raise ConfigError(f"{where}: {kind} '{t['name']}' is not in the ONNX, whose {kind}s are "
                              f"{', '.join(by_name) or 'none'}; use those names")
        out.append({**t, "shape": t["shape"] if t["shape"] is not None else g["shape"],
                    "dtype": t["dtype"] or g["dtype"]})
    return out
