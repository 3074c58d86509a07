"""Reading published checkpoints safely (safetensors, or torch.load with weights_only) and strict key checks."""
from __future__ import annotations

from pathlib import Path

from .errors import WeightsError


def read_state_dict(path: Path, hint: str) -> dict:
    """State dict of tensors from a .safetensors or pickle file; `hint` says what to give instead."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many types
        raise WeightsError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:160]}; {hint}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors; {hint}")
    return sd


def check_keys(sd: dict, expected: dict, ckpt: Path, what: str) -> None:
    """Strict loading: name the missing and unexpected keys, then the first wrong shape."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise WeightsError(f"{ckpt} does not fit {what}: {len(missing)} missing keys {missing[:3]}, "
                            f"{len(unexpected)} unexpected keys {unexpected[:3]}; is it the right model's checkpoint?")
    bad = [k for k in expected if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise WeightsError(f"{ckpt}: {len(bad)} tensors have the wrong shape, e.g. {k} is {tuple(sd[k].shape)}, "
                            f"expected {tuple(expected[k].shape)}; is it the right model's checkpoint?")
