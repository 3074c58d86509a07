"""make dataset's measured runs: generated inputs, scratch trees, stage processes (infer, compare) and what they
show (peak memory, identity of outputs across engines, resume after a kill, model-only figure)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.config import load_family
from pipeline.contract import AUDIO_PER_BATCH_KEY
from pipeline.errors import PipelineError
from pipeline.paths import ROOT, ModelPaths
from pipeline import stages

MODEL_FILES = ("model.sim.onnx", "model.fp16.onnx", "weights.json")


def generate(cfg: dict, family, folder: Path, count: int, seed: int) -> list[Path]:
    """COUNT seeded inputs in `folder`, generated once (a marker file records a finished set)."""
    marker = folder / "COMPLETE.json"
    if marker.exists() and json.loads(marker.read_text()).get("count") == count:
        return [folder / name for name in json.loads(marker.read_text())["files"]]
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    files = family.generate_sources(cfg, staging, count=count, seed=seed)
    write_text(staging / "COMPLETE.json", json.dumps({"count": count, "seed": seed,
                                                      "files": [p.name for p in files]}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return [folder / p.name for p in files]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:                       # another file system
        shutil.copy2(src, dst)


def scratch_tree(paths: ModelPaths, backend: str, root: Path, sources: list[Path], host_files=()) -> dict:
    """A build/results/logs tree holding this model's built target and a folder with `sources`."""
    shutil.rmtree(root, ignore_errors=True)
    build = root / "build" / paths.model
    for name in (*MODEL_FILES, *host_files, f"target-{backend}.json"):
        if (paths.build / name).exists():
            _link(paths.build / name, build / name)
    for src in sources:
        _link(src, root / "input" / src.name)
    return {"PIPELINE_BUILD_DIR": str(root / "build"), "PIPELINE_RESULTS_DIR": str(root / "results"),
            "PIPELINE_LOGS_DIR": str(root / "logs")}


