"""The backend registry: one module per backend, and what `auto` means for each stage on this machine.

MODULES below is the only list of backends anywhere: the Makefile (`python -m convert.backends names`), make om
(build_targets), infer/compare/bench (run_backend, load_target, open_runner), Ray, the report and make doctor all
ask this package and the Backend objects it holds (convert/backends/base.py), never a backend's name or device kind.
Adding a backend costs its module (a Backend subclass and `BACKEND = ...`), one line in MODULES and a test.

Standard library only at import (the Makefile calls `names` before anything is installed); the probes, numpy,
onnxruntime and the Ascend glue are imported inside functions.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
from dataclasses import dataclass

from pipeline.errors import ConfigError, PipelineError, ToolchainError

from .base import Backend

# the registry, in BACKEND=auto's preference where it matters; one line per backend module
MODULES = (
    "om",          # Ascend .om by ATC, ais_bench on the NPU
    "ort_cann",    # the simplified ONNX on onnxruntime's CANN provider on the NPU
    "ort_fp16",    # CPU emulation of ATC's force_fp16
    "ort_cpu",     # the fp32 reference
)


def _registry() -> dict[str, Backend]:
    out: dict[str, Backend] = {}
    for module in MODULES:
        b = importlib.import_module(f"{__name__}.{module}").BACKEND
        if b.name in out:
            raise RuntimeError(f"convert/backends/{module}.py declares backend {b.name!r} a second time")
        out[b.name] = b
    return out


REGISTRY: dict[str, Backend] = _registry()
NAMES = ("auto", *REGISTRY)
REFERENCE = next(n for n, b in REGISTRY.items() if b.is_reference)      # "ort-cpu"
AUTO_ORDER = tuple(sorted((b for b in REGISTRY.values() if b.auto_order is not None), key=lambda b: b.auto_order))


def get(name: str) -> Backend:
    if name not in REGISTRY:
        raise ConfigError(f"unknown BACKEND '{name}'; use one of: {', '.join(NAMES)}")
    return REGISTRY[name]


def check_name(name: str) -> str:
    """A BACKEND value (`auto` or a registered backend), else the one-line ConfigError."""
    if name != "auto":
        get(name)
    return name


def reference() -> Backend:
    return REGISTRY[REFERENCE]


# ---- this machine -------------------------------------------------------------------------------------
_UNSET = object()


class Machine:
    """What the probes found on this machine, each probed once, when first asked (fields given here are not
    probed: tests pass them all).

    atc            path of atc on PATH, or None
    soc            the --soc_version make om would use (SOC=, else the config's atc.soc_version, else npu-smi)
    soc_from       "SOC=", "config", "npu-smi" or ""
    npus           chips npu-smi lists
    ais_bench      ais_bench.infer.interface imports
    ort_providers  onnxruntime.get_available_providers() as a tuple, or None when onnxruntime does not import
    ort_error      why onnxruntime does not import (one line), or None
    """

    FIELDS = ("atc", "soc", "soc_from", "npus", "ais_bench", "ort_providers", "ort_error")

    def __init__(self, atc=_UNSET, soc=_UNSET, soc_from=_UNSET, npus=_UNSET, ais_bench=_UNSET,
                 ort_providers=_UNSET, ort_error=_UNSET, *, cfg_soc: str | None = None, soc_arg: str | None = None):
        given = {"atc": atc, "soc": soc, "soc_from": soc_from, "npus": npus, "ais_bench": ais_bench,
                 "ort_providers": ort_providers, "ort_error": ort_error}
        self._known = {k: v for k, v in given.items() if v is not _UNSET}
        if "ort_providers" in self._known and "ort_error" not in self._known:
            self._known["ort_error"] = None
        if self._known.get("ort_providers") is not None:
            self._known["ort_providers"] = tuple(self._known["ort_providers"])
        self._cfg_soc, self._soc_arg = cfg_soc, soc_arg
        self._npu: dict | None = None

    def _value(self, key: str, probe):
        if key not in self._known:
            for k, v in probe().items():
                self._known.setdefault(k, v)
        return self._known[key]

    # probes: PATH, npu-smi, an ais_bench import, an onnxruntime import (no torch, nothing runs on an NPU)
    def _npu_info(self) -> dict:
        if self._npu is None:
            from pipeline import ascend_env

            self._npu = ascend_env.probe_npus()
        return self._npu

    def _probe_npus(self) -> dict:
        return {"npus": len(self._npu_info()["chips"])}

    def _probe_soc(self) -> dict:
        if self._soc_arg:
            return {"soc": self._soc_arg, "soc_from": "SOC="}
        if self._cfg_soc:
            return {"soc": self._cfg_soc, "soc_from": "config"}
        soc = self._npu_info().get("soc_version")
        return {"soc": soc, "soc_from": "npu-smi"} if soc else {"soc": None, "soc_from": ""}

    @staticmethod
    def _probe_ais() -> dict:
        from pipeline import ascend_env

        return {"ais_bench": bool(ascend_env.ais_bench_flavour()["importable"])}

    @staticmethod
    def _probe_ort() -> dict:
        try:
            import onnxruntime
        except Exception as exc:  # missing, or a CANN build whose libraries do not load without set_env.sh
            text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            return {"ort_providers": None, "ort_error": f"{type(exc).__name__}: {text}" if text else type(exc).__name__}
        return {"ort_providers": tuple(onnxruntime.get_available_providers()), "ort_error": None}

    # which probe answers each field (a probe may answer several: soc and soc_from, ort_providers and ort_error)
    PROBES = {"atc": lambda self: {"atc": shutil.which("atc")}, "soc": lambda self: self._probe_soc(),
              "soc_from": lambda self: self._probe_soc(), "npus": lambda self: self._probe_npus(),
              "ais_bench": lambda self: self._probe_ais(), "ort_providers": lambda self: self._probe_ort(),
              "ort_error": lambda self: self._probe_ort()}

    def __getattr__(self, key: str):
        if key not in Machine.FIELDS:
            raise AttributeError(key)
        return self._value(key, lambda: Machine.PROBES[key](self))

    def facts(self) -> dict:
        """Every field (probing what is not known yet)."""
        return {k: getattr(self, k) for k in self.FIELDS}

    def __repr__(self) -> str:
        known = ", ".join(f"{k}={self._known[k]!r}" for k in self.FIELDS if k in self._known)
        return f"Machine({known})"


def probe(cfg_soc: str | None = None, soc_arg: str | None = None) -> Machine:
    """This machine, probed lazily (SOC from the environment when soc_arg is None)."""
    soc_arg = soc_arg if soc_arg is not None else os.environ.get("SOC", "")
    return Machine(cfg_soc=cfg_soc, soc_arg=soc_arg)


# ---- what each stage does ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    build: tuple[str, ...]   # targets `make om` builds
    run: str                 # backend infer/compare/bench run
    notes: tuple[str, ...]   # one line each, printed by the stages and by make doctor


def plan(requested: str, m: Machine) -> Plan:
    """The one rule for every stage: what `make om` builds and what infer/compare/bench run.

    An explicit backend is built and run as asked (running a copied .om needs no ATC). For `auto`, the backends
    are tried in auto_order: each one this machine can build is built, and the first that can also run is the
    one the stages run; every backend passed over adds its note lines (Backend.auto_notes)."""
    if requested != "auto":
        return Plan((get(requested).name,), requested, ())
    build, passed = [], []
    runs = None
    for b in AUTO_ORDER:
        can_build, can_run, why = b.availability(m)
        if can_build:
            build.append(b.name)
        if can_build and can_run:
            runs = b
            break
        passed.append((b, can_build, can_run, why))
    if runs is None:
        raise ToolchainError("BACKEND=auto found no backend that can be built and run here: "
                             + "; ".join(f"{b.name}: {why}" for b, _, _, why in passed))
    notes = [line for b, cb, cr, why in passed for line in b.auto_notes(m, cb, cr, why, runs)]
    return Plan(tuple(build), runs.name, tuple(notes))


def check_build(name: str, m: Machine) -> None:
    """Refuse, in one line, to build a target this machine cannot build."""
    get(name).check_build(m)


def describe_plan(p: Plan, requested: str = "auto") -> list[str]:
    """The lines `make doctor` prints: exactly what each stage does with this BACKEND."""
    lines = [f"BACKEND={requested}: make om builds {' + '.join(p.build)}",
             f"BACKEND={requested}: make infer / compare / bench run {p.run} ({get(p.run).device_kind})"]
    return lines + list(p.notes)


def stage_plan(cfg: dict, requested: str, soc_arg: str | None = None) -> tuple[Plan, Machine]:
    m = probe(cfg["atc"]["soc_version"], soc_arg)
    return plan(requested, m), m


def run_backend(cfg: dict, requested: str) -> tuple[str, tuple[str, ...]]:
    """The backend infer/compare/bench run for BACKEND=requested, and the note lines to print."""
    if requested != "auto":
        get(requested)
        return requested, ()
    p, _ = stage_plan(cfg, requested)
    return p.run, p.notes


# ---- targets and runners -------------------------------------------------------------------------------
def load_target(cfg: dict, name: str) -> dict:
    """The target record of backend `name` (one line naming the make command when `make om` has not run)."""
    from pipeline.paths import ModelPaths

    return get(name).load_target(cfg, ModelPaths(cfg["name"]))


def target_precision(cfg: dict, name: str) -> dict | None:
    """What backend `name`'s built target computes in fp16 ({line, fp16_kernel_share, fp16_emulated_share,
    fp32_share}), for every result that reports its figures; None for a target that makes no such claim."""
    from pipeline.paths import ModelPaths

    b = get(name)
    path = b.target_path(ModelPaths(cfg["name"]))
    if not path.exists():
        return None
    return b.precision(json.loads(path.read_text()))


def open_runner(cfg: dict, requested: str, device=0, log=None):
    """The runner infer/compare/bench use for BACKEND=requested (`auto`: the plan), not yet activated."""
    name, notes = run_backend(cfg, requested)
    for note in notes:
        (log or print)(f"{cfg['name']} | {note}")
    return get(name).open_runner(cfg, load_target(cfg, name), device)


def reference_runner(cfg: dict):
    """The fp32 reference runner make compare measures against (needs no `make om`)."""
    return reference().open_runner(cfg, load_target(cfg, REFERENCE))


def build_targets(cfg: dict, requested: str, soc: str | None, log) -> Plan:
    """`make om`: build the targets BACKEND=requested needs on this machine, each to build/<m>/target-<name>.json.

    The Ascend pre-flight runs when a built backend needs it (strict: its errors stop the build) or reports it
    (printed only); atc.sh is written when a built backend writes it. Returns the plan."""
    from pipeline import provenance
    from pipeline.atomic import write_json
    from pipeline.paths import ModelPaths

    paths = ModelPaths(cfg["name"])
    if not paths.onnx_sim.exists():
        raise PipelineError(f"{paths.onnx_sim} is missing; run `make export MODEL={cfg['name']}` first")
    p, machine = stage_plan(cfg, requested, soc)
    built = [get(name) for name in p.build]
    for b in built:
        b.check_build(machine)

    from convert import ascend

    preflight = script = None
    if any(b.needs_preflight or b.reports_preflight for b in built):
        preflight = ascend.preflight(cfg, paths, log, strict=any(b.needs_preflight for b in built))
    for note in p.notes:
        log(f"om | {note}")
    if any(b.writes_atc_script for b in built):
        script = ascend.write_script(cfg, paths, machine.soc, log)
    for b in built:
        target = b.build(cfg, paths, log, machine)
        target.update({"model": cfg["name"], "atc_script": str(script) if script else None,
                       "preflight": preflight, "created": provenance.header("om", cfg)})
        write_json(b.target_path(paths), target)
    log(f"om | {cfg['name']}: built {', '.join(p.build)}; infer/compare/bench run {p.run}")
    return p


# ---- make's view: the names, and a stamp that changes when the plan changes ---------------------------
def stamp_text(p: Plan, m: Machine) -> str:
    avail = " ".join(f"{b.name}:{''.join('1' if x else '0' for x in b.availability(m)[:2])}"
                     for b in REGISTRY.values())
    return (f"build={','.join(p.build)}\nrun={p.run}\nsoc={m.soc or ''}\natc={m.atc or ''}\n"
            f"npus={m.npus}\nais_bench={m.ais_bench}\nbackends={avail}\n")


def main(argv=None) -> int:
    from pipeline.errors import cli

    @cli
    def _main():
        ap = argparse.ArgumentParser(prog="python -m convert.backends")
        ap.add_argument("command", choices=("names", "stamp", "show"))
        ap.add_argument("--model")
        ap.add_argument("--backend", default=os.environ.get("BACKEND", "auto"))
        args = ap.parse_args(argv)
        if args.command == "names":
            print(" ".join(NAMES))
            return 0
        if not args.model:
            ap.error(f"{args.command} needs --model")
        from pipeline.atomic import write_text_if_changed
        from pipeline.config import load_config
        from pipeline.paths import ModelPaths

        check_name(args.backend)
        cfg = load_config(args.model)
        p, m = stage_plan(cfg, args.backend)
        if args.command == "show":
            print("\n".join(describe_plan(p, args.backend)))
            return 0
        write_text_if_changed(ModelPaths(cfg["name"]).build / f"plan-{args.backend}.stamp", stamp_text(p, m))
        return 0

    return _main()
