"""Find the set of nodes to keep in fp32 that passes the compare gate in the fp16 emulation at the least fp32 compute.

The price of a keep is the compute it moves to fp32 (convert/compute.py), and where: an fp32 op on the vector unit
costs little, an fp32 Conv/MatMul on the cube unit is slow and some chips have no fp32 cube at all
(convert/soc_precision.py). So the search tries vector-unit nodes first and cube nodes only when no vector-only set
passes; within a tier it adds candidates by benefit per fp32 flop, then prunes the most expensive nodes first.
Nodes the target SoC cannot run in fp32 (and GRU/LSTM, whose Ascend kernels are fp16-only) are never offered.
"""
from __future__ import annotations

import math
import time

from pipeline.config import gate_for, load_family
from pipeline.metrics import gate_check

from .emulate import round_fp16
from .layerwise import session

RECURRENT_TYPES = ("GRU", "LSTM", "RNN")
RECURRENCE_MARK = "/fp16_recurrence/"      # nodes of an emulated recurrence (convert/rnn_fp16.py)


def evaluate(model32, feeds_list, cfg, keep_nodes=(), keep_op_types=(), ref=None) -> dict:
    """Final outputs of the fp16 emulation (with the keep lists) against fp32, through compare's gate.

    Every sample of every output goes through pipeline.metrics.gate_check with the output's gate and
    compare.rtol / compare.atol_scale, and the family's task gate (a classifier's top-1/top-5) over the samples,
    as `make compare` does, so PASSED here means PASSED there. The sessions take the config's onnxruntime threads
    and graph optimisation, as the ort-fp16 target and the fp32 reference of make compare do: optimisations such as
    Conv+BatchNormalization fusion change fp32 arithmetic in kept regions, which a chaotic net amplifies."""
    o = cfg.get("onnxruntime") or {}
    opts = (o.get("intra_op_threads", 0), o.get("graph_optimization", "disable"))     # the target's and reference's
    s16 = session(round_fp16(model32, keep_nodes, keep_op_types), *opts)
    if ref is None:
        s32 = session(model32, *opts)
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


def badness(result: dict) -> float:
    """How far the worst output is from its gate: max of rel L2 / limit and (1 - cosine) / (1 - limit); <= 1 on the
    tensor gate's side (the task gate and the violation share are not in it: this only orders candidates)."""
    worst = 0.0
    for o in result["outputs"].values():
        g = o.get("gate") or {}
        rel = o["rel_l2"] / g["max_rel_l2"] if g.get("max_rel_l2") else 0.0
        cos = (1.0 - o["cosine"]) / (1.0 - g["min_cosine"]) if g.get("min_cosine") is not None and g["min_cosine"] < 1 \
            else 0.0
        worst = max(worst, rel, cos, 1e6 if o.get("nonfinite") else 0.0)
    return worst


def is_recurrent(name: str, op_type: str) -> bool:
    """A GRU/LSTM node, or a node of an emulated recurrence: Ascend computes these in fp16 whatever the keep list."""
    if op_type in RECURRENT_TYPES:
        return True
    try:
        from convert.rnn_fp16 import is_emulated
    except ImportError:
        return RECURRENCE_MARK in name
    return bool(is_emulated(name)) or RECURRENCE_MARK in name


def benefit(row: dict) -> float:
    """Error a node adds to its inputs' (rel L2 above the worst upstream), huge for values beyond fp16's range."""
    if row["overflow"] > 0 or row["nonfinite"] > 0:
        return 1e6
    jump = row.get("jump") or 1.0
    return max(row["rel_l2"] * (1.0 - 1.0 / jump), 0.0) if jump > 1 else 0.0


