"""make om: build the deployable targets that BACKEND needs here (pipeline/backends.py decides which)."""
from __future__ import annotations

import argparse
import os
import sys

from pipeline import backends, provenance
from pipeline.atomic import write_json
from pipeline.config import load_config
from pipeline.errors import PipelineError, cli
from pipeline.log import StageLog
from pipeline.paths import ModelPaths


@cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default=os.environ.get("BACKEND", "auto"))
    ap.add_argument("--soc", default=os.environ.get("SOC", ""))
    args = ap.parse_args(argv)
    if args.backend not in backends.NAMES:
        backends.get(args.backend)
    cfg = load_config(args.model, stage="om")
    paths = ModelPaths(cfg["name"])
    if not paths.onnx_sim.exists():
        raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first")
    log = StageLog(paths.logs / "om.log")
    plan, machine = backends.stage_plan(cfg, args.backend, args.soc)
    for name in plan.build:
        backends.check_build(name, machine)

    from . import ascend

    preflight = ascend.preflight(cfg, paths, log, strict="om" in plan.build)
    for note in plan.notes:
        log(f"om | {note}")
    script = ascend.write_script(cfg, paths, machine.soc, log)
    for name in plan.build:
        target = backends.build_target(name, cfg, paths, log, machine.soc)
        target.update({"model": cfg["name"], "atc_script": str(script) if script else None,
                       "preflight": preflight, "created": provenance.header("om", cfg)})
        write_json(paths.build / f"target-{name}.json", target)
    log(f"om | {cfg['name']}: built {', '.join(plan.build)}; infer/compare/bench run {plan.run}")
    log.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
