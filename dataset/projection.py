"""Throughput of H hosts x N NPUs x C cores projected from measured per-stage costs (docs/scale-out.md).

    make projection MODEL=cnn8rnn_audioset_sed            # writes results/<model>/projection.json and .md

Per file: host work h (seconds on one core: decode + preprocess, post-process, writing .npy files), measured on
this VM by dataset/host_ray.py (results/<model>/host_ray.json), with the parallel efficiency e_host of host work
spread over Ray actors; device rate R per NPU (files/s) from the config's bench.npu_rate (a published figure,
assumed) or --npu-rate; the driver's cost per block j (journal write, result handling) and Ray's fixed cost F0
from dataset/ray_overhead.py (results/<model>/ray_overhead.json); bytes moved per file from host_ray.json and an
assumed shared-storage bandwidth B.

    per host:  T_host = min(N x R, C x e_host / h)
    cluster:   T      = min(H x T_host, batch / j, B / bytes_per_file)
    wall(F)    = F0 + F / T

The limit that binds is named per cell: npu, host, driver (journal), storage.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HOSTS = (1, 2, 4)
NPUS = (1, 4, 8)
CORES = (2, 32, 96)
STORAGE_GB_S = 1.0          # assumed: NFS over 10 GbE, about 1.1 GB/s at best
PARALLEL_EFFICIENCY = 0.9   # assumed share of C cores that host work gets when it cannot be measured here


def inputs_from(host: dict, overhead: dict | None, npu_rate: dict, batch_size: int, storage_gb_s: float) -> dict:
    """The per-stage figures the projection uses, each with where it comes from."""
    items_per_file = host.get("items_per_file", 1.0)
    h = host["host_s_per_file"]
    e = host.get("parallel_efficiency")
    e_src = ("host_ray.json: Ray prepare files/s at W actors / (W x one thread)" if e else
             f"assumed {PARALLEL_EFFICIENCY} (host_ray.json could not measure it: the machine was busy, "
             f"load average {host.get('max_loadavg_1min', 0):.1f})")
    j, f0, f0_src = None, None, "not measured"
    if overhead:
        costs = [r["ray_cost"] for r in overhead["runs"] if r.get("ray_cost")]
        per_block = [c["journal_s"] / max(1, sum_blocks(c)) for c in costs if "journal_s" in c]     # actors' blocks
        j = max(per_block) if per_block else None
        small = min(r["inputs"] for r in overhead["runs"])
        extra = [r["ray_wall_s"] - r["local_wall_s"] for r in overhead["runs"] if r["inputs"] == small]
        f0 = max(0.0, statistics.median(extra))        # a shared machine's outliers: the median
        f0_src = f"ray_overhead.json: median Ray - local stage wall at {small} files ({len(extra)} run(s))"
    return {
        "host_s_per_file": {"value": h, "source": "host_ray.json: preprocessing CPU seconds + post-process + write",
                            "measured": True},
        "parallel_efficiency": {"value": e or PARALLEL_EFFICIENCY, "source": e_src, "measured": bool(e)},
        "npu_files_per_s": {"value": npu_rate["items_per_s"] / items_per_file, "items_per_s": npu_rate["items_per_s"],
                            "items_per_file": items_per_file, "source": npu_rate.get("source", "given"),
                            "chip": npu_rate.get("chip"), "measured": False},
        "driver_s_per_block": {"value": j, "batch_size": batch_size, "source": "ray_overhead.json: journal_s / blocks the actors ran (calls x blocks per call), the worst run",
                               "measured": j is not None},
        "ray_fixed_s": {"value": f0, "source": f0_src, "measured": f0 is not None},
        "bytes_per_file": {"value": host["bytes_per_file"], "source": "host_ray.json: source read + inputs and "
                                                                      "outputs .npy written", "measured": True},
        "storage_gb_s": {"value": storage_gb_s, "source": "NFS over 10 GbE", "measured": False},
    }


def sum_blocks(cost: dict) -> int:
    return cost.get("actor_blocks", 0) or cost.get("calls", 0) * cost.get("blocks_per_call", 1)


def cell(inp: dict, hosts: int, npus: int, cores: int) -> dict:
    r = inp["npu_files_per_s"]["value"]
    host_rate = cores * inp["parallel_efficiency"]["value"] / inp["host_s_per_file"]["value"]
    per_host = min(npus * r, host_rate)
    limits = {("npu" if npus * r <= host_rate else "host"): hosts * per_host}
    j = inp["driver_s_per_block"]["value"]
    if j:
        limits["driver"] = inp["driver_s_per_block"]["batch_size"] / j
    limits["storage"] = inp["storage_gb_s"]["value"] * 1e9 / inp["bytes_per_file"]["value"]
    limit = min(limits, key=limits.get)
    return {"hosts": hosts, "npus": npus, "cores": cores, "files_per_s": limits[limit], "limit": limit,
            "host_files_per_s": host_rate, "npu_files_per_s": npus * r}


def project(inp: dict, hosts=HOSTS, npus=NPUS, cores=CORES) -> list[dict]:
    return [cell(inp, h, n, c) for c in cores for n in npus for h in hosts]


def markdown(inp: dict, cells: list[dict], files: int = 100_000) -> str:
    hosts = sorted({c["hosts"] for c in cells})
    f0 = inp["ray_fixed_s"]["value"] or 0.0
    head = "| cores/host | NPUs/host | " + " | ".join(f"{h} host(s): files/s (limit), {files:,} files" for h in hosts) + " |"
    lines = [head, "|" + "---|" * (2 + len(hosts))]
    by = {}
    for c in cells:
        by.setdefault((c["cores"], c["npus"]), {})[c["hosts"]] = c
    for (cores, n), row in by.items():
        lines.append(f"| {cores} | {n} | " + " | ".join(
            f"{row[h]['files_per_s']:,.0f} ({row[h]['limit']}), {f0 + files / row[h]['files_per_s']:,.0f} s"
            for h in hosts) + " |")
    lines.append("")
    for k, v in inp.items():
        lines.append(f"- {k} = {v['value'] if v['value'] is None else format(v['value'], '.4g')} "
                     f"({'measured here' if v['measured'] else 'assumed'}: {v['source']})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from pipeline.atomic import write_json, write_text
    from pipeline.config import load_config
    from pipeline.errors import PipelineError
    from pipeline.paths import ModelPaths

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn8rnn_audioset_sed")
    ap.add_argument("--npu-rate", type=float, default=0.0, help="items/s of one NPU (default: bench.npu_rate)")
    ap.add_argument("--storage-gb-s", type=float, default=STORAGE_GB_S)
    a = ap.parse_args(argv)
    cfg = load_config(a.model)
    res = ModelPaths(cfg["name"]).results
    host_file = res / "host_ray.json"
    if not host_file.exists():
        raise PipelineError(f"{host_file} is missing; run `.venv/bin/python -m dataset.host_ray --model {cfg['name']}` "
                            "first (host work per file, measured on this machine)")
    rate = dict(cfg["bench"]["npu_rate"])
    if a.npu_rate:
        rate = {"items_per_s": a.npu_rate, "source": "--npu-rate (make bench BACKEND=om: ais_bench_throughput)"}
    if not rate.get("items_per_s"):
        raise PipelineError(f"{cfg['name']} has no bench.npu_rate; give NPU_RATE=<items/s of one NPU>, e.g. the "
                            "ais_bench_throughput of `make bench BACKEND=om` on the target")
    ovh_file = res / "ray_overhead.json"
    overhead = json.loads(ovh_file.read_text()) if ovh_file.exists() else None
    inp = inputs_from(json.loads(host_file.read_text()), overhead, rate, cfg["infer"]["batch_size"], a.storage_gb_s)
    cells = project(inp)
    md = markdown(inp, cells)
    write_json(res / "projection.json", {"model": cfg["name"], "inputs": inp, "cells": cells,
                                         "formula": __doc__.split("\n\n")[2].strip()})
    write_text(res / "projection.md", md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    from pipeline.errors import cli

    sys.exit(cli(main)())
