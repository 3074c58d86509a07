"""Model inputs as .npy files: generated (seeded) or given (INPUT=), checked against the config's inputs.

A single-input model takes one array per file, each file one sample. A model with several inputs takes a folder
per sample holding `<input>.npy` for each input; its source is the first of those files (sources are files).
Arrays come with or without the batch dim; a leading batch of n rows gives n items.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputError


def names(cfg: dict) -> list[str]:
    return [t["name"] for t in cfg["inputs"]]


def concrete_shape(tensor: dict, cfg: dict, batch: int = 1) -> list[int]:
    """The tensor's shape with the batch axis at `batch` and named axes at atc.fixed_dims or the first parity case."""
    case = cfg["export"]["parity_cases"][0].get(tensor["name"], []) if cfg["export"]["parity_cases"] else []
    out = []
    for i, d in enumerate(tensor["shape"]):
        if isinstance(d, int):
            out.append(d)
        elif i == 0:
            out.append(batch)
        else:
            out.append(cfg["atc"]["fixed_dims"].get(d, case[i] if i < len(case) else 1))
    return out


def random_input(name: str, shape, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """Floats ~ N(0, 1) (what normalised features look like); integers uniform in preprocess.int_range [low, high),
    by default the byte values 0..255 (token or byte ids)."""
    dtype = next(t["dtype"] for t in cfg["inputs"] if t["name"] == name)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    low, high = cfg["preprocess"]["int_range"]
    return rng.integers(low, high, size=shape).astype(dtype)


def generate_sources(cfg: dict, out_dir: Path, count: int | None = None, seed: int | None = None) -> list[Path]:
    from pipeline.atomic import save_npy

    count = count or cfg["infer"]["samples"]
    seed = cfg["infer"]["seed"] if seed is None else seed
    inputs = names(cfg)
    paths = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        arrays = {t["name"]: random_input(t["name"], concrete_shape(t, cfg), rng, cfg) for t in cfg["inputs"]}
        if len(inputs) == 1:
            paths.append(save_npy(Path(out_dir) / f"sample_{i:04d}.npy", arrays[inputs[0]]))
            continue
        for n, a in arrays.items():
            save_npy(Path(out_dir) / f"sample_{i:04d}" / f"{n}.npy", a)
        paths.append(Path(out_dir) / f"sample_{i:04d}" / f"{inputs[0]}.npy")
    return paths


def find_sources(input_arg: str, cfg: dict) -> list[Path]:
    """A .npy file, or a folder searched recursively: each .npy a sample (one input), each folder holding
    `<input>.npy` files a sample (several inputs)."""
    p, inputs = Path(input_arg).expanduser(), names(cfg)
    if not p.exists():
        raise InputError(f"INPUT {input_arg} does not exist; give a .npy file or a folder of them")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*.npy") if not f.name.startswith("."))
    if p.is_file() and p.suffix != ".npy":
        raise InputError(f"INPUT {input_arg} is not a .npy file; save the model input with numpy.save")
    if len(inputs) == 1:
        sources = files
    else:
        folders = sorted({f.parent for f in files if f.stem in inputs})
        sources = [next(d / f"{n}.npy" for n in inputs if (d / f"{n}.npy").exists()) for d in folders]
    if not sources:
        want = "a .npy file per sample" if len(inputs) == 1 else f"a folder per sample with {', '.join(inputs)} .npy"
        raise InputError(f"INPUT {input_arg} holds no model input; give {want}")
    return sources


def load_array(path: Path, tensor: dict, meta_shape: list | None) -> np.ndarray:
    """The array of one input file with the batch dim, cast to the input's dtype; InputError when it does not fit."""
    name, shape, dtype = tensor["name"], tensor["shape"], np.dtype(tensor["dtype"])
    if not path.is_file():
        raise InputError(f"{path} is missing; a sample folder holds one .npy per input ({name}.npy)")
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({type(exc).__name__}); save it with numpy.save") from None
    a = a[None] if a.ndim == len(shape) - 1 else a
    want = [d if isinstance(d, int) else (m or d) for d, m in zip(shape, meta_shape or [None] * len(shape))]
    fits = a.ndim == len(shape) and a.shape[0] > 0 and all(
        not isinstance(w, int) or h == w for i, (h, w) in enumerate(zip(a.shape, want)) if i > 0)
    if not fits:
        raise InputError(f"{path}: shape {list(a.shape)} does not fit input {name} [{', '.join(map(str, want))}] "
                         "(with or without the batch dim); save an array of that shape")
    return cast(a, dtype, path, name)


def cast(a: np.ndarray, dtype: np.dtype, path: Path, name: str) -> np.ndarray:
    if dtype.kind == "f":
        if a.dtype.kind != "f":
            raise InputError(f"{path}: dtype {a.dtype}, input {name} takes {dtype}; save a float array")
        if not np.isfinite(a).all():
            raise InputError(f"{path}: NaN or Inf values; input {name} needs finite numbers")
        return a.astype(dtype)
    info = np.iinfo(dtype)
    if a.dtype.kind not in "iu" or (a.size and (a.min() < info.min or a.max() > info.max)):
        got = f"dtype {a.dtype}" if a.dtype.kind not in "iu" else f"values {a.min()}..{a.max()}"
        raise InputError(f"{path}: {got}, input {name} takes {dtype} ({info.min}..{info.max}); save integers "
                         "in that range")
    return a.astype(dtype)


def prepare(source: Path, cfg: dict, input_meta) -> list[dict]:
    """One item per row: {input: array with batch dim 1}."""
    source, meta = Path(source), {m.name: m.shape for m in input_meta or []}
    single = len(cfg["inputs"]) == 1
    arrays = {t["name"]: load_array(source if single else source.parent / f"{t['name']}.npy", t, meta.get(t["name"]))
              for t in cfg["inputs"]}
    rows = {n: a.shape[0] for n, a in arrays.items()}
    if len(set(rows.values())) > 1:
        raise InputError(f"{source.parent}: the inputs hold different numbers of rows {rows}; give each the same")
    return [{n: a[i:i + 1] for n, a in arrays.items()} for i in range(next(iter(rows.values())))]