def run_stage(argv: list[str], env: dict, cwd: Path | None = None) -> dict:
    """Run one stage process; its exit code, wall seconds and peak resident memory (wait4 rusage). `cwd`: another
    checkout of this repository whose code runs the stage (a before/after measurement), else this one."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd or ROOT, env={**os.environ, **env})
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        proc.kill()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"argv": argv, "exit_code": proc.returncode, "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": usage.ru_maxrss / 1024}          # Linux: kilobytes


def one_run(cfg, paths, backend: str, sources: list[Path], root: Path, log, engine: str = "local",
            workers: int | None = None, compare: bool = True, keep: bool = False, code: Path | None = None) -> dict:
    if not keep:
        scratch_tree(paths, backend, root, sources, load_family(cfg["family"]).host_artifacts(cfg))
    env = {"PIPELINE_BUILD_DIR": str(root / "build"), "PIPELINE_RESULTS_DIR": str(root / "results"),
           "PIPELINE_LOGS_DIR": str(root / "logs"), "ENGINE": engine, "WORKERS": str(workers or "")}
    model = cfg["name"]
    what = f"ENGINE={engine}" + (f" WORKERS={workers}" if workers else "")
    log(f"dataset | {len(sources)} input(s), {what}: make infer" + (", then make compare" if compare else "") + f" ({root})")
    # each stage in its own process: its peak memory is the figure (pipeline/stages.py builds the command line)
    infer = run_stage(stages.argv("infer", model=model, backend=backend, input=root / "input"), env, code)
    if infer["exit_code"] != 0:
        raise PipelineError(f"make infer failed on the {len(sources)}-input dataset (exit {infer['exit_code']}); "
                            f"its error line is above, its log in {root / 'logs' / model}")
    res = Path(env["PIPELINE_RESULTS_DIR"]) / model
    inf = json.loads((res / "inference_result.json").read_text())
    timing = inf["timing"]
    run = {
        "inputs": len(sources), "items": timing["items"], "batch_size": timing["batch_size"], "engine": what,
        "root": str(root),
        "infer": {**infer, "end_to_end_items_per_s": timing["end_to_end_items_per_s"],
                  "inference_only_items_per_s": timing["inference_only_items_per_s"],
                  "stage_wall_s": timing["wall_s"], "real_time_factor": timing.get("real_time_factor"),
                  "audio_s": timing.get("audio_s"), "memory_trace": timing.get("memory_trace", []),
                  "failed": inf.get("failed_count", 0), "resumed_blocks": timing.get("resumed_blocks", 0),
                  "host_stages_s": timing.get("host_stages_s", {}), "host_workers": timing.get("host_workers", 1),
                  "engine": inf.get("engine")},
        "backend": inf["backend"], "device": inf["device"], **({"fp16": inf["fp16"]} if "fp16" in inf else {}),
    }
    if not compare:
        return run
    compare = run_stage(stages.argv("compare", model=model, backend=backend), env)
    if compare["exit_code"] not in (0, 1):                # 1 = FAILED gate, still a result
        raise PipelineError(f"make compare failed on the {len(sources)}-input dataset (exit {compare['exit_code']}); "
                            f"its error line is above, its log in {root / 'logs' / model}")
    acc = json.loads((res / "accuracy_eval.json").read_text())
    return {**run,
        "compare": {**compare, "verdict": acc["verdict"], "memory_trace": acc.get("memory_trace", []),
                    "outputs": {name: {k: o["summary"][k] for k in ("samples", "failed_samples", "worst_rel_l2",
                                                                      "worst_rel_l2_item", "min_cosine", "median_rel_l2",
                                                                      "worst_samples")}
                                for name, o in acc["outputs"].items()}},
        "verdict_lines": [ln for ln in (Path(env["PIPELINE_LOGS_DIR"]) / model / "accuracy_eval.log")
                          .read_text().splitlines() if ln.startswith(("PASSED |", "FAILED |"))],
    }


def same_outputs(a: Path, b: Path, model: str, backend: str) -> dict:
    """Byte-for-byte comparison of two runs' saved inputs, outputs and per-file summaries."""
    files, differ = 0, []
    for sub in (Path("build", model, "inputs"), Path("build", model, "outputs", backend)):
        names = sorted({p.relative_to(a / sub) for p in (a / sub).rglob("*") if p.is_file()}
                       | {p.relative_to(b / sub) for p in (b / sub).rglob("*") if p.is_file()})
        for rel in names:
            fa, fb = a / sub / rel, b / sub / rel
            files += 1
            if not (fa.exists() and fb.exists()) or fa.read_bytes() != fb.read_bytes():
                if rel.name != "manifest.json" or not _same_manifest(fa, fb, a, b):
                    differ.append(str(sub / rel))
    ja, jb = (r / "results" / model / "inference_result.jsonl" for r in (a, b))
    sa, sb = ([_strip_timing(json.loads(x.replace(str(r), "<run>"))) for x in f.read_text().splitlines()]
              for f, r in ((ja, a), (jb, b)))
    if sa != sb:
        differ.append(str(ja.relative_to(a)))
    return {"files_compared": files, "identical": not differ, "differ": differ[:10]}


def _same_manifest(fa: Path, fb: Path, ra: Path, rb: Path) -> bool:
    """Manifests name the run's own folder and runner (engine, pid): equal when everything else is."""
    if not (fa.exists() and fb.exists()):
        return False
    ma = json.loads(fa.read_text().replace(str(ra), "<run>"))
    mb = json.loads(fb.read_text().replace(str(rb), "<run>"))
    drop = ("runner", "device", "inputs_manifest_sha256")      # the inputs manifest names the run folder
    return {k: v for k, v in ma.items() if k not in drop} == {k: v for k, v in mb.items() if k not in drop}


def _strip_timing(rec: dict) -> dict:
    summary = rec.get("summary")
    if isinstance(summary, dict):
        rec["summary"] = {k: v for k, v in summary.items() if "real_time" not in k and not k.endswith("_wall_s")}
    return rec


