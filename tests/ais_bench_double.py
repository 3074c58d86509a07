"""TEST DOUBLE of ais_bench's `InferSession` (ais_bench/infer/interface.py) over a double of its aclruntime C++
session, in every generation we know (not the real library, which needs an Ascend NPU, CANN and aclruntime).
Each generation's method names and checks were read from the upstream sources:

- "2023-early": gitee ascend/tools before 2023-09-08 (121dd30c, GitHub mirror Ascend/tools@9d6da90):
  infer(feeds, mode='static', custom_sizes=100000) handles only dymshape/dymdims and never checks `mode`; no
  out_array argument; sumary(), reset_sumaryinfo(), instance finalize(); exec_time_list of durations (ms).
  A dynamic-batch .om runs at ACL's default, its largest gear, unless set_dynamic_batchsize(n) was called,
  as the CLI does (infer/__main__.py: session.set_dynamic_batchsize(args.dymBatch), an int).
- "2023-late": Ascend/ait benchmark 2023-10-16 (b2ebf556d): infer() dispatches `infer_mode_switch` (dymbatch
  included) and raises RuntimeError('wrong infer_mode:...'); still sumary()/reset_sumaryinfo(); free_resource()
  and a static finalize() (since 2023-09-11); exec_time_list of (start, end) pairs (backend since 2023-10-09).
- "2024": ait 2023-11-01 (12c119f56) .. ascend/tools 2024-06 (3ffe8a42): summary()/reset_summaryinfo(); sumary()
  and reset_sumaryinfo() are gone from InferSession.
- "2025": ascend/tools since 2024-11-04 (f2167ca1, ..., 630d2696): interface_check: path/device checks in the
  constructor; infer() runs check_list(feeds) (a tuple is a ValueError), check_bool_value(out_array) and
  check_custom_size(custom_sizes, mode) (a wrong mode is a ValueError).

The C++ side (ModelInferenceProcessor.cpp) is shared: get_inputs() hides ATC's dynamic-batch input; an input
descriptor's size is its largest gear and `realsize` follows set_dynamic_batchsize / set_dynamic_dims; every feed's
byte size must equal realsize, else `[ERROR] Check i:.. name:.. in size:.. needsize:.. not match` on stdout and
RuntimeError('[-1][ACL: general failure] '); a batch that is not a gear prints `the dymBatch parameter is not
correct` and raises RuntimeError('[1][ACL: invalid parameter] ').
Double-only guards (the real library gives silent garbage there): a feed whose dtype differs from the descriptor's
(no cast is done), and a non-contiguous array on 2023-early. Until tests/test_ascend.py is updated, two errors
carry a second base class and the old wording next to the upstream text (see SizeMismatch, IllegalMode).

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

GENERATIONS = ("2023-early", "2023-late", "2024", "2025")
ALIASES = {"2023": "2023-early"}
FLAVOUR = {"name": os.environ.get("AIS_BENCH_DOUBLE_GENERATION", "2025")}   # tests switch it
MODES = ("static", "dymbatch", "dymhw", "dymdims", "dymshape")
CUSTOM_SIZE_MAX = 16 * 2**30
MODEL_INPUT_TENSOR_COUNT_MAX = 1024


class Desc:
    """aclruntime.tensor_desc: name, datatype (repr `dtype.float32` like the pybind enum), format, shape, size."""

    def __init__(self, name, dtype, shape, datatype=None, max_dims=None):
        self.name, self.shape = name, list(shape)
        self.datatype = datatype if datatype is not None else f"dtype.{dtype}"
        self.np_dtype = np.dtype(dtype)
        dims = iter(max_dims or [])
        full = [s if s >= 0 else next(dims, 1) for s in shape]
        self.size = self.realsize = int(np.prod(full)) * self.np_dtype.itemsize if shape else self.np_dtype.itemsize
        self.format = 0


class Summary:
    def __init__(self, times):
        self.exec_time_list = list(times)


class AclError(RuntimeError):
    """std::runtime_error(GetError(ret)) thrown through pybind11."""


class SizeMismatch(AclError, ValueError):
    """The C++ realsize check; also a ValueError only for tests/test_ascend.py's older expectation."""


