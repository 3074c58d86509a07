"""ENGINE=ray: the blocks of `make infer` on Ray Data, across the NPUs of one host or many hosts.

Decoding and preprocessing run as a CPU `map` (tasks); inference runs as `map_batches` with a callable class,
one instance per actor holding one runner opened once (`resources={"NPU": 1}` for BACKEND=om: Ray sets
ASCEND_RT_VISIBLE_DEVICES in the actor, so the device inside it is 0). Each actor runs whole blocks through the
same `BlockWorker.run_block` as the local engine, so outputs are byte-identical to it; the driver journals
each finished block once (Ray Data restarts dead actors and retries their blocks; a retried block's files are
rewritten atomically with the same bytes and its journal line is written once). Blocks hold whole sources, so a
stateful family (state_carry) runs each source's items in order, its state carried, inside one actor; make
compare's reference actors get one whole source per chunk (run/reference.py) and carry their own state.
Only imported when ENGINE=ray: the default path never imports ray.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import socket
import time
from pathlib import Path

from convert import backends
from pipeline.errors import ConfigError, ToolchainError
from pipeline.paths import ROOT

INSTALL = ("install it with `.venv/bin/python -m pip install 'ray[data]==2.60.0'` (on an Ascend host: "
           "`make env ENV=host ENGINE=ray`)")
CONNECT_TIMEOUT_S = 20


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ToolchainError(f"ENGINE=ray needs Ray Data, which is not installed: {INSTALL}") from None
    return ray


def check_address(address: str) -> None:
    """One line within CONNECT_TIMEOUT_S when RAY_ADDRESS names a head that does not answer."""
    if address in ("", "auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"RAY_ADDRESS '{address}' is not host:port; give the head's address, e.g. 10.0.0.1:6379 "
                          "(as printed by `ray start --head`)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ToolchainError(f"RAY_ADDRESS {address} is unreachable ({exc.strerror or exc}); start the head with "
                             "`ray start --head` there, or unset RAY_ADDRESS to run on a local Ray cluster") from None


def pool_size(workers_arg: str, backend: str, npus: int, cpus: int) -> int:
    """WORKERS=: default every NPU (a backend whose actor holds one), else one per 2 CPUs."""
    on_npu = "NPU" in backends.get(backend).ray_resources(1).get("resources", {})
    if workers_arg in ("", None):
        n = npus if on_npu else max(1, cpus // 2)
        if on_npu and n == 0:
            raise ToolchainError(f"ENGINE=ray BACKEND={backend} found no NPU in the Ray cluster; check `npu-smi info` and "
                                 "that Ray sees the chips (`ray status` lists NPU)")
        return n
    if not str(workers_arg).isdigit() or int(workers_arg) < 1:
        raise ConfigError(f"WORKERS={workers_arg}: give a positive number of workers (actors), e.g. WORKERS=2")
    n = int(workers_arg)
    if on_npu and n > npus:
        raise ConfigError(f"WORKERS={n} but the Ray cluster has {npus} NPU(s); each worker holds one NPU: "
                          f"use WORKERS={npus} or fewer")
    return n


FILES_PER_TASK = 16      # blocks go to actors in groups of about this many files: fewer, larger Ray tasks


def tasks_of(blocks: int, batch_size: int, workers: int) -> int:
    """Blocks per Ray task: about FILES_PER_TASK files, but at least 4 tasks per worker while there are blocks."""
    return max(1, min(FILES_PER_TASK // max(1, batch_size), blocks // (4 * workers)))


def input_meta_from_target(cfg: dict, backend: str):
    """What `prepare` needs of the target without opening it: static dims from the .om build, else the ONNX."""
    from pipeline.paths import ModelPaths
    from pipeline.runners import TensorMeta

    path = backends.get(backend).onnx_for_host(ModelPaths(cfg["name"]))
    if path is None:            # no ONNX of its own (the .om): the config's inputs with atc.fixed_dims
        from pipeline.config import load_family

        fixed = cfg["atc"]["fixed_dims"]
        carried = set(load_family(cfg["family"]).state_carry(cfg).values())     # a state: its axis 0 is no batch
        return [TensorMeta(t["name"], t["dtype"],
                           [None if i == 0 and t["name"] not in carried else (d if isinstance(d, int) else fixed.get(d))
                            for i, d in enumerate(t["shape"])]) for t in cfg["inputs"]]
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    by_name = {t["name"]: t for t in cfg["inputs"]}
    return [TensorMeta(i.name, by_name.get(i.name, {}).get("dtype", "float32"),
                       [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim])
            for i in graph.input if i.name in by_name]


@contextlib.contextmanager
def cluster():
    """Join RAY_ADDRESS, or start a local Ray cluster (stopped at the end); yields (ray, address, start seconds)."""
    ray = import_ray()
    address = os.environ.get("RAY_ADDRESS", "")
    check_address(address)
    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    if started_here:
        env_vars = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
        env_vars["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        kwargs = {"runtime_env": {"env_vars": env_vars}, "include_dashboard": False, "log_to_driver": False,
                  "logging_level": "ERROR", "configure_logging": False}
        if address and address != "local":
            ray.init(address=address, **kwargs)
        else:
            npus = int(os.environ.get("RAY_NUM_NPUS", "") or 0) or _local_npus()
            ray.init(num_cpus=max(os.cpu_count() or 1, 4), resources={"NPU": npus} if npus else None, **kwargs)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        yield ray, address or "local", time.perf_counter() - t0
    finally:
        if started_here:
            ray.shutdown()


class _Prepare:
    """CPU map: decode and preprocess one block's sources (a Ray task)."""

    def __init__(self, cfg_path: str, backend: str, sources: list[str]):
        from pipeline.config import load_config, load_family

        self.cfg = load_config(cfg_path)
        self.family = load_family(self.cfg["family"])
        self.meta = input_meta_from_target(self.cfg, backend)
        self.sources = sources

    def __call__(self, batch):
        import numpy as np

        from .engine import prepare_source

        payloads = []
        for indices in batch["indices"]:
            prepared = [prepare_source(self.family, self.cfg, self.meta, i, Path(self.sources[i]))
                        for i in json.loads(indices)]
            payloads.append(pickle.dumps(prepared, protocol=5))
        return {"block": batch["block"], "payload": np.array(payloads, dtype=object)}


