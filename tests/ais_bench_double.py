"""TEST DOUBLE of ais_bench's `InferSession` in its 2023, 2024 and 2025 flavours (not the real library, which
needs an Ascend NPU, CANN and the aclruntime extension).

It enforces the contract of the ais_bench source (shared/reference/ascend-ais-bench.md), per flavour:
- 2023: `sumary()` only, `exec_time_list` of durations in ms, no `free_resource`/`reset_summaryinfo`,
  `finalize()` an instance method;
- 2024/2025: `summary()`, `exec_time_list` of (start_ms, end_ms) pairs, `free_resource()`, `reset_summaryinfo()`,
  static `finalize()`; 2025 rejects tuple feeds with ValueError (interface_check.check_list).
Common rules: device_id an int in [0, 255]; the .om path passes ais_bench's path checks (ends .om, ASCII
[A-Za-z0-9_./-], no symlink, not group/other-writable); feeds a non-empty list, one per input; each feed's
dtype equals the descriptor's (the real library does not cast: it reads the buffer as the model's dtype) and
its byte size equals the descriptor's; mode one of static/dymbatch/dymhw/dymdims/dymshape (else RuntimeError);
the mode matches how the .om was built; a dymbatch batch is a gear; dymdims shapes equal a gear; dymshape needs
custom_sizes > 0; out_array is a bool.

The ".om" is the companion ONNX file (the fake atc copies the ONNX), so outputs are real onnxruntime numerics.
`<om>.json` says what ATC would have built: {"inputs": [{name, dtype, shape}], "mode", "gears" (batch gears),
optional "dims_gears" (one list per gear, values for the -1 dims in input order)}. Output descriptors carry
ATC-style node names (`<node>:<index>`), not the ONNX output names.
"""
from __future__ import annotations

import json
import os
import re
import stat
import time

import numpy as np

MODES = ("static", "dymbatch", "dymhw", "dymdims", "dymshape")
FLAVOUR = {"name": "2025"}      # tests switch it: "2023", "2024", "2025"
CUSTOM_SIZE_MAX = 16 * 2**30


class Desc:
    """aclruntime.tensor_desc: name, datatype (repr `dtype.float32` like the pybind enum), format, shape, size."""

    def __init__(self, name, dtype, shape, datatype=None):
        self.name, self.shape = name, list(shape)
        self.datatype = datatype if datatype is not None else f"dtype.{dtype}"
        self.np_dtype = np.dtype(dtype)
        n = int(np.prod([abs(s) for s in shape])) if shape else 1
        self.size = self.realsize = n * self.np_dtype.itemsize
        self.format = 0


class Summary:
    def __init__(self, times):
        self.exec_time_list = list(times)


