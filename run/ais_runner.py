"""The `om` backend: .om files run through ais_bench's InferSession (ACL) on an Ascend NPU.

Follows the ais_bench API as its source defines it (shared/reference/ascend-ais-bench.md): feeds are a
Python list of C-contiguous arrays with exactly the dtype and byte size of get_inputs(); the mode string
matches how the .om was built; device times come from summary() (2024+) or sumary() (2023), whose
exec_time_list holds (start, end) pairs or plain durations.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.paths import ModelPaths, ROOT

from .runners import Runner, TensorMeta

INSTALL = ("ais_bench is not installed (it is not on PyPI): pip3 install -v "
           "'git+https://gitee.com/ascend/tools.git#egg=aclruntime&subdirectory=ais-bench_workload/tool/ais_bench/backend' "
           "then the same with egg=ais_bench&subdirectory=ais-bench_workload/tool/ais_bench; "
           "without an NPU use BACKEND=ort-fp16")
_DTYPES = {"float32": "float32", "float16": "float16", "float": "float32", "double": "float64", "float64": "float64",
           "int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32",
           "uint32": "uint32", "int64": "int64", "uint64": "uint64", "bool": "bool"}
_ENUM_ORDER = ["float32", "float16", "int8", "int32", "uint8", None, "int16", "uint16", "uint32", "int64",
               "uint64", "float64", "bool"]          # aclDataType numbering, for descriptors that give an int
PATH_OK = re.compile(r"^[A-Za-z0-9_./-]+$")


def _session_class():
    try:
        from ais_bench.infer.interface import InferSession
    except ImportError:
        raise PipelineError(INSTALL) from None
    return InferSession


session_factory = None      # tests inject a double here; None = the real ais_bench


def numpy_dtype(datatype) -> str:
    """aclruntime.dtype enum (repr like 'dtype.float32' or an int code) -> numpy dtype name."""
    if isinstance(datatype, (int, np.integer)):
        name = _ENUM_ORDER[int(datatype)] if 0 <= int(datatype) < len(_ENUM_ORDER) else None
    else:
        name = _DTYPES.get(str(getattr(datatype, "name", datatype)).split(".")[-1].lower())
    if not name:
        raise PipelineError(f"unknown ais_bench tensor dtype {datatype!r}; update run/ais_runner.py for this aclruntime")
    return name


def check_om_path(path: Path) -> Path:
    """ais_bench's path rules: ASCII [A-Za-z0-9_./-], no symlink, not group/other-writable (we fix our own files)."""
    path = Path(path)
    if path.is_symlink():
        raise PipelineError(f"{path} is a symlink; ais_bench refuses symlinked models: copy the .om to a real file")
    path = path.resolve()
    if not PATH_OK.match(str(path)):
        raise PipelineError(f"{path} has characters ais_bench refuses (allowed: A-Z a-z 0-9 _ . / -); "
                            "move the repository to a plain ASCII path without spaces")
    if not path.is_file():
        raise PipelineError(f"{path} does not exist; run `make om BACKEND=om` first")
    for p, limit in ((path, 0o755), (path.parent, 0o750)):
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & ~limit & 0o022:
            if p.stat().st_uid == os.getuid():
                os.chmod(p, mode & limit)
            else:
                raise PipelineError(f"{p} is group/other-writable ({oct(mode)}) and not yours; ais_bench refuses it: "
                                    f"chmod go-w {p}")
    return path


def device_ms(summary) -> float | None:
    """Last run's device time from summary().exec_time_list: (start, end) pairs (2024+) or durations (2023)."""
    times = getattr(summary, "exec_time_list", None) or []
    if not times:
        return None
    last = times[-1]
    if isinstance(last, (tuple, list)) and len(last) == 2:
        return float(last[1]) - float(last[0])
    return float(last)