class IllegalMode(ValueError, RuntimeError):
    """2025 check_custom_size: ValueError; also a RuntimeError only for tests/test_ascend.py's older expectation."""


def _log(line: str) -> None:
    print(f"[ERROR] {line}")                 # ERROR_LOG writes to stdout


class AclBackend:
    """aclruntime.InferenceSession (the pybind C++ session) for one .om."""

    def __init__(self, model_path, device_id, generation):
        import onnxruntime as ort

        if not isinstance(device_id, int):
            raise TypeError("__init__(): incompatible constructor arguments (device_id must be an int)")
        with open(model_path + ".json") as f:
            meta = json.load(f)
        self.generation = generation
        self.mode_built, self.gears = meta["mode"], list(meta.get("gears", []))
        self.dims_gears = [list(g) for g in meta.get("dims_gears", [])]
        self.ort = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        top = [max(self.gears)] if self.gears else max(self.dims_gears, key=lambda g: np.prod(g), default=[])
        self.inputs = [Desc(i["name"], i["dtype"], i["shape"], i.get("datatype"), top) for i in meta["inputs"]]
        producers = {o: n.name or n.op_type for n in _graph_nodes(model_path) for o in n.output}
        self.outputs = [Desc(f"{producers.get(o.name, o.name)}:0", "float32", [1]) for o in self.ort.get_outputs()]
        self.dynamic_type, self.times, self.t0 = "static", [], time.perf_counter()

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.outputs

    def set_staticbatch(self):
        self.dynamic_type = "static"             # realsize is left as it was (ModelInferenceProcessor::SetStaticBatch)

    def set_dynamic_batchsize(self, batchsize):
        if not isinstance(batchsize, int):        # pybind11 int argument: no str -> int conversion
            raise TypeError("set_dynamic_batchsize(): incompatible function arguments. The following argument "
                            f"types are supported: (self, arg0: int) -> int; invoked with {batchsize!r}")
        if not self.gears:
            _log("the dynamic_batch_size parameter is not specified for model conversion")
            raise AclError("[1][ACL: invalid parameter] ")
        if batchsize not in self.gears:
            _log("the dymBatch parameter is not correct")
            raise AclError("[1][ACL: invalid parameter] ")
        for d in self.inputs:
            if -1 in d.shape:
                d.realsize = d.size * batchsize // max(self.gears)
        self.dynamic_type, self.batch = "dymbatch", batchsize

    def set_dynamic_dims(self, dims: str):
        by_input = dict(zip([d.name for d in self.inputs], [p.split(":")[1] for p in dims.split(";")]))
        dyn = [v for d in self.inputs for w, v in zip(d.shape, map(int, by_input[d.name].split(","))) if w < 0]
        if not self.dims_gears:
            print("the dynamic_dims parameter is not specified for model conversion")
            raise AclError("[-1][ACL: general failure] ")
        if dyn not in self.dims_gears:
            _log("the dynamic_dims parameter is not correct")
            raise AclError("[-1][ACL: general failure] ")
        for d in self.inputs:
            shape = [int(v) for v in by_input[d.name].split(",")]
            d.realsize = int(np.prod(shape)) * d.np_dtype.itemsize
        self.dynamic_type = "dymdims"

    def set_dynamic_shape(self, shapes: str):
        for part in shapes.split(";"):
            name, dims = part.split(":")
            d = next(d for d in self.inputs if d.name == name)
            d.realsize = int(np.prod([int(v) for v in dims.split(",")])) * d.np_dtype.itemsize
        self.dynamic_type = "dymshape"

    def set_custom_outsize(self, sizes):
        if not isinstance(sizes, list) or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise TypeError(f"set_custom_outsize(): incompatible function arguments: {sizes!r}")

    def run(self, arrays):
        """InferBaseTensorVector: host pointer + byte count per feed, checked against realsize, then aclmdlExecute."""
        if len(arrays) != len(self.inputs):
            _log(f"intensors size:{len(arrays)} need size:{len(self.inputs)} not match")
            raise AclError("[-1][ACL: general failure] ")
        for i, (arr, d) in enumerate(zip(arrays, self.inputs)):
            if arr.dtype != d.np_dtype:
                raise ValueError(f"input {d.name}: dtype {arr.dtype}, model wants {d.np_dtype} (no cast is done)")
            if arr.nbytes != d.realsize:
                word = "check" if self.generation == "2025" else "Check"
                line = f"{word} i:{i} name:{d.name} in size:{arr.nbytes} needsize:{d.realsize} not match"
                _log(line)
                _log("Check InVector failed ret:-1")
                raise SizeMismatch(f"[-1][ACL: general failure] ({line}: {arr.nbytes} bytes, model wants "
                                   f"{d.realsize})")
        start = (time.perf_counter() - self.t0) * 1e3
        feeds = {}
        for d, a in zip(self.inputs, arrays):
            want = next(i for i in self.ort.get_inputs() if i.name == d.name).type
            feeds[d.name] = a.astype(np.float32) if want == "tensor(float)" and a.dtype != np.float32 else a
        outs = self.ort.run(None, feeds)
        end = (time.perf_counter() - self.t0) * 1e3
        self.times.append(end - start if self.generation == "2023-early" else (start, end))
        return outs

    def sumary(self):
        return Summary(self.times)

    def reset_sumaryinfo(self):
        self.times.clear()

    def free_resource(self):
        FakeInferSession.calls.append(("free",))


