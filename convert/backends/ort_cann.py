"""`ort-cann`: the simplified ONNX on onnxruntime's CANN execution provider, on an Ascend NPU (no ATC, no ais_bench).

A second way to run the model on the NPU, and a cross-check of the .om: the provider hands the ONNX graph to CANN's
graph engine (GE) itself, with the same precision mode the .om was built with, so `make compare BACKEND=ort-cann`
next to `BACKEND=om` tells an ATC/ais_bench problem from a CANN one.

Install on the NPU host (the package replaces onnxruntime; CANN's set_env.sh must be sourced so that its
libraries load): `pip uninstall -y onnxruntime && pip install onnxruntime-cann==1.24.4`.

Provider options — onnxruntime's CANN-ExecutionProvider documentation (docs/execution-providers/community-
maintained/CANN-ExecutionProvider.md) and the parser in onnxruntime/core/providers/cann/
cann_execution_provider_info.cc (FromProviderOptions; ProviderOptionsParser refuses any key it does not know with
`Unknown provider option: "<key>"`, and the set of keys changed between releases):
  device_id          the runner's device (DEVICE=; 0 inside a Ray actor, which sees only its chip). Not recorded in
                     the target: the same target runs on any chip.
  precision_mode     the model config's atc.precision_mode, i.e. what the .om was built with (default force_fp16,
                     which is also the provider's documented default and ATC's default): a cross-check must compute
                     in the same mode. Newer providers parse only `precision_mode_v2` (fp16/origin/mixed_float16...,
                     the same names ATC's --precision_mode_v2 takes): when the provider refuses `precision_mode` as
                     unknown, the runner retries with `precision_mode_v2` and the v2 spelling (convert.atc.spellings),
                     and the other way round; a mode with no spelling in the key the provider knows is dropped, and
                     the runner's describe() says so (never silently: `dropped_options`).
  enable_cann_graph  "1": the documented default and recommendation (GE runs the whole graph, or its supported
                     subgraphs; "0" falls back to single-operator mode). Explicit so the record shows it.
  dump_graphs        "0": the documented default (no ONNX subgraph dumps).
  dump_om_model      "0": the documented default is true, which saves an intermediate .om of every compiled graph
                     to disk on each session; the .om of record is ATC's (BACKEND=om). Providers older than the
                     option (onnxruntime PR 20075) refuse the key; the runner then drops it.
  not passed         arena_extend_strategy (default kNextPowerOfTwo), npu_mem_limit (default: no limit),
                     op_select_impl_mode (default high_performance, as ATC's --op_select_implmode default),
                     optypelist_for_implmode, enable_cann_subgraph: the provider defaults.
  not applicable     atc.keep_dtype, atc.op_precision_mode and atc.modify_mixlist have no provider option: the build
                     logs and records them as `not_applied` when the config sets them.
The options live in the target record `make om` writes (provider_options), and the runner passes those.
They are fixed here, not per model, apart from the precision mode, which follows atc.precision_mode: no model has
needed another value yet, and a per-model section would be a schema key (pipeline/config.py) nobody sets.

Session options are the other onnxruntime runners' (pipeline.runners.ort_session_options with the config's
onnxruntime.intra_op_threads and graph_optimization): onnxruntime's graph optimisations are provider-aware, and the
intra-op threads serve the nodes the provider leaves to the CPU. The providers list is the documented
[("CANNExecutionProvider", options), "CPUExecutionProvider"]; after creating the session the runner checks
session.get_providers() and refuses, in one line, a session that did not get the CANN provider (onnxruntime only
warns and runs on the CPU when a requested provider cannot be registered).
"""
from __future__ import annotations

import re

from .base import Backend

PROVIDER = "CANNExecutionProvider"
PIP = "pip uninstall -y onnxruntime && pip install onnxruntime-cann==1.24.4"
INSTALL = (f"on the NPU host, `{PIP}` into the pipeline's venv (.venv/bin/python -m pip ...) with CANN's set_env.sh "
           "sourced (`source /usr/local/Ascend/ascend-toolkit/set_env.sh`)")