def interrupted_run(cfg, paths, backend, sources, root: Path, log, fraction: float = 0.5) -> dict:
    """make infer killed (SIGKILL) once `fraction` of its blocks are journaled, then run again: the resume."""
    import signal

    scratch_tree(paths, backend, root, sources, load_family(cfg["family"]).host_artifacts(cfg))
    env = {**os.environ, "PIPELINE_BUILD_DIR": str(root / "build"), "PIPELINE_RESULTS_DIR": str(root / "results"),
           "PIPELINE_LOGS_DIR": str(root / "logs"), "ENGINE": "local"}
    journal = root / "build" / cfg["name"] / "infer-work" / backend / "journal.jsonl"
    blocks = -(-len(sources) // cfg["infer"]["batch_size"])
    argv = stages.argv("infer", model=cfg["name"], backend=backend, input=root / "input")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    while proc.poll() is None:
        done = max(0, len(journal.read_bytes().splitlines()) - 1) if journal.exists() else 0
        if done >= fraction * blocks:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    killed_s = time.perf_counter() - t0
    log(f"dataset | resume: make infer killed after {done} of {blocks} block(s) ({killed_s:.1f} s); running it again")
    rerun = one_run(cfg, paths, backend, sources, root, log, compare=False, keep=True)
    return {"inputs": len(sources), "blocks": blocks, "killed_after_blocks": done, "killed_after_s": killed_s,
            "resume_wall_s": rerun["infer"]["wall_s"], "resumed_blocks": rerun["infer"]["resumed_blocks"],
            "run": rerun}


def scale_out(cfg, paths, backend, sources, small: int, local_small: dict, local_full: dict, work: Path, log) -> dict:
    """ENGINE=ray against the local engine on the same inputs, in this run: overhead, workers, identity, resume."""
    r1 = one_run(cfg, paths, backend, sources[:small], work / "ray-small-w1", log, engine="ray", workers=1)
    r2 = one_run(cfg, paths, backend, sources[:small], work / "ray-small-w2", log, engine="ray", workers=2, compare=False)
    rf = one_run(cfg, paths, backend, sources, work / "ray-full-w1", log, engine="ray", workers=1, compare=False)
    resume = interrupted_run(cfg, paths, backend, sources[:small], work / "resume", log)
    model = cfg["name"]

    def per_s(run):       # whole stage process: start-up, model load, cluster start, all inputs
        return run["inputs"] / run["infer"]["wall_s"]

    def overhead(local, ray, target):
        return {"inputs": local["inputs"], "local_files_per_s": per_s(local), "ray_files_per_s": per_s(ray),
                "local_wall_s": local["infer"]["wall_s"], "ray_wall_s": ray["infer"]["wall_s"],
                "ray_slower_by": per_s(local) / per_s(ray) - 1, "target": target,
                "meets_target": per_s(local) / per_s(ray) - 1 <= target}

    return {
        "overhead": [overhead(local_small, r1, 0.15), overhead(local_full, rf, 0.05)],
        "workers": {"1": per_s(r1), "2": per_s(r2),
                    "why": f"this machine has {os.cpu_count()} cores: one onnxruntime worker already uses them all, "
                           "so a second worker splits the same cores (each gets half the threads); on NPUs each "
                           "worker holds its own chip"},
        "identical": {"full_local_vs_ray_w1": same_outputs(Path(local_full["root"]), Path(rf["root"]), model, backend),
                      "small_local_vs_ray_w1": same_outputs(Path(local_small["root"]), Path(r1["root"]), model, backend),
                      "small_local_vs_ray_w2": same_outputs(Path(local_small["root"]), Path(r2["root"]), model, backend),
                      "small_local_vs_resumed": same_outputs(Path(local_small["root"]), work / "resume", model, backend)},
        "resume": {**{k: v for k, v in resume.items() if k != "run"},
                   "uninterrupted_wall_s": local_small["infer"]["wall_s"]},
        "driver_memory": {"peak_rss_mb": rf["infer"]["peak_rss_mb"], "in_run": in_run(rf["infer"]["memory_trace"])},
        "ray_compare": r1.get("compare", {}).get("verdict"),
        "cost": {"small_w1": r1["infer"]["engine"].get("cost"), "full_w1": rf["infer"]["engine"].get("cost"),
                 "definition": "seconds in the Ray stage process (run/ray_engine.py run_ray): import ray, cluster "
                               "start (init_s), actors ready after their creation, blocks the driver ran while they "
                               "started, journal writes, calls and blocks per call; shutdown overlaps the finish"},
        "runs": {"ray_small_w1": r1, "ray_small_w2": r2, "ray_full_w1": rf},
    }


def soak(cfg, paths, backend, sources: list[Path], count: int, work: Path, log) -> dict:
    """make infer over `count` hard links of the shortest generated input: resident memory at every 10% mark."""
    shortest = min(sources, key=lambda p: p.stat().st_size)
    root = work / f"soak-{count}"
    scratch_tree(paths, backend, root, [], load_family(cfg["family"]).host_artifacts(cfg))
    folder = root / "input"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _link(shortest, folder / f"item_{i:06d}{shortest.suffix}")
    log(f"dataset | soak: make infer over {count} copies of {shortest.name} (memory at every 10%)")
    run = one_run(cfg, paths, backend, [], root, log, compare=False, keep=True)
    trace = [t for t in run["infer"]["memory_trace"] if t.get("rss_mb")]
    first = next((t for t in trace if t["done"] >= count // 10), None)
    last = trace[-1] if trace else None
    out = {"items": count, "source": shortest.name, "trace": trace, "wall_s": run["infer"]["wall_s"],
           "peak_rss_mb": run["infer"]["peak_rss_mb"]}
    if first and last:
        out.update({"rss_at_first_10pct_mb": first["rss_mb"], "rss_at_end_mb": last["rss_mb"],
                    "max_rss_mb": max(t["rss_mb"] for t in trace), "ratio_end_to_first": last["rss_mb"] / first["rss_mb"]})
    shutil.rmtree(root, ignore_errors=True)
    return out


def in_run(trace: list[dict]) -> dict | None:
    """Resident memory within the full run: after the first 10% of the inputs vs the most after that."""
    marks = [t for t in trace if t.get("rss_mb")]
    if len(marks) < 2:
        return None
    first, rest = marks[0], marks[1:]
    top = max(rest, key=lambda t: t["rss_mb"])
    return {"first_done": first["done"], "first_mb": first["rss_mb"], "end_done": marks[-1]["done"],
            "end_mb": marks[-1]["rss_mb"], "max_after_first_mb": top["rss_mb"], "ratio": top["rss_mb"] / first["rss_mb"]}


def model_only(paths: ModelPaths, backend: str, run: dict, time_input: bool) -> dict | None:
    """The bench's model-only figure to hold this run against, from results/<model>/performance_eval.json:
    same backend and batch size; audio (items of any length) by real-time factor at the nearest clip length,
    fixed-shape inputs by items per second."""
    f = paths.results / "performance_eval.json"
    if not f.exists():
        return None
    perf = json.loads(f.read_text())
    rows = [(i, r) for i, r in enumerate(perf.get("results", [])) if r["batch_size"] == run["batch_size"]]
    if perf.get("backend") != backend or not rows:
        return None
    infer = run["infer"]
    if time_input and infer.get("real_time_factor"):
        mean_item_s = infer["audio_s"] / run["items"]
        i, row = min(rows, key=lambda ir: abs(ir[1][AUDIO_PER_BATCH_KEY] / ir[1]["batch_size"] - mean_item_s))
        basis, value, run_value = "real_time_factor", row["real_time_factor"], infer["real_time_factor"]
        note = (f"items are clips of {mean_item_s:.1f} s on average; the bench row with the nearest clip length "
                f"({row[AUDIO_PER_BATCH_KEY] / row['batch_size']:.0f} s) is compared by real-time factor")
    else:
        i, row = rows[0]
        basis, value, run_value = "items_per_s", row["throughput_samples_per_s"], infer["end_to_end_items_per_s"]
        note = "same batch size and input shape"
    return {"basis": basis, "value": value, "run_value": run_value, "batch_size": row["batch_size"],
            "shapes": row.get("shapes"), "source": f"performance_eval.json#/results/{i}/"
            + ("real_time_factor" if basis == "real_time_factor" else "throughput_samples_per_s"),
            "note": note, "created_utc": perf.get("created_utc")}


def host_section(paths: ModelPaths, run: dict) -> dict:
    """The host's share of the full run: ms per file per stage (summed over host processes) and the bench's
    host-only figure beside the rate to beat (results/<model>/performance_eval.json#/host), when there is one."""
    n = max(1, run["inputs"])
    out = {"host_workers": run["infer"].get("host_workers", 1),
           "stage_ms_per_file": {k: 1e3 * v / n for k, v in sorted(run["infer"].get("host_stages_s", {}).items(),
                                                                      key=lambda kv: -kv[1])}}
    f = paths.results / "performance_eval.json"
    if f.exists():
        host = json.loads(f.read_text()).get("host")
        if host:
            out["bench"] = {k: host.get(k) for k in ("label", "unit", "files_per_s", "processes", "needed", "ratio",
                                                     "keeps_up")}
    return out
