"""Glue from `make om` to the Ascend modules: pre-flight, build/<model>/atc.sh, the ATC run."""
from __future__ import annotations

from pipeline import ascend_env, provenance
from pipeline.atomic import write_json
from pipeline.errors import PipelineError

from .atc import LOG_ENV, atc_env, atc_lists_v2, build_atc_jobs, cann_key, choose_precision, run_atc, write_atc_script
from .preflight import report_lines, run_preflight


def preflight(cfg, paths, log, strict: bool = False) -> dict:
    """Runs first in `make om`; errors stop an .om build, and are reported (not fatal) for the CPU targets."""
    report = run_preflight(paths.onnx_sim, cfg)
    for line in report_lines(report, cfg["name"]):
        if not line.startswith("WARNING") or strict:
            log(f"om | {line}")
    result = provenance.header("preflight", cfg)
    result.update(report)
    write_json(paths.results / "preflight.json", result)
    if strict and report["verdict"] == "FAILED":
        first = next(f for f in report["findings"] if f["level"] == "error")
        raise PipelineError(f"pre-flight found {report['errors']} ATC blocker(s), first: {first['message']}; "
                            f"fix: {first['fix']}")
    return {"verdict": report["verdict"], "errors": report["errors"], "warnings": report["warnings"]}


def resolve_soc(cfg, soc_arg: str | None) -> tuple[str | None, str]:
    if soc_arg:
        return soc_arg, "SOC="
    if cfg["atc"]["soc_version"]:
        return cfg["atc"]["soc_version"], "config atc.soc_version"
    soc = ascend_env.probe_npus().get("soc_version")
    return (soc, "npu-smi") if soc else (None, "unknown")


def write_script(cfg, paths, soc_arg, log):
    """build/<model>/atc.sh for any host: no CANN version is baked in (the script picks the precision flag)."""
    soc, _ = resolve_soc(cfg, soc_arg)
    jobs = build_atc_jobs(cfg, paths.onnx_sim.name, soc or "SOC_VERSION")
    path = write_atc_script(jobs, paths.atc_script, cfg["name"], soc)
    log(f"om | ATC command{'s' if len(jobs) > 1 else ''} for this model: {paths.atc_script}")
    return path


def precision_flag(cfg, cann: str | None, atc_path: str) -> tuple[bool | None, str, str]:
    """(v2_supported, flag, why) for this toolkit: by the CANN version (>= 6.3.RC2 has --precision_mode_v2),
    or, when the version is unknown, by whether `atc --help` lists --precision_mode_v2."""
    v2 = None if cann_key(cann) is not None else atc_lists_v2(atc_path)
    flag, why = choose_precision(cfg["atc"]["precision_mode"], cann, v2)
    return v2, flag, why


def build_om(cfg, paths, soc_arg, log) -> dict:
    soc, source = resolve_soc(cfg, soc_arg)
    if not soc:
        raise PipelineError("no --soc_version: npu-smi found no chip; pass SOC=<soc> (e.g. SOC=Ascend310P3; "
                            "`npu-smi info` column Name, prefixed with Ascend)")
    toolkit = ascend_env.find_toolkit()
    atc = ascend_env.find_atc(toolkit)
    if not atc["path"]:
        from .backends.om import CANN_HINT

        raise PipelineError(f"BACKEND=om needs ATC, which is not on PATH: {CANN_HINT}")
    cann = atc.get("version") or toolkit.get("version")
    v2, flag, why = precision_flag(cfg, cann, atc["path"])
    jobs = build_atc_jobs(cfg, paths.onnx_sim.name, soc, cann, v2)
    log(f"om | ATC for {soc} ({source}), CANN {cann or 'version unknown'}: {len(jobs)} .om file(s), "
        f"precision flag {flag} ({why})")
    oms = run_atc(jobs, paths.build, paths.logs / "atc.log", atc["path"], cfg["atc"]["timeout_s"])
    for om in oms:
        log(f"om | {om['path']} ({om['bytes'] / 2**20:.1f} MB, batch {om['batch'] or 'dynamic'}, mode {om['mode']})")
    from .aipp import io_bytes, plan

    p = plan(cfg)
    return {"backend": "om", "device": "npu", "soc_version": soc, "cann_version": cann,
            "aipp": {k: p[k] for k in ("input", "format", "channels", "src", "crop", "file", "params")} if p else None,
            "fp16_io": {"input_fp16_nodes": cfg["atc"]["input_fp16_nodes"], "output_fp16": cfg["atc"]["output_fp16"]},
            "io_bytes_per_item": io_bytes(cfg, p=p),
            "atc": atc, "precision": cfg["atc"]["precision_mode"], "precision_flag": flag, "precision_flag_why": why,
            "atc_log_env": {k: atc_env()[k] for k in LOG_ENV}, "oms": oms,
            "atc_argv": [j.argv for j in jobs], "source_onnx": provenance.file_record(paths.onnx_sim)}