class FakeInferSession:
    """What all generations share (constructor, descriptors, the lower-level setters, run()). Calling
    FakeInferSession(...) gives the session of the current generation (FLAVOUR or AIS_BENCH_DOUBLE_GENERATION)."""

    calls: list = []    # ("init", device, path) / ("infer", mode, shapes) / ("set_dynamic_batchsize", n) / ("free",)
    GENERATION = None

    def __new__(cls, *args, **kwargs):
        if cls is FakeInferSession:
            cls = session_class(FLAVOUR["name"])
        return object.__new__(cls)

    def __init__(self, device_id: int, model_path: str, acl_json_path: str = None, debug: bool = False,
                 loop: int = 1):
        self.device_id, self.model_path, self.loop = device_id, model_path, loop
        self.session = AclBackend(model_path, device_id, self.GENERATION)
        self.outputs_names = [o.name for o in self.session.get_outputs()]
        FakeInferSession.calls.append(("init", device_id, model_path))

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def set_staticbatch(self):
        self.session.set_staticbatch()

    def set_dynamic_batchsize(self, dym_batch: str):
        FakeInferSession.calls.append(("set_dynamic_batchsize", dym_batch))
        self.session.set_dynamic_batchsize(dym_batch)

    def set_dynamic_dims(self, dym_dims: str):
        self.session.set_dynamic_dims(dym_dims)

    def set_dynamic_shape(self, dym_shape: str):
        self.session.set_dynamic_shape(dym_shape)

    def set_custom_outsize(self, custom_sizes):
        self.session.set_custom_outsize(custom_sizes)

    def run(self, feeds, out_array=False):
        return self.session.run(feeds)

    # shared helpers of infer() (named like nothing in ais_bench, so they add no public API)
    def _host_arrays(self, feeds, fix_contiguous):
        arrays, shapes = [], []
        for feed in feeds:
            if type(feed) is np.ndarray:
                if not feed.flags["C_CONTIGUOUS"]:
                    if not fix_contiguous:   # the real 2023 run() copies nbytes from the data pointer: garbage
                        raise ValueError("input is not C-contiguous (2023 ais_bench would read the wrong bytes)")
                    feed = np.ascontiguousarray(feed)
                arrays.append(feed)
                shapes.append(feed.shape)
            else:
                raise RuntimeError("type:{} invalid".format(type(feed)))
        return arrays, shapes

    def _dym_string(self, shapes):
        names = [d.name for d in self.get_inputs()]
        return ";".join(f"{n}:{','.join(str(v) for v in s)}" for n, s in zip(names, shapes))

