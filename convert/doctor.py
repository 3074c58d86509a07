"""make doctor: report the Ascend software on this host and how to install what is missing.

Always exits 0 (it is a report). Writes results/env_info.json (provenance header first).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline import ascend_env as ae
from pipeline import provenance
from pipeline import stages
from pipeline.atomic import write_json
from pipeline.errors import cli
from pipeline.paths import ROOT

def collect() -> dict:
    toolkit = ae.find_toolkit()
    return {"toolkit": toolkit, "atc": ae.find_atc(toolkit), "npu": ae.probe_npus(),
            "ais_bench": ae.ais_bench_flavour(), "torch_npu": ae.torch_npu_info()}


def missing_lines(env: dict) -> list[str]:
    """One `MISSING | <what>: <command that installs or enables it>` line per missing piece."""
    tk, atc, npu, ais = env["toolkit"], env["atc"], env["npu"], env["ais_bench"]
    lines = []
    if not tk["set_env"] and not tk["home"]:
        lines.append(f"MISSING | CANN toolkit (atc, ACL runtime): {ae.INSTALL_CANN}")
    if not atc["path"]:
        if tk["set_env"] or tk["home"]:
            lines.append("MISSING | atc (needed for BACKEND=om) is not in the toolkit found; "
                         + (f"run `source {tk['set_env']}`" if tk["set_env"] else "reinstall the CANN toolkit"))
    elif not atc.get("on_path"):
        lines.append(f"MISSING | atc is not on PATH (found {atc['path']}): run `source {tk['set_env'] or 'set_env.sh'}` "
                     "before make")
    if not npu["npu_smi"]:
        lines.append("MISSING | npu-smi / NPU driver: install the Ascend driver and firmware for the card "
                     "(Ascend-hdk-<card>-npu-driver_<version>_linux-<arch>.run --full from hiascend.com); "
                     "ATC still builds .om files without it, given SOC=<soc_version>")
    elif not npu["chips"]:
        lines.append(f"MISSING | npu-smi lists no NPU chip ({npu.get('error') or 'empty table'}): check the driver "
                     "(`npu-smi info` as root, `dmesg`)")
    if not ais["importable"]:
        why = ais.get("import_error") or "not installed"
        lines.append(f"MISSING | ais_bench/aclruntime ({why}): {ae.INSTALL_AIS_BENCH} "
                     "(into the pipeline's venv: .venv/bin/python -m pip install ...; needs CANN sourced)")
    return lines


def report_lines(env: dict) -> list[str]:
    tk, atc, npu, ais = env["toolkit"], env["atc"], env["npu"], env["ais_bench"]
    out = [f"doctor | CANN toolkit: {tk['home'] or 'not found'} (version {tk['version'] or 'unknown'}; "
           f"set_env.sh: {tk['set_env'] or 'not found'})",
           f"doctor | atc: {atc['path'] or 'not found'}" + (f" (CANN {atc['version']})" if atc["version"] else "")]
    if npu["chips"]:
        out.append(f"doctor | npu-smi {npu['npu_smi_version'] or '?'}, driver {npu['driver_version'] or '?'}")
        for c in npu["chips"]:
            hbm = (f", HBM {c['hbm_used_mb']} / {c['hbm_total_mb']} MB" if "hbm_used_mb" in c else "")
            ddr = (f", memory {c['ddr_used_mb']} / {c['ddr_total_mb']} MB" if "ddr_used_mb" in c else "")
            out.append(f"doctor | NPU {c['npu']} chip {c['chip']}: {c['name']}, health {c['health']}{ddr}{hbm}")
        soc = npu["soc_version"]
        out.append(f"doctor | --soc_version: {soc} (make om uses it; override with SOC=...)" if soc else
                   "doctor | --soc_version: undetermined; pass SOC=... (A3: npu-smi info -t board -i 0 -c 0 -> "
                   "<Chip Name>_<NPU Name>, e.g. Ascend910_9391)")
    else:
        out.append(f"doctor | npu-smi: {npu['npu_smi'] or 'not found'}; no NPU listed")
    if ais["importable"]:
        out.append(f"doctor | ais_bench {ais['ais_bench'] or '?'} / aclruntime {ais['aclruntime'] or '?'}: API "
                   f"{ais['flavour']} ({'summary()' if ais['has_summary'] else 'sumary() only'}, free_resource "
                   f"{'yes' if ais['has_free_resource'] else 'no'}, finalize {ais['finalize'] or 'absent'})")
    else:
        out.append("doctor | ais_bench: not importable")
    out.append(f"doctor | torch_npu: {env['torch_npu']['version'] or 'not installed (not needed)'}")
    return out


def stage_lines(models: list[str], requested: str) -> tuple[list[str], dict]:
    """What each stage does with BACKEND=requested for each model: the stages' own function (convert.backends)."""
    from pipeline.config import load_config

    from . import backends

    lines, plans = [], {}
    for name in models:
        p, m = backends.stage_plan(load_config(name), requested)
        plans[name] = {"build": list(p.build), "run": p.run, "notes": list(p.notes), "soc": m.soc,
                       "soc_from": m.soc_from}
        lines += [f"doctor | {name}: {line}" for line in backends.describe_plan(p, requested)]
    return lines, plans


