"""What every backend is: one class that owns everything about itself, and the feed check every runner shares.

A backend module (om.py, ort_cann.py, ...) defines one subclass of Backend and an instance named BACKEND; the
registry (convert/backends/__init__.py) lists the modules, and nothing else anywhere names a backend. Callers ask
the object: what it needs to be built (pre-flight, atc.sh), whether this machine can build or run it, which ONNX
file host code reads, what Ray must reserve for one of its runners, how reports label its device.

Standard library only at import time (the Makefile imports the registry before anything is installed): every
heavy import (numpy, onnx, onnxruntime, the Ascend glue) is inside a function.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod


class Backend(ABC):
    """One backend. Subclasses set the attributes, implement build and open_runner, and override what differs."""

    name: str = "?"
    what: str = ""              # one line for reports (`device_label`), e.g. "Ascend .om built by ATC, ..."
    short: str = ""             # a few words for the stage notes, e.g. "the CPU emulation of ATC's force_fp16"
    device_kind: str = "cpu"    # "npu" or "cpu": where it computes
    batching: str = "any"       # "any": any batch size; "built": only runner.accepted_batch_sizes() (pad or split)
    is_reference: bool = False  # the fp32 reference compare measures against (ort-cpu)
    needs_build: bool = True    # False: load_target works without `make om` (ort-cpu runs the simplified ONNX)
    needs_preflight: bool = False    # its build must pass the Ascend pre-flight (strict: errors stop `make om`)
    reports_preflight: bool = False  # its build runs the pre-flight as a report only (errors printed, not fatal)
    writes_atc_script: bool = False  # `make om` writes build/<m>/atc.sh when it builds this backend
    auto_order: int | None = None    # position in BACKEND=auto's preference (lower first); None: auto never picks it

    # ---- this machine ----------------------------------------------------------------------------------
    def availability(self, machine) -> tuple[bool, bool, str]:
        """(can_build, can_run, why_not) on `machine` (convert.backends.Machine); why_not is "" when both are True,
        else one line saying what is missing and how to get it."""
        return True, True, ""

    def check_build(self, machine) -> None:
        """Refuse, in one line, to build a target this machine cannot build (`make om BACKEND=<name>`)."""
        can_build, _, why = self.availability(machine)
        if not can_build:
            from pipeline.errors import ToolchainError

            raise ToolchainError(f"BACKEND={self.name} cannot be built here: {why}")

    def auto_notes(self, machine, can_build: bool, can_run: bool, why: str, runs: "Backend") -> list[str]:
        """The note lines BACKEND=auto prints about this backend when auto passed over it for `runs`."""
        if can_build and not can_run:
            return [f"{self.name} is built but not run here ({why}): infer/compare/bench run {runs.name}, "
                    f"{runs.short}; run them with BACKEND={self.name} where it can run"]
        return [f"{self.name}: unavailable here: {why}"]

    # ---- make om ---------------------------------------------------------------------------------------
    @abstractmethod
    def build(self, cfg: dict, paths, log, machine) -> dict:
        """Make the deployable target from paths.onnx_sim; returns the record `make om` writes to
        build/<model>/target-<name>.json (convert.backends.build_targets adds model, atc_script, preflight, created)."""

    def target_path(self, paths):
        return paths.build / f"target-{self.name}.json"

    def load_target(self, cfg: dict, paths) -> dict:
        """The record `make om` wrote; one line naming the make command when it is missing."""
        from pipeline.errors import PipelineError

        path = self.target_path(paths)
        if not path.exists():
            raise PipelineError(f"no {self.name} target for {cfg['name']} ({path} missing); "
                                f"run `make om MODEL={cfg['name']} BACKEND={self.name}` first")
        return json.loads(path.read_text())

    # ---- run -------------------------------------------------------------------------------------------
    @abstractmethod
    def open_runner(self, cfg: dict, target: dict, device=0):
        """A pipeline.runners.Runner over `target` (not yet activated); `device` is the NPU id (ignored on CPU)."""

    def onnx_for_host(self, paths):
        """The ONNX file whose inputs host code (Ray's prepare tasks) reads for shapes and dtypes, or None when the
        target has no ONNX of its own (the .om: the config's inputs with atc.fixed_dims are the truth)."""
        return paths.onnx_sim

    def ray_resources(self, cpu_threads: int) -> dict:
        """What one Ray inference actor of this backend reserves: `num_cpus`, optional custom `resources` (e.g.
        {"NPU": 1}: Ray then sets ASCEND_RT_VISIBLE_DEVICES, so the device inside the actor is 0), and
        `runner_threads`, the intra-op threads its runner gets (0 = onnxruntime's default, all cores)."""
        if self.device_kind == "npu":
            return {"num_cpus": 0, "resources": {"NPU": 1}, "runner_threads": 0}
        return {"num_cpus": 1, "runner_threads": max(1, int(cpu_threads))}

    # ---- results and reports ---------------------------------------------------------------------------
    @property
    def measures_npu(self) -> bool:
        """Figures from this backend are Ascend NPU figures (the report's banner and front matter)."""
        return self.device_kind == "npu"

    def device_id(self, device="0") -> str:
        """The results' `device` field: "npu:<id>" (Ray: "npu:<ids joined by +>") or "cpu"."""
        return f"npu:{device}" if self.device_kind == "npu" else "cpu"

    def device_label(self, device: str | None) -> str:
        """How reports name the device; a CPU backend's label always says it is not an NPU figure."""
        if self.device_kind == "npu":
            return f"Ascend NPU ({device or 'npu'}; {self.what})"
        return f"CPU ({self.name}: {self.what}; not an NPU)"

    def precision(self, target: dict) -> dict | None:
        """What the built target computes in fp16: {line, fp16_kernel_share, fp16_emulated_share, fp32_share} for
        an emulation target, None for a target that makes no such claim."""
        return None

    def __repr__(self) -> str:
        return f"<backend {self.name}>"
