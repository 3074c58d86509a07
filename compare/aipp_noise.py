"""make compare on an AIPP config: the input noise AIPP adds, apart from the network's own fp16 error.

The target ran on uint8 pixels (the .om's AIPP, or its emulation); the reference on the fp32 normalisation of the
same pixels. Two figures split the difference: the input noise (AIPP's arithmetic against the fp32 normalisation,
and its bound over all 256 levels), and what that noise alone does at the output (the fp32 network fed AIPP's
input, against the reference's outputs).
"""
from __future__ import annotations

import numpy as np

from convert import aipp, backends
from pipeline.paths import ModelPaths

MAX_ITEMS = 64          # items the output share is measured on (the fp32 network runs once more on each)


def aipp_noise(cfg: dict, manifest: dict, outputs: list[str]) -> dict | None:
    p = aipp.plan(cfg)
    if not p:
        return None
    paths = ModelPaths(cfg["name"])
    ref = backends.reference_runner(cfg)
    inner = ref.inner if isinstance(ref, aipp.HostAipp) else ref
    items = manifest["items"][:MAX_ITEMS]
    diff2 = norm2 = 0.0
    max_abs, rel = 0.0, {o: [] for o in outputs}
    with aipp.HostAipp(inner, p, "emulate") as net:
        for item in items:
            px = np.load(paths.inputs / item["files"][p["input"]])
            a, b = aipp.emulate(px, p).astype(np.float64), aipp.reference(px, p).astype(np.float64)
            max_abs = max(max_abs, float(np.abs(a - b).max()))
            diff2 += float(((a - b) ** 2).sum())
            norm2 += float((b ** 2).sum())
            feeds = {n: np.load(paths.inputs / f) for n, f in item["files"].items()}
            out = net.infer(feeds)
            for o in outputs:
                r = np.load(paths.outputs("reference") / f"{item['id']}.{o}.npy").astype(np.float64)
                t = out[o].astype(np.float64)
                rel[o].append(float(np.linalg.norm(t - r) / max(np.linalg.norm(r), 1e-30)))
    bound = aipp.noise_bound(p)
    per_out = {o: {"worst_rel_l2": max(v), "median_rel_l2": float(np.median(v))} for o, v in rel.items() if v}
    first = next(iter(per_out.items()), None)
    line = (f"AIPP input noise over {len(items)} item(s): max abs {max_abs:.2e} (bound {bound['max_abs']:.2e} over "
            f"all 256 levels), rel L2 {np.sqrt(diff2 / max(norm2, 1e-30)):.2e}"
            + (f"; alone at the output ({first[0]}, fp32 network fed AIPP's input): worst rel L2 "
               f"{first[1]['worst_rel_l2']:.2e}, median {first[1]['median_rel_l2']:.2e}" if first else ""))
    return {"items": len(items), "input": {"max_abs": max_abs, "rel_l2": float(np.sqrt(diff2 / max(norm2, 1e-30)))},
            "bound": bound, "output_from_aipp_alone": per_out, "line": line,
            "definition": "input: AIPP's arithmetic (fp16 min_chn/var_reci_chn, fp16 result) against the fp32 "
                          "normalisation of the same uint8 pixels; output_from_aipp_alone: the fp32 reference "
                          "network fed AIPP's input, against the reference outputs (no fp16 in the network)",
            "aipp": {k: p[k] for k in ("input", "format", "src", "crop")}}