def backend_lines() -> tuple[list[str], dict]:
    """Every registered backend: can this machine build it, run it, and if not, why (one line each)."""
    from . import backends

    m = backends.probe()
    lines, table = [], {}
    for name, b in backends.REGISTRY.items():
        can_build, can_run, why = b.availability(m)
        table[name] = {"device_kind": b.device_kind, "can_build": can_build, "can_run": can_run, "why_not": why}
        state = "builds and runs here" if can_build and can_run else "builds here, runs elsewhere" if can_build \
            else "unavailable here"
        lines.append(f"doctor | backend {name} ({b.device_kind}): {state}" + (f": {why}" if why else ""))
    return lines, {"backends": table, "onnxruntime": {"providers": m.ort_providers, "error": m.ort_error}}


def fp16_lines(models: list[str]) -> tuple[list[str], dict]:
    """Per model with an exported ONNX: the op types onnxruntime's CPU cannot run in fp16 (the ort-fp16 target
    emulates them by rounding), and what a built ort-fp16 target computes in fp16."""
    try:
        import onnx

        from .fp16_truth import cpu_fp16_kernel_ops
    except ImportError as exc:
        return [f"doctor | fp16 on this CPU: not checked ({exc})"], {}
    from pipeline.config import load_config
    from pipeline.paths import ModelPaths

    from . import backends

    kernels = cpu_fp16_kernel_ops()
    lines, facts = [], {}
    for name in models:
        paths = ModelPaths(name)
        if not paths.onnx_sim.exists():
            continue
        ops = {n.op_type for n in onnx.load(str(paths.onnx_sim), load_external_data=False).graph.node}
        missing = sorted(ops - kernels - {"Constant", "Shape", "Cast"})
        built = backends.target_precision(load_config(name), "ort-fp16")
        facts[name] = {"cpu_without_fp16_kernel": missing, "ort_fp16_target": built}
        lines.append(f"doctor | {name}: onnxruntime's CPU has no fp16 kernel for {', '.join(missing) or 'none'}"
                     + (" (the ort-fp16 target emulates them: fp32 arithmetic between fp16-rounded tensors, GRU/LSTM "
                        "rounded per step)" if missing else ""))
        if built:
            lines.append(f"doctor | {name}: ort-fp16 target: {built['line']}")
    return lines, facts


def doctor(models: list | None = None, backend: str = "auto") -> int:
    """What Ascend software is installed, what each backend and stage does here (the `make doctor` stage)."""
    from pipeline.config import default_models

    env = collect()
    for line in report_lines(env):
        print(line)
    missing = missing_lines(env)
    for line in missing:
        print(line)
    blines, bfacts = backend_lines()
    for line in blines:
        print(line)
    lines, plans = stage_lines(models or default_models(), backend)
    flines, ffacts = fp16_lines(models or default_models())
    for line in lines + flines:
        print(line)
    report = provenance.header("doctor")
    report.update({**env, **bfacts, "missing": missing, "stage_plans": {"backend": backend, "models": plans},
                   "fp16_on_cpu": ffacts,
                   "ready_for_om": bool(env["atc"]["path"]),
                   "ready_for_npu": bool(env["npu"]["chips"] and env["ais_bench"]["importable"])})
    out = Path(os.environ.get("PIPELINE_RESULTS_DIR") or ROOT / "results") / "env_info.json"
    write_json(out, report)
    print(f"doctor | {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


@cli
def main(argv=None) -> int:
    return doctor(**stages.parse("doctor", argv))

if __name__ == "__main__":
    sys.exit(main())
