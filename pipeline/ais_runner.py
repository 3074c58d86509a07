"""The `om` backend: .om files run through ais_bench's InferSession (ACL) on an Ascend NPU.

Follows the ais_bench API as its source defines it (docs/ais-bench.md, "2. InferSession" and its generations):
feeds are a Python list of C-contiguous arrays with exactly the dtype and byte size of get_inputs() (ais_bench passes a
host pointer and a byte count, it never casts); the mode string matches how the .om was built; device times
come from summary() (2023-11 on) or sumary() (before), whose exec_time_list holds (start, end) pairs or durations;
the summary is reset with reset_summaryinfo() or, before 2023-11, reset_sumaryinfo().
Before 2023-09-08 infer() has no dymbatch branch (it ignores `mode`): a dynamic-batch .om would run at its largest
gear, so the batch is set first with the session's set_dynamic_batchsize(n), as that version's CLI does.
OM output names are ATC's (node based), so outputs are named by the config's output order.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np

from pipeline.ascend_env import ais_bench_api, ais_bench_flavour, api_label
from pipeline.errors import PipelineError
from pipeline.paths import ROOT, ModelPaths

from .runners import Runner, TensorMeta

INSTALL = ("ais_bench is not installed (it is not on PyPI): install from source: pip3 install -v "
           "'git+https://gitee.com/ascend/tools.git#egg=aclruntime&subdirectory=ais-bench_workload/tool/ais_bench/backend' "
           "then pip3 install -v 'git+https://gitee.com/ascend/tools.git#egg=ais_bench&subdirectory="
           "ais-bench_workload/tool/ais_bench'; or use BACKEND=ort-fp16 on a machine without an NPU")
_DTYPES = {"float32": "float32", "float16": "float16", "float": "float32", "double": "float64", "float64": "float64",
           "double64": "float64", "int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16",
           "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64", "bool": "bool"}
# aclruntime TensorDataType / aclDataType numbering, for descriptors that give an int code (5 is unused)
_ENUM_ORDER = ["float32", "float16", "int8", "int32", "uint8", None, "int16", "uint16", "uint32", "int64",
               "uint64", "float64", "bool"]
PATH_OK = re.compile(r"^[A-Za-z0-9_./-]+$")
OM_MAX_BYTES = 10 * 2**30                     # ais_bench's OM_MODEL_MAX_SIZE
ATC_ADDED_INPUTS = ("ascend_mbatch_shape_data", "ascend_dynamic")   # name prefixes of ATC's gear inputs
UPGRADE = ("upgrade ais_bench and aclruntime (pip3 install -v --force-reinstall "
           "'git+https://gitee.com/ascend/tools.git#egg=aclruntime&subdirectory=ais-bench_workload/tool/ais_bench/backend'"
           " then the same with "
           "'#egg=ais_bench&subdirectory=ais-bench_workload/tool/ais_bench'), or build per-batch .om files "
           "(atc.batch_mode: static)")
MODES = ("static", "dymbatch", "dymhw", "dymdims", "dymshape")

session_factory = None      # tests inject a double here (or pass session_factory=); None = the real ais_bench


def _session_class():
    try:
        from ais_bench.infer.interface import InferSession
    except ImportError as exc:
        detail = f" ({exc})" if "ais_bench" not in str(exc) else ""
        raise PipelineError(INSTALL + detail) from None
    return InferSession


def numpy_dtype(datatype) -> str:
    """aclruntime.dtype enum (name `float32`, repr `dtype.float32`, or an int code) -> numpy dtype name."""
    if isinstance(datatype, (bool, np.bool_)):
        datatype = int(datatype)
    if isinstance(datatype, (int, np.integer)):
        code = int(datatype)
        name = _ENUM_ORDER[code] if 0 <= code < len(_ENUM_ORDER) else None
    else:
        text = str(getattr(datatype, "name", None) or datatype)
        text = text.split(".")[-1].lower().removeprefix("tensor_dtype_").removeprefix("acl_")
        name = _DTYPES.get(text)
        if name is None and text.lstrip("-").isdigit():
            return numpy_dtype(int(text))
    if not name:
        raise PipelineError(f"unknown ais_bench tensor dtype {datatype!r}; update pipeline/ais_runner.py for this aclruntime")
    return name


def check_om_path(path: Path) -> Path:
    """ais_bench's path rules (path_security_check.py): ends in .om, ASCII [A-Za-z0-9_./-] only, not a symlink,
    owned by this user or group, not group/other-writable, at most 10 GiB. Our own files get chmod go-w."""
    path = Path(path)
    if path.is_symlink():
        raise PipelineError(f"{path} is a symlink; ais_bench refuses symlinked models: copy the .om to a real file")
    path = path.resolve()
    if not PATH_OK.match(str(path)):
        raise PipelineError(f"{path} has characters ais_bench refuses (allowed: A-Z a-z 0-9 _ . / -); "
                            "move the repository to a plain ASCII path without spaces")
    if path.suffix != ".om":
        raise PipelineError(f"{path} does not end in .om; ais_bench loads only .om files")
    if not path.is_file():
        raise PipelineError(f"{path} does not exist; run `make om BACKEND=om` first")
    st = path.stat()
    mine = st.st_uid == os.geteuid()
    if not mine and st.st_gid not in os.getgroups():
        raise PipelineError(f"{path} belongs to another user and group; ais_bench refuses it: copy it or chown it")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        if not mine:
            raise PipelineError(f"{path} is group/other-writable ({oct(mode)}) and not yours; ais_bench refuses "
                                f"it: chmod go-w {path}")
        os.chmod(path, mode & ~0o022)
    if st.st_size > OM_MAX_BYTES:
        raise PipelineError(f"{path} is {st.st_size / 2**30:.1f} GiB; ais_bench loads at most 10 GiB")
    parent = path.parent
    if stat.S_IMODE(parent.stat().st_mode) & 0o022 and parent.stat().st_uid == os.geteuid():
        os.chmod(parent, stat.S_IMODE(parent.stat().st_mode) & ~0o022)     # ais_bench's 0o750 habit
    return path


def device_ms(summary) -> float | None:
    """Last run's device time from summary().exec_time_list: (start, end) pairs (2024+) or durations (2023)."""
    times = list(getattr(summary, "exec_time_list", None) or [])
    if not times:
        return None
    last = times[-1]
    if isinstance(last, (tuple, list)) and len(last) == 2:
        return float(last[1]) - float(last[0])
    return float(last)


