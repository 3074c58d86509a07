"""The allow_mix_precision option for the op types the doctor keeps in fp32, in ATC's own op types.

ATC's --modify_mixlist names Ascend IR op types, not ONNX ones; convert/ascend_ops.py holds the mapping.
ONNX types without a known Ascend type cannot go on the black-list: their nodes are kept by name
(--keep_dtype) instead, which ATC honours whatever the op becomes.
"""
from __future__ import annotations


def model_opset(model, default: int) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default)


def _mapping(onnx_types: list[str], opset: int) -> tuple[dict, list[str], str]:
    try:
        from convert.ascend_ops import mixlist_for
    except ImportError as exc:
        return {}, list(onnx_types), f"no ONNX-to-Ascend op-type mapping known ({exc})"
    mixlist, unmapped = mixlist_for(list(onnx_types), opset)
    return mixlist, sorted(unmapped), ""


def mix_option(keep: list[str], node_types: dict[str, str], opset: int) -> dict | None:
    """ATC settings that black-list the op types of the kept nodes; None when no kept type maps to ATC."""
    types = sorted({node_types[n] for n in keep})
    if not types:
        return None
    mixlist, unmapped, why = _mapping(types, opset)
    ascend = sorted({t for lst in mixlist.get("black-list", {}).values() for t in lst})
    mapped = [t for t in types if t not in unmapped]
    by_name = [n for n in keep if node_types[n] in unmapped]
    note = ""
    if unmapped:
        note = (f"{why or 'no Ascend op type known'} for {', '.join(unmapped)}: keep those nodes by name with "
                f"--keep_dtype ({len(by_name)} node(s)) instead of the black-list")
    if not mapped or not ascend:
        return {"usable": False, "onnx_types": types, "unmapped_onnx_types": unmapped, "note": note}
    label = f"allow_mix_precision + modify_mixlist black-list {ascend}"
    if by_name:
        label += f" + keep_dtype ({len(by_name)} nodes: {', '.join(unmapped)})"
    return {"usable": True, "option": label, "onnx_types": mapped, "unmapped_onnx_types": unmapped,
            "keep_nodes": by_name, "note": note,
            "atc": {"precision_mode": "allow_mix_precision", "modify_mixlist": mixlist, "keep_dtype": by_name}}
