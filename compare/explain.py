"""Plain-language notes next to the numbers, so a large masked relative error is not misread."""
from __future__ import annotations


def explain_output(summary: dict, rows: list[dict]) -> list[str]:
    notes = []
    near_zero = max(r["near_zero_share"] for r in rows)
    below = max(r["ref_below_fp16_normal_share"] for r in rows)
    if summary["masked_rel_max"] > 0.1 and summary["worst_rel_l2"] < 0.01:
        notes.append(
            f"masked relative error reaches {summary['masked_rel_max']:.2g} while relative L2 stays "
            f"{summary['worst_rel_l2']:.2g}: up to {near_zero:.1%} of reference values are below 1e-3 of the "
            f"tensor's maximum ({below:.1%} below fp16's smallest normal 6.1e-5), where a tiny absolute error is a "
            "large ratio; these elements carry almost no weight, so the gate uses relative L2 and cosine, and "
            f"the floored relative error p99 (worst {max(r['floored_rel_p99'] for r in rows):.2g}) is the better "
            "per-element view")
    if summary["worst_rel_l2"] == 0.0:
        notes.append("target and reference are bit-identical (the target is the reference backend itself)")
    return notes
