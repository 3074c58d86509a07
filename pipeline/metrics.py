"""Accuracy metrics in float64 (definitions and sources: docs/metrics.md)."""
from __future__ import annotations

import numpy as np

FP16_MIN_NORMAL = 6.103515625e-05


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    nb = np.linalg.norm(b)
    if nb <= np.finfo(np.float32).eps:
        return float(np.linalg.norm(a - b))
    return float(np.linalg.norm(a - b) / nb)


def cosine(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_arrays(a, b, rtol: float = 0.01, atol_scale: float = 0.01) -> dict:
    """All metrics of target `a` against reference `b` (flattened, float64)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    nonfinite = int(np.count_nonzero(finite_b & ~finite_a))
    a = np.where(finite_a, a, 0.0) if nonfinite else a
    diff = np.abs(a - b)
    eps = np.finfo(np.float32).eps
    mask = np.abs(b) > eps
    rel = np.zeros_like(diff)
    rel[mask] = diff[mask] / np.abs(b[mask])
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    atol = atol_scale * scale
    floored = diff / (np.abs(b) + 1e-3 * scale) if scale > 0 else diff
    near_zero = float(np.mean(np.abs(b) < 1e-3 * scale)) if scale > 0 else 1.0
    mse = float(np.mean(diff ** 2)) if diff.size else 0.0
    ms_ref = float(np.mean(b ** 2)) if b.size else 0.0
    return {
        "cosine": cosine(a, b),
        "rel_l2": rel_l2(a, b),
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "rmse": mse ** 0.5,
        "snr_db": float(10 * np.log10(ms_ref / mse)) if mse > 0 and ms_ref > 0 else float("inf"),
        "masked_rel_max": float(rel.max()) if rel.size else 0.0,
        "masked_rel_mean": float(rel.mean()) if rel.size else 0.0,
        "floored_rel_p99": float(np.quantile(floored, 0.99)) if floored.size else 0.0,
        "violation_fraction": float(np.mean(diff > atol + rtol * np.abs(b))) if diff.size else 0.0,
        "violation_atol": atol,
        "violation_rtol": rtol,
        "near_zero_share": near_zero,
        "ref_below_fp16_normal_share": float(np.mean(np.abs(b) < FP16_MIN_NORMAL)) if b.size else 0.0,
        "nonfinite_in_target": nonfinite,
        "elements": int(b.size),
    }


def gate_check(target, reference, gate: dict, rtol: float = 0.01, atol_scale: float = 0.01) -> tuple[dict, list[str]]:
    """The one accuracy gate (compare, export parity, precision doctor): (metrics, failures; empty = passed).

    gate: max_rel_l2, min_cosine (None = not gated), max_violation_fraction (None = not gated)."""
    m = compare_arrays(target, reference, rtol, atol_scale)
    fails = []
    if m["nonfinite_in_target"]:
        fails.append(f"{m['nonfinite_in_target']} NaN/Inf where the reference is finite")
    if not m["rel_l2"] <= gate["max_rel_l2"]:
        fails.append(f"rel_l2 {m['rel_l2']:.3e} > {gate['max_rel_l2']}")
    if gate.get("min_cosine") is not None and not m["cosine"] >= gate["min_cosine"]:
        fails.append(f"cosine {m['cosine']:.7f} < {gate['min_cosine']}")
    vmax = gate.get("max_violation_fraction")
    if vmax is not None and m["violation_fraction"] > vmax:
        fails.append(f"violation fraction {m['violation_fraction']:.2e} > {vmax}")
    return m, fails
