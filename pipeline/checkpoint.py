"""Reading published checkpoints safely (safetensors, or torch.load with weights_only) and strict key checks.

As strict as PyTorch's `load_state_dict(strict=True)` and no stricter: a BatchNorm `num_batches_tracked` buffer
missing from the file is filled in (older files lack it; PyTorch's _BatchNorm._load_from_state_dict fills it from
the module), every other missing or unexpected key is refused by name. Training wrappers are taken off: a dict
holding the weights under `state_dict`, `model`, `model_state` or `model_state_dict`, and DataParallel's
`module.` prefix; read_state_dict says which it found, for the weights record.
"""
from __future__ import annotations

from pathlib import Path

from .errors import WeightsError

WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict")
PREFIX = "module."                  # torch.nn.DataParallel / DistributedDataParallel
FILLED_BUFFER = "num_batches_tracked"


def find_checkpoint(path: Path, names: tuple) -> Path:
    """A file as given, else the first of `names` in the folder; WeightsError naming them."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise WeightsError(f"weights folder {path} has none of {', '.join(names)}; put the published checkpoint "
                           "there or pass WEIGHTS=<file>")
    raise WeightsError(f"weights path {path} does not exist; pass WEIGHTS=<file or folder>")


def unwrap(obj) -> tuple[object, str | None]:
    """The state dict inside common training wrappers, and which wrappers were taken off (None: none)."""
    import torch

    found = []
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
        found.append(key)
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and k.startswith(PREFIX) for k in obj):
        obj = {k[len(PREFIX):]: v for k, v in obj.items()}
        found.append(f"{PREFIX} prefix")
    return obj, " + ".join(found) or None


def read_state_dict(path: Path, hint: str) -> tuple[dict, str | None]:
    """(state dict of tensors, wrapper) from a .safetensors or pickle file; `hint` says what to give instead."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many types
        raise WeightsError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:160]}; {hint}") from None
    sd, wrapper = unwrap(sd)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors; {hint}")
    return sd, wrapper


def check_keys(sd: dict, expected: dict, ckpt: Path, what: str) -> dict:
    """Strict loading: name the missing and unexpected keys, then the first wrong shape. Returns the state dict
    ready for load_state_dict(strict=True): missing `num_batches_tracked` buffers filled from `expected`."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    filled = [k for k in missing if k.rsplit(".", 1)[-1] == FILLED_BUFFER]
    missing = [k for k in missing if k not in filled]
    if missing or unexpected:
        raise WeightsError(f"{ckpt} does not fit {what}: {len(missing)} missing keys {missing[:3]}, "
                           f"{len(unexpected)} unexpected keys {unexpected[:3]}; is it the right model's checkpoint?")
    bad = [k for k in sd if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise WeightsError(f"{ckpt}: {len(bad)} tensors have the wrong shape, e.g. {k} is {tuple(sd[k].shape)}, "
                           f"expected {tuple(expected[k].shape)}; is it the right model's checkpoint?")
    return {**sd, **{k: expected[k].clone() for k in filled}}
