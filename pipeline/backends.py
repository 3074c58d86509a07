"""The backend registry: each backend declared once, and what `auto` means for each stage on this machine.

Adding a backend means one entry here and one runner class. The Makefile, convert, run, compare, report and
doctor all read this module (the Makefile through `python -m pipeline.backends stamp`).
Standard library only at import: the Makefile calls it before anything else is installed.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from dataclasses import dataclass

from .errors import ConfigError, ToolchainError


@dataclass(frozen=True)
class Backend:
    name: str
    device_kind: str        # "npu" or "cpu": what the results' `device` says
    builder: str            # "module:function(cfg, paths, log, soc) -> target dict" run by `make om`
    runner: str             # "module:function(cfg, target, device) -> Runner" (not yet activated)
    what: str


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("om", "npu", "convert.targets:build_om", "convert.targets:open_om",
            "Ascend .om built by ATC, run by ais_bench on an NPU"),
    Backend("ort-fp16", "cpu", "convert.targets:build_ort_fp16", "convert.targets:open_ort_fp16",
            "CPU emulation of ATC's force_fp16: fp16 compute inside, fp32 inputs/outputs, onnxruntime"),
    Backend("ort-cpu", "cpu", "convert.targets:build_ort_cpu", "convert.targets:open_ort_cpu",
            "the fp32 reference: the simplified ONNX on onnxruntime's CPU provider"),
)}
NAMES = ("auto", *REGISTRY)
REFERENCE = "ort-cpu"
EMULATION = "ort-fp16"

CANN_HINT = ("install the CANN toolkit (hiascend.com, 'Ascend-cann-toolkit_<ver>_linux-<arch>.run --install') and "
             "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` so that `atc` is on PATH; "
             "without an Ascend toolchain use BACKEND=ort-fp16")
SOC_HINT = "pass SOC=<soc_version> (e.g. SOC=Ascend310P3; `npu-smi info` on the NPU host names the chip) or set atc.soc_version in the config"


def get(name: str) -> Backend:
    if name not in REGISTRY:
        raise ConfigError(f"unknown BACKEND '{name}'; use one of: {', '.join(NAMES)}")
    return REGISTRY[name]


def _load(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def build_target(name: str, cfg: dict, paths, log, soc: str | None) -> dict:
    return _load(get(name).builder)(cfg, paths, log, soc)


def open_target_runner(name: str, cfg: dict, target: dict, device: int = 0):
    return _load(get(name).runner)(cfg, target, device)


# ---- this machine -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    atc: str | None          # path of atc on PATH
    soc: str | None          # the --soc_version make om would use
    soc_from: str            # "SOC=", "config", "npu-smi" or ""
    npus: int                # chips npu-smi lists
    ais_bench: bool          # ais_bench.infer.interface imports

    @property
    def can_build_om(self) -> bool:
        return bool(self.atc and self.soc)

    @property
    def can_run_om(self) -> bool:
        return self.npus > 0 and self.ais_bench


def probe(cfg_soc: str | None = None, soc_arg: str | None = None) -> Machine:
    """What this machine has, from PATH, npu-smi and an ais_bench import (no torch, no NPU call)."""
    from . import ascend_env

    soc_arg = soc_arg if soc_arg is not None else os.environ.get("SOC", "")
    npu = ascend_env.probe_npus()
    if soc_arg:
        soc, soc_from = soc_arg, "SOC="
    elif cfg_soc:
        soc, soc_from = cfg_soc, "config"
    elif npu["soc_version"]:
        soc, soc_from = npu["soc_version"], "npu-smi"
    else:
        soc, soc_from = None, ""
    ais = ascend_env.ais_bench_flavour()["importable"]
    return Machine(shutil.which("atc"), soc, soc_from, len(npu["chips"]), bool(ais))


# ---- what each stage does ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    build: tuple[str, ...]   # targets `make om` builds
    run: str                 # backend infer/compare/bench run
    notes: tuple[str, ...]   # one line each, printed by the stages and by make doctor


def plan(requested: str, m: Machine) -> Plan:
    """The one rule for every stage: what `make om` builds and what infer/compare/bench run."""
    if requested != "auto":
        return Plan((get(requested).name,), requested, ())
    notes = []
    build = []
    if m.can_build_om:
        build.append("om")
    elif m.atc:
        notes.append(f"ATC is installed but no --soc_version is known (no NPU visible): the .om is not built; {SOC_HINT}")
    if m.can_run_om and m.can_build_om:
        return Plan(tuple(build), "om", tuple(notes))
    build.append(EMULATION)
    if m.can_build_om:
        why = "no NPU visible" if not m.npus else "ais_bench does not import"
        notes.append(f"the .om is built but not run here ({why}): infer/compare/bench run ort-fp16, the CPU "
                     "emulation of force_fp16; run them with BACKEND=om on the NPU host")
    else:
        notes.append("no Ascend toolchain here: the stages use ort-fp16, the CPU emulation of ATC's force_fp16")
    return Plan(tuple(build), EMULATION, tuple(notes))


def check_build(name: str, m: Machine) -> None:
    """Refuse, in one line, to build a target this machine cannot build."""
    if name == "om" and not m.atc:
        raise ToolchainError(f"BACKEND=om needs ATC, which is not on PATH: {CANN_HINT}")
    if name == "om" and not m.soc:
        raise ConfigError(f"BACKEND=om needs a --soc_version and none was found (no NPU visible): {SOC_HINT}")


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


# ---- make's view: a stamp that changes when the plan changes --------------------------------------------
def main(argv=None) -> int:
    from .errors import cli

    @cli
    def _main():
        ap = argparse.ArgumentParser(prog="python -m pipeline.backends")
        ap.add_argument("command", choices=("stamp", "show"))
        ap.add_argument("--model", required=True)
        ap.add_argument("--backend", default=os.environ.get("BACKEND", "auto"))
        args = ap.parse_args(argv)
        from .atomic import write_text
        from .config import load_config
        from .paths import ModelPaths

        if args.backend not in NAMES:
            raise ConfigError(f"unknown BACKEND '{args.backend}'; use one of: {', '.join(NAMES)}")
        cfg = load_config(args.model)
        p, m = stage_plan(cfg, args.backend)
        text = (f"build={','.join(p.build)}\nrun={p.run}\nsoc={m.soc or ''}\natc={m.atc or ''}\n"
                f"npus={m.npus}\nais_bench={m.ais_bench}\n")
        if args.command == "show":
            print("\n".join(describe_plan(p, args.backend)))
            return 0
        out = ModelPaths(cfg["name"]).build / f"plan-{args.backend}.stamp"
        if not out.exists() or out.read_text() != text:
            write_text(out, text)
        return 0

    return _main()


if __name__ == "__main__":
    sys.exit(main())