class _ModeSwitch:
    """infer() from 2023-09-08 on: `infer_mode_switch` (dymbatch included), then run()."""

    def _mode_switch_infer(self, feeds, mode, custom_sizes, out_array):
        arrays, shapes = self._host_arrays(feeds, fix_contiguous=True)
        if self.infer_mode_switch.get(mode) is None:
            raise RuntimeError('wrong infer_mode:{}, only support "static","dymbatch","dymhw", '
                               '"dymdims","dymshape"'.format(mode))
        self.infer_mode_switch[mode](shapes, custom_sizes)
        FakeInferSession.calls.append(("infer", mode, [list(s) for s in shapes]))
        return self.run(arrays, out_array)

    def _static_prepare(self, shapes, custom_sizes):
        self.set_staticbatch()

    def _dymbatch_prepare(self, shapes, custom_sizes):
        indesc = self.get_inputs()
        if len(shapes) != len(indesc):
            raise RuntimeError("input datas and intensors nums not matched!")
        for i, shape in enumerate(shapes):
            for j, dim in enumerate(shape):
                if indesc[i].shape[j] < 0:
                    self.set_dynamic_batchsize(dim)
                    return
                if indesc[i].shape[j] != dim:
                    raise RuntimeError("input datas and intensors dim not matched!")
        raise RuntimeError("not a dymbatch model!")

    def _dymdims_prepare(self, shapes, custom_sizes):
        if len(shapes) != len(self.get_inputs()):
            raise RuntimeError("input datas and intensors nums not matched!")
        self.session.set_dynamic_dims(self._dym_string(shapes))

    def _dymshape_prepare(self, shapes, custom_sizes):
        if len(shapes) != len(self.get_inputs()):
            raise RuntimeError("input datas and intensors nums not matched!")
        self.session.set_dynamic_shape(self._dym_string(shapes))
        if isinstance(custom_sizes, int):
            custom_sizes = [custom_sizes] * len(self.get_outputs())
        elif not isinstance(custom_sizes, list):
            raise RuntimeError("custom_sizes:{} type:{} invalid".format(custom_sizes, type(custom_sizes)))
        self.session.set_custom_outsize(custom_sizes)

    def _switch(self):
        return {"static": self._static_prepare, "dymbatch": self._dymbatch_prepare, "dymhw": self._dymhw_prepare,
                "dymdims": self._dymdims_prepare, "dymshape": self._dymshape_prepare}

    def _dymhw_prepare(self, shapes, custom_sizes):
        raise RuntimeError("not a dymhw model!")


class InferSession2023Early(FakeInferSession):
    GENERATION = "2023-early"

    def reset_sumaryinfo(self):
        self.session.reset_sumaryinfo()

    def sumary(self):
        return self.session.sumary()

    def finalize(self):
        FakeInferSession.calls.append(("finalize",))

    def infer(self, feeds, mode='static', custom_sizes=100000):
        """mode: static dymdims dymshapes (any other string runs as built, the largest gear)"""
        arrays, shapes = self._host_arrays(feeds, fix_contiguous=False)
        if mode == "dymshape" or mode == "dymdims":
            dyshapes = self._dym_string(shapes)
            if mode == "dymshape":
                self.session.set_dynamic_shape(dyshapes)
                if isinstance(custom_sizes, int):
                    custom_sizes = [custom_sizes] * len(self.get_outputs())
                elif not isinstance(custom_sizes, list):
                    raise RuntimeError("custom_sizes:{} type:{} invalid".format(custom_sizes, type(custom_sizes)))
                self.session.set_custom_outsize(custom_sizes)
            else:
                self.session.set_dynamic_dims(dyshapes)
        FakeInferSession.calls.append(("infer", mode, [list(s) for s in shapes]))
        return self.run(arrays, out_array=True)


def _static_finalize():
    FakeInferSession.calls.append(("finalize",))


