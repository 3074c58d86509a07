"""CREPE's task-level gate: target pitch against the fp32 reference's pitch, over the reference's voiced frames."""
from __future__ import annotations

import numpy as np

TASK_GATE_DEFAULTS = {"max_median_cents": 5.0, "min_within_50": 0.95, "min_voicing_agreement": 0.98,
                      "min_voiced_frames": 1}


def cents_error(f0: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(1200.0 * np.log2(np.asarray(f0, np.float64) / np.asarray(ref, np.float64)))


def source_metrics(ref: dict, tgt: dict) -> dict:
    """ref/tgt: decoded tracks {f0, voiced} of one source. Cents over the reference's voiced frames."""
    n = int(ref["f0"].shape[0])
    if tgt["f0"].shape[0] != n:
        raise ValueError(f"target has {tgt['f0'].shape[0]} frames, reference {n}")
    v = ref["voiced"].astype(bool)
    out = {"frames": n, "voiced_frames": int(v.sum()),
           "voicing_agreement": float(np.mean(ref["voiced"] == tgt["voiced"])) if n else 1.0}
    if v.any():
        err = cents_error(tgt["f0"][v], ref["f0"][v])
        out.update({"median_cents": float(np.median(err)), "p95_cents": float(np.percentile(err, 95)),
                    "max_cents": float(err.max()), "within_10": float(np.mean(err <= 10.0)),
                    "within_50": float(np.mean(err <= 50.0))})
    else:
        out.update({"median_cents": None, "p95_cents": None, "max_cents": None, "within_10": None,
                    "within_50": None})
    return out


def _worst(rows: list[dict], key: str, pick) -> tuple:
    rated = [r for r in rows if r.get(key) is not None]
    if not rated:
        return None, None
    row = pick(rated, key=lambda r: r[key])
    return row[key], row.get("source")


def task_gate(gate: dict, per_source: list[dict]) -> list[dict]:
    """Two verdicts: 'pitch' (every source's median cents and share within 50 cents) and 'voicing'."""
    voiced = sum(r["voiced_frames"] for r in per_source)
    med, med_src = _worst(per_source, "median_cents", max)
    w50, w50_src = _worst(per_source, "within_50", min)
    w10, _ = _worst(per_source, "within_10", min)
    pooled = {k: (sum(r[k] * r["voiced_frames"] for r in per_source if r[k] is not None) / voiced if voiced else None)
              for k in ("within_10", "within_50")}
    figures = {"sources": len(per_source), "voiced_frames": voiced, "worst_median_cents": med,
               "worst_median_source": med_src, "min_within_50": w50, "min_within_50_source": w50_src,
               "min_within_10": w10, "pooled_within_10": pooled["within_10"], "pooled_within_50": pooled["within_50"]}
    g = {k: gate[k] for k in ("max_median_cents", "min_within_50", "min_voiced_frames")}
    bad = sum(r.get("non_finite_target", 0) for r in per_source)
    figures["non_finite_target"] = bad
    if bad:
        passed = False
        line = f"the target returned {bad} non-finite activation(s) (fp16 overflow?); run `make precision`"
    elif voiced < gate["min_voiced_frames"]:
        passed = False
        line = (f"{voiced} voiced reference frame(s) over {len(per_source)} source(s), fewer than "
                f"{gate['min_voiced_frames']}: pitch cannot be judged; give recordings with voiced sound")
    else:
        passed = med <= gate["max_median_cents"] and w50 >= gate["min_within_50"]
        line = (f"{voiced} voiced frame(s) over {len(per_source)} source(s): worst median {med:.3f} cents "
                f"(<= {gate['max_median_cents']}), min within 50 cents {w50:.2%} (>= {gate['min_within_50']:.0%}), "
                f"min within 10 cents {w10:.2%}, pooled within 10 cents {pooled['within_10']:.2%}")
    frames = sum(r["frames"] for r in per_source)
    agree, agree_src = _worst(per_source, "voicing_agreement", min)
    pooled_agree = (sum(r["voicing_agreement"] * r["frames"] for r in per_source) / frames) if frames else None
    v_fig = {"sources": len(per_source), "frames": frames, "min_voicing_agreement": agree,
             "min_voicing_agreement_source": agree_src, "pooled_voicing_agreement": pooled_agree}
    v_pass = agree is not None and agree >= gate["min_voicing_agreement"] and not bad
    v_line = (f"{frames} frame(s) over {len(per_source)} source(s): min voicing agreement "
              f"{agree:.2%} (>= {gate['min_voicing_agreement']:.0%}), pooled {pooled_agree:.2%}"
              if agree is not None else "no frames to compare")
    return [{"name": "pitch", "passed": bool(passed), "line": line, "figures": figures, "gate": g},
            {"name": "voicing", "passed": bool(v_pass), "line": v_line, "figures": v_fig,
             "gate": {"min_voicing_agreement": gate["min_voicing_agreement"]}}]