# fixed provider options (see the module docstring); the precision key is added from the config
FIXED_OPTIONS = {"enable_cann_graph": "1", "dump_graphs": "0", "dump_om_model": "0"}
PRECISION_KEYS = ("precision_mode", "precision_mode_v2")
UNKNOWN_OPTION = re.compile(r"[Uu]nknown provider option:?\s*\\?[\"']?([A-Za-z0-9_]+)")
NOT_APPLIED = ("keep_dtype", "op_precision_mode", "modify_mixlist")


class OrtCannBackend(Backend):
    name = "ort-cann"
    what = "the simplified ONNX on onnxruntime's CANNExecutionProvider (CANN graph engine, no ATC, no ais_bench)"
    short = "the simplified ONNX on onnxruntime's CANN provider on this NPU"
    device_kind = "npu"
    batching = "any"
    auto_order = 10

    def availability(self, m) -> tuple[bool, bool, str]:
        if not m.npus:
            return False, False, "no NPU visible (npu-smi lists no chip); ort-cann runs only on an Ascend NPU host"
        providers = m.ort_providers
        if providers is None:
            return False, False, f"onnxruntime does not import here ({m.ort_error or 'not installed'}): {INSTALL}"
        if PROVIDER not in providers:
            return False, False, (f"onnxruntime has no {PROVIDER} here (it has {', '.join(providers) or 'none'}): "
                                  f"{INSTALL}")
        return True, True, ""

    def build(self, cfg, paths, log, machine) -> dict:
        from pipeline import provenance

        options, precision = provider_options(cfg)
        not_applied = {k: cfg["atc"][k] for k in NOT_APPLIED if cfg["atc"].get(k)}
        log(f"om | ort-cann target: the simplified ONNX {paths.onnx_sim.name} on onnxruntime's {PROVIDER}, "
            f"precision {precision} (atc.precision_mode, as the .om)"
            + (f"; not applied by the provider: {', '.join('atc.' + k for k in not_applied)}" if not_applied else ""))
        return {"backend": "ort-cann", "device": "npu", "onnx": provenance.file_record(paths.onnx_sim),
                "provider": PROVIDER, "provider_options": options, "precision": precision,
                "not_applied": not_applied,
                "session": {"intra_op_threads": cfg["onnxruntime"]["intra_op_threads"],
                            "graph_optimization": cfg["onnxruntime"]["graph_optimization"]}}

    def open_runner(self, cfg, target, device=0):
        from pipeline.paths import ModelPaths

        o = cfg["onnxruntime"]
        options = dict(target.get("provider_options") or provider_options(cfg)[0])
        from convert.aipp import host_side

        runner = make_runner(ModelPaths(cfg["name"]).onnx_sim, options, device, o["intra_op_threads"],
                             o["graph_optimization"])
        return host_side(cfg, runner, "emulate")         # AIPP: the NPU gets the network, the host emulates AIPP

    def ray_resources(self, cpu_threads: int) -> dict:
        # one chip per actor; the actor's CPU share serves the nodes the provider leaves to the CPU
        return {"num_cpus": 0, "resources": {"NPU": 1}, "runner_threads": max(1, int(cpu_threads))}


def provider_options(cfg: dict) -> tuple[dict, str]:
    """(provider options without device_id, the precision mode) for this model: see the module docstring."""
    mode = cfg["atc"]["precision_mode"]
    return {**FIXED_OPTIONS, "precision_mode": mode}, mode


