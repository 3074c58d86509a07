"""The host pipeline's own throughput, device time excluded: `make infer`'s engine over real-ish files with a
runner that replays recorded outputs, so the figure says how many items per second the host (decode, resample,
front-end, resize, .npy writes, post-process) can feed a device, never how fast a device is.

Method: the real runner runs once per distinct feed signature (input names, shapes, dtypes) over the measured
files, untimed; the ReplayRunner then returns those outputs for every call of the same signature. Two timed
passes over the same files: one host process (preparation in infer.prepare_threads threads, post step in-process) and
`workers` spawned host processes (run/engine.HostPool). Per-stage milliseconds per file come from
pipeline.stage_clock, summed over the processes (CPU seconds, not wall).

Inputs: audio families get their generated clips of the rate's item (bench.npu_rate `clip_s` and the model
rate: e.g. 3-s clips at 32 kHz), image families JPEG photos of about 500x400 made at run time from the real
photos in tests/data/photos (build/<m>/host_photos, git-ignored). With AIPP on the .om (convert.aipp) the host
feeds uint8 HWC pixels (modality.image.load_pixels: decode, resize, crop; no float normalisation); image
families are measured both ways so the gain of AIPP on the host shows beside the float path.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from convert import aipp
from pipeline.contract import DURATION_KEY
from pipeline.errors import PipelineError
from pipeline.runners import Runner

from .engine import prepare_threads

HOST_ONLY = "host-only: device time excluded; outputs replayed"
HOST_FILES = 192            # files per timed pass (a pass of 48 took ~0.15 s: too short to time on a shared host)
PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "data" / "photos"


class ReplayRunner(Runner):
    """Returns the outputs the real runner gave for the same feed signature; `record` lets unseen signatures
    through to the real runner (once each), `freeze()` makes an unseen one an error. Never a device figure."""

    backend = "replay"
    host_only = True

    def __init__(self, real):
        super().__init__()
        self.real, self.recorded, self.recording, self.real_calls = real, {}, True, 0
        self.lenient = False      # frozen and lenient: an unseen signature gets a recorded one's outputs of its rows
        self.device = f"none ({HOST_ONLY})"
        self.is_active = True

    @staticmethod
    def key(feeds: dict) -> tuple:
        return tuple(sorted((n, tuple(np.shape(a)), np.asarray(a).dtype.str) for n, a in feeds.items()))

    def freeze(self) -> None:
        self.recording = False

    def infer(self, feeds):
        k = self.key(feeds)
        if k not in self.recorded and self.lenient and not self.recording:
            rows = {np.shape(a)[0] for a in feeds.values() if np.ndim(a)}
            k = next((r for r in self.recorded if {s[0] for _, s, _ in r if s} == rows), k)
        if k not in self.recorded:
            if not self.recording:
                raise PipelineError(f"replay runner: no recorded outputs for feeds {k}; record them first")
            self.recorded[k] = {n: np.array(a, copy=True) for n, a in self.real.infer(feeds).items()}
            self.real_calls += 1
        return {n: a.copy() for n, a in self.recorded[k].items()}

    _infer = infer

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def get_input_metadata(self):
        return self.real.get_input_metadata()

    def get_output_names(self):
        return self.real.get_output_names()

    def accepted_batch_sizes(self):
        return self.real.accepted_batch_sizes()

    def unsupported(self, shapes):
        return self.real.unsupported(shapes)

    def describe(self) -> dict:
        return {"runner": "ReplayRunner", "label": HOST_ONLY, "recorded_signatures": len(self.recorded),
                "real_runner_calls": self.real_calls, "real_backend": self.real.backend}


class PixelsFamily:
    """An image family whose prepare gives what an AIPP .om takes: uint8 (1, H, W, 3) pixels (decode, resize,
    crop; no normalisation), or with pixels=False the float path (decode, resize, crop, normalise to float32
    NCHW) whatever the target takes. Picklable by name, so host processes load it too."""

    def __init__(self, name: str, pixels: bool = True):
        self.name, self.pixels = name, pixels

    def __getstate__(self):
        return {"name": self.name, "pixels": self.pixels}

    def __setstate__(self, state):
        self.name, self.pixels = state["name"], state.get("pixels", True)

    @property
    def base(self):
        from pipeline.config import load_family

        return load_family(self.name)          # cached by pipeline.config

    def prepare(self, source, cfg, input_meta):
        from models import image_host
        from modality import image as img

        data = image_host.data_config(cfg)
        if not self.pixels:
            return [{cfg["inputs"][0]["name"]: img.preprocess(img.load_image(Path(source)), data)[None]}]
        return [{cfg["inputs"][0]["name"]: img.load_pixels(Path(source), data)[None]}]

    def __getattr__(self, hook):
        if hook.startswith("__"):
            raise AttributeError(hook)
        return getattr(self.base, hook)


def is_image_family(family) -> bool:
    return hasattr(getattr(family, "_host", None), "data_config")


def photo_files(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs (quality 90) of about 500x400 (landscape or portrait, as the photo) from the real photos:
    seeded crops of at least 80% of each side, resized; written once into `folder`."""
    from PIL import Image

    from modality.image import find_image_files, load_image
    from pipeline.atomic import atomic_path

    names = [folder / f"photo_{i:04d}.jpg" for i in range(count)]
    if all(p.exists() for p in names):
        return names
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [load_image(p) for p in find_image_files(str(PHOTOS))]
    for i, path in enumerate(names):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((500, 400) if cw >= ch else (400, 500), Image.BICUBIC)
        with atomic_path(path) as tmp:
            out.save(tmp, format="JPEG", quality=90)
    return names


