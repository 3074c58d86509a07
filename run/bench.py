"""make bench: latency and throughput per batch size (and input shape) for a backend, next to PyTorch eager."""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np

from pipeline import provenance
from pipeline.atomic import write_json
from pipeline.config import load_config, load_family
from pipeline.errors import PipelineError, cli
from pipeline.log import StageLog
from pipeline.paths import ModelPaths
from pipeline import stages

from convert import aipp, backends
from convert.backends import open_runner


class PeakRss:
    """Samples this process's resident memory in a thread; `peak_mb` after the block."""

    def __init__(self, interval=0.005):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mb(self):
        return self.peak / 2**20


def latency_stats(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"min": float(a.min()), "mean": float(a.mean()), "median": float(np.median(a)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "std": float(a.std()), "cv": float(a.std() / a.mean()) if a.mean() > 0 else None}


def concrete_shape(tensor: dict, batch: int, case: dict, carried: bool = False, batch_axis: str = "") -> list[int]:
    """The input's shape at this batch; a carried state (state_carry) keeps its declared layout, whose batch need
    not be axis 0: its fixed dims as declared, a dim named like the first input's batch axis set to `batch`."""
    if carried:
        if tensor["name"] in case:
            return list(case[tensor["name"]])
        shape = []
        for d in tensor["shape"]:
            if isinstance(d, str) and d != batch_axis:
                raise PipelineError(f"input {tensor['name']} has dynamic axis '{d}'; give its size in bench.shapes")
            shape.append(batch if isinstance(d, str) else d)
        return shape
    if tensor["name"] in case:
        dims = case[tensor["name"]]
        return [batch, *dims[1:]] if len(dims) == len(tensor["shape"]) else [batch, *dims]
    shape = [batch]
    for d in tensor["shape"][1:]:
        if isinstance(d, str):
            raise PipelineError(f"input {tensor['name']} has dynamic axis '{d}'; give its size in bench.shapes")
        shape.append(d)
    return shape


def measure(call, warmup: int, runs: int, batch: int) -> dict:
    for _ in range(warmup):
        call()
    times = []
    with PeakRss() as mem:
        t_all = time.perf_counter()
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - t_all
    return {"latency_ms": latency_stats(times), "throughput_samples_per_s": batch * runs / elapsed,
            "elapsed_s": elapsed, "peak_rss_mb": mem.peak_mb, "latencies_ms": times}


def torch_baseline(cfg, paths, family):
    """PyTorch eager on the same weights, or (None, reason) where torch is not installed."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed on this host (an Ascend host needs none): no PyTorch baseline"
    meta = json.loads((paths.build / "weights.json").read_text())
    model = family.build(cfg)
    if meta.get("kind") == "stand-in":
        family.apply_standin(model, cfg, meta["seed"])
    else:
        family.load_weights(model, meta["path"], cfg)
    module = family.export_module(model.eval(), cfg)
    torch.set_num_threads(os.cpu_count() or 1)

    from convert import aipp

    p = aipp.plan(cfg)

    def make_call(feeds):
        feeds = aipp.network_feeds(cfg, feeds, p)      # AIPP pixels: PyTorch gets the fp32 normalisation of them
        args = [torch.from_numpy(np.ascontiguousarray(feeds[t["name"]], dtype=t["dtype"] or "float32"))
                for t in cfg["inputs"]]

        def call():
            with torch.inference_mode():
                module(*args)
        return call
    return make_call, f"PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads, inference_mode"


def pipeline_throughput(cfg, family, runner, paths, rows, log) -> dict:
    """`make infer`'s full path over generated files vs the model-only throughput at the same batch size."""
    import shutil
    import tempfile
    from pathlib import Path

    from .engine import BlockWorker, plan_blocks
    from .infer import iter_blocks, load_weights_meta

    n, bs = cfg["bench"]["pipeline_sources"], cfg["infer"]["batch_size"]
    stateful = bool(family.state_carry(cfg))      # one item per device run: held against the batch-1 row
    sources = family.generate_sources(cfg, paths.build / "bench_sources", count=n, seed=12345)
    tmp = Path(tempfile.mkdtemp(prefix="bench-infer-", dir=paths.build))
    try:
        worker = BlockWorker(cfg, family, runner, load_weights_meta(paths, cfg), tmp, bs)
        blocks = plan_blocks(len(sources), bs)
        items = 0
        t0 = time.perf_counter()
        for entry in iter_blocks(worker, family, cfg, sources, blocks, range(len(blocks)), max(2, 2 * bs)):
            items += entry["stats"]["items"]
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model_row = next((r for r in rows if r["batch_size"] == (1 if stateful else bs)), None)
    out = {"sources": n, "items": items, "batch_size": bs, "wall_s": wall, "items_per_s": items / wall,
           "definition": "generated files -> decode/preprocess (prefetch thread) -> .npy -> batched runner -> "
                         "outputs .npy -> postprocess, items per second of wall time"
                         + ("; a stateful model runs one item per device run, in order, the state carried, so it "
                            "is held against the batch-1 model-only row" if stateful else "")}
    if model_row:
        out["model_only_samples_per_s"] = model_row["throughput_samples_per_s"]
        out["ratio_to_model_only"] = out["items_per_s"] / model_row["throughput_samples_per_s"]
        out["target_ratio"] = 0.85
        out["meets_target"] = out["ratio_to_model_only"] >= 0.85
    log(f"bench | infer pipeline over {n} generated file(s), batch {bs}: {out['items_per_s']:.2f} items/s"
        + (f", {out['ratio_to_model_only']:.1%} of model-only {out['model_only_samples_per_s']:.2f} samples/s"
           if model_row else ""))
    return out


def device_feed(family, tensor: dict, shape: list, rng, cfg: dict) -> np.ndarray:
    """A seeded realistic feed as the target takes it (convert.aipp.device_inputs): the family's random_input,
    as uint8 NHWC pixels for an AIPP input (its NCHW image scaled to 0..255) and float16 for fp16 input nodes."""
    dtype = np.dtype(tensor.get("dtype", "float32"))
    if dtype == np.uint8 and len(shape) == 4:
        n, h, w, c = shape
        x = family.random_input(tensor["name"], [n, c, h, w], rng, cfg).astype(np.float64)
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        return np.ascontiguousarray(x.round().astype(np.uint8).transpose(0, 2, 3, 1))
    return family.random_input(tensor["name"], shape, rng, cfg).astype(dtype, copy=False)


BENCH_KEYS = ("batch_sizes", "warmup", "runs", "torch_baseline", "shapes", "pipeline_sources")


def bench_set(cfg: dict, heavy: bool = False) -> tuple[dict, str]:
    """The settings a bench run uses and their name: the config's bench keys (the default set, light enough for a
    quick `make all`), or with heavy (make bench HEAVY=1, make evidence) the non-empty keys of bench.heavy over them
    (long clips, big frame counts). A config without a heavy set runs its default set either way."""
    bcfg = cfg["bench"]
    out = {k: bcfg[k] for k in BENCH_KEYS}
    extra = {k: v for k, v in (bcfg["heavy"] if heavy and "heavy" in bcfg else {}).items() if v}
    out.update(extra)
    return out, "heavy" if extra else "default"


def bench(model: str, backend: str = 'auto', device: int = 0, heavy: bool = False) -> int:
    """latency/throughput per batch size + PyTorch eager (the `make bench` stage as a library call)."""
    cfg = load_config(model, stage="bench")
    paths = ModelPaths(cfg["name"])
    family = load_family(cfg["family"])
    bcfg, bench_set_name = bench_set(cfg, heavy)
    notes = []
    from .engine import HostPool, host_workers, spawnable
    from .host_bench import HOST_FILES, host_figures
    from .infer import load_weights_meta

    meta = load_weights_meta(paths, cfg)
    n_host = host_workers(cfg, HOST_FILES)      # what make infer would use on this host
    n_pool = n_host if n_host > 1 else (os.cpu_count() or 1) if spawnable(cfg) else 1   # measured either way
    # the host processes start before the runner opens (no AscendCL state in any child)
    pool = HostPool(n_pool, cfg, meta, paths.build / "bench-host-work") if n_pool > 1 else None
    try:
        runner = open_runner(cfg, backend, device, log=notes.append)
    except BaseException:
        if pool:
            pool.close()
        raise
    log = StageLog(paths.logs / f"bench-{runner.backend}.log")
    for note in notes:
        log(f"bench | {note}")
    rows, feeds_per_row, skipped = [], [], []
    cases = bcfg["shapes"] or [{}]
    carried = set(family.state_carry(cfg).values())
    batch_axis = cfg["inputs"][0]["shape"][0]
    tensors = aipp.device_inputs(cfg)           # what the host feeds the target (AIPP: uint8 NHWC)
    host = None
    with runner:       # the backend first, alone in memory
        for case in cases:
            for bs in bcfg["batch_sizes"]:
                if carried and bs != 1:
                    why = "a stateful model (state_carry) runs one item per device run: bench it at batch 1"
                    log(f"bench | skipped bs={bs}: {why}")
                    skipped.append({"batch_size": bs, "reason": why})
                    continue
                shapes = {t["name"]: concrete_shape(t, bs, case, t["name"] in carried, batch_axis)
                          for t in tensors}
                why = runner.unsupported(shapes)
                if why:
                    log(f"bench | skipped bs={bs} {shapes}: {why}")
                    skipped.append({"batch_size": bs, "shapes": shapes, "reason": why})
                    continue
                rng = np.random.default_rng(1000 + bs)
                feeds = {t["name"]: device_feed(family, t, shapes[t["name"]], rng, cfg) for t in tensors}
                device_ms = []

                def call():
                    runner.infer(feeds)
                    if runner.last_device_ms is not None:
                        device_ms.append(runner.last_device_ms)

                res = measure(call, bcfg["warmup"], bcfg["runs"], bs)
                row = {"batch_size": bs, "shapes": {k: list(v.shape) for k, v in feeds.items()},
                       "backend": runner.backend, "device": runner.device, **res}
                if device_ms:
                    d = device_ms[-bcfg["runs"]:]
                    row["device_compute_ms"] = latency_stats(d)
                    row["ais_bench_throughput"] = 1000.0 * bs / float(np.mean(d))
                row.update(family.bench_extras(cfg, feeds, res["latency_ms"]["mean"]))
                rows.append(row)
                feeds_per_row.append(feeds)
        pipeline = pipeline_throughput(cfg, family, runner, paths, rows, log) if bcfg["pipeline_sources"] else None
        try:
            host = host_figures(cfg, family, runner, meta, paths.build, rows, pool, log, uses_pool=n_host > 1)
        finally:
            if pool:
                pool.close()
        desc = runner.describe()

    baseline, baseline_desc = (None, "disabled in the config")
    if bcfg["torch_baseline"]:
        baseline, baseline_desc = torch_baseline(cfg, paths, family)
    for row, feeds in zip(rows, feeds_per_row):
        res, bs = row, row["batch_size"]
        line = (f"bench | {cfg['name']} {runner.backend} bs={bs} {row['shapes']}: "
                f"mean {res['latency_ms']['mean']:.1f} ms, p90 {res['latency_ms']['p90']:.1f} ms, "
                f"{res['throughput_samples_per_s']:.2f} samples/s, peak RSS {res['peak_rss_mb']:.0f} MB")
        if baseline:
            base = measure(baseline(feeds), bcfg["warmup"], bcfg["runs"], bs)
            row["torch_eager"] = base
            row["speedup_vs_torch_eager"] = res["throughput_samples_per_s"] / base["throughput_samples_per_s"]
            line += (f"; torch eager {base['throughput_samples_per_s']:.2f} samples/s, "
                     f"ratio {row['speedup_vs_torch_eager']:.2f}x")
        if "real_time_factor" in row:
            line += f"; real-time factor {row['real_time_factor']:.1f}"
        log(line)

    report = provenance.header("bench", cfg)
    report.update({
        "backend": runner.backend, "device": runner.device, "runner": desc,
        **({"fp16": fp16} if (fp16 := backends.target_precision(cfg, runner.backend)) else {}),
        "weights": json.loads((paths.build / "weights.json").read_text()),
        "method": {
            "warmup_runs": bcfg["warmup"], "measured_runs": bcfg["runs"], "mode": "synchronous, one call at a time",
            "set": bench_set_name,
            "timer": "time.perf_counter around runner.infer (host end to end: input copy, compute, output copy)",
            "throughput_definition": "batch_size * measured_runs / elapsed wall seconds",
            "ais_bench_throughput_definition": "1000 * batch_size / mean device compute ms (om backend only)",
            "inputs": "seeded realistic inputs from the model family (random_input), as the target takes them "
                      "(convert.aipp.device_inputs: uint8 NHWC for an AIPP input)",
            "host": "host: make infer's engine over real-ish files with the runner's outputs replayed (recorded "
                    "once per input shape from the real runner): host-only, device time excluded, never a device "
                    "figure; beside bench.npu_rate (published per-chip rate) or, on om, ais_bench_throughput",
            "peak_rss": "resident memory of this process sampled every 5 ms during the measured runs (backend runs happen before the PyTorch baseline is loaded)",
        },
        "baseline": baseline_desc, "results": rows, "skipped": skipped, "infer_pipeline": pipeline,
        "host": host,
    })
    write_json(paths.results / "performance_eval.json", report)
    log(f"bench | results/{cfg['name']}/performance_eval.json")
    log.save()
    return 0


@cli
def main(argv=None) -> int:
    return bench(**stages.parse("bench", argv))


if __name__ == "__main__":
    sys.exit(main())
