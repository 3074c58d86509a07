"""TEST DOUBLE of ais_bench's `InferSession` (not the real library, which needs an Ascend NPU).

It enforces the contract documented in shared/reference/ascend-ais-bench.md, per flavour:
- 2023: `sumary()` only, `exec_time_list` of durations in ms, no `free_resource`;
- 2024/2025: `summary()`, `exec_time_list` of (start_ms, end_ms) pairs, `free_resource()`, `reset_summaryinfo()`;
  2025 rejects tuple feeds with ValueError.
Common rules: feeds is a non-empty list; each feed's dtype and byte size equal the model input's; mode is one
of static/dymbatch/dymhw/dymdims/dymshape (else RuntimeError); dymbatch batch must be a gear; dymdims shapes
must equal a gear; dymshape needs custom_sizes > 0; the .om path must be ASCII [A-Za-z0-9_./-], not a symlink,
not group/other-writable. Outputs are computed with onnxruntime from the ".om", which in tests is the ONNX
file the fake atc copied, with the static shapes it recorded in <om>.json.
"""
from __future__ import annotations

import json
import os
import re
import stat
import time

import numpy as np

MODES = ("static", "dymbatch", "dymhw", "dymdims", "dymshape")
FLAVOUR = {"name": "2025"}      # tests switch it


class Desc:
    def __init__(self, name, dtype, shape):
        self.name, self.shape = name, list(shape)
        self.datatype = f"dtype.{dtype}"
        n = int(np.prod([abs(s) for s in shape])) if shape else 1
        self.size = self.realsize = n * np.dtype(dtype).itemsize
        self.format = 0


class Summary:
    def __init__(self, times):
        self.exec_time_list = list(times)


class FakeInferSession:
    calls: list = []

    def __init__(self, device_id, model_path, acl_json_path=None, debug=False, loop=1):
        import onnxruntime as ort

        if not isinstance(device_id, int) or not 0 <= device_id <= 255:
            raise ValueError(f"device_id {device_id} out of range")
        if not model_path.endswith(".om") or not re.match(r"^[A-Za-z0-9_./-]+$", model_path):
            raise ValueError(f"model path {model_path} fails the path check")
        if os.path.islink(model_path) or stat.S_IMODE(os.stat(model_path).st_mode) & 0o022:
            raise ValueError(f"model path {model_path} is a symlink or group/other-writable")
        meta = json.loads(open(model_path + ".json").read())
        self.mode_built, self.gears = meta["mode"], meta.get("gears", [])
        self.sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        self.inputs = [Desc(i["name"], i["dtype"], i["shape"]) for i in meta["inputs"]]
        self.times, self.t0, self.freed = [], time.perf_counter(), False
        FakeInferSession.calls.append(("init", device_id, model_path))
        if FLAVOUR["name"] == "2023":
            self.free_resource = None
            del self.free_resource
        flav = FLAVOUR["name"]
        if flav == "2023":
            self.sumary = lambda: Summary(self.times)
        else:
            self.summary = lambda: Summary(self.times)
            self.reset_summaryinfo = lambda: self.times.clear()
            self.free_resource = self._free

    def _free(self):
        self.freed = True
        FakeInferSession.calls.append(("free",))

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return [Desc(o.name, "float32", [1]) for o in self.sess.get_outputs()]

    def infer(self, feeds, mode="static", custom_sizes=100000, out_array=True):
        if isinstance(feeds, tuple) and FLAVOUR["name"] == "2025":
            raise ValueError("feeds must be a list")
        if not isinstance(feeds, list) or not feeds:
            raise ValueError("feeds must be a non-empty list")
        if mode not in MODES:
            raise RuntimeError(f"wrong infer_mode {mode}")
        if mode != self.mode_built:
            raise RuntimeError(f"model built for {self.mode_built}, called with {mode}")
        if mode == "dymshape" and (custom_sizes is None or custom_sizes <= 0):
            raise ValueError("dymshape needs custom_sizes > 0")
        if len(feeds) != len(self.inputs):
            raise ValueError(f"{len(feeds)} feeds for {len(self.inputs)} inputs")
        for arr, d in zip(feeds, self.inputs):
            want = d.datatype.split(".")[1]
            if arr.dtype != np.dtype(want):
                raise ValueError(f"input {d.name}: dtype {arr.dtype}, model wants {want} (no cast is done)")
            if not arr.flags["C_CONTIGUOUS"]:
                raise ValueError(f"input {d.name} is not C-contiguous")
            if mode == "static" and arr.nbytes != d.size:
                raise ValueError(f"input {d.name}: {arr.nbytes} bytes, model wants {d.size}")
            if mode == "dymbatch" and arr.shape[0] not in self.gears:
                raise ValueError(f"batch {arr.shape[0]} is not a gear of {self.gears}")
        start = (time.perf_counter() - self.t0) * 1e3
        outs = self.sess.run(None, {d.name: a for d, a in zip(self.inputs, feeds)})
        end = (time.perf_counter() - self.t0) * 1e3
        self.times.append(end - start if FLAVOUR["name"] == "2023" else (start, end))
        return outs