class _Infer:
    """map_batches actor: one runner, opened once, runs whole blocks."""

    def __init__(self, cfg_path: str, backend: str, work: str, batch_size: int, threads: int):
        from pipeline.config import load_config, load_family

        from .engine import BlockWorker

        cfg = load_config(cfg_path)
        if threads and not cfg["onnxruntime"]["intra_op_threads"]:
            cfg["onnxruntime"]["intra_op_threads"] = threads
        b = backends.get(backend)
        self.visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
        self.device = 0                      # Ray sets ASCEND_RT_VISIBLE_DEVICES: the actor's NPU is logical 0
        runner = b.open_runner(cfg, backends.load_target(cfg, backend), self.device)
        runner.activate()
        meta = json.loads((Path(work).parent.parent / "weights.json").read_text())
        self.worker = BlockWorker(cfg, load_family(cfg["family"]), runner, meta, Path(work), batch_size)
        self.info = {"pid": os.getpid(), "ascend_rt_visible_devices": self.visible, "device_id": self.device,
                     "on_npu": b.measures_npu, "runner_device": runner.device, "runner": runner.describe()}
        marker = Path(work) / "actors" / f"{os.getpid()}.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(self.info))

    def __call__(self, batch):
        import numpy as np

        out = []
        for block, payload in zip(batch["block"], batch["payload"]):
            entry = self.worker.run_block(int(block), pickle.loads(payload))
            entry["actor"] = self.info
            out.append(json.dumps(entry, default=str))
        return {"entry": np.array(out, dtype=object)}


