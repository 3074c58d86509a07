"""The host pipeline of this checkout against another one's (e.g. `git worktree add build/before <commit>`), on
the same files, back to back, in one run: what a change did to the host's own throughput, device time excluded.

    .venv/bin/python -m dataset.host_before_after --model cnn8rnn_audioset_sed --before build/before --repeat 2

Each side runs in its own process from its own tree (this file with `--side`, cwd and PYTHONPATH = that tree): `make infer`'s engine as that tree has it (its prepare, its writes, its post-process; this tree's default
host processes) over the files of run.host_bench.host_sources, with a runner that replays outputs recorded once
per feed signature from the reference target (ort-cpu). Host-only: never a device figure. The before side feeds
what its code fed (an image family without AIPP: float32 NCHW); this side feeds what the config feeds now.
Writes results/<model>/host_before_after.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def side(model: str, sources_file: str, out: str) -> int:
    """In the tree of the cwd: the host pass over the listed files with a replaying runner, one JSON file."""
    import inspect

    import numpy as np

    from convert import backends
    from pipeline.config import load_config, load_family
    from pipeline.paths import ModelPaths
    from pipeline.runners import Runner
    from run import engine
    from run.infer import iter_blocks, load_weights_meta

    # not run.host_bench.ReplayRunner: this runs inside the before tree too, which may predate it
    class Replay(Runner):
        def __init__(self, real):
            super().__init__()
            self.real, self.seen, self.is_active, self.backend = real, {}, True, "replay"

        def infer(self, feeds):
            key = tuple(sorted((n, np.shape(a), np.asarray(a).dtype.str) for n, a in feeds.items()))
            if key not in self.seen:
                self.seen[key] = self.real.infer(feeds)
            return {n: a.copy() for n, a in self.seen[key].items()}

        _infer = infer

        def _activate(self): ...
        def _deactivate(self): ...
        def get_input_metadata(self): return self.real.get_input_metadata()
        def get_output_names(self): return self.real.get_output_names()
        def accepted_batch_sizes(self): return self.real.accepted_batch_sizes()
        def unsupported(self, shapes): return self.real.unsupported(shapes)
        def describe(self): return {"runner": "replay", "real": self.real.backend}

    cfg = load_config(model)
    paths = ModelPaths(cfg["name"])
    family = load_family(cfg["family"])
    meta = load_weights_meta(paths, cfg)
    sources = [Path(s) for s in json.loads(Path(sources_file).read_text())]
    bs = cfg["infer"]["batch_size"]
    pool = None
    if "pool" in inspect.signature(iter_blocks).parameters and hasattr(engine, "host_workers"):
        n = engine.host_workers(cfg, len(sources))
        pool = engine.HostPool(n, cfg, meta, paths.build / "host-ba-work") if n > 1 else None
    with backends.reference_runner(cfg) as real:
        replay = Replay(real)
        walls = []
        for _ in range(2):                                   # the first pass records and warms up
            work = paths.build / "host-ba-work"
            shutil.rmtree(work, ignore_errors=True)
            worker = engine.BlockWorker(cfg, family, replay, meta, work, bs)
            blocks = engine.plan_blocks(len(sources), bs)
            args = (worker, family, cfg, sources, blocks, range(len(blocks)), max(2, 2 * bs))
            t0 = time.perf_counter()
            for _entry in (iter_blocks(*args, pool) if pool is not None else iter_blocks(*args)):
                pass
            walls.append(time.perf_counter() - t0)
            shutil.rmtree(work, ignore_errors=True)
        feed = real.get_input_metadata()[0]
    if pool is not None:
        pool.close()
    Path(out).write_text(json.dumps({"files": len(sources), "wall_s": walls[-1], "files_per_s": len(sources) / walls[-1],
                                     "host_processes": pool.workers if pool else 1,
                                     "feed": {"dtype": feed.dtype, "shape": feed.shape}}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn8rnn_audioset_sed")
    ap.add_argument("--before", default="", help="the other checkout (a git worktree with the same build/ files)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--files", type=int, default=192)
    ap.add_argument("--side", nargs=2, metavar=("SOURCES_JSON", "OUT_JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.side:
        return side(a.model, *a.side)
    from pipeline import provenance
    from pipeline.atomic import write_json
    from pipeline.config import load_config, load_family
    from pipeline.errors import ConfigError
    from pipeline.paths import ROOT, ModelPaths
    from run.host_bench import HOST_ONLY, host_sources

    if not a.before or not (Path(a.before) / "run" / "engine.py").is_file():
        raise SystemExit(f"--before {a.before!r} is not a checkout of this repository; make one with "
                         "`git worktree add build/before <commit>`")
    cfg = load_config(a.model)
    paths = ModelPaths(cfg["name"])
    sources, what = host_sources(cfg, load_family(cfg["family"]), paths.build, a.files)
    listing = paths.build / "host-ba-sources.json"
    listing.write_text(json.dumps([str(Path(s).resolve()) for s in sources]))
    env = {**os.environ, "PIPELINE_BUILD_DIR": str(paths.build.parent), "PIPELINE_RESULTS_DIR": str(paths.results.parent),
           "PIPELINE_LOGS_DIR": str(paths.logs.parent)}
    rows = []
    for r in range(a.repeat):
        row = {"repeat": r}
        for name, tree in (("now", ROOT), ("before", Path(a.before).resolve())):
            out = paths.build / f"host-ba-{name}.json"
            p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--model", cfg["name"], "--side",
                                str(listing), str(out)], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise ConfigError(f"the {name} side failed in {tree}: "
                                  f"{(p.stderr.strip().splitlines() or ['no output'])[-1]}")
            row[name] = json.loads(out.read_text())
        row["ratio"] = row["now"]["files_per_s"] / row["before"]["files_per_s"]
        rows.append(row)
        print(f"host before/after | {cfg['name']} repeat {r}: now {row['now']['files_per_s']:.1f} files/s "
              f"({row['now']['host_processes']} host process(es), feeds {row['now']['feed']['dtype']}), before "
              f"{row['before']['files_per_s']:.1f} ({row['before']['feed']['dtype']}): {row['ratio']:.2f}x; {HOST_ONLY}",
              flush=True)
    doc = provenance.header("host_before_after", cfg)
    before_commit = subprocess.run(["git", "-C", str(Path(a.before)), "rev-parse", "HEAD"], capture_output=True,
                                   text=True).stdout.strip()
    doc.update({"label": HOST_ONLY, "inputs": what, "before_tree": str(Path(a.before).resolve()),
                "before_commit": before_commit, "rows": rows,
                "definition": "files per second of wall time through each tree's make-infer engine (its prepare, writes "
                              "and post-process) with outputs replayed from the fp32 reference; second of two passes"})
    write_json(paths.results / "host_before_after.json", doc)
    return 0


if __name__ == "__main__":
    if "--side" in sys.argv and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)            # run as a file inside another tree: import that tree's packages, not dataset/
    sys.exit(main())