def _precision_alternative(key: str, value: str) -> tuple[str, str | None]:
    """The other precision key and this mode's spelling in it (None: the mode has no such spelling)."""
    from convert.atc import spellings

    v1, v2 = spellings(value)
    return ("precision_mode_v2", v2) if key == "precision_mode" else ("precision_mode", v1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def make_runner(onnx_path, options: dict, device=0, threads: int = 0, graph_optimization: str = "all"):
    """An OrtCannRunner (the class is built here: pipeline.runners imports numpy, not allowed at import time)."""
    return _runner_class()(onnx_path, options, device, threads, graph_optimization)


_CLASS = None


def _runner_class():
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from pipeline.errors import PipelineError
    from pipeline.runners import OrtRunner, ort_session_options

    class OrtCannRunner(OrtRunner):
        """onnxruntime with the CANN provider on one NPU; refuses a session that did not get the provider."""

        def __init__(self, onnx_path, options: dict, device=0, threads: int = 0, graph_optimization: str = "all"):
            super().__init__(onnx_path, "ort-cann", threads, graph_optimization)
            self.device_id = int(device)
            self.device = f"npu:{self.device_id}"
            self.requested_options = {k: str(v) for k, v in options.items() if k != "device_id"}
            self.options: dict | None = None           # what the session was created with
            self.dropped_options: dict = {}            # key -> why it was not passed

        def _activate(self) -> None:
            import onnxruntime as ort

            available = ort.get_available_providers()
            if PROVIDER not in available:
                raise PipelineError(f"BACKEND=ort-cann: onnxruntime has no {PROVIDER} here (it has "
                                    f"{', '.join(available)}): {INSTALL}")
            opts = {"device_id": str(self.device_id), **self.requested_options}
            self.dropped_options = {}
            session = self._create(ort, opts)
            got = list(session.get_providers())
            if PROVIDER not in got:
                raise PipelineError(f"onnxruntime did not give the ort-cann session the {PROVIDER} (the session has "
                                    f"{', '.join(got) or 'no provider'}); refusing to run ort-cann on the CPU: check "
                                    "`npu-smi info` (device health, DEVICE=), that CANN's set_env.sh is sourced, and "
                                    f"that onnxruntime-cann matches the CANN version; or {INSTALL}")
            self.session, self.options = session, opts

        def _create(self, ort, opts: dict):
            so = ort_session_options(self.threads, self.graph_optimization)
            for _ in range(2 * len(opts) + 1):       # each retry drops or renames one option
                try:
                    return ort.InferenceSession(str(self.path), so, providers=[(PROVIDER, dict(opts)),
                                                                                "CPUExecutionProvider"])
                except Exception as exc:  # onnxruntime raises its own exception types
                    m = UNKNOWN_OPTION.search(str(exc))
                    key = m.group(1) if m else None
                    if key not in opts or key == "device_id":
                        raise PipelineError(f"onnxruntime-cann cannot load {self.path} on NPU {self.device_id}: "
                                            f"{_first_line(exc)}; check `npu-smi info` and that CANN's set_env.sh is "
                                            "sourced; rebuild with `make export om`") from None
                    value = opts.pop(key)
                    if key in PRECISION_KEYS:
                        alt, alt_value = _precision_alternative(key, value)
                        if alt in opts or alt in self.dropped_options:
                            self.dropped_options[key] = f"not known to this provider ({value})"
                        elif alt_value:
                            opts[alt] = alt_value
                            self.dropped_options[key] = f"not known to this provider: passed as {alt}={alt_value}"
                        else:
                            self.dropped_options[key] = (f"not known to this provider, and {value} has no {alt} "
                                                         "spelling: the provider's default precision applies")
                    else:
                        self.dropped_options[key] = f"not known to this provider ({value}): its default applies"
            raise PipelineError(f"onnxruntime-cann refused every provider option for {self.path}; {INSTALL}")

        def describe(self) -> dict:
            import importlib.metadata as md
            import os

            import onnxruntime as ort

            from pipeline.provenance import sha256_file

            try:
                dist = md.version("onnxruntime-cann")
            except md.PackageNotFoundError:
                dist = None
            effective = None
            if self.session is not None and hasattr(self.session, "get_provider_options"):
                effective = self.session.get_provider_options().get(PROVIDER)
            return {
                "backend": "ort-cann", "device": self.device,
                "runtime": f"onnxruntime {ort.__version__} {PROVIDER}"
                           + (f" (onnxruntime-cann {dist})" if dist else ""),
                "providers": list(self.session.get_providers()) if self.session is not None else None,
                "provider_options": self.options, "provider_options_effective": effective,
                "dropped_options": self.dropped_options,
                "model_file": str(self.path), "model_sha256": sha256_file(self.path),
                "intra_op_threads": self.threads or (os.cpu_count() or 1), "graph_optimization": self.graph_optimization,
            }

    _CLASS = OrtCannRunner
    return _CLASS


BACKEND = OrtCannBackend()