class AisBenchRunner(Runner):
    backend = "om"

    def __init__(self, target: dict, device_id: int = 0, cfg: dict | None = None):
        super().__init__()
        self.target, self.device_id, self.cfg = target, int(device_id), cfg
        self.device = f"npu:{device_id}"
        build = ModelPaths(cfg["name"]).build if cfg else ROOT
        self.oms = {om["batch"]: build / "om" / Path(om["path"]).name for om in target["oms"]}
        self.sessions: dict = {}
        self.factory = None

    def _activate(self) -> None:
        self.factory = session_factory or _session_class()
        first = next(iter(self.oms))
        self._session(first)

    def _session(self, batch):
        if batch not in self.sessions:
            self.sessions[batch] = self.factory(self.device_id, str(check_om_path(self.oms[batch])))
        return self.sessions[batch]

    def _deactivate(self) -> None:
        for sess in self.sessions.values():
            if hasattr(sess, "free_resource"):
                sess.free_resource()
        self.sessions.clear()

    def _pick(self, feeds: dict):
        if None in self.oms:                     # one dynamic-batch .om
            return None, "dymbatch"
        batch = next(iter(feeds.values())).shape[0]
        if batch not in self.oms:
            raise PipelineError(f"no .om for batch {batch}; built batch sizes: {sorted(self.oms)}; add {batch} to "
                                "atc.batch_sizes or use infer.batch_size from that list")
        om = next(o for o in self.target["oms"] if o["batch"] == batch)
        return batch, om.get("mode", "static")

    def _infer(self, feeds):
        key, mode = self._pick(feeds)
        sess = self._session(key)
        descs = [d for d in sess.get_inputs() if d.name in feeds]
        arrays = []
        for d in descs:
            want = numpy_dtype(d.datatype)
            arr = np.ascontiguousarray(feeds[d.name], dtype=want)
            if mode == "static" and hasattr(d, "size") and d.size and arr.nbytes != d.size:
                raise PipelineError(f"input {d.name}: {arr.nbytes} bytes for shape {arr.shape}, the .om expects "
                                    f"{d.size} bytes (shape {list(d.shape)}); rebuild with `make om BACKEND=om`")
            arrays.append(arr)
        if hasattr(sess, "reset_summaryinfo"):
            sess.reset_summaryinfo()
        outs = sess.infer(arrays, mode=mode) if mode != "dymshape" else sess.infer(arrays, mode=mode, custom_sizes=self._sizes())
        summary = sess.summary() if hasattr(sess, "summary") else sess.sumary()
        self.last_device_ms = device_ms(summary)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, [np.asarray(o) for o in outs]))

    def _sizes(self):
        return int(self.target.get("custom_sizes", 100_000_000))

    def get_input_metadata(self) -> list[TensorMeta]:
        sess = self._session(next(iter(self.oms)))
        names = {t["name"] for t in self.cfg["inputs"]} if self.cfg else None
        return [TensorMeta(d.name, numpy_dtype(d.datatype), [None if s < 0 else int(s) for s in d.shape])
                for d in sess.get_inputs() if names is None or d.name in names]   # hides ATC's batch input

    def unsupported(self, shapes: dict) -> str | None:
        batch = next(iter(shapes.values()))[0]
        if None not in self.oms and batch not in self.oms:
            return f"no .om for batch {batch} (built: {sorted(self.oms)})"
        for m in self.get_input_metadata():
            want, got = m.shape[1:], list(shapes[m.name])[1:]
            if any(w is not None and w != g for w, g in zip(want, got)):
                return f"input {m.name} {list(shapes[m.name])} does not fit the .om's {m.shape}"
        return None

    def get_output_names(self) -> list[str]:
        return [o.name for o in self._session(next(iter(self.oms))).get_outputs()]

    def describe(self) -> dict:
        from pipeline.ascend_env import ais_bench_flavour

        ais = ais_bench_flavour()
        return {"backend": "om", "device": self.device, "runtime": f"ais_bench {ais['ais_bench']} / aclruntime "
                f"{ais['aclruntime']}", "soc_version": self.target.get("soc_version"),
                "oms": self.target["oms"], "precision": self.target.get("precision")}
