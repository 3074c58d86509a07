"""Host work per file, and host preprocessing spread over Ray actors: where ENGINE=ray wins on one host.

    .venv/bin/python -m dataset.host_ray --model cnn8rnn_audioset_sed --backend ort-fp16 --files 64

1. One process, the local engine's code on one core: for each of FILES generated inputs, prepare_source (decode
   and preprocess), then BlockWorker.run_block with the real runner; run_block's own stats split the rest into
   inference, post-processing and writing (.npy inputs and outputs). Host work per file = prepare + post + write.
2. The same prepare_source in W = 1 .. cores Ray actors (one CPU each, prestarted, files dealt round robin),
   timed from the moment all actors are ready (each W twice, interleaved; the better pass counts): files/s of
   host preprocessing at each W, against one thread preparing the same files warm. Cluster start and actor start are reported beside, not inside.
Writes results/<model>/host_ray.json (dataset/projection.py reads it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path


class _Prep:
    """A Ray actor that only decodes and preprocesses (the host half of a block)."""

    def __init__(self, cfg_path: str, backend: str):
        from convert import backends
        from pipeline.config import load_config, load_family

        self.cfg = load_config(cfg_path)
        self.family = load_family(self.cfg["family"])
        runner = backends.get(backend).open_runner(self.cfg, backends.load_target(self.cfg, backend), 0)
        with runner:
            self.meta = runner.get_input_metadata()

    def ready(self) -> int:
        return os.getpid()

    def prepare(self, sources: list[str]) -> dict:
        from run.engine import prepare_source

        t0, c0 = time.perf_counter(), time.process_time()
        for i, s in enumerate(sources):
            prepare_source(self.family, self.cfg, self.meta, i, Path(s))
        return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def one_process(cfg, backend: str, sources: list[Path], work: Path) -> dict:
    import json

    from convert import backends
    from pipeline.config import load_family
    from pipeline.paths import ModelPaths
    from run.engine import BlockWorker, prepare_source

    family = load_family(cfg["family"])
    shutil.rmtree(work, ignore_errors=True)
    runner = backends.get(backend).open_runner(cfg, backends.load_target(cfg, backend), 0)
    meta = json.loads((ModelPaths(cfg["name"]).build / "weights.json").read_text())
    tot = {"prepare_s": 0.0, "infer_s": 0.0, "post_s": 0.0, "write_s": 0.0, "items": 0}
    with runner:
        worker = BlockWorker(cfg, family, runner, meta, work, cfg["infer"]["batch_size"])
        input_meta = runner.get_input_metadata()
        for i, s in enumerate(sources):
            t0 = time.perf_counter()
            p = prepare_source(family, cfg, input_meta, i, s)
            t1 = time.perf_counter()
            entry = worker.run_block(i, [p])
            t2 = time.perf_counter()
            st = entry["stats"]
            tot["prepare_s"] += t1 - t0
            tot["infer_s"] += st["infer_s"]
            tot["post_s"] += st["post_s"]
            tot["write_s"] += max(0.0, (t2 - t1) - st["infer_s"] - st["post_s"])
            tot["items"] += st["items"]
        t0 = time.perf_counter()        # again, warm (page cache, imports): what a long run sees
        for i, s in enumerate(sources):
            prepare_source(family, cfg, input_meta, i, s)
        warm = time.perf_counter() - t0
    written = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    read = sum(s.stat().st_size for s in sources)
    n = len(sources)
    shutil.rmtree(work, ignore_errors=True)
    return {"files": n, **{f"{k}_per_file": v / n for k, v in tot.items()},
            "host_s_per_file": (tot["prepare_s"] + tot["post_s"] + tot["write_s"]) / n,
            "items_per_file": tot["items"] / n, "bytes_read_per_file": read / n, "bytes_written_per_file": written / n,
            "bytes_per_file": (read + written) / n, "prepare_files_per_s_first_pass": n / tot["prepare_s"],
            "prepare_files_per_s_one_thread": n / warm}


def on_ray(cfg, backend: str, sources: list[Path], workers: list[int]) -> dict:
    from run.ray_engine import cluster

    out = {}
    with cluster(num_cpus=max(workers)) as (ray, _address, cost):
        Prep = ray.remote(_Prep).options(num_cpus=1)
        for w in [*workers, *workers]:             # twice, interleaved: a shared machine's load moves
            t0 = time.perf_counter()
            pool = [Prep.remote(cfg["_path"], backend) for _ in range(w)]
            ray.get([a.ready.remote() for a in pool])
            t1 = time.perf_counter()
            busy = ray.get([a.prepare.remote([str(s) for s in sources[k::w]]) for k, a in enumerate(pool)])
            t2 = time.perf_counter()
            run = {"actors_ready_s": t1 - t0, "wall_s": t2 - t1, "files_per_s": len(sources) / (t2 - t1),
                   "actor_busy_s": [x["wall_s"] for x in busy], "actor_cpu_s": [x["cpu_s"] for x in busy],
                   "cpu_s_per_file": sum(x["cpu_s"] for x in busy) / len(sources), "loadavg_1min": os.getloadavg()[0]}
            out.setdefault(str(w), {"runs": []})["runs"].append(run)
            out[str(w)]["files_per_s"] = max(r["files_per_s"] for r in out[str(w)]["runs"])
            for a in pool:
                ray.kill(a)
        out["cluster"] = dict(cost)
    return out


def measure(model: str, backend: str, files: int, seed: int) -> dict:
    from convert import backends
    from pipeline import provenance
    from pipeline.atomic import write_json
    from pipeline.config import load_config, load_family
    from pipeline.paths import ModelPaths

    from .runs import generate

    cfg = load_config(model)
    paths = ModelPaths(cfg["name"])
    backend, _ = backends.run_backend(cfg, backend)
    family = load_family(cfg["family"])
    sources = generate(cfg, family, paths.build / "dataset" / f"sources-{files}-seed{seed}", files, seed)
    serial = one_process(cfg, backend, sources, paths.build / "host-ray-work")
    cpus = os.cpu_count() or 1
    ray = on_ray(cfg, backend, sources, list(range(1, cpus + 1)))
    best = ray[str(cpus)]["files_per_s"]
    load = max(r["loadavg_1min"] for w in range(1, cpus + 1) for r in ray[str(w)]["runs"])
    cpu1 = min(r["cpu_s_per_file"] for r in ray["1"]["runs"])
    result = provenance.header("host_ray", cfg)
    result.update({
        "backend": backend, "cores": cpus, **serial, "ray": ray, "max_loadavg_1min": load,
        "prepare_cpu_s_per_file": cpu1,
        # host work per file in CPU seconds of preprocessing (load-independent) + post-process and write (wall)
        "host_s_per_file": cpu1 + serial["post_s_per_file"] + serial["write_s_per_file"],
        "host_wall_s_per_file_one_process": serial["host_s_per_file"],
        "ray_over_one_thread": best / serial["prepare_files_per_s_one_thread"],
        "parallel_efficiency_wall": best / (cpus * serial["prepare_files_per_s_one_thread"]),
        # only a figure from a machine that was not busy with other work: else the projection assumes one
        "parallel_efficiency": (best / (cpus * serial["prepare_files_per_s_one_thread"])) if load < cpus else None,
        "source": f"dataset/host_ray.py one process over {files} files ({backend}); write_s = run_block wall - "
                  "inference - post-processing; prepare and Ray figures warm, Ray's the better of two passes",
        "note": "the local engine prepares in one thread beside the runner; ENGINE=ray prepares in every actor. "
                "Shared machine: other work may have run at the same time."})
    write_json(paths.results / "host_ray.json", result)
    print(f"host_ray | {files} files: host work {serial['host_s_per_file'] * 1e3:.1f} ms/file on one core (prepare "
          f"{serial['prepare_s_per_file'] * 1e3:.1f}, post {serial['post_s_per_file'] * 1e3:.1f}, write "
          f"{serial['write_s_per_file'] * 1e3:.1f}); preprocessing {serial['prepare_files_per_s_one_thread']:.1f} "
          "files/s in one thread, on Ray " + ", ".join(f"{w} actor(s) {ray[str(w)]['files_per_s']:.1f}"
                                                      for w in range(1, cpus + 1)) + " files/s")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn8rnn_audioset_sed")
    ap.add_argument("--backend", default="ort-fp16")
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--seed", type=int, default=777)
    a = ap.parse_args(argv)
    measure(a.model, a.backend, a.files, a.seed)
    return 0


if __name__ == "__main__":
    from pipeline.errors import cli

    sys.exit(cli(main)())