def run_ray(cfg, backend, target, meta, work, sources, blocks, todo, journal, progress, batch_size, workers_arg,
            device, log):
    """Runs the `todo` blocks on Ray; returns (runner description, device label, engine info)."""
    cpus = os.cpu_count() or 1
    with cluster() as (ray, address, init_s):
        npus = int(ray.cluster_resources().get("NPU", 0))
        n = pool_size(workers_arg, backend, npus, cpus)
        b = backends.get(backend)
        threads = max(1, cpus // n)
        share = b.ray_resources(threads)             # what one inference actor of this backend reserves
        on_npu = "NPU" in share.get("resources", {})
        log(f"infer | {cfg['name']} on {backend} with ENGINE=ray: {n} worker(s)"
            + (", one NPU each (Ray sets ASCEND_RT_VISIBLE_DEVICES)" if on_npu else f", {threads} thread(s) each")
            + f", {len(todo)} block(s) of {batch_size}; cluster up in {init_s:.1f} s")
        group = tasks_of(len(todo), batch_size, n)
        ds = ray.data.from_items([{"block": b, "indices": json.dumps(blocks[b])} for b in todo],
                                 override_num_blocks=max(1, -(-len(todo) // group)))
        ds = ds.map_batches(_Prepare, batch_size=group, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
                            fn_constructor_kwargs={"cfg_path": cfg["_path"], "backend": backend,
                                                   "sources": [str(s) for s in sources]}, batch_format="numpy")
        remote = {"resources": share["resources"]} if share.get("resources") else {}
        if os.environ.get("RAY_ACCELERATOR_TYPE"):        # an .om runs on one chip type: place actors on it
            remote["accelerator_type"] = os.environ["RAY_ACCELERATOR_TYPE"]
        ds = ds.map_batches(_Infer, batch_size=group, compute=ray.data.ActorPoolStrategy(size=n),
                            num_cpus=share["num_cpus"],
                            fn_constructor_kwargs={"cfg_path": cfg["_path"], "backend": backend, "work": str(work),
                                                   "batch_size": batch_size, "threads": share["runner_threads"]},
                            batch_format="numpy", **remote)
        actors = {}
        for row in ds.iter_rows():
            entry = json.loads(row["entry"])
            actor = entry.pop("actor", {})
            actors[actor.get("pid")] = actor
            if entry["block"] in journal.offsets:           # a retried block: journaled once
                continue
            journal.append(entry)
            progress.update(len(entry["records"]))
        info = {"engine": "ray", "ray_version": ray.__version__, "workers": n, "cluster_npus": npus,
                "address": address, "cluster_start_s": init_s, "actors": list(actors.values())}
        device_label = b.device_id("+".join(sorted(str(a.get("ascend_rt_visible_devices")) for a in actors.values())))
        first = next(iter(actors.values()), {})
        runner_desc = {**first.get("runner", {"backend": backend}), "engine": "ray"}
        return runner_desc, device_label, info


class _Reference:
    """map_batches actor for make compare: the onnxruntime fp32 reference, opened once, runs item chunks."""

    def __init__(self, cfg_path: str, threads: int, pad: str):
        from convert.backends import reference_runner
        from pipeline.config import load_config

        cfg = load_config(cfg_path)
        if threads and not cfg["onnxruntime"]["intra_op_threads"]:
            cfg["onnxruntime"]["intra_op_threads"] = threads
        self.runner = reference_runner(cfg)
        self.runner.activate()
        self.pad = pad
        from pipeline.paths import ModelPaths

        self.paths = ModelPaths(cfg["name"])
        self.manifest = json.loads((self.paths.inputs / "manifest.json").read_text())

    def __call__(self, batch):
        import numpy as np

        from .reference import run_reference_chunk

        done = []
        for chunk in batch["chunk"]:
            run_reference_chunk(self.paths, self.manifest, self.runner, json.loads(chunk), self.pad)
            done.append(chunk)
        return {"chunk": np.array(done, dtype=object)}


def run_reference_ray(cfg, paths, manifest, chunks, pad, workers_arg, log) -> dict:
    """make compare ENGINE=ray: reference outputs written by actors; the driver then compares from the files."""
    cpus = os.cpu_count() or 1
    with cluster() as (ray, _address, _init_s):
        n = pool_size(workers_arg, backends.REFERENCE, 0, cpus)
        log(f"compare | reference on Ray: {n} worker(s), {len(chunks)} chunk(s)")
        ds = ray.data.from_items([{"chunk": json.dumps(c)} for c in chunks], override_num_blocks=max(1, len(chunks)))
        ds = ds.map_batches(_Reference, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), num_cpus=1,
                            batch_format="numpy",
                            fn_constructor_kwargs={"cfg_path": cfg["_path"], "threads": max(1, cpus // n), "pad": pad})
        for _ in ds.iter_rows():
            pass
        return {"backend": backends.REFERENCE, "device": backends.reference().device_id(), "engine": "ray", "workers": n,
                "ray_version": ray.__version__}


def _local_npus() -> int:
    from pipeline import ascend_env

    return len(ascend_env.probe_npus()["chips"])