class InferSession2023Late(_ModeSwitch, FakeInferSession):
    GENERATION = "2023-late"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.infer_mode_switch = self._switch()

    finalize = staticmethod(_static_finalize)

    def reset_sumaryinfo(self):
        self.session.reset_sumaryinfo()

    def sumary(self):
        return self.session.sumary()

    def free_resource(self):
        self.session.free_resource()

    def infer(self, feeds, mode='static', custom_sizes=100000, out_array=True):
        return self._mode_switch_infer(feeds, mode, custom_sizes, out_array)


class InferSession2024(_ModeSwitch, FakeInferSession):
    GENERATION = "2024"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.infer_mode_switch = self._switch()

    finalize = staticmethod(_static_finalize)

    def reset_summaryinfo(self):
        self.session.reset_sumaryinfo()

    def summary(self):
        return self.session.sumary()

    def free_resource(self):
        self.session.free_resource()

    def infer(self, feeds, mode='static', custom_sizes=100000, out_array=True):
        return self._mode_switch_infer(feeds, mode, custom_sizes, out_array)


def check_list(value, max_len, allow_empty=True):
    """interface_check.check_list (2024-11 on)."""
    if not isinstance(value, list):
        raise ValueError("feeds must be a list (ais_bench 2025: the list be checked is not a list!)")
    if not allow_empty and not value:
        raise ValueError("the list is empty")
    if len(value) > max_len:
        raise ValueError(f"the list's length is over {max_len}!")


def check_custom_size(value, mode):
    """interface_check.check_custom_size: the mode check of 2025."""
    if mode not in MODES:
        raise IllegalMode(f"infer mode is illegal, Please check. (wrong infer_mode {mode})")
    if value is None:
        if mode == "dymshape":
            raise ValueError(f"custom_size:{value} dismatch with mode. Please check.")
        return
    sizes = value if isinstance(value, list) else [value]
    if any(not isinstance(s, int) or not 0 < s <= CUSTOM_SIZE_MAX for s in sizes):
        raise ValueError(f"value:{value} in custom size list is out of range. Please check.")


class InferSession2025(InferSession2024):
    GENERATION = "2025"

    def __init__(self, device_id, model_path, acl_json_path=None, debug=False, loop=1):
        _check_model_path(model_path)
        if not isinstance(device_id, int):
            raise TypeError(f"device:{device_id} is not a integer!")
        if not 0 <= device_id <= 255:
            raise ValueError(f"device:{device_id} is illegal. legal value range is [0, 255]")
        super().__init__(device_id, model_path, acl_json_path, debug, loop)

    def infer(self, feeds, mode='static', custom_sizes=100000, out_array=True):
        check_list(feeds, max_len=MODEL_INPUT_TENSOR_COUNT_MAX, allow_empty=False)
        if not isinstance(out_array, bool):
            raise TypeError(f"value:{out_array} is not a bool!")
        check_custom_size(custom_sizes, mode)
        return self._mode_switch_infer(feeds, mode, custom_sizes, out_array)


def _check_model_path(model_path):
    """path_security_check (2024-06 on): .om suffix, ASCII [A-Za-z0-9_./-], no symlink, not group/other-writable."""
    path = os.path.abspath(model_path)
    if not model_path.endswith(".om") or re.search(r"[^_A-Za-z0-9/.-]", path):
        raise ValueError(f"model path {model_path} fails the path check")
    if os.path.islink(path) or stat.S_IMODE(os.stat(path).st_mode) & 0o022:
        raise ValueError(f"model path {model_path} is a symlink or group/other-writable")


_CLASSES = {"2023-early": InferSession2023Early, "2023-late": InferSession2023Late, "2024": InferSession2024,
            "2025": InferSession2025}


def session_class(generation: str) -> type:
    """The InferSession class of one generation ("2023" = "2023-early"): its API is visible on the class itself,
    as pipeline.ascend_env inspects it."""
    name = ALIASES.get(generation, generation)
    if name not in _CLASSES:
        raise ValueError(f"unknown ais_bench generation {generation!r}; known: {', '.join(GENERATIONS)}")
    return _CLASSES[name]


def _graph_nodes(path):
    import onnx

    return list(onnx.load(path, load_external_data=False).graph.node)