def host_sources(cfg: dict, family, folder: Path, count: int = HOST_FILES) -> tuple[list[Path], str]:
    """The measured files and what they are."""
    if is_image_family(family):
        return photo_files(folder / "host_photos", count), f"{count} JPEG photos of 500x400 (tests/data/photos)"
    rate = cfg["bench"].get("npu_rate") or {}
    clip_s, sr = rate.get("clip_s"), cfg.get("preprocess", {}).get("sample_rate")
    files = _generated(cfg, family, folder / "host_sources", count * (4 if clip_s else 1))
    if clip_s and sr:
        import soundfile as sf

        picked = [f for f in files if sf.info(str(f)).samplerate == sr and abs(sf.info(str(f)).duration - clip_s) < 1e-3]
        if picked:
            return picked[:count], f"{len(picked[:count])} generated {clip_s:g}-s clips at {sr // 1000} kHz"
    return files[:count], f"{len(files[:count])} generated files (models.{cfg['family']}.generate_sources)"


def _generated(cfg, family, folder: Path, count: int) -> list[Path]:
    """The family's generated files, made once per count (a marker lists them)."""
    import json

    marker = folder / "COMPLETE.json"
    if marker.exists() and json.loads(marker.read_text()).get("count") == count:
        return [folder / n for n in json.loads(marker.read_text())["files"]]
    shutil.rmtree(folder, ignore_errors=True)
    files = family.generate_sources(cfg, folder, count=count, seed=4321)
    marker.write_text(json.dumps({"count": count, "files": [Path(f).name for f in files]}))
    return [Path(f) for f in files]


def _pass(cfg, family, replay, meta, work: Path, sources, pool=None) -> dict:
    from .engine import BlockWorker, plan_blocks
    from .infer import iter_blocks

    shutil.rmtree(work, ignore_errors=True)
    bs = cfg["infer"]["batch_size"]
    worker = BlockWorker(cfg, family, replay, meta, work, bs)
    blocks = plan_blocks(len(sources), bs)
    depth = max(2, 2 * bs, 2 * (pool.workers if pool else 0))
    stages, items, failed, audio_s = {}, 0, 0, 0.0
    t0 = time.perf_counter()
    for entry in iter_blocks(worker, family, cfg, sources, blocks, range(len(blocks)), depth, pool):
        items += entry["stats"]["items"]
        for k, v in entry["stats"].get("stages", {}).items():
            stages[k] = stages.get(k, 0.0) + v
        for rec in entry["records"]:
            failed += "error" in rec
            if isinstance(rec.get("summary"), dict):
                audio_s += rec["summary"].get(DURATION_KEY) or 0.0
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    n = len(sources)
    return {"files": n, "items": items, "failed": failed, "wall_s": wall, "files_per_s": n / wall,
            "items_per_s": items / wall, "audio_s": audio_s or None,
            "stage_ms_per_file": {k: 1e3 * v / n for k, v in sorted(stages.items(), key=lambda kv: -kv[1])}}


def measure_host(cfg, family, replay: ReplayRunner, meta, build: Path, pool=None, pixels: bool | None = None,
                 count: int = HOST_FILES, uses_pool: bool = True) -> dict:
    """One host figure: the real runner's outputs recorded (while `replay` records), then a timed pass in one
    process and one with `pool`."""
    fam = family if pixels is None else PixelsFamily(cfg["family"], pixels)
    sources, what = host_sources(cfg, family, build, count)
    work = build / "bench-host-work"
    if pool is not None:
        pool.family = fam if pixels is not None else None
    # untimed: records the real runner once per signature, and warms the host processes (imports, caches)
    _pass(cfg, fam, replay, meta, work, sources, pool)
    replay.freeze()
    one = {**_pass(cfg, fam, replay, meta, work, sources), "prepare_threads": prepare_threads(cfg, fam)}
    out = {"label": HOST_ONLY, "inputs": what, "files": len(sources), "batch_size": cfg["infer"]["batch_size"],
           "host_output": ("uint8 HWC pixels, AIPP-style" if pixels else "the family's prepare"),
           "runner": replay.describe(), "one_process": one}
    if pool is not None:
        out["pool"] = {**_pass(cfg, fam, replay, meta, work, sources, pool), "processes": pool.workers}
        pool.family = None
    # the figure that counts is what make infer runs (infer.host_workers, auto: no pool on 2 cores); the other one
    # is shown beside it
    main = out["pool"] if pool is not None and uses_pool else one
    out["files_per_s"], out["items_per_s"] = main["files_per_s"], main["items_per_s"]
    out["processes"] = out["pool"]["processes"] if main is not one else 1
    out["prepare_threads"] = one["prepare_threads"] if main is one else None
    return out


