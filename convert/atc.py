"""ATC (CANN) conversion: ONNX -> .om, built from the config as argument lists, never shell strings.

Every command runs with the model's build folder as working directory and relative paths, so the same
commands in build/<model>/atc.sh run unchanged on another host once the build folder is copied there.
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError, PipelineError

V1_MODES = ("force_fp16", "force_fp32", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
            "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16")
V2_MODES = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "cube_hif8", "mixed_hif8")
V1_TO_V2 = {"force_fp16": "fp16", "must_keep_origin_dtype": "origin", "allow_mix_precision": "mixed_float16",
            "allow_mix_precision_fp16": "mixed_float16", "allow_mix_precision_bf16": "mixed_bfloat16",
            "force_fp32": "cube_fp16in_fp32out"}
V2_TO_V1 = {"fp16": "force_fp16", "origin": "must_keep_origin_dtype", "mixed_float16": "allow_mix_precision",
            "mixed_bfloat16": "allow_mix_precision_bf16", "cube_fp16in_fp32out": "force_fp32"}
MIXED = {"allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16", "mixed_float16",
         "mixed_bfloat16", "mixed_hif8"}
KEEP_IGNORED = {"must_keep_origin_dtype", "origin"}
SUCCESS = "ATC run success"


@dataclass
class AtcJob:
    argv: list[str]
    prefix: str                      # output prefix, relative to the build folder (om/<name>_bs1)
    batch: int | None                # None for a dynamic-batch .om
    mode: str                        # ais_bench infer mode: static | dymbatch | dymdims
    gears: list = field(default_factory=list)
    side_files: dict = field(default_factory=dict)   # relative path -> content


def supports_v2(cann_version: str | None) -> bool:
    """--precision_mode_v2 exists from CANN 7.0 (present in the 7.0.0 docs, absent in 6.0.1)."""
    if not cann_version:
        return False
    m = re.match(r"(\d+)\.", cann_version)
    return bool(m) and int(m.group(1)) >= 7


def precision_args(mode: str, cann_version: str | None) -> list[str]:
    if mode not in V1_MODES + V2_MODES:
        raise ConfigError(f"atc.precision_mode '{mode}' is not an ATC precision mode; use one of "
                          f"{', '.join(V1_MODES)} (or the v2 names {', '.join(V2_MODES)})")
    if supports_v2(cann_version):
        v2 = mode if mode in V2_MODES else V1_TO_V2.get(mode)
        if v2:
            return [f"--precision_mode_v2={v2}"]
        return [f"--precision_mode={mode}"]          # v1-only names (allow_fp32_to_fp16, ...)
    v1 = mode if mode in V1_MODES else V2_TO_V1.get(mode)
    if not v1:
        raise ConfigError(f"atc.precision_mode '{mode}' needs CANN 7.0 or newer (--precision_mode_v2); "
                          f"this CANN is {cann_version or 'unknown'}: use a --precision_mode name")
    return [f"--precision_mode={v1}"]


def input_shape(cfg: dict, batch: int | str) -> tuple[str, int]:
    """ATC --input_shape with the ONNX input names; returns (value, number of gear dims)."""
    atc, parts, gear_dims = cfg["atc"], [], 0
    for t in cfg["inputs"]:
        dims = [str(batch)]
        for d in t["shape"][1:]:
            if isinstance(d, int):
                dims.append(str(d))
            elif d in atc["fixed_dims"]:
                dims.append(str(atc["fixed_dims"][d]))
            elif atc["dynamic_dims"]:
                dims.append("-1")
                gear_dims += 1
            else:
                raise ConfigError(f"{cfg['_source']}: input {t['name']} has dynamic axis '{d}' that ATC needs fixed: "
                                  f"add atc.fixed_dims: {{{d}: <size>}} or atc.dynamic_dims gears")
        parts.append(f"{t['name']}:{','.join(dims)}")
    return ";".join(parts), gear_dims


def build_atc_jobs(cfg: dict, onnx_name: str, soc: str, cann_version: str | None = None) -> list[AtcJob]:
    atc = cfg["atc"]
    mode = atc["precision_mode"]
    if atc["batch_mode"] == "dynamic_batch_size" and atc["dynamic_dims"]:
        raise ConfigError(f"{cfg['_source']}: ATC cannot combine --dynamic_batch_size with --dynamic_dims; "
                          "use batch_mode: per_batch with dynamic_dims gears")
    if atc["dynamic_dims"] and atc["input_format"] != "ND":
        raise ConfigError(f"{cfg['_source']}: atc.dynamic_dims needs atc.input_format: ND")
    if atc["modify_mixlist"] and mode not in MIXED:
        raise ConfigError(f"{cfg['_source']}: atc.modify_mixlist only works with a mixed precision mode "
                          f"(allow_mix_precision / mixed_float16), not {mode}")
    common = ["--framework=5", f"--model={onnx_name}", f"--soc_version={soc}",
              f"--input_format={atc['input_format']}", *precision_args(mode, cann_version)]
    side = {}
    if atc["keep_dtype"] and mode not in KEEP_IGNORED:
        side["om/keep_dtype.cfg"] = "\n".join(atc["keep_dtype"]) + "\n"
        common.append("--keep_dtype=om/keep_dtype.cfg")
    if atc["op_precision_mode"]:
        side["om/op_precision.ini"] = "".join(f"{k}={v}\n" for k, v in sorted(atc["op_precision_mode"].items()))
        common.append("--op_precision_mode=om/op_precision.ini")
    if atc["modify_mixlist"]:
        import json

        side["om/modify_mixlist.json"] = json.dumps(atc["modify_mixlist"], indent=2) + "\n"
        common.append("--modify_mixlist=om/modify_mixlist.json")
    name = cfg["name"]
    jobs = []
    if atc["batch_mode"] == "dynamic_batch_size":
        shape, _ = input_shape(cfg, -1)
        gears = ",".join(str(b) for b in atc["batch_sizes"])
        prefix = f"om/{name}_dynbs"
        argv = ["atc", *common, f"--input_shape={shape}", f"--dynamic_batch_size={gears}", f"--output={prefix}",
                *atc["extra_args"]]
        return [AtcJob(argv, prefix, None, "dymbatch", list(atc["batch_sizes"]), side)]
    for b in atc["batch_sizes"]:
        shape, gear_dims = input_shape(cfg, b)
        prefix = f"om/{name}_bs{b}"
        argv = ["atc", *common, f"--input_shape={shape}"]
        mode_name, gears = "static", []
        if gear_dims:
            bad = [g for g in atc["dynamic_dims"] if len(g) != gear_dims]
            if bad:
                raise ConfigError(f"{cfg['_source']}: each atc.dynamic_dims gear needs {gear_dims} value(s), got {bad[0]}")
            argv.append("--dynamic_dims=" + ";".join(",".join(str(v) for v in g) for g in atc["dynamic_dims"]))
            mode_name, gears = "dymdims", atc["dynamic_dims"]
        argv += [f"--output={prefix}", *atc["extra_args"]]
        jobs.append(AtcJob(argv, prefix, b, mode_name, gears, side))
    return jobs


# first chip's Name column, prefixed with Ascend (310P3 -> Ascend310P3); A3 nodes need SOC_VERSION=Ascend910_93xx
SOC_FROM_NPU_SMI = ('$( (npu-smi info 2>/dev/null || true) | awk \'/^\\| *[0-9]+ +[0-9A-Za-z]+ +\\| *(OK|Warning|Alarm)/ '
                    '{s=$3; if (s !~ /^Ascend/) s="Ascend" s; print s; exit}\')')


def write_atc_script(jobs: list[AtcJob], path: Path, model: str, soc: str | None) -> Path:
    """A bash script with the same commands, run from build/<model>/ on a host with CANN."""
    from pipeline.atomic import write_text

    lines = [
        "#!/usr/bin/env bash",
        f"# ATC commands for {model}, written by `make om`. Run on any host with the CANN toolkit:",
        f"#   bash build/{model}/atc.sh        (SOC_VERSION=Ascend310P3 bash ... to choose the chip)",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "if ! command -v atc >/dev/null 2>&1; then",
        "  for f in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann/set_env.sh; do",
        '    if [ -f "$f" ]; then source "$f"; break; fi',
        "  done",
        "fi",
        "command -v atc >/dev/null 2>&1 || { echo 'atc not found: install the CANN toolkit and source its set_env.sh' >&2; exit 1; }",
        f'SOC_VERSION="${{SOC_VERSION:-{soc}}}"' if soc else f'SOC_VERSION="${{SOC_VERSION:-{SOC_FROM_NPU_SMI}}}"',
        '[ -n "$SOC_VERSION" ] && [ "$SOC_VERSION" != "Ascend" ] || { echo "set SOC_VERSION (npu-smi info, column Name, prefixed with Ascend)" >&2; exit 1; }',
        "mkdir -p om",
    ]
    written = set()
    for job in jobs:
        for rel, content in job.side_files.items():
            if rel not in written:
                lines += [f"cat > {shlex.quote(rel)} <<'CFG'", content.rstrip("\n"), "CFG"]
                written.add(rel)
    for job in jobs:
        argv = [a if not a.startswith("--soc_version=") else "--soc_version=$SOC_VERSION" for a in job.argv]
        quoted = [shlex.quote(a) if not a.startswith("--soc_version=") else '"--soc_version=$SOC_VERSION"'
                  for a in argv]
        lines.append(" \\\n  ".join(quoted))
    write_text(path, "\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path


def find_om(build_dir: Path, prefix: str) -> Path:
    """ATC appends .om, or _<os>_<arch>.om when it packs operator binaries; m_bs1 must not match m_bs16."""
    folder = build_dir / Path(prefix).parent
    base = Path(prefix).name
    pat = re.compile(rf"^{re.escape(base)}(_linux_[A-Za-z0-9_]+)?\.om$")
    found = sorted(p for p in folder.glob(f"{base}*.om") if pat.match(p.name))
    if len(found) != 1:
        raise PipelineError(f"ATC reported success but {len(found)} file(s) match {prefix}*.om in {folder}; "
                            "remove stale .om files and rerun `make om`")
    return found[0]


def run_atc(jobs: list[AtcJob], build_dir: Path, log_path: Path, atc_binary: str, timeout: int) -> list[dict]:
    """Run every job; success = exit code 0 and 'ATC run success' in the output. Returns the .om records."""
    from pipeline.atomic import write_text
    from pipeline.provenance import file_record

    om_dir = build_dir / "om"
    om_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(om_dir, 0o750)                         # ais_bench refuses group/other-writable folders
    for job in jobs:
        for old in om_dir.glob(Path(job.prefix).name + "*.om"):
            old.unlink()
        for rel, content in job.side_files.items():
            write_text(build_dir / rel, content)
    log, oms = [], []
    for job in jobs:
        argv = [atc_binary, *job.argv[1:]]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=build_dir, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            write_text(log_path, "\n".join(log) + f"\n$ {shlex.join(argv)}\nTIMEOUT after {timeout} s\n")
            raise PipelineError(f"ATC did not finish within {timeout} s for {job.prefix}; raise atc.timeout_s or "
                                f"check {log_path}") from None
        out = proc.stdout + proc.stderr
        log += [f"$ {shlex.join(argv)}", out, f"exit code {proc.returncode}, {time.perf_counter() - t0:.1f} s"]
        write_text(log_path, "\n".join(log) + "\n")
        if proc.returncode != 0 or SUCCESS not in out:
            codes = [l.strip() for l in out.splitlines() if re.search(r"\bE[A-Z]?\d{4,5}\b", l)]
            detail = codes[-1][:200] if codes else f"exit code {proc.returncode}, no '{SUCCESS}' line"
            raise PipelineError(f"ATC failed for {job.prefix}: {detail}; see {log_path} "
                                "(pre-flight: `make preflight`; more detail: add --log=error to atc.extra_args)")
        om = find_om(build_dir, job.prefix)
        os.chmod(om, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)   # 0640
        oms.append({"batch": job.batch, "mode": job.mode, "gears": job.gears, **file_record(om)})
    return oms
