"""make doctor: report the Ascend software on this host and how to install what is missing."""
from __future__ import annotations

import sys

from . import ascend_env as ae
from . import provenance
from .atomic import write_json
from .errors import cli
from .paths import ROOT

import os
from pathlib import Path


def collect() -> dict:
    toolkit = ae.find_toolkit()
    return {"toolkit": toolkit, "atc": ae.find_atc(toolkit), "npu": ae.probe_npus(),
            "ais_bench": ae.ais_bench_flavour(), "torch_npu": ae.torch_npu_info()}


def missing_lines(env: dict) -> list[str]:
    lines = []
    if not env["toolkit"]["set_env"] and not env["toolkit"]["home"]:
        lines.append(f"MISSING | CANN toolkit: {ae.INSTALL_CANN}")
    if not env["atc"]["path"]:
        lines.append("MISSING | atc (needed for BACKEND=om): comes with the CANN toolkit; after installing, "
                     "`source .../set_env.sh` so that atc is on PATH")
    if not env["npu"]["npu_smi"]:
        lines.append("MISSING | npu-smi / NPU driver: install the Ascend driver and firmware for your card "
                     "(Ascend-hdk-*-npu-driver_*.run); ATC can still build .om files without it, given SOC=<soc_version>")
    elif not env["npu"]["chips"]:
        lines.append(f"MISSING | no NPU chip listed by npu-smi ({env['npu'].get('error') or 'empty table'})")
    if not env["ais_bench"]["importable"]:
        why = env["ais_bench"].get("import_error", "")
        lines.append(f"MISSING | ais_bench/aclruntime ({why}): {ae.INSTALL_AIS_BENCH}")
    return lines


@cli
def main(argv=None) -> int:
    env = collect()
    tk, atc, npu, ais = env["toolkit"], env["atc"], env["npu"], env["ais_bench"]
    print(f"doctor | CANN toolkit: {tk['home'] or 'not found'} (set_env.sh: {tk['set_env'] or 'not found'}, "
          f"version {tk['version'] or 'unknown'})")
    print(f"doctor | atc: {atc['path'] or 'not found'}" + (f" (version {atc['version']})" if atc["version"] else ""))
    if npu["chips"]:
        for c in npu["chips"]:
            print(f"doctor | NPU {c['npu']} chip {c['chip']}: {c['name']}, health {c['health']}, "
                  f"memory {c.get('memory_used_mb', '?')} / {c.get('memory_total_mb', '?')} MB")
        print(f"doctor | --soc_version: {npu['soc_version'] or 'undetermined (pass SOC=...)'}")
    else:
        print(f"doctor | npu-smi: {npu['npu_smi'] or 'not found'}; no NPU listed")
    print(f"doctor | ais_bench: {'importable, API ' + ais['flavour'] if ais['importable'] else 'not importable'}"
          f" (ais_bench {ais['ais_bench'] or '-'}, aclruntime {ais['aclruntime'] or '-'})")
    print(f"doctor | torch_npu: {env['torch_npu']['version'] or 'not installed (not needed)'}")
    lines = missing_lines(env)
    for line in lines:
        print(line)
    if not npu["chips"] or not atc["path"]:
        print("doctor | no NPU/CANN here: the pipeline uses the CPU targets (BACKEND=auto builds ort-fp16); "
              "results say backend ort-fp16/ort-cpu and device cpu")
    report = provenance.header("doctor")
    report.update({**env, "missing": lines})
    out = Path(os.environ.get("PIPELINE_RESULTS_DIR") or ROOT / "results") / "env_info.json"
    write_json(out, report)
    print(f"doctor | {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