def needed_rate(cfg: dict, rows: list, backend: str) -> dict | None:
    """The device rate the host must keep up with: BACKEND=om's own ais_bench_throughput at the infer batch size
    (else the best om row), else the config's published bench.npu_rate; None when neither exists."""
    om = [r for r in rows if r.get("ais_bench_throughput")]
    if backend == "om" and om:
        bs = cfg["infer"]["batch_size"]
        row = next((r for r in om if r["batch_size"] == bs), max(om, key=lambda r: r["ais_bench_throughput"]))
        return {"items_per_s": row["ais_bench_throughput"], "chip": row.get("device", "npu"),
                "source": f"this bench's ais_bench_throughput at batch {row['batch_size']}", "measured": True}
    rate = cfg["bench"].get("npu_rate") or {}
    if rate.get("items_per_s"):
        return {**rate, "measured": False}
    return None


def verdict(cfg: dict, fig: dict, rate: dict | None, unit: str) -> tuple[dict, str]:
    """The comparison and the one grep-able log line."""
    one = fig["one_process"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in one["stage_ms_per_file"].items())
    other = (f"{one['files_per_s']:.1f} {unit}/s in one" if fig["processes"] > 1 else
             f"{fig['pool']['files_per_s']:.1f} {unit}/s with {fig['pool']['processes']}" if "pool" in fig else "")
    how = (f"{fig['processes']} host processes" if fig["processes"] > 1 else
           f"1 host process, {one['prepare_threads']} prepare thread(s)")
    line = (f"bench | host | {cfg['name']}: {fig['files_per_s']:.1f} {unit}/s with {how} "
            f"({HOST_ONLY}; {other}; per {unit[:-1]} in one process, ms: "
            f"{stages}; {fig['inputs']}, {fig['host_output']})")
    cmp = {"needed": rate}
    if rate:
        ratio = fig["files_per_s"] / rate["items_per_s"]
        cmp.update(ratio=ratio, keeps_up=ratio >= 1.0)
        where = "measured here" if rate.get("measured") else "published"
        line += (f"; needs {rate['items_per_s']:.0f} {unit}/s ({rate.get('chip', '?')}, {where}): "
                 + (f"keeps up {ratio:.2f}x" if ratio >= 1 else f"falls short ({ratio:.2f}x)"))
    else:
        line += "; no published per-chip rate (bench.npu_rate unset)"
    return cmp, line


def host_figures(cfg, family, runner, meta, build: Path, rows: list, pool, log, count: int = HOST_FILES,
                 uses_pool: bool = True) -> dict:
    """bench's `host` section: the figure(s), the rate to beat and the verdict; logged one line each."""
    unit = "images" if is_image_family(family) else "files"
    rate = needed_rate(cfg, rows, runner.backend)
    variants = [None]
    uses_aipp = aipp.plan(cfg) is not None        # what infer feeds: a refused AIPP with fallback feeds floats
    if is_image_family(family):
        variants = [True, False] if uses_aipp else [False, True]
    out = {"label": HOST_ONLY, "unit": unit, "cores": os.cpu_count(), "figures": []}
    replay = ReplayRunner(runner)
    for pixels in variants:
        fig = measure_host(cfg, family, replay, meta, build, pool, pixels, count, uses_pool)
        replay.lenient = True          # the comparison path's feeds differ in dtype/layout, not in rows
        fig["aipp_style"] = bool(pixels)
        fig["counts"] = pixels is None or bool(pixels) == uses_aipp     # what this config feeds
        cmp, line = verdict(cfg, fig, rate, unit)
        fig.update(cmp)
        out["figures"].append(fig)
        log(line + ("" if fig["counts"] else " [not this config's path: shown for comparison]"))
    main = next(f for f in out["figures"] if f["counts"])
    out.update({k: main.get(k) for k in ("files_per_s", "items_per_s", "processes", "needed", "ratio", "keeps_up")})
    out["definition"] = ("files (items for images) per second of wall time through make infer's engine with "
                         f"the runner replaced by recorded outputs ({HOST_ONLY}); per-stage ms are CPU-side "
                         "seconds per file summed over host processes")
    return out
