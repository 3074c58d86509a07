"""`om`: the Ascend .om built by ATC from the simplified ONNX, run by ais_bench (ACL) on an NPU.

Building needs ATC and a --soc_version (SOC=, atc.soc_version or npu-smi); running needs an NPU and ais_bench.
Its build runs the Ascend pre-flight strictly (an ATC blocker stops `make om`) and writes build/<m>/atc.sh.
The runner is pipeline.ais_runner.AisBenchRunner: it takes only the built batch sizes (per-batch .om files or
dynamic-batch gears), so the stages pad or split rows (pipeline.batching).
"""
from __future__ import annotations

from .base import Backend

CANN_HINT = ("install the CANN toolkit (hiascend.com, 'Ascend-cann-toolkit_<ver>_linux-<arch>.run --install') and "
             "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` so that `atc` is on PATH; "
             "without an Ascend toolchain use BACKEND=ort-fp16")
SOC_HINT = ("pass SOC=<soc_version> (e.g. SOC=Ascend310P3; `npu-smi info` on the NPU host names the chip) or set "
            "atc.soc_version in the config")


class OmBackend(Backend):
    name = "om"
    what = "Ascend .om built by ATC, run by ais_bench on an NPU"
    short = "the .om on this NPU through ais_bench"
    device_kind = "npu"
    batching = "built"
    needs_preflight = True
    writes_atc_script = True
    auto_order = 0

    def availability(self, m) -> tuple[bool, bool, str]:
        can_build = bool(m.atc and m.soc)
        can_run = m.npus > 0 and bool(m.ais_bench)
        why = []
        if not m.atc:
            why.append("ATC is not on PATH")
        elif not m.soc:
            why.append("no --soc_version is known (no NPU visible)")
        if not m.npus:
            why.append("no NPU visible")
        elif not m.ais_bench:
            why.append("ais_bench does not import")
        return can_build, can_run, "; ".join(why)

    def check_build(self, m) -> None:
        from pipeline.errors import ConfigError, ToolchainError

        if not m.atc:
            raise ToolchainError(f"BACKEND=om needs ATC, which is not on PATH: {CANN_HINT}")
        if not m.soc:
            raise ConfigError(f"BACKEND=om needs a --soc_version and none was found (no NPU visible): {SOC_HINT}")

    def auto_notes(self, m, can_build, can_run, why, runs) -> list[str]:
        """Today's lines (pipeline/backends.py plan()), with the backend auto runs instead named by the registry."""
        notes = []
        if m.atc and not m.soc:
            notes.append("ATC is installed but no --soc_version is known (no NPU visible): the .om is not built; "
                         f"{SOC_HINT}")
        if can_build:
            reason = "no NPU visible" if not m.npus else "ais_bench does not import"
            notes.append(f"the .om is built but not run here ({reason}): infer/compare/bench run {runs.name}, "
                         f"{runs.short}; run them with BACKEND=om on the NPU host")
        else:
            notes.append(f"no Ascend toolchain here: the stages use {runs.name}, {runs.short}")
        return notes

    def build(self, cfg, paths, log, machine) -> dict:
        from convert.ascend import build_om

        return build_om(cfg, paths, machine.soc, log)

    def open_runner(self, cfg, target, device=0):
        from pipeline.ais_runner import AisBenchRunner

        return AisBenchRunner(target, device_id=device, cfg=cfg)

    def onnx_for_host(self, paths):
        return None          # static dims come from the config's inputs and atc.fixed_dims, as ATC built them


BACKEND = OmBackend()
