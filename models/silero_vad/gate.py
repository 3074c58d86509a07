"""Silero VAD's task-level gate: the target's speech segments against the fp32 reference's, per source."""
from __future__ import annotations

import numpy as np

from .segments import compare_segments


def source_metrics(ref_p: np.ndarray, tgt_p: np.ndarray, ref_segs, tgt_segs, threshold: float, window: int) -> dict:
    n = int(ref_p.shape[0])
    if tgt_p.shape[0] != n:
        raise ValueError(f"target has {tgt_p.shape[0]} chunks, reference {n}")
    out = compare_segments(ref_segs, tgt_segs, n, window)
    out.update({"chunks": n, "max_abs_prob_diff": float(np.abs(ref_p - tgt_p).max()) if n else 0.0,
                "raw_decision_agreement": float(np.mean((ref_p >= threshold) == (tgt_p >= threshold))) if n else 1.0,
                "ref_segments": [list(s) for s in ref_segs][:50], "target_segments": [list(s) for s in tgt_segs][:50]})
    return out


def task_gate(gate: dict, per_source: list[dict], sample_rate: int) -> list[dict]:
    """Two verdicts: 'speech_chunks' (per-chunk speech/non-speech agreement of the segments, every source) and
    'segment_boundaries' (every source: as many segments as the reference, each boundary within the shift)."""
    chunks = sum(r["chunks"] for r in per_source)
    bad = sum(r.get("non_finite_target", 0) for r in per_source)
    rated = sorted(per_source, key=lambda r: r["chunk_agreement"])
    worst = rated[0] if rated else None
    pooled = sum(r["chunk_agreement"] * r["chunks"] for r in per_source) / chunks if chunks else None
    raw = sum(r["raw_decision_agreement"] * r["chunks"] for r in per_source) / chunks if chunks else None
    c_fig = {"sources": len(per_source), "chunks": chunks, "min_chunk_agreement": worst and worst["chunk_agreement"],
             "min_chunk_agreement_source": worst and worst["source"], "pooled_chunk_agreement": pooled,
             "pooled_raw_decision_agreement": raw, "non_finite_target": bad}
    if not per_source:
        c_pass, c_line = False, "no sources to compare"
    elif bad:
        c_pass, c_line = False, f"the target returned {bad} non-finite probabilities (fp16?); run `make precision`"
    else:
        c_pass = worst["chunk_agreement"] >= gate["min_chunk_agreement"]
        c_line = (f"{chunks} chunk(s) over {len(per_source)} source(s): min speech/non-speech agreement "
                  f"{worst['chunk_agreement']:.2%} (>= {gate['min_chunk_agreement']:.0%}), pooled {pooled:.2%}; "
                  f"raw prob >= threshold decisions agree {raw:.2%}")
    limit = gate["max_boundary_shift_ms"] * sample_rate / 1000
    counts = [r for r in per_source if not r["same_count"]]
    shifts = [r["max_boundary_shift_samples"] for r in per_source if r["same_count"]]
    worst_shift = max(shifts, default=0)
    segs = sum(r["segments_ref"] for r in per_source)
    b_fig = {"sources": len(per_source), "segments_ref": segs,
             "segments_target": sum(r["segments_target"] for r in per_source),
             "sources_with_other_count": [r["source"] for r in counts],
             "max_boundary_shift_ms": worst_shift * 1000 / sample_rate,
             "identical_sources": sum(bool(r["identical"]) for r in per_source)}
    if not per_source:
        b_pass, b_line = False, "no sources to compare"
    elif counts:
        r = counts[0]
        b_pass = False
        b_line = (f"{len(counts)} source(s) get another number of segments than the reference, e.g. {r['source']}: "
                  f"{r['segments_target']} against {r['segments_ref']}")
    else:
        b_pass = worst_shift <= limit and not bad
        b_line = (f"{segs} segment(s) over {len(per_source)} source(s), the same count everywhere; worst boundary "
                  f"shift {worst_shift * 1000 / sample_rate:.1f} ms (<= {gate['max_boundary_shift_ms']:g} ms, one chunk); "
                  f"{b_fig['identical_sources']} source(s) identical")
    return [{"name": "speech_chunks", "passed": bool(c_pass), "line": c_line, "figures": c_fig,
             "gate": {"min_chunk_agreement": gate["min_chunk_agreement"]}},
            {"name": "segment_boundaries", "passed": bool(b_pass), "line": b_line, "figures": b_fig,
             "gate": {"max_boundary_shift_ms": gate["max_boundary_shift_ms"]}}]
