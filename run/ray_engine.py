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
import socket
import sys
import time
from pathlib import Path

from convert import backends
from pipeline.errors import ConfigError, ToolchainError
from pipeline.paths import ROOT

INSTALL = ("install it with `.venv/bin/python -m pip install 'ray[data]==2.60.0'` (on an Ascend host: "
           "`make env ENV=host ENGINE=ray`)")
CONNECT_TIMEOUT_S = 20


def import_ray(data: bool = False):
    """ray, and ray.data only when asked (make compare's reference pool): infer needs Ray core alone."""
    try:
        import ray
        if data:
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


@contextlib.contextmanager
def cluster(num_cpus: int = 0, data: bool = False):
    """Join RAY_ADDRESS, or start a local Ray cluster (stopped at the end); yields (ray, address, cost).

    `cost` records seconds: import_s (import ray), init_s (cluster start or join). A cluster started here stops
    in a thread that overlaps the caller's own finish (the process waits for it before it exits);
    RAY_SHUTDOWN_WAIT=1 stops it here and records shutdown_s. A local cluster gets the driver's environment by inheritance (PIPELINE_*, PYTHONPATH set here),
    not through a runtime_env: then the workers Ray starts with the cluster serve the actors at once, where a
    job runtime_env would have them wait for fresh workers. num_cpus: CPUs a local cluster offers (default: the
    cores, at least 2); Ray starts that many idle workers, so asking for no more than the actors need saves CPU."""
    t0 = time.perf_counter()
    ray = import_ray(data)
    cost = {"import_s": time.perf_counter() - t0}
    address = os.environ.get("RAY_ADDRESS", "")
    check_address(address)
    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    if started_here:
        env_vars = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_")}
        env_vars["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
                  "configure_logging": False}
        if address and address != "local":
            ray.init(address=address, runtime_env={"env_vars": env_vars}, **kwargs)
        else:
            os.environ["PYTHONPATH"] = env_vars["PYTHONPATH"]      # inherited by the cluster this starts
            npus = int(os.environ.get("RAY_NUM_NPUS", "") or 0) or _local_npus()
            ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, 2), resources={"NPU": npus} if npus else None,
                     **kwargs)
    cost["init_s"] = time.perf_counter() - t0
    try:
        ctx = ray.data.DataContext.get_current() if "ray.data" in sys.modules else None
        if ctx is not None:
            ctx.enable_progress_bars = False
            ctx.enable_operator_progress_bars = False
            ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        yield ray, address or "local", cost
    finally:
        if started_here and os.environ.get("RAY_SHUTDOWN_WAIT", "0") == "1":
            t0 = time.perf_counter()
            ray.shutdown()
            cost["shutdown_s"] = time.perf_counter() - t0
        elif started_here:       # in a thread, while the caller writes its results; the process waits for it
            import threading

            threading.Thread(target=ray.shutdown, name="ray-shutdown").start()
            cost["shutdown_s"] = "overlapped"


