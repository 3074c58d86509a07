"""make zoo: sweep the models of configs/zoo.yaml (or ZOO=<names>) through every stage; one row per model."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import load_config
from pipeline.errors import ConfigError, UnknownModelError
from pipeline.paths import ROOT, ModelPaths

from . import STAGES, listing, row as R, table
from .stages import child_env, one_line, run


class Sweep:
    def __init__(self, doc: dict, backend: str):
        self.doc, self.backend = doc, backend
        self.out = ModelPaths("zoo").results                 # results/zoo
        self.models_results = self.out / "models"
        self.logs = ModelPaths("zoo").logs / "models"        # logs/zoo/models
        self.env = child_env(self.models_results, self.logs)
        self.code = {s: listing.code_digest(s) for s in listing.SOURCES}
        self.samples = 2

    def row_file(self, name: str) -> Path:
        return self.out / "rows" / f"{name}.json"

    def old_row(self, name: str, inputs: str) -> dict | None:
        path = self.row_file(name)
        if not path.is_file():
            return None
        old = json.loads(path.read_text(encoding="utf-8"))
        timeouts = any(s["verdict"] == "timeout" for s in old["stages"].values())
        return old if old.get("inputs_sha256") == inputs and R.complete(old["stages"]) and not timeouts else None

    def stage(self, target: str, name: str, limits: dict, suffix: str = ""):
        o = run(target, name, self.backend, limits[target], self.logs / name / f"{target}{suffix}.log",
                {**self.env, "PRECISION_SAMPLES": str(self.samples)})
        state = "passed" if o.ok else "timeout" if o.timed_out else "failed"
        print(f"zoo | {name}: make {target}{suffix} {state} ({o.seconds:.1f} s){': ' + o.message if o.message else ''}",
              flush=True)
        return o

    def model(self, e: dict, force: bool) -> dict:
        name, limits = e["name"], listing.timeouts(self.doc, e)
        t0 = time.perf_counter()
        try:
            cfg = listing.base_config(self.doc, e)
        except ConfigError as exc:
            cause = exc.code if isinstance(exc, UnknownModelError) else "config"
            print(f"ERROR | zoo {name}: {one_line(str(exc))}", flush=True)
            return self.finish(e, None, {s: (R.stage("failed", None, cause, one_line(str(exc))) if s == "export"
                                             else R.skipped(f"{cause}: nothing to run")) for s in STAGES}, t0)
        inputs = listing.row_inputs(cfg, e, limits, self.backend, self.code[e["source"]])
        old = None if force else self.old_row(name, inputs)
        if old is not None:
            print(f"zoo | {name}: config, code and weights unchanged since its row; skipped (ZOO={name} reruns it)")
            return old
        listing.write_config(cfg)
        try:
            self.samples = load_config(name)["infer"]["samples"]     # the doctor sees every input compare saw
        except ConfigError as exc:
            print(f"ERROR | zoo {name}: {one_line(str(exc))}", flush=True)
            return self.finish(e, inputs, {s: (R.stage("failed", None, "config", one_line(str(exc))) if s == "export"
                                               else R.skipped("config: nothing to run")) for s in STAGES}, t0, cfg)
        res = self.models_results / name
        st = {"export": R.export(self.stage("export", name, limits), res)}
        fix = listing.export_fix(st["export"].get("error"), e["source"]) if st["export"]["verdict"] == "failed" \
            else None
        if fix:
            cfg = self.fix_export(cfg, fix, name, limits, res, st)
        if st["export"]["verdict"] not in ("passed", "fixed"):
            st.update({s: R.skipped("export did not pass") for s in STAGES[1:]})
            return self.finish(e, inputs, st, t0, cfg)
        st["preflight"] = R.preflight(self.stage("preflight", name, limits), res)
        o = self.stage("om", name, limits)
        st["om"] = R.stage("passed", o) if o.ok else R.timed_out(o) if o.timed_out else \
            R.stage("failed", o, "om-failed", o.message)
        if st["om"]["verdict"] != "passed":
            st.update({s: R.skipped("make om did not pass") for s in ("compare", "precision", "bench")})
            return self.finish(e, inputs, st, t0, cfg)
        st["compare"] = R.compare(self.stage("compare", name, limits), res)
        if st["compare"]["cause"] == "fp16-gate":
            st["precision"] = R.precision(self.stage("precision", name, limits), res)
            if st["precision"]["verdict"] == "passed":
                self.prove_fix(cfg, name, limits, res, st)
        else:
            st["precision"] = R.stage("not-needed", message="the fp16 gate passed") \
                if st["compare"]["verdict"] == "passed" else R.skipped("make compare did not run to a verdict")
        st["bench"] = R.bench(self.stage("bench", name, limits), res)
        return self.finish(e, inputs, st, t0, cfg)

    def fix_export(self, cfg: dict, fix: tuple[dict, str], name: str, limits: dict, res: Path, st: dict) -> dict:
        """A known exporter failure: its config keys go into the config and make export runs again."""
        patch, what = fix
        fixed = listing.merge(cfg, patch)
        listing.write_config(fixed)
        before = st["export"]
        after = R.export(self.stage("export", name, limits, "+fix"), res)
        after["seconds"] += before["seconds"]
        after["fix"] = {"what": what, "config": patch, "before": before["message"]}
        if after["verdict"] == "passed":
            after.update(verdict="fixed", cause=before["cause"], message=f"{before['message']}; fixed: {what}")
        st["export"] = after
        return fixed

    def prove_fix(self, cfg: dict, name: str, limits: dict, res: Path, st: dict) -> None:
        """The doctor's fix goes into the config; make om + make compare must then pass the gate."""
        fix = st["precision"]
        listing.write_config(listing.merge(cfg, fix["config"]))
        o = self.stage("om", name, limits, "+keep_dtype")
        after = R.compare(self.stage("compare", name, limits, "+keep_dtype"), res) if o.ok else \
            R.stage("failed", o, "om-failed", o.message)
        st["precision"]["proof"] = {k: after.get(k) for k in ("verdict", "worst_rel_l2", "min_cosine", "message")}
        st["precision"]["seconds"] += after["seconds"] + round(o.seconds, 2)
        if after["verdict"] == "passed":
            st["compare"].update(verdict="fixed", message=f"{st['compare']['message']}; fixed by {fix['what']}, "
                                 f"make compare passes: worst rel L2 {after['worst_rel_l2']:.2e}")
        else:
            st["precision"].update(verdict="failed", message="the emulated fix did not pass make compare: "
                                   + (after["message"] or after["verdict"]))

    def crashed(self, e: dict, exc: Exception) -> dict:
        msg = one_line(f"{type(exc).__name__}: {exc}")
        print(f"ERROR | zoo {e['name']}: the sweep failed on this model: {msg}", flush=True)
        return self.finish(e, None, {s: R.stage("failed", None, "zoo-error", msg) if s == "export"
                                     else R.skipped("zoo-error") for s in STAGES}, time.perf_counter())

    def finish(self, e: dict, inputs: str | None, st: dict, t0: float, cfg: dict | None = None) -> dict:
        outcome, causes = R.outcome_of(st)
        row = {"name": e["name"], "architecture": e["architecture"], "source": e["source"],
               "module": listing.module_of(e), "weights": listing.weights_of(st["export"], cfg, e),
               "config": str(listing.generated_config_dir() / f"{e['name']}.yaml"), "inputs_sha256": inputs,
               "git": provenance.git_revision(), "outcome": outcome, "causes": causes, "stages": st,
               "seconds": round(time.perf_counter() - t0, 2)}
        write_json(self.row_file(e["name"]), row)
        label = "PASSED" if outcome.startswith("adapts") else "FAILED"
        print(f"{label} | zoo {e['name']}: {outcome}{' (' + ', '.join(causes) + ')' if causes else ''} "
              f"in {row['seconds']:.0f} s", flush=True)
        return row