def candidates(rows: list[dict], costs: dict | None = None) -> list[str]:
    """Nodes to try, most likely culprits first: values beyond fp16's range, then where the error jumps (per fp32
    flop when costs are given: cheap vector nodes before an expensive convolution with the same jump)."""
    overflow = [r["node"] for r in rows if r["overflow"] > 0 or r["nonfinite"] > 0]
    if costs is None:
        jumps = sorted((r for r in rows if r["rel_l2"] > 1e-3 and r["node"] not in overflow),
                       key=lambda r: -r["jump"] * r["rel_l2"])
        return overflow + [r["node"] for r in jumps]
    total = sum(c["flops"] for c in costs.values()) or 1.0
    rest = [r for r in rows if r["node"] not in overflow and benefit(r) > 0]
    rest.sort(key=lambda r: -benefit(r) / ((costs.get(r["node"], {}).get("flops", 0.0) / total) + 1e-9))
    return overflow + [r["node"] for r in rest]


class _Search:
    """One search: evaluations memoised by keep set and counted against a budget."""

    def __init__(self, model32, feeds_list, cfg, costs, ref, max_evals: int, max_seconds: float):
        self.model, self.feeds, self.cfg, self.costs, self.ref = model32, feeds_list, cfg, costs, ref
        self.total = sum(c["flops"] for c in costs.values()) or 1.0
        self.max_evals, self.evals, self.memo, self.history = max_evals, 0, {}, []
        self.deadline = time.monotonic() + max_seconds
        self.tidy = 32              # keep lists up to this long are pruned node by node, whatever each node costs

    def cost(self, nodes) -> float:
        return sum(self.costs.get(n, {}).get("flops", 0.0) for n in nodes) / self.total

    def budget_left(self) -> bool:
        return self.evals < self.max_evals and time.monotonic() < self.deadline

    def run(self, keep: list[str], step: str) -> dict:
        key = frozenset(keep)
        if key not in self.memo:
            self.evals += 1
            r = evaluate(self.model, self.feeds, self.cfg, list(keep), ref=self.ref)
            self.memo[key] = r
            self.history.append({"step": step, "kept": len(key), "fp32_share": self.cost(key), "passed": r["passed"],
                                 "worst_rel_l2": max(o["rel_l2"] for o in r["outputs"].values()),
                                 "badness": badness(r)})
        return self.memo[key]

    def grow(self, keep: list[str], pool: list[str], rows_by: dict, tier: str, groups: int) -> tuple[list, dict]:
        """Add nodes of `pool` to `keep` until the gate passes: culprits (overflow) first; then contiguous groups of
        the pool, measured one by one and added by error removed per fp32 flop."""
        result = self.run(keep, f"{tier}: start")
        if result["passed"]:
            return keep, result
        everything = keep + [n for n in pool if n not in keep]
        if not self.run(everything, f"{tier}: every candidate")["passed"]:
            return everything, self.memo[frozenset(everything)]         # this tier cannot pass: the caller widens it
        culprits = [n for n in pool if n not in keep and benefit(rows_by[n]) >= 1e6]
        if culprits:
            keep = keep + culprits
            result = self.run(keep, f"{tier}: values beyond fp16's range")
            if result["passed"]:
                return keep, result
        rest = [n for n in pool if n not in keep]
        size = max(1, math.ceil(len(rest) / groups))
        chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
        base = badness(result) ** 2
        scored = []
        for i, chunk in enumerate(chunks):
            if not self.budget_left():
                scored.append((0.0, i, chunk))
                continue
            r = self.run(keep + chunk, f"{tier}: group {i + 1}/{len(chunks)} alone")
            gain = max(base - badness(r) ** 2, 0.0) + (1e3 if r["passed"] else 0.0)
            scored.append((gain / (self.cost(chunk) + 1e-9), i, chunk))
        scored.sort(key=lambda s: (-s[0], s[1]))
        for k, (_, _, chunk) in enumerate(scored):
            keep = keep + chunk
            if k == len(scored) - 1:
                keep = everything                                   # all groups: the set known to pass
            result = self.run(keep, f"{tier}: add group {k + 1} of {len(scored)}")
            if result["passed"]:
                break
        return keep, result

    def prune(self, keep: list[str], result: dict) -> tuple[list, dict]:
        """Drop what the gate does not need, the most expensive nodes first: halves, quarters, ... of the kept list,
        down to single nodes while the budget lasts."""
        order = sorted(keep, key=lambda n: -self.costs.get(n, {}).get("flops", 0.0))
        size = max(1, len(order) // 2)
        while order and self.budget_left():
            removed = False
            for i in range(0, len(order), size):
                chunk = [n for n in order[i:i + size] if n in keep]
                if not chunk or not self.budget_left():
                    continue
                if len(keep) > self.tidy and self.cost(chunk) < 0.01 * self.cost(keep):
                    continue                        # long lists: no run for what would not move the price
                trial = [n for n in keep if n not in chunk]
                r = self.run(trial, f"prune {len(chunk)}")
                if r["passed"]:
                    keep, result, removed = trial, r, True
            order = [n for n in order if n in keep]
            if size == 1 and not removed:
                break
            size = max(1, size // 2) if not removed or size > 1 else 1
        return keep, result


def search(model32, feeds_list, cfg, rows, costs: dict | None = None, allowed=None, max_evals: int = 80,
           groups: int = 12, max_seconds: float = 600.0) -> dict:
    """The cheapest keep list found that passes the gate.

    Only nodes with a float output that compute something, that allowed(name, op_type) accepts (the target SoC can
    run them in fp32) and that are not recurrent are candidates. Tier "vector" tries vector-unit nodes; tier "cube"
    adds Conv/MatMul/Gemm nodes only when no vector-only set passes. Every evaluation is the full emulation through
    compare's gate (evaluate), at most max_evals of them and none started after max_seconds (a set that passes is
    always kept: the budget only cuts the pruning short)."""
    from convert.compute import node_costs, shares

    costs = costs if costs is not None else node_costs(model32)
    before = evaluate(model32, feeds_list, cfg)
    s = _Search(model32, feeds_list, cfg, costs, before["_ref"], max_evals, max_seconds)
    s.memo[frozenset()] = before
    s.history.append({"step": "force_fp16", "kept": 0, "fp32_share": 0.0, "passed": before["passed"],
                      "worst_rel_l2": max(o["rel_l2"] for o in before["outputs"].values()), "badness": badness(before)})
    done = {"before": _public(before), "history": s.history, "excluded": {}, "tiers": []}
    if before["passed"]:
        return {**done, "after": _public(before), "keep": [], "passed": True, "tier": None,
                **shares(costs, []), "evaluations": 0}
    rows_by = {r["node"]: r for r in rows}
    ok = allowed or (lambda name, op: True)
    pool = {"vector": [], "cube": []}
    for r in rows:
        unit = costs.get(r["node"], {}).get("unit", "vector")
        if unit == "none":
            continue
        if is_recurrent(r["node"], r["op_type"]):
            done["excluded"][r["node"]] = "recurrent: Ascend computes GRU/LSTM in fp16 whatever the keep list"
        elif not ok(r["node"], r["op_type"]):
            done["excluded"][r["node"]] = f"{r['op_type']}: the target SoC has no fp32 kernel for it"
        else:
            pool[unit].append(r["node"])
    keep, result, tier = [], before, None
    both = set(pool["vector"]) | set(pool["cube"])
    tiers = [("vector", pool["vector"])] + ([("cube", [r["node"] for r in rows if r["node"] in both])]
                                            if pool["cube"] else [])         # topological: groups are regions
    for tier, nodes in tiers:
        done["tiers"].append(tier)
        keep, result = s.grow([], nodes, rows_by, tier, groups)
        if result["passed"]:
            break
    if result["passed"]:
        keep, result = s.prune(keep, result)
    else:
        keep = []
    return {**done, "after": _public(result), "keep": keep, "passed": result["passed"], "tier": tier,
            **shares(costs, keep), "evaluations": s.evals}


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}