class _Infer:
    """One actor: one runner, opened once; it decodes and preprocesses its own blocks in a thread (one group
    ahead, as the local engine's prefetch does) and runs them through the local engine's BlockWorker.run_block.
    Only block numbers travel to the actor and journal entries back: the arrays stay in the actor, and its files
    go straight to (shared) storage."""

    def __init__(self, cfg_path: str, backend: str, work: str, batch_size: int, threads: int, sources: list[str]):
        t_start = time.time()
        from concurrent.futures import ThreadPoolExecutor

        from pipeline.config import load_config, load_family

        from .engine import BlockWorker

        cfg = load_config(cfg_path)
        if threads and not cfg["onnxruntime"]["intra_op_threads"]:
            cfg["onnxruntime"]["intra_op_threads"] = threads
        b = backends.get(backend)
        t_load = time.time()
        self.visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
        self.device = 0                      # Ray sets ASCEND_RT_VISIBLE_DEVICES: the actor's NPU is logical 0
        runner = b.open_runner(cfg, backends.load_target(cfg, backend), self.device)
        runner.activate()
        self.cfg, self.family = cfg, load_family(cfg["family"])
        self.input_meta = runner.get_input_metadata()
        self.sources = sources
        meta = json.loads((Path(work).parent.parent / "weights.json").read_text())
        self.worker = BlockWorker(cfg, self.family, runner, meta, Path(work), batch_size)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: dict[int, object] = {}        # source index -> future of its prepared source
        self.info = {"pid": os.getpid(), "ascend_rt_visible_devices": self.visible, "device_id": self.device,
                     "on_npu": b.measures_npu, "runner_device": runner.device, "runner": runner.describe()}
        self.times = {"start_t": t_start, "imports_s": t_load - t_start, "runner_load_s": time.time() - t_load,
                      "ready_t": time.time()}
        marker = Path(work) / "actors" / f"{os.getpid()}.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(self.info))

    def ready(self) -> dict:
        return {**self.info, **self.times}

    def _prepare(self, indices):
        from .engine import prepare_source

        for i in indices:
            if i not in self.pending:
                self.pending[i] = self.pool.submit(prepare_source, self.family, self.cfg, self.input_meta, i,
                                                   Path(self.sources[i]))

    def run(self, group: list, ahead: list) -> dict:
        """Journal entries of `group` ([(block, [source index, ...]), ...]); `ahead` is the group this actor gets
        next: its sources are prepared while this one runs."""
        t0 = time.time()
        for _block, indices in group:
            self._prepare(indices)
        for _block, indices in ahead:
            self._prepare(indices)
        entries, wait_s = [], 0.0
        for block, indices in group:
            t1 = time.perf_counter()
            prepared = [self.pending.pop(i).result() for i in indices]
            wait_s += time.perf_counter() - t1
            entries.append(self.worker.run_block(int(block), prepared))
        return {"entries": entries, "actor": self.info,
                "times": {**self.times, "call_start_t": t0, "call_end_t": time.time(), "prep_wait_s": wait_s}}


class _DriverBlocks:
    """Blocks the driver runs itself, in a thread, while the cluster starts and the actors load their runners:
    the same runner and BlockWorker.run_block as the local engine (so the same bytes), taken one block at a
    time from the front of the queue until the first actor is ready. Never for a backend that holds an NPU
    (the chips are the actors'); RAY_DRIVER_BLOCKS=0 turns it off."""

    def __init__(self, cfg, backend, target, meta, work, sources, blocks, todo, journal, progress, batch_size, device):
        import threading
        from collections import deque

        self.args = (cfg, backend, target, meta, work, sources, blocks, batch_size, device)
        self.journal, self.progress = journal, progress
        self.lock = threading.Lock()
        self.front = deque(todo)
        self.stopped = threading.Event()
        self.done, self.error, self.runner_desc, self.device_label, self.load_s = 0, None, None, None, None
        self.thread = threading.Thread(target=self._run, name="ray-driver-blocks", daemon=True)

    def _run(self):
        from pipeline.config import load_family

        from .engine import BlockWorker, prepare_source

        cfg, backend, target, meta, work, sources, blocks, batch_size, device = self.args
        try:
            t0 = time.perf_counter()
            runner = backends.get(backend).open_runner(cfg, target, device)
            with runner:
                self.load_s = time.perf_counter() - t0
                family = load_family(cfg["family"])
                worker = BlockWorker(cfg, family, runner, meta, Path(work), batch_size)
                input_meta = runner.get_input_metadata()
                self.runner_desc, self.device_label = runner.describe(), runner.device
                while not self.stopped.is_set():
                    with self.lock:
                        if not self.front:
                            break
                        block = self.front.popleft()
                    try:
                        entry = worker.run_block(block, [prepare_source(family, cfg, input_meta, i, Path(sources[i]))
                                                         for i in blocks[block]])
                    except Exception:
                        with self.lock:
                            self.front.appendleft(block)        # the actors run it (and report its error)
                        raise
                    self.journaled(entry)
                    self.done += 1
        except Exception as exc:               # the actors do the work; the reason is kept in engine.cost
            self.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]

    def journaled(self, entry) -> None:
        with self.lock:
            journal_all(self.journal, [entry], self.progress)

    def take_rest(self) -> list:
        """Stop after the block in hand; the blocks not started go to the actors."""
        with self.lock:
            self.stopped.set()
            rest = list(self.front)
            self.front.clear()
        return rest