def run_sweep(zoo_list: str = 'configs/zoo.yaml', only: list | None = None, backend: str = 'auto') -> int:
    """sweep ZOO_LIST (or ZOO=<names>) through every zoo stage -> results/zoo/ZOO.md (the `make zoo` stage as a library call)."""
    doc = listing.load_list(Path(zoo_list) if Path(zoo_list).exists() else ROOT / zoo_list)
    sweep = Sweep(doc, backend)
    entries = listing.select(doc, only)
    t0 = time.perf_counter()
    rows = []
    try:
        for i, e in enumerate(entries, 1):
            print(f"zoo | [{i}/{len(entries)}] {e['name']}", flush=True)
            try:
                rows.append(sweep.model(e, force=bool(only)))
            except (OSError, ValueError, KeyError, TypeError) as exc:     # a model never stops the sweep
                rows.append(sweep.crashed(e, exc))
    except KeyboardInterrupt:
        print(f"ERROR | zoo interrupted: {len(rows)} of {len(entries)} row(s) written, none half-written; run the "
              "same make zoo again to complete the sweep", file=sys.stderr)
        return 130
    wall = time.perf_counter() - t0
    listed = [e["name"] for e in doc["models"]]
    paths = table.write(sweep.out, doc, listed, backend, wall, [e["name"] for e in entries])
    counts = table.totals(table.read_rows(sweep.out, listed))
    print(f"zoo | {', '.join(f'{v} {k}' for k, v in counts['outcomes'].items())}; this run {wall:.0f} s; "
          f"{', '.join(str(p) for p in paths)}")
    missing = [r["name"] for r in rows if not R.complete(r["stages"])]
    if missing:
        print(f"ERROR | zoo: no verdict for every stage of {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
