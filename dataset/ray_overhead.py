"""ENGINE=ray against the local engine, back to back on the same inputs, repeated: what Ray costs on this host.

    .venv/bin/python -m dataset.ray_overhead --model cnn8rnn_audioset_sed --backend ort-fp16 --sizes 200 1000 --repeat 2

For every repeat and size: `make infer` (local), then `make infer ENGINE=ray WORKERS=1` (and, with --before TREE,
the Ray engine of that checkout, e.g. `git worktree add build/before <commit>`), each a fresh stage
process in its own scratch tree (dataset/runs.py one_run, no compare), then a byte comparison of the two. The
overhead is the ratio of the two stage processes' wall times (start-up, model load, cluster start, all inputs,
shutdown). Ray's fixed cost is broken down from the `engine.cost` record of inference_result.json
(run/ray_engine.py). Writes results/<model>/ray_overhead.json (--work names the scratch folder only). On a shared machine, read the spread of the
repeats before the mean.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from convert import backends
from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import load_config, load_family
from pipeline.log import StageLog
from pipeline.paths import ModelPaths

from .runs import generate, one_run, same_outputs

TARGETS = {200: 0.15, 1000: 0.05}


def measure(model: str, backend: str, sizes: list[int], repeat: int, seed: int, workers: int, work: str,
            before: str = "") -> dict:
    cfg = load_config(model, stage="dataset")
    paths = ModelPaths(cfg["name"])
    backend, _ = backends.run_backend(cfg, backend)
    family = load_family(cfg["family"])
    log = StageLog(paths.logs / "ray_overhead.log")
    base = paths.build / (work or "ray-overhead")
    sources = generate(cfg, family, paths.build / "dataset" / f"sources-{max(sizes)}-seed{seed}", max(sizes), seed)
    rows = []
    for r in range(repeat):
        for n in sizes:
            loc = one_run(cfg, paths, backend, sources[:n], base / f"local-{n}", log, compare=False)
            ray = one_run(cfg, paths, backend, sources[:n], base / f"ray-{n}", log, engine="ray", workers=workers,
                          compare=False)
            same = same_outputs(Path(loc["root"]), Path(ray["root"]), cfg["name"], backend)
            res = json.loads((Path(ray["root"]) / "results" / cfg["name"] / "inference_result.json").read_text())
            row = {"repeat": r, "inputs": n, "local_wall_s": loc["infer"]["wall_s"], "ray_wall_s": ray["infer"]["wall_s"],
                   "ray_slower_by": ray["infer"]["wall_s"] / loc["infer"]["wall_s"] - 1,
                   "local_stage_wall_s": loc["infer"]["stage_wall_s"], "ray_stage_wall_s": ray["infer"]["stage_wall_s"],
                   "identical": same["identical"], "files_compared": same["files_compared"],
                   "ray_cost": res["engine"].get("cost")}
            if before:            # the Ray engine of another checkout, right after: the before of a change
                old = one_run(cfg, paths, backend, sources[:n], base / f"ray-before-{n}", log, engine="ray",
                              workers=workers, compare=False, code=Path(before).resolve())
                row.update({"before_ray_wall_s": old["infer"]["wall_s"], "before_tree": str(Path(before).resolve()),
                            "before_ray_slower_by": old["infer"]["wall_s"] / loc["infer"]["wall_s"] - 1,
                            "before_identical": same_outputs(Path(loc["root"]), Path(old["root"]), cfg["name"],
                                                             backend)["identical"]})
            rows.append(row)
            log(f"ray_overhead | repeat {r}, {n} files: local {row['local_wall_s']:.1f} s, ray {row['ray_wall_s']:.1f} s "
                f"({row['ray_slower_by']:+.1%}), outputs {'identical' if same['identical'] else 'DIFFER'}"
                + (f"; before: ray {row['before_ray_wall_s']:.1f} s ({row['before_ray_slower_by']:+.1%})" if before else ""))
            write_json(paths.results / "ray_overhead.partial.json", {"runs": rows})     # what is done so far
    summary = {}
    for n in sorted({x["inputs"] for x in rows}):
        o = [x["ray_slower_by"] for x in rows if x["inputs"] == n]
        summary[str(n)] = {"ray_slower_by": o, "mean": statistics.mean(o), "min": min(o), "max": max(o),
                           "target": TARGETS.get(n), "meets_target": statistics.mean(o) <= TARGETS.get(n, 1e9)}
        if before:
            ob = [x["before_ray_slower_by"] for x in rows if x["inputs"] == n]
            summary[str(n)]["before"] = {"ray_slower_by": ob, "mean": statistics.mean(ob)}
            log(f"ray_overhead | {n} files, before ({before}): Ray slower by {', '.join(f'{v:+.1%}' for v in ob)}")
        log(f"ray_overhead | {n} files: Ray slower by {', '.join(f'{v:+.1%}' for v in o)} (mean {statistics.mean(o):+.1%}"
            + (f", target {TARGETS[n]:+.0%})" if n in TARGETS else ")"))
    result = provenance.header("ray_overhead", cfg)
    result.update({"backend": backend, "workers": workers, "sizes": sizes, "repeat": repeat, "runs": rows,
                   "summary": summary, "argv": sys.argv,
                   "note": "local and Ray run back to back per size and repeat on the same inputs; wall = the whole "
                           "stage process (wait4); the machine may be shared with other work"})
    out = paths.results / "ray_overhead.json"
    write_json(out, result)
    (paths.results / "ray_overhead.partial.json").unlink(missing_ok=True)
    log(f"ray_overhead | {out}")
    log.save()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn8rnn_audioset_sed")
    ap.add_argument("--backend", default="ort-fp16")
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default="", help="scratch folder under build/<model>/ and result name")
    ap.add_argument("--before", default="", help="another checkout (git worktree) whose Ray engine runs right after "
                                                 "this one's, on the same inputs: before and after in one run")
    a = ap.parse_args(argv)
    measure(a.model, a.backend, a.sizes, a.repeat, a.seed, a.workers, a.work, a.before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