def run_ray(cfg, backend, target, meta, work, sources, blocks, todo, journal, progress, batch_size, workers_arg,
            device, log):
    """Runs the `todo` blocks on Ray; returns (runner description, device label, engine info).

    While the cluster starts, the driver runs blocks itself (_DriverBlocks, CPU backends). The actors are
    created at once and open their runners; when the first is ready the driver stops taking blocks and hands
    the rest out in calls of a few blocks, two calls in flight per actor (the next call's sources are prepared
    while the current one runs). The driver journals each finished block once. Dead actors are restarted by
    Ray and their calls retried (max_restarts and max_task_retries -1); a retried block's files are rewritten
    with the same bytes and journaled once. engine.cost in inference_result.json breaks the time down."""
    cpus = os.cpu_count() or 1
    t_call = time.perf_counter()
    b = backends.get(backend)
    local = os.environ.get("RAY_ADDRESS", "") in ("", "local")
    guess = pool_size(workers_arg, backend, 1 << 30, cpus) if local and b.device_kind != "npu" else 0
    drv = None
    if todo and b.device_kind != "npu" and os.environ.get("RAY_DRIVER_BLOCKS", "1") != "0":
        drv = _DriverBlocks(cfg, backend, target, meta, work, sources, blocks, todo, journal, progress, batch_size,
                            device)
        drv.thread.start()
    with cluster(num_cpus=max(cpus, guess * b.ray_resources(1)["num_cpus"], 1)) as (ray, address, cost):
        npus = int(ray.cluster_resources().get("NPU", 0))
        n = pool_size(workers_arg, backend, npus, cpus)
        threads = max(1, cpus // n)
        share = b.ray_resources(threads)             # what one inference actor of this backend reserves
        on_npu = "NPU" in share.get("resources", {})
        remote = {"num_cpus": share["num_cpus"], "max_restarts": -1, "max_task_retries": -1}
        if share.get("resources"):
            remote["resources"] = share["resources"]
        if os.environ.get("RAY_ACCELERATOR_TYPE"):        # an .om runs on one chip type: place actors on it
            remote["accelerator_type"] = os.environ["RAY_ACCELERATOR_TYPE"]
        t_actors = time.perf_counter()
        wall0 = time.time()
        Actor = ray.remote(_Infer).options(**remote)
        pool = [Actor.remote(cfg["_path"], backend, str(work), batch_size, share["runner_threads"],
                             [str(s) for s in sources]) for _ in range(n if todo else 0)]
        log(f"infer | {cfg['name']} on {backend} with ENGINE=ray: {n} worker(s)"
            + (", one NPU each (Ray sets ASCEND_RT_VISIBLE_DEVICES)" if on_npu else f", {threads} thread(s) each")
            + f", {len(todo)} block(s) of {batch_size}; cluster up in {cost['init_s']:.1f} s")
        rest = todo
        if drv is not None:             # until an actor is ready (or the driver has run every block)
            ready_refs = [h.ready.remote() for h in pool]
            while drv.thread.is_alive() and drv.front:
                if ray.wait(ready_refs, num_returns=1, timeout=0.05)[0]:
                    break
            rest = drv.take_rest()
        t_dispatch = time.perf_counter()
        group = tasks_of(len(rest), batch_size, n)
        queue = [[(blk, blocks[blk]) for blk in rest[i:i + group]] for i in range(0, len(rest), group)]
        queue.reverse()
        nxt = {a: (queue.pop() if queue else None) for a in range(len(pool))}
        inflight = {}

        def submit(a):
            g = nxt[a]
            if g is None:
                return
            nxt[a] = queue.pop() if queue else None
            inflight[pool[a].run.remote(g, nxt[a] or [])] = a

        for a in range(len(pool)):
            submit(a)
            submit(a)
        actors, journal_s, first_t, calls, prep_wait = {}, 0.0, None, 0, 0.0
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            a = inflight.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                raise ToolchainError(f"ENGINE=ray: a worker failed ({_cause(exc)}); run `make infer` without "
                                     "ENGINE=ray on the same input to see the error, then rerun (finished blocks "
                                     "are kept)") from None
            submit(a)
            calls += 1
            first_t = first_t or time.time()
            actor = out["actor"]
            prep_wait += out["times"]["prep_wait_s"]
            actors[actor["pid"]] = {**actor, **{k: out["times"][k] for k in ("imports_s", "runner_load_s")},
                                    "start_after_s": out["times"]["start_t"] - wall0,
                                    "ready_after_s": out["times"]["ready_t"] - wall0}
            t0 = time.perf_counter()
            with drv.lock if drv is not None else contextlib.nullcontext():
                journal_all(journal, out["entries"], progress)
            journal_s += time.perf_counter() - t0
        if drv is not None:
            drv.thread.join()
        t_end = time.perf_counter()
        for h in pool:
            ray.kill(h)
        cost.update({"setup_s": t_actors - t_call - cost["import_s"] - cost["init_s"],
                     "driver_blocks": drv.done if drv else 0, "driver_runner_load_s": drv.load_s if drv else None,
                     "driver_error": drv.error if drv else None,
                     "actors_first_ready_after_s": min((a["ready_after_s"] for a in actors.values()), default=None),
                     "actors_ready_after_s": max((a["ready_after_s"] for a in actors.values()), default=None),
                     "first_call_done_after_s": (first_t - wall0) if first_t else None,
                     "handover_s": t_dispatch - t_actors, "actor_blocks_s": t_end - t_dispatch,
                     "journal_s": journal_s, "calls": calls, "blocks_per_call": group,
                     "actor_prepare_wait_s": prep_wait, "kill_actors_s": time.perf_counter() - t_end})
        info = {"engine": "ray", "ray_version": ray.__version__, "workers": n, "cluster_npus": npus,
                "address": address, "cluster_start_s": cost["init_s"], "actors": list(actors.values()),
                "cost": cost}
        if actors:
            device_label = b.device_id("+".join(sorted(str(a.get("ascend_rt_visible_devices"))
                                                      for a in actors.values())))
            first = next(iter(actors.values()))
            runner_desc = {**first["runner"], "engine": "ray"}
        else:                                      # the driver ran every block before an actor was ready
            device_label = drv.device_label if drv and drv.device_label else b.device_id("None")
            runner_desc = {**(drv.runner_desc if drv and drv.runner_desc else {"backend": backend}), "engine": "ray"}
        return runner_desc, device_label, info


def journal_all(journal, entries: list, progress) -> None:
    """Journal.append for every entry of one call, with one fsync: the same lines, in the same order, as many
    appends would write (a retried block, already journaled, is skipped)."""
    from pipeline.atomic import _default

    entries = [e for e in entries if e["block"] not in journal.offsets]
    if not entries:
        return
    lines = [json.dumps(e, default=_default, allow_nan=True).encode() + b"\n" for e in entries]
    with open(journal.path, "ab") as f:
        off = f.tell()
        f.write(b"".join(lines))
        f.flush()
        os.fsync(f.fileno())
    for e, line in zip(entries, lines):
        journal.offsets[e["block"]] = off
        off += len(line)
        progress.update(len(e["records"]))


def _cause(exc) -> str:
    """The last line of a Ray error: the worker's own one-line error."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


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
    with cluster(data=True) as (ray, _address, _cost):
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