class FakeInferSession:
    calls: list = []            # ("init", device, path) / ("infer", mode, shapes) / ("free",) / ("finalize",)

    def __init__(self, device_id, model_path, acl_json_path=None, debug=False, loop=1):
        import onnxruntime as ort

        if not isinstance(device_id, int):
            raise TypeError(f"device:{device_id} is not a integer!")
        if not 0 <= device_id <= 255:
            raise ValueError(f"device:{device_id} is illegal. legal value range is [0, 255]")
        path = os.path.abspath(model_path)
        if not model_path.endswith(".om") or re.search(r"[^_A-Za-z0-9/.-]", path):
            raise ValueError(f"model path {model_path} fails the path check")
        if os.path.islink(path) or stat.S_IMODE(os.stat(path).st_mode) & 0o022:
            raise ValueError(f"model path {model_path} is a symlink or group/other-writable")
        with open(model_path + ".json") as f:
            meta = json.load(f)
        self.flavour = getattr(type(self), "FIXED_FLAVOUR", None) or FLAVOUR["name"]
        self.mode_built, self.gears = meta["mode"], meta.get("gears", [])
        self.dims_gears = [list(g) for g in meta.get("dims_gears", [])]
        self.sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        self.inputs = [Desc(i["name"], i["dtype"], i["shape"], i.get("datatype")) for i in meta["inputs"]]
        producers = {o: n.name or n.op_type for n in _graph_nodes(model_path) for o in n.output}
        self.outputs = [Desc(f"{producers.get(o.name, o.name)}:0", "float32", [1]) for o in self.sess.get_outputs()]
        self.times, self.t0, self.freed = [], time.perf_counter(), False
        FakeInferSession.calls.append(("init", device_id, model_path))
        if self.flavour == "2023":
            self.sumary = lambda: Summary(self.times)
        else:
            self.summary = lambda: Summary(self.times)
            self.reset_summaryinfo = self.times.clear
            self.free_resource = self._free

    def _free(self):
        self.freed = True
        FakeInferSession.calls.append(("free",))

    def finalize(self):
        """2023: an instance method; the 2024+ class replaces it with a static one (see below)."""
        FakeInferSession.calls.append(("finalize",))

    def __getattribute__(self, name):
        if name == "finalize" and object.__getattribute__(self, "flavour") != "2023":
            return _static_finalize
        return object.__getattribute__(self, name)

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.outputs

    def infer(self, feeds, mode="static", custom_sizes=100000, out_array=True):
        if self.flavour == "2025" and not isinstance(feeds, list):
            raise ValueError("feeds must be a list (ais_bench 2025: the list be checked is not a list!)")
        if not isinstance(feeds, (list, tuple)) or not feeds:
            raise ValueError("feeds must be a non-empty list")
        if not isinstance(out_array, bool):
            raise TypeError(f"value:{out_array} is not a bool!")
        if mode not in MODES:
            raise RuntimeError(f"wrong infer_mode {mode}, only support static, dymbatch, dymhw, dymdims, dymshape")
        if mode != self.mode_built:
            raise RuntimeError(f"model built for {self.mode_built}, called with {mode}")
        if mode == "dymshape":
            sizes = custom_sizes if isinstance(custom_sizes, list) else [custom_sizes]
            if custom_sizes is None or any(not isinstance(s, int) or not 0 < s <= CUSTOM_SIZE_MAX for s in sizes):
                raise ValueError(f"custom_size:{custom_sizes} dismatch with mode. Please check.")
        if len(feeds) != len(self.inputs):
            raise RuntimeError(f"input datas and intensors nums not matched! {len(feeds)} feeds, "
                               f"{len(self.inputs)} inputs")
        dyn = []
        for arr, d in zip(feeds, self.inputs):
            if not isinstance(arr, np.ndarray):
                raise RuntimeError(f"type:{type(arr)} invalid")
            if arr.dtype != d.np_dtype:
                raise ValueError(f"input {d.name}: dtype {arr.dtype}, model wants {d.np_dtype} (no cast is done)")
            if not arr.flags["C_CONTIGUOUS"]:
                raise ValueError(f"input {d.name} is not C-contiguous")
            if mode == "static" and arr.nbytes != d.size:
                raise ValueError(f"input {d.name}: {arr.nbytes} bytes, model wants {d.size}")
            if mode in ("dymbatch", "dymdims"):
                if arr.ndim != len(d.shape) or any(w >= 0 and w != g for w, g in zip(d.shape, arr.shape)):
                    raise RuntimeError("input datas and intensors dim not matched!")
                dyn += [g for w, g in zip(d.shape, arr.shape) if w < 0]
        if mode == "dymbatch" and dyn[0] not in self.gears:
            raise RuntimeError(f"batch {dyn[0]} is not a gear of {self.gears}")
        if mode == "dymdims" and dyn not in self.dims_gears:
            raise RuntimeError(f"dims {dyn} match no gear of {self.dims_gears}")
        FakeInferSession.calls.append(("infer", mode, [list(a.shape) for a in feeds]))
        start = (time.perf_counter() - self.t0) * 1e3
        ort_feeds = {}
        for d, a in zip(self.inputs, feeds):
            want = next(i for i in self.sess.get_inputs() if i.name == d.name).type
            ort_feeds[d.name] = a.astype(np.float32) if want == "tensor(float)" and a.dtype != np.float32 else a
        outs = self.sess.run(None, ort_feeds)
        end = (time.perf_counter() - self.t0) * 1e3
        self.times.append(end - start if self.flavour == "2023" else (start, end))
        return outs


def _static_finalize():
    FakeInferSession.calls.append(("finalize",))


def session_class(flavour: str) -> type:
    """A class with one flavour's API visible on the class itself (what `inspect` and hasattr on the class
    see, as pipeline.ascend_env.ais_bench_flavour does); instances behave like FakeInferSession in that flavour."""
    attrs = {"FIXED_FLAVOUR": flavour}
    if flavour == "2023":
        attrs["sumary"] = lambda self: Summary(self.times)
    else:
        attrs.update(summary=lambda self: Summary(self.times), reset_summaryinfo=lambda self: self.times.clear(),
                     free_resource=lambda self: self._free(), finalize=staticmethod(_static_finalize))
    return type(f"FakeInferSession{flavour}", (FakeInferSession,), attrs)


def _graph_nodes(path):
    import onnx

    return list(onnx.load(path, load_external_data=False).graph.node)