def _hidden(name: str, cfg_names: set | None) -> bool:
    if cfg_names is not None:
        return name not in cfg_names
    return name.startswith(ATC_ADDED_INPUTS)


class AisBenchRunner(Runner):
    """Runner over the .om files of one `make om` target (per-batch .om files, or one dynamic-batch .om)."""

    backend = "om"

    def __init__(self, target: dict, device_id: int = 0, cfg: dict | None = None, session_factory=None):
        super().__init__()
        self.target, self.device_id, self.cfg = target, int(device_id), cfg
        self.device = f"npu:{self.device_id}"
        build = ModelPaths(cfg["name"]).build if cfg else ROOT
        if not target.get("oms"):
            raise PipelineError("the om target lists no .om files; rerun `make om BACKEND=om`")
        self.records = {om["batch"]: om for om in target["oms"]}
        self.oms = {b: self._om_file(build, om["path"]) for b, om in self.records.items()}
        self.sessions: dict = {}
        self.apis: dict = {}          # session key -> pipeline.ascend_env.ais_bench_api() of that session
        self.factory = session_factory
        self.cfg_inputs = {t["name"] for t in cfg["inputs"]} if cfg else None
        self.cfg_outputs = [t["name"] for t in cfg["outputs"]] if cfg else None

    @staticmethod
    def _om_file(build: Path, recorded: str) -> Path:
        """The recorded path (relative to the repo, or absolute), else the file of that name in build/om/."""
        p = Path(recorded)
        p = p if p.is_absolute() else ROOT / p
        return p if p.exists() else build / "om" / p.name

    # ---- sessions ---------------------------------------------------------------------------------
    def _activate(self) -> None:
        self.factory = self.factory or session_factory or _session_class()
        self._session(next(iter(self.oms)))

    def _session(self, batch):
        if batch not in self.sessions:
            path = str(check_om_path(self.oms[batch]))
            try:
                self.sessions[batch] = self.factory(self.device_id, path)
            except PipelineError:
                raise
            except Exception as exc:  # ais_bench raises ValueError/RuntimeError/TypeError from its checks and ACL
                raise PipelineError(f"ais_bench cannot load {path} on device {self.device_id}: {_first_line(exc)}; "
                                    "check `npu-smi info` (device id, health) and that the runtime CANN is not "
                                    "older than the toolkit that built the .om") from None
            self.apis[batch] = ais_bench_api(self.sessions[batch])
        return self.sessions[batch]

    def _deactivate(self) -> None:
        # free_resource() releases this session's device memory (2024+); the static finalize() would release
        # every ACL resource of the process, so it is never called here
        for sess in self.sessions.values():
            free = getattr(sess, "free_resource", None)
            if callable(free):
                free()
        self.sessions.clear()
        self.apis.clear()

    # ---- inference --------------------------------------------------------------------------------
    def _pick(self, feeds: dict):
        """(session key, ais_bench mode, gears) for these feeds: the dynamic-batch .om, or the .om of this batch."""
        if None in self.oms:
            rec = self.records[None]
            return None, rec.get("mode", "dymbatch"), rec.get("gears", [])
        batch = int(next(iter(feeds.values())).shape[0])
        if batch not in self.oms:
            raise PipelineError(f"no .om for batch {batch}; built batch sizes: {sorted(self.oms)}; add {batch} to "
                                "atc.batch_sizes and rerun `make om`, or use infer.batch_size from that list")
        rec = self.records[batch]
        return batch, rec.get("mode", "static"), rec.get("gears", [])

    def _feeds(self, sess, feeds: dict, mode: str) -> list[np.ndarray]:
        """A list in descriptor order, each cast on the host to the descriptor dtype, C-contiguous; names, ranks,
        dims and gears were checked by Runner.check_feeds (with unsupported() below)."""
        all_descs = list(sess.get_inputs())
        descs = [d for d in all_descs if not _hidden(d.name, self.cfg_inputs)]
        if not descs:
            raise PipelineError(f"no .om input matches the config inputs {sorted(self.cfg_inputs or [])} (the .om "
                                f"has {[d.name for d in all_descs]}); make inputs[].name match the ONNX export")
        arrays = []
        for d in descs:
            arr = np.ascontiguousarray(feeds[d.name], dtype=numpy_dtype(d.datatype))
            if mode == "static":
                size = int(getattr(d, "size", 0) or 0)
                if size and arr.nbytes != size:
                    want = [int(s) for s in d.shape]
                    raise PipelineError(f"input {d.name}: {arr.nbytes} bytes for shape {list(arr.shape)} "
                                        f"{arr.dtype}, the .om expects {size} bytes (shape {want} {arr.dtype}); "
                                        "feed that shape or rebuild with `make om BACKEND=om`")
            arrays.append(arr)
        return arrays

    def _infer(self, feeds):
        key, mode, gears = self._pick(feeds)
        if mode not in MODES:
            raise PipelineError(f"the om target records mode '{mode}'; rerun `make om BACKEND=om`")
        sess = self._session(key)
        arrays = self._feeds(sess, feeds, mode)
        api = self.apis[key]
        if api["reset"]:
            getattr(sess, api["reset"])()
        if mode == "dymbatch" and api["infer_dymbatch"] is not True:     # False before 2023-09-08, None unknown
            self._set_batch(sess, api, _dynamic_batch(sess, arrays, self.cfg_inputs), gears)
        try:
            if mode == "dymshape":
                outs = sess.infer(arrays, mode=mode, custom_sizes=self._custom_sizes(sess))
            else:
                outs = sess.infer(arrays, mode=mode)
        except Exception as exc:  # ais_bench / ACL errors: one line
            raise PipelineError(f"ais_bench infer failed ({mode}, shapes {[list(a.shape) for a in arrays]}): "
                                f"{_first_line(exc)}; see the ACL log under ~/ascend/log") from None
        self.last_device_ms = device_ms(getattr(sess, api["summary"])()) if api["summary"] else None
        outs = [np.asarray(o) for o in outs]
        if (self.target.get("fp16_io") or {}).get("output_fp16"):     # float16 off the device, float32 for the stages
            outs = [o.astype(np.float32) if o.dtype == np.float16 else o for o in outs]
        return dict(zip(self._output_names(sess, len(outs)), outs))

    def _set_batch(self, sess, api: dict, batch: int, gears: list) -> None:
        """Dynamic batch where infer() has no dymbatch branch: the lower-level setter (int), as the 2023 CLI does.
        Without a setter only ACL's default, the largest gear, runs."""
        if not api["set_dynamic_batchsize"]:
            if (gears and batch == max(gears)) or api["infer_dymbatch"] is None:
                return                        # the default gear, or an infer() that may handle dymbatch itself
            raise PipelineError(f"ais_bench {_installed_version()} cannot run this dynamic-batch .om at batch {batch}: "
                                "its infer() has no dymbatch mode and its session has no set_dynamic_batchsize; "
                                + UPGRADE)
        try:
            sess.set_dynamic_batchsize(batch)
        except Exception as exc:  # aclruntime raises RuntimeError for a batch that is no gear
            raise PipelineError(f"ais_bench set_dynamic_batchsize({batch}) failed: {_first_line(exc)}; use a gear "
                                "of the .om (make om records them in target-om.json)") from None

    def _custom_sizes(self, sess) -> list[int] | int:
        """Output buffer bytes for dymshape: the target's custom_sizes, else the descriptors' sizes, else 64 MiB."""
        if self.target.get("custom_sizes"):
            return self.target["custom_sizes"]
        sizes = [int(getattr(o, "size", 0) or 0) for o in sess.get_outputs()]
        return [s if s > 0 else 64 * 2**20 for s in sizes]

    def _output_names(self, sess, count: int) -> list[str]:
        """Config output names: by name when the OM name ends with it (`node:0:name`), else by position."""
        om_names = [o.name for o in sess.get_outputs()]
        if not self.cfg_outputs:
            return om_names
        if len(self.cfg_outputs) != count:
            raise PipelineError(f"the .om has {count} output(s) {om_names}, the config lists {self.cfg_outputs}; "
                                "make the config outputs match the export and rerun `make export om`")
        by_name = [next((c for c in self.cfg_outputs if n == c or n.endswith(":" + c)), None) for n in om_names]
        if all(by_name) and len(set(by_name)) == count:
            return by_name
        return list(self.cfg_outputs)

    # ---- metadata ---------------------------------------------------------------------------------
    def get_input_metadata(self) -> list[TensorMeta]:
        sess = self._session(next(iter(self.oms)))
        return [TensorMeta(d.name, numpy_dtype(d.datatype), self._want(d))
                for d in sess.get_inputs() if not _hidden(d.name, self.cfg_inputs)]   # hides ATC's gear input

    def _want(self, d) -> list:
        """The shape a feed must have: the descriptor's, or for the AIPP input uint8 [batch, H, W, C] as built (the
        descriptor's byte size is checked in _feeds; its dims need not be in NHWC order)."""
        dims = [None if int(s) < 0 else int(s) for s in d.shape]
        aipp = self.target.get("aipp")
        if aipp and d.name == aipp["input"]:
            return [dims[0] if dims else None, *aipp["src"], aipp["channels"]]
        return dims

    unsupported_fix = ("use infer.batch_size from the built sizes (pipeline.batching pads or splits rows to them), or "
                       "add the batch to atc.batch_sizes (dims: atc.dynamic_dims) and rerun `make om BACKEND=om`")

    def unsupported(self, shapes: dict) -> str | None:
        batch = int(next(iter(shapes.values()))[0])
        if None not in self.oms and batch not in self.oms:
            return f"no .om for batch {batch} (built: {sorted(self.oms)})"
        key = None if None in self.oms else batch
        rec, dyn = self.records[key], []
        sess = self._session(key)
        for d in sess.get_inputs():
            if _hidden(d.name, self.cfg_inputs) or d.name not in shapes:
                continue
            want, got = [-1 if s is None else int(s) for s in self._want(d)], list(shapes[d.name])
            if len(want) != len(got) or any(w >= 0 and w != g for w, g in zip(want, got)):
                return f"input {d.name} {got} does not fit the .om's {want}"
            dyn += [g for w, g in zip(want, got) if w < 0]
        gears = rec.get("gears") or []
        if rec.get("mode") == "dymbatch" and gears and dyn and dyn[0] not in gears:
            return f"batch {dyn[0]} is not a gear of the .om ({gears})"
        if rec.get("mode") == "dymdims" and gears and dyn not in [list(g) for g in gears]:
            return f"dims {dyn} match no gear of the .om ({gears})"
        return None

    def accepted_batch_sizes(self) -> list[int] | None:
        """Built per-batch sizes, or the gears of the dynamic-batch .om (None when its gears are not recorded)."""
        if None in self.oms:
            gears = sorted({int(g) for g in self.records[None].get("gears") or []})
            api = self.apis.get(None)
            if gears and api and api["infer_dymbatch"] is False and not api["set_dynamic_batchsize"]:
                return gears[-1:]             # no way to choose a gear: ACL's default, the largest
            return gears or None
        return sorted(self.oms)

    def get_output_names(self) -> list[str]:
        if self.cfg_outputs:
            return list(self.cfg_outputs)
        return [o.name for o in self._session(next(iter(self.oms))).get_outputs()]

    def describe(self) -> dict:
        ais = ais_bench_flavour()
        sess = next(iter(self.sessions.values()), None)
        api = next(iter(self.apis.values()), None)
        label = api_label(api, ais.get("interface_check")) if api else ais["flavour"]
        return {"backend": "om", "device": self.device,
                "runtime": f"ais_bench {ais['ais_bench'] or '?'} / aclruntime {ais['aclruntime'] or '?'} "
                           f"(API {label or 'unknown'})",
                "ais_bench_api": api,
                "soc_version": self.target.get("soc_version"), "cann_version": self.target.get("cann_version"),
                "precision": self.target.get("precision"),
                "oms": [{k: om.get(k) for k in ("batch", "mode", "gears", "path", "bytes", "sha256")}
                        for om in self.target["oms"]],
                "om_output_names": [o.name for o in sess.get_outputs()] if sess is not None else None}


def _dynamic_batch(sess, arrays: list, cfg_names: set | None) -> int:
    """The feed's size on the first negative descriptor dim (how ais_bench's own _dymbatch_prepare finds it)."""
    descs = [d for d in sess.get_inputs() if not _hidden(d.name, cfg_names)]
    for d, arr in zip(descs, arrays):
        for want, got in zip(d.shape, arr.shape):
            if int(want) < 0:
                return int(got)
    return int(arrays[0].shape[0])


def _installed_version() -> str:
    return ais_bench_flavour()["ais_bench"] or "(version unknown)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__
