"""make dataset: `make infer` and `make compare` over a folder of COUNT generated inputs, measured.

Runs the two stages as they are (subprocesses, live progress bars) twice: on the first COUNT/10 inputs and on
all COUNT, each in its own scratch tree under build/<model>/dataset/, so the main build's inputs and outputs
stay as `make infer` left them. Peak resident memory of each stage process comes from wait4(); equal peaks at
both sizes, and a flat resident-memory trace within the full run (every 10% of inputs), show that memory does
not grow with the folder. Writes results/<model>/dataset_run.json and logs/<model>/dataset.log.
"""
from __future__ import annotations

import time

from convert import backends
from convert.backends import load_target
from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import load_config, load_family
from pipeline.errors import PipelineError
from pipeline.log import StageLog
from pipeline.paths import ModelPaths

from .runs import soak as soak_run
from .runs import generate, host_section, in_run, model_only, one_run, scale_out


def run_dataset(model: str, backend: str = 'auto', count: int = 1000, small: int = 0, seed: int = 777, engine: str = 'local', soak: int = 0) -> int:
    """infer + compare over COUNT generated inputs, memory and speed (the `make dataset` stage as a library call)."""
    ray = engine == "ray"
    if count < 2:
        raise PipelineError(f"COUNT={count}: a dataset run needs at least 2 inputs")
    small = small or max(1, count // (5 if ray else 10))
    if not 1 <= small < count:
        raise PipelineError(f"--small {small} must be at least 1 and below COUNT={count}")
    cfg = load_config(model, stage="dataset")
    paths = ModelPaths(cfg["name"])
    backend, notes = backends.run_backend(cfg, backend)
    load_target(cfg, backend)                     # one clear line when `make om` has not run
    family = load_family(cfg["family"])
    log = StageLog(paths.logs / "dataset.log")
    for note in notes:
        log(f"dataset | {note}")
    work = paths.build / "dataset"
    log(f"dataset | {cfg['name']} on {backend}: generating {count} input(s), seed {seed}")
    t0 = time.perf_counter()
    sources = generate(cfg, family, work / f"sources-{count}-seed{seed}", count, seed)
    gen_s = time.perf_counter() - t0
    runs = [one_run(cfg, paths, backend, sources[:small], work / "run-small", log),
            one_run(cfg, paths, backend, sources, work / "run-full", log)]
    full = runs[-1]
    scale = scale_out(cfg, paths, backend, sources, small, runs[0], full, work, log) if ray else None
    soaked = soak_run(cfg, paths, backend, sources, soak, work, log) if soak else None
    ref = model_only(paths, backend, full, family.has("time_input", cfg))
    mem = {stage: {"small_mb": runs[0][stage]["peak_rss_mb"], "full_mb": full[stage]["peak_rss_mb"],
                   "growth_mb": full[stage]["peak_rss_mb"] - runs[0][stage]["peak_rss_mb"],
                   "ratio": full[stage]["peak_rss_mb"] / runs[0][stage]["peak_rss_mb"],
                   "in_run": in_run(full[stage]["memory_trace"])} for stage in ("infer", "compare")}
    result = provenance.header("dataset", cfg)
    result.update({
        "backend": full["backend"], "device": full["device"], "count": count, "small_count": small,
        **({"fp16": full["fp16"]} if "fp16" in full else {}),
        "seed": seed, "generator": f"models.{cfg['family']}.generate_sources", "generate_s": gen_s,
        "runs": runs, "memory": mem, "host": host_section(paths, full),
        "verdict": full["compare"]["verdict"], "engine_ray": scale, "soak": soaked,
        "model_only": ref,
        "ratio_to_model_only": ref["run_value"] / ref["value"] if ref else None,
        "ratio_to_runner_calls": full["infer"]["end_to_end_items_per_s"] / full["infer"]["inference_only_items_per_s"],
        "definitions": {
            "end_to_end_items_per_s": "items (windows for audio) per second of `make infer` wall time after the "
                                      "runner is loaded: decode, preprocess, .npy, inference, postprocess",
            "peak_rss_mb": "peak resident memory of the stage process (wait4 ru_maxrss)",
            "memory.ratio": "peak RSS at COUNT inputs / peak RSS at COUNT/10 inputs, two processes (1.0 = flat)",
            "memory.in_run": "one process, the full run: resident MB after its first 10% of inputs, and the most "
                             "at any later 10% mark; ratio = most later / first (1.0 = flat)",
            "ratio_to_model_only": "this run's figure / the bench's model-only figure (model_only.basis: items/s, "
                                   "or real-time factor for audio), same backend and batch size",
            "ratio_to_runner_calls": "end_to_end_items_per_s / inference_only_items_per_s of the same run: the share "
                                     "of wall time the runner is busy",
            "host": "host stages of the full run in ms per file, summed over host processes (pipeline.stage_clock), "
                    "and make bench's host-only figure (device time excluded, outputs replayed) beside the rate"},
    })
    write_json(paths.results / "dataset_run.json", result)
    for stage, m in mem.items():
        log(f"dataset | {stage}: peak RSS {m['small_mb']:.0f} MB at {small} input(s), {m['full_mb']:.0f} MB at "
            f"{count} ({m['ratio']:.2f}x)")
        if m["in_run"]:
            r = m["in_run"]
            log(f"dataset | {stage}, within the {count}-input run: resident {r['first_mb']:.0f} MB after "
                f"{r['first_done']}, at most {r['max_after_first_mb']:.0f} MB up to {r['end_done']} ({r['ratio']:.2f}x)")
    log(f"dataset | infer {full['infer']['end_to_end_items_per_s']:.2f} items/s end to end = "
        f"{result['ratio_to_runner_calls']:.1%} of its runner calls alone"
        + (f"; {ref['basis']} {ref['run_value']:.2f} = {result['ratio_to_model_only']:.1%} of the bench's model-only "
           f"{ref['value']:.2f} ({ref['note']})" if ref else
           "; no model-only figure for this backend and batch size: run `make bench`"))
    host = result["host"]
    log(f"dataset | host | {host['host_workers']} host process(es), ms per file (summed over processes): "
        + (", ".join(f"{k} {v:.1f}" for k, v in host["stage_ms_per_file"].items()) or "none recorded")
        + (f"; bench host-only figure {host['bench']['files_per_s']:.1f} {host['bench']['unit']}/s"
           + (f" vs {host['bench']['needed']['items_per_s']:.0f} needed ({host['bench']['ratio']:.2f}x)"
              if host["bench"].get("needed") else "; no published per-chip rate")
           if host.get("bench") and host["bench"].get("files_per_s") else ""))
    for line in full["verdict_lines"]:
        log(line)
    if soaked and "ratio_end_to_first" in soaked:
        log(f"dataset | soak over {soaked['items']} items: resident {soaked['rss_at_first_10pct_mb']:.0f} MB after the "
            f"first 10%, {soaked['rss_at_end_mb']:.0f} MB at the end ({soaked['ratio_end_to_first']:.2f}x), "
            f"at most {soaked['max_rss_mb']:.0f} MB")
    if scale:
        for o in scale["overhead"]:
            log(f"dataset | ENGINE=ray, 1 worker, {o['inputs']} inputs: {o['ray_files_per_s']:.2f} files/s vs local "
                f"{o['local_files_per_s']:.2f} ({o['ray_slower_by']:+.1%}; target at most {o['target']:.0%})")
        log(f"dataset | ENGINE=ray workers 1 / 2: {scale['workers']['1']:.2f} / {scale['workers']['2']:.2f} files/s")
        c = scale.get("cost", {}).get("full_w1") or {}
        if c:
            log(f"dataset | ENGINE=ray cost, {count} inputs: import {c['import_s']:.1f} s, cluster start {c['init_s']:.1f} s, "
                f"first actor ready after {c['actors_first_ready_after_s'] or 0:.1f} s while the driver ran "
                f"{c['driver_blocks']} block(s), journal {c['journal_s']:.2f} s over {c['calls']} call(s) of "
                f"{c['blocks_per_call']} block(s)")
        for k, v in scale["identical"].items():
            log(f"dataset | outputs {k}: {'identical' if v['identical'] else 'DIFFER ' + ', '.join(v['differ'])} "
                f"({v['files_compared']} files)")
        r = scale["resume"]
        log(f"dataset | resume after a kill at {r['killed_after_blocks']}/{r['blocks']} blocks: {r['resume_wall_s']:.1f} s "
            f"(uninterrupted {r['uninterrupted_wall_s']:.1f} s)")
    log(f"dataset | results/{cfg['name']}/dataset_run.json")
    log.save()
    same = all(v["identical"] for v in scale["identical"].values()) if scale else True
    return 0 if full["compare"]["verdict"] == "PASSED" and same else 1
