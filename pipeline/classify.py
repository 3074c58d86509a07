"""Classifier heads: softmax, top-k, and the task gate of `make compare` (target top-1/top-5 against the fp32
reference's, per image).

A flip of top-1 between two classes the reference itself rates as a near tie says nothing about the target: a
disagreement counts as a *tie* when the reference's logit for the target's class is within `tie_logits` of its
own top-1 (the fp16 rounding of the logits moves them by about that much). The verdict counts only the other
disagreements; both figures are reported. The top-5 overlap treats its boundary the same way: a target top-5
class the reference rates within `tie_logits` of its own 5th counts as shared.
"""
from __future__ import annotations

import numpy as np

from .schema import Opt

# defaults chosen from the real MobileNetV2 on ort-fp16 (docs/classifiers.md, "The classifier task gate")
TASK_GATE_DEFAULTS = {"min_top1_agreement": 0.99, "min_top5_overlap": 0.95, "tie_logits": 0.1}
TASK_GATE_SCHEMA = {k: Opt(float, v) for k, v in TASK_GATE_DEFAULTS.items()}
# the logits' tensor gate beside the task gates: fp16 logits of that model reach rel L2 2.2e-2 and cosine 0.99978
# with no decision changed, so 1 % / 0.9999 would fail one image in eight; this still catches a wrong scale or bias
LOGITS_GATE = {"max_rel_l2": 0.05, "min_cosine": 0.999}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - np.max(x))
    return e / e.sum()


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores along the last axis, largest first; ties keep the lower index (stable)."""
    return np.argsort(-np.asarray(scores, np.float64), axis=-1, kind="stable")[..., :k]


def compare_logits(ref: np.ndarray, tgt: np.ndarray, tie_logits: float) -> dict:
    """One image: does the target's top-1 agree with the reference's, how many of the top-5 do they share."""
    ref, tgt = np.asarray(ref, np.float64).ravel(), np.asarray(tgt, np.float64).ravel()
    r5, t5 = top_k(ref, 5), top_k(tgt, 5)
    agree = bool(r5[0] == t5[0])
    gap = float(ref[r5[0]] - ref[t5[0]])      # how far below its own top-1 the reference puts the target's choice
    k = min(5, ref.size)
    shared = set(r5.tolist()) & set(t5.tolist())
    # a target top-5 class outside the reference's top-5 that the reference rates within tie_logits of its 5th
    tied = [c for c in t5.tolist() if c not in shared and ref[c] >= ref[r5[-1]] - tie_logits]
    return {"top1_ref": int(r5[0]), "top1_target": int(t5[0]), "top1_agree": agree,
            "tie": (not agree) and gap <= tie_logits, "ref_gap_logits": round(gap, 6),
            "ref_margin_logits": round(float(ref[r5[0]] - ref[r5[1]]), 6) if ref.size > 1 else None,
            "top5_overlap_raw": len(shared) / k, "top5_overlap": (len(shared) + len(tied)) / k,
            "finite": bool(np.isfinite(tgt).all())}


def classifier_task_metrics(cfg: dict, source, ref_items: list[dict], tgt_items: list[dict], meta: dict) -> dict:
    """The contract's task_metrics for a one-output classifier: one image per source."""
    name = cfg["outputs"][0]["name"]
    gate = cfg["postprocess"]["task_gate"]
    return compare_logits(ref_items[0][name][0], tgt_items[0][name][0], gate["tie_logits"])


def classifier_task_gate(cfg: dict, per_source: list[dict]) -> list[dict]:
    """Two verdicts: 'top1' (share of images whose top-1 agrees, ties excused) and 'top5' (mean overlap)."""
    gate = cfg["postprocess"]["task_gate"]
    n = len(per_source)
    flips = [r for r in per_source if not r["top1_agree"]]
    real = [r for r in flips if not r["tie"]]
    bad = sum(not r["finite"] for r in per_source)
    agreement = 1.0 - len(real) / n if n else 1.0
    raw = 1.0 - len(flips) / n if n else 1.0
    worst = max(real, key=lambda r: r["ref_gap_logits"], default=None)
    t1 = {"images": n, "top1_agreement": agreement, "top1_agreement_raw": raw, "flips": len(flips),
          "tie_flips": len(flips) - len(real), "non_finite_target": bad,
          "worst_flip": ({"source": worst["source"], "ref_gap_logits": worst["ref_gap_logits"]} if worst else None)}
    t1_pass = n > 0 and not bad and agreement >= gate["min_top1_agreement"]
    t1_line = (f"top-1 agrees on {n - len(real)}/{n} image(s) ({agreement:.2%} >= {gate['min_top1_agreement']:.0%}; "
               f"{len(flips) - len(real)} flip(s) between reference near-ties within {gate['tie_logits']:g} logits "
               f"excused, {raw:.2%} raw)" + (f", {bad} non-finite target output(s)" if bad else ""))
    overlap = [r["top5_overlap"] for r in per_source]
    mean5 = float(np.mean(overlap)) if n else 1.0
    raw5 = float(np.mean([r["top5_overlap_raw"] for r in per_source])) if n else 1.0
    t5 = {"images": n, "mean_top5_overlap": mean5, "min_top5_overlap": float(min(overlap)) if n else 1.0,
          "mean_top5_overlap_raw": raw5}
    t5_pass = n > 0 and not bad and mean5 >= gate["min_top5_overlap"]
    t5_line = (f"top-5 overlap mean {mean5:.2%} (>= {gate['min_top5_overlap']:.0%}; classes the reference rates "
               f"within {gate['tie_logits']:g} logits of its 5th count as shared), min {t5['min_top5_overlap']:.0%}, "
               f"raw mean {raw5:.2%}")
    return [{"name": "top1", "passed": bool(t1_pass), "line": t1_line, "figures": t1,
             "gate": {"min_top1_agreement": gate["min_top1_agreement"], "tie_logits": gate["tie_logits"]}},
            {"name": "top5", "passed": bool(t5_pass), "line": t5_line, "figures": t5,
             "gate": {"min_top5_overlap": gate["min_top5_overlap"]}}]
