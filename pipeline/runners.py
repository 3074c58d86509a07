"""Runners: one small interface for every backend (Polygraphy style).

A runner is created from files only (no torch), activated once, then called with a dict of
numpy arrays keyed by input name; it returns a dict keyed by output name.
"""
from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.provenance import sha256_file


@dataclass
class TensorMeta:
    name: str
    dtype: str                      # numpy dtype name, e.g. "float32"
    shape: list = field(default_factory=list)  # ints; None for a dynamic dim


class Runner(ABC):
    """Common interface: activate, infer, get_input_metadata, deactivate."""

    backend = "?"        # "ort-cpu", "ort-fp16", "ort-cann", "om"
    device = "cpu"       # "cpu" or "npu:<id>"

    def __init__(self):
        self.is_active = False
        self.last_infer_ms: float | None = None      # wall time of the last infer() call
        self.last_device_ms: float | None = None     # device compute time, when the backend reports it
        self._feed_meta: list[TensorMeta] | None = None

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise PipelineError(f"runner {self.backend} used before activate(); call activate() first")
        feeds = self.check_feeds(feeds)
        start = time.perf_counter()
        out = self._infer(feeds)
        self.last_infer_ms = (time.perf_counter() - start) * 1e3
        return out

    def check_feeds(self, feeds) -> dict:
        """Check and normalise the feeds of one self.infer() call, once, the same way for every self.

        Called by infer() before timing `_infer`. Against get_input_metadata() (cached on the self after the first call): every input
        present and no unknown name; each array's rank; a dtype the input takes, cast on the host only within a kind
        (float64 -> float32, int64 -> int32; never float -> int); then the runner's own unsupported(shapes) (per-batch
        .om files, gears: its wording); then the fixed dims of the metadata, dim 0 (the batch) included only when the
        target takes any batch size (self.accepted_batch_sizes() is None: a target with built sizes judges its batch
        in unsupported() and _infer()). Returns the feeds as C-contiguous arrays of the input dtypes, in the metadata's
        order; raises PipelineError with one line otherwise.
        """
        who = getattr(self, "backend", "self")
        if not hasattr(feeds, "items"):
            raise PipelineError(f"{who}: feeds must be a dict of input name -> numpy array, got {type(feeds).__name__}")
        meta = getattr(self, "_feed_meta", None)
        if meta is None:
            meta = list(self.get_input_metadata())
            self._feed_meta = meta
        names = [m.name for m in meta]
        missing = [n for n in names if n not in feeds]
        extra = sorted(set(feeds) - set(names))
        if missing or extra:
            what = (f"needs input(s) {missing}" if missing else "") + (" and " if missing and extra else "") + \
                   (f"has no input(s) {extra}" if extra else "")
            raise PipelineError(f"{who} {what}; got {sorted(feeds)}, its inputs are {names}: "
                                "check the config's inputs[].name against the exported ONNX")
        out = {}
        for m in meta:
            arr = np.asarray(feeds[m.name])
            want = list(m.shape or [])
            if arr.ndim != len(want):
                raise PipelineError(f"{who}: input {m.name} has shape {list(arr.shape)} ({arr.ndim} dims), the target "
                                    f"takes {_dims(want)} ({len(want)} dims)")
            try:
                dtype = np.dtype(m.dtype)
            except TypeError:
                dtype = None                                    # a type numpy does not name: the runtime checks it
            if dtype is not None and arr.dtype != dtype:
                if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                    raise PipelineError(f"{who}: input {m.name} is {arr.dtype}, the target takes {dtype}; convert it "
                                        "in the model family's preprocessing")
                arr = arr.astype(dtype)
            out[m.name] = np.ascontiguousarray(arr)
        why = self.unsupported({n: tuple(a.shape) for n, a in out.items()})
        if why:
            raise PipelineError(f"{who} cannot run these inputs: {why}; {self.unsupported_fix}")
        sizes = self.accepted_batch_sizes()
        for m in meta:
            arr, want = out[m.name], list(m.shape or [])
            for axis, (w, g) in enumerate(zip(want, arr.shape)):
                if axis == 0 and sizes:
                    continue        # the batch of a target with built sizes: its unsupported() and _infer() judge it
                if w is not None and int(w) >= 0 and int(w) != int(g):
                    raise PipelineError(f"{who}: input {m.name} has shape {list(arr.shape)}, the target takes "
                                        f"{_dims(want)} (dim {axis} must be {w}); feed that shape or rebuild the target")
        return out

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def get_input_metadata(self) -> list[TensorMeta]: ...

    @abstractmethod
    def get_output_names(self) -> list[str]: ...

    def accepted_batch_sizes(self) -> list[int] | None:
        """Batch sizes this target runs (built static sizes or dynamic-batch gears), or None for any."""
        return None

    def unsupported(self, shapes: dict) -> str | None:
        """Why this target cannot take inputs of these shapes (a static .om), or None."""
        return None

    # how to fix what unsupported() names (a target with built shapes says how to build another one)
    unsupported_fix = ("feed a shape it was built for (pipeline.batching.run_rows pads or splits rows to the built "
                       "batch sizes) or rebuild it with `make om`")

    @abstractmethod
    def describe(self) -> dict:
        """Backend, device, files with hashes, runtime versions: goes into every result file."""


def _dims(shape: list) -> str:
    return "[" + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape) + "]"


def ort_session_options(threads: int = 0, graph_optimization: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    so.log_severity_level = 3
    return so


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OrtRunner(Runner):
    """onnxruntime on the CPU: `ort-cpu` (fp32 reference) or `ort-fp16` (fp16 emulation target)."""

    def __init__(self, onnx_path: str | os.PathLike, backend: str = "ort-cpu",
                 threads: int = 0, graph_optimization: str = "all"):
        super().__init__()
        self.path = Path(onnx_path)
        self.backend = backend
        self.threads = threads
        self.graph_optimization = graph_optimization
        self.session = None
        if not self.path.exists():
            raise PipelineError(f"{self.path} does not exist; run `make export` (and `make om`) for this model first")

    def _activate(self) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(
                str(self.path), ort_session_options(self.threads, self.graph_optimization),
                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"onnxruntime cannot load {self.path}: {first}; rebuild it with `make export om`") from None

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feeds):
        names = self.get_output_names()
        outs = self.session.run(names, feeds)
        return dict(zip(names, outs))

    def get_input_metadata(self) -> list[TensorMeta]:
        if self.session is None:
            raise PipelineError("runner not active; call activate() first")
        return [TensorMeta(i.name, _ORT_TYPES.get(i.type, i.type),
                           [d if isinstance(d, int) else None for d in i.shape])
                for i in self.session.get_inputs()]

    def get_output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.backend,
            "device": self.device,
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "model_file": str(self.path),
            "model_sha256": sha256_file(self.path),
            "intra_op_threads": self.threads or (os.cpu_count() or 1),
            "graph_optimization": self.graph_optimization,
        }
