"""Find a small set of nodes to keep in fp32 so the fp16 emulation passes the compare gate."""
from __future__ import annotations

from pipeline.config import gate_for, load_family
from pipeline.metrics import gate_check

from .emulate import round_fp16
from .layerwise import session


def evaluate(model32, feeds_list, cfg, keep_nodes=(), keep_op_types=(), ref=None) -> dict:
    """Final outputs of the fp16 emulation (with the keep lists) against fp32, through compare's gate.

    Every sample of every output goes through pipeline.metrics.gate_check with the output's gate and
    compare.rtol / compare.atol_scale, and the family's task gate (a classifier's top-1/top-5) over the samples,
    as `make compare` does, so PASSED here means PASSED there."""
    s16 = session(round_fp16(model32, keep_nodes, keep_op_types))
    if ref is None:
        s32 = session(model32)
        ref = [dict(zip([o.name for o in s32.get_outputs()], s32.run(None, f))) for f in feeds_list]
    names = [o.name for o in s16.get_outputs()]
    rtol, atol_scale = cfg["compare"]["rtol"], cfg["compare"]["atol_scale"]
    worst, outs = {}, []
    for feeds, r in zip(feeds_list, ref):
        got = dict(zip(names, s16.run(None, feeds)))
        outs.append(got)
        for name, b in r.items():
            gate = gate_for(cfg, name)
            m, fails = gate_check(got[name], b, gate, rtol, atol_scale)
            w = worst.setdefault(name, {"rel_l2": 0.0, "cosine": 1.0, "violation_fraction": 0.0, "nonfinite": 0,
                                        "passed": True, "failed_samples": 0, "failures": [], "gate": dict(gate)})
            if fails and (not w["failures"] or m["rel_l2"] > w["_fail_rel_l2"]):
                w["failures"], w["_fail_rel_l2"] = fails, m["rel_l2"]     # the worst failing sample's reasons
            w["rel_l2"] = max(w["rel_l2"], m["rel_l2"])
            w["cosine"] = min(w["cosine"], m["cosine"])
            w["violation_fraction"] = max(w["violation_fraction"], m["violation_fraction"])
            w["nonfinite"] += m["nonfinite_in_target"]
            w["failed_samples"] += bool(fails)
            w["passed"] = w["passed"] and not fails
    for w in worst.values():
        w.pop("_fail_rel_l2", None)
    task = task_verdicts(cfg, ref, outs)
    passed = all(w["passed"] for w in worst.values()) and all(v["passed"] for v in task or [])
    return {"passed": passed, "outputs": worst, "_ref": ref,
            **({"task": [{k: v[k] for k in ("name", "passed", "line")} for v in task]} if task else {})}


def task_verdicts(cfg, ref: list[dict], got: list[dict]) -> list[dict] | None:
    """The family's task gate over these samples, one sample a source; None when the family has none, or when
    its task figures need the item context (frames, offsets) that only make compare keeps."""
    family = load_family(cfg["family"]) if cfg.get("family") else None     # bare gate configs (tests) have none
    if family is None or not family.has("task_metrics", cfg):
        return None
    try:
        per = [{"source": f"sample {i}", **family.task_metrics(cfg, f"sample {i}", [r], [g], {})}
               for i, (r, g) in enumerate(zip(ref, got))]
    except KeyError:
        return None
    return family.task_gate(cfg, per)


def candidates(rows: list[dict]) -> list[str]:
    """Nodes to try, most likely culprits first: values beyond fp16's range, then where the error jumps."""
    overflow = [r["node"] for r in rows if r["overflow"] > 0 or r["nonfinite"] > 0]
    jumps = sorted((r for r in rows if r["rel_l2"] > 1e-3 and r["node"] not in overflow),
                   key=lambda r: -r["jump"] * r["rel_l2"])
    return overflow + [r["node"] for r in jumps]


def search(model32, feeds_list, cfg, rows, max_rounds: int = 8, step: int = 4) -> dict:
    """Greedy: add culprits until the gate passes, then drop every node that is not needed."""
    before = evaluate(model32, feeds_list, cfg)
    ref = before["_ref"]
    history = [{"keep": [], **_public(before)}]
    if before["passed"]:
        return {"before": _public(before), "after": _public(before), "keep": [], "history": history,
                "passed": True}
    order = candidates(rows)
    keep: list[str] = []
    first_round = [n for n in order if any(r["node"] == n and (r["overflow"] or r["nonfinite"]) for r in rows)]
    result = before
    for rnd in range(max_rounds):
        add = first_round if rnd == 0 and first_round else [n for n in order if n not in keep][:step * (rnd + 1)]
        if not add:
            break
        keep += [n for n in add if n not in keep]
        result = evaluate(model32, feeds_list, cfg, keep, ref=ref)
        history.append({"keep": list(keep), **_public(result)})
        if result["passed"]:
            break
    if result["passed"]:
        for node in list(reversed(keep)):                     # prune what the gate does not need
            trial = [n for n in keep if n != node]
            r = evaluate(model32, feeds_list, cfg, trial, ref=ref)
            if r["passed"]:
                keep, result = trial, r
                history.append({"keep": list(keep), **_public(r), "pruned": node})
    return {"before": _public(before), "after": _public(result), "keep": keep, "history": history,
            "passed": result["passed"]}


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}
