"""ATC (CANN) conversion: ONNX -> .om, built from the config as argument lists, never shell strings.

Every command runs with the model's build folder as working directory and relative paths, so the same
commands in build/<model>/atc.sh run unchanged on another host once the build folder is copied there.
Facts, with their upstream sources: docs/atc.md (options, exclusions, success line, output naming, gears).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError, PipelineError

V1_MODES = ("force_fp16", "force_fp32", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
            "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16")
V2_MODES = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "cube_hif8", "mixed_hif8")
# documented v1 <-> v2 equivalents; v1 names without one (allow_fp32_to_fp16, allow_fp32_to_bf16) stay v1
V1_TO_V2 = {"force_fp16": "fp16", "must_keep_origin_dtype": "origin", "allow_mix_precision": "mixed_float16",
            "allow_mix_precision_fp16": "mixed_float16", "allow_mix_precision_bf16": "mixed_bfloat16",
            "force_fp32": "cube_fp16in_fp32out"}
V2_TO_V1 = {"fp16": "force_fp16", "origin": "must_keep_origin_dtype", "mixed_float16": "allow_mix_precision",
            "mixed_bfloat16": "allow_mix_precision_bf16", "cube_fp16in_fp32out": "force_fp32"}
MIXED = {"allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16", "mixed_float16",
         "mixed_bfloat16", "mixed_hif8"}
KEEP_IGNORED = {"must_keep_origin_dtype", "origin"}          # ATC ignores --keep_dtype in these modes
BF16 = {"allow_mix_precision_bf16", "allow_fp32_to_bf16", "mixed_bfloat16"}
HIF8 = {"cube_hif8", "mixed_hif8"}
BF16_SOCS = ("Ascend910B", "Ascend910_93", "Ascend310B", "Ascend950")     # A2, A3, 200I/500 A2, 950
# flags this module derives from the config; atc.extra_args must not set them a second time
MANAGED = {"framework": "fixed", "model": "fixed", "output": "fixed", "soc_version": "atc.soc_version / SOC=",
           "input_format": "atc.input_format", "input_shape": "inputs + atc.batch_sizes",
           "precision_mode": "atc.precision_mode", "precision_mode_v2": "atc.precision_mode",
           "dynamic_batch_size": "atc.batch_mode", "dynamic_dims": "atc.dynamic_dims",
           "dynamic_image_size": "not supported here", "input_shape_range": "not supported here",
           "keep_dtype": "atc.keep_dtype", "op_precision_mode": "atc.op_precision_mode",
           "modify_mixlist": "atc.modify_mixlist", "insert_op_conf": "atc.aipp",
           "input_fp16_nodes": "atc.input_fp16_nodes", "output_type": "atc.output_fp16"}
SUCCESS = "ATC run success"
# ATC writes its debug log only at --log != null (default null), to $HOME/ascend/log/debug/plog/ (or
# $ASCEND_PROCESS_LOG_PATH), and to stdout only with ASCEND_SLOG_PRINT_TO_STDOUT=1 (ge docs atc_tools --log.md).
# `make om` and atc.sh set both unless the user did, so logs/<model>/atc.log holds ATC's error log.
# ASCEND_GLOBAL_LOG_LEVEL is left alone: --log sets the level for ATC itself (dlog_setlevel in option_utils.cc).
LOG_ENV = {"ASCEND_SLOG_PRINT_TO_STDOUT": "1"}
LOG_LEVEL = "error"
PLOG_HINT = "$HOME/ascend/log/debug/plog/ (or $ASCEND_PROCESS_LOG_PATH/debug/plog/)"


@dataclass
class AtcJob:
    argv: list[str]                  # starts with "atc"; paths relative to the build folder
    prefix: str                      # --output prefix, relative to the build folder (om/<name>_bs1)
    batch: int | None                # None for a dynamic-batch .om
    mode: str                        # "static" | "dymbatch" | "dymdims" (ais_bench infer mode)
    gears: list = field(default_factory=list)         # batch gears, or dims gears (one list per gear)
    side_files: dict = field(default_factory=dict)    # relative path -> content
    precision_mode: str = "force_fp16"                # atc.precision_mode; atc.sh picks its flag when it runs


V2_SINCE = "6.3.RC2"            # first CANN whose ATC has --precision_mode_v2 (6.3.RC2 ATC docs, atctool_000093)


def cann_key(cann_version: str | None) -> tuple | None:
    """Sortable (major, minor, stage, n) for CANN versions: 6.3.RC2 < 6.3.RC3 < 7.0.RC1 < 7.0.0 < 8.0.RC1;
    alpha builds count as their RC (6.3.RC2.alpha003 = 6.3.RC2). None when the text is not a CANN version."""
    m = re.match(r"\s*(\d+)\.(\d+)\.(RC(\d+)|\d+)", cann_version or "", re.I)
    if not m:
        return None
    final = m.group(4) is None                       # 7.0.0, 6.0.1: the release after that line's RCs
    return int(m.group(1)), int(m.group(2)), int(final), int(m.group(3) if final else m.group(4))


def supports_v2(cann_version: str | None) -> bool:
    """--precision_mode_v2 exists from CANN 6.3.RC2 on; an unknown version counts as without it."""
    key = cann_key(cann_version)
    return key is not None and key >= cann_key(V2_SINCE)


def spellings(mode: str) -> tuple[str | None, str | None]:
    """(--precision_mode value, --precision_mode_v2 value) of a mode given in either vocabulary; None where
    that flag has no such mode (v1 only: allow_fp32_to_fp16, allow_fp32_to_bf16; v2 only: the hif8 modes)."""
    if mode not in V1_MODES + V2_MODES:
        raise ConfigError(f"atc.precision_mode '{mode}' is not an ATC precision mode; use one of "
                          f"{', '.join(V1_MODES)} (or the v2 names {', '.join(V2_MODES)})")
    if mode in V1_MODES:
        return mode, V1_TO_V2.get(mode)
    return V2_TO_V1.get(mode), mode


def choose_precision(mode: str, cann_version: str | None, v2_supported: bool | None = None) -> tuple[str, str]:
    """(the one precision flag, why). Whether ATC has --precision_mode_v2: `v2_supported` when known (e.g. from
    `atc --help`), else the CANN version (>= 6.3.RC2); unknown -> the v1 flag, which every ATC accepts."""
    v1, v2 = spellings(mode)
    if v2_supported is None and cann_key(cann_version) is not None:
        v2_supported = supports_v2(cann_version)
        how = f"CANN {cann_version} {'>=' if v2_supported else '<'} {V2_SINCE}"
    else:
        how = ("atc --help lists --precision_mode_v2" if v2_supported else
               "atc --help does not list --precision_mode_v2" if v2_supported is False else "CANN version unknown")
    if not v1:
        if v2_supported is False:
            raise ConfigError(f"atc.precision_mode '{mode}' exists only as --precision_mode_v2, which ATC has from "
                              f"CANN {V2_SINCE} on ({how}); use a --precision_mode name or a newer toolkit")
        return f"--precision_mode_v2={v2}", f"{mode} has no --precision_mode spelling"
    if not v2:
        return f"--precision_mode={v1}", f"{mode} has no --precision_mode_v2 spelling"
    if v2_supported:
        return f"--precision_mode_v2={v2}", how
    return f"--precision_mode={v1}", how


def precision_args(mode: str, cann_version: str | None, v2_supported: bool | None = None) -> list[str]:
    """One precision flag, never both: the v2 spelling where ATC has it, else v1 (accepts either vocabulary)."""
    return [choose_precision(mode, cann_version, v2_supported)[0]]


def _check_chip(mode: str, soc: str, source: str) -> None:
    if not soc.startswith("Ascend"):               # placeholder (SOC_VERSION): checked when the chip is known
        return
    if mode in BF16 and not soc.startswith(BF16_SOCS):
        raise ConfigError(f"{source}: atc.precision_mode {mode} uses bfloat16, which {soc} lacks (only A2/A3/"
                          "310B/950 chips); use allow_mix_precision / mixed_float16 or force_fp16")
    if mode in HIF8 and not soc.startswith("Ascend950"):
        raise ConfigError(f"{source}: atc.precision_mode {mode} uses hifloat8, only Ascend 950 chips have it; "
                          "use mixed_float16 or fp16")


def _check_gears(option: str, gears: list, soc: str, source: str) -> None:
    limit = 256 if soc.startswith("Ascend950") else 100
    if not 2 <= len(gears) <= limit:
        raise ConfigError(f"{source}: ATC --{option} needs 2 to {limit} gears, the config gives {len(gears)}; "
                          + ("add batch sizes to atc.batch_sizes or use batch_mode: per_batch"
                             if option == "dynamic_batch_size" else "list 2 or more gears in atc.dynamic_dims "
                             "or fix the axis with atc.fixed_dims"))
    keys = [tuple(g) if isinstance(g, list) else g for g in gears]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{source}: --{option} gears repeat a value ({gears}); list each gear once")
    if any(v < 1 for g in gears for v in (g if isinstance(g, list) else [g])):
        raise ConfigError(f"{source}: --{option} gears must be positive, got {gears}")


def input_shape(cfg: dict, batch: int | str) -> tuple[str, int]:
    """ATC --input_shape with the ONNX input names; returns (value, number of gear dims (-1) after batch)."""
    atc, parts, gear_dims = cfg["atc"], [], 0
    fixed = [t["name"] for t in cfg["inputs"] if isinstance(t["shape"][0], int)]
    if fixed and (str(batch) == "-1" or len(atc["batch_sizes"]) > 1):
        raise ConfigError(f"{cfg['_source']}: input(s) {fixed} have a fixed first axis (no batch axis there, e.g. a "
                          "carried state): build one batch size, atc.batch_sizes: [1] with batch_mode: per_batch")
    for t in cfg["inputs"]:
        # axis 0 is the batch axis when the config names it; a fixed axis 0 (a state [2, batch, h]) is taken as is
        dims = [str(batch) if not isinstance(t["shape"][0], int) else str(t["shape"][0])]
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


def _side_files(cfg: dict, mode: str) -> tuple[list[str], dict]:
    """keep_dtype / op_precision_mode / modify_mixlist -> (flags, {om/<file>: content})."""
    atc, source = cfg["atc"], cfg["_source"]
    flags, files = [], {}
    if atc["keep_dtype"] and mode not in KEEP_IGNORED:
        files["om/keep_dtype.cfg"] = "\n".join(atc["keep_dtype"]) + "\n"
        flags.append("--keep_dtype=om/keep_dtype.cfg")
    if atc["op_precision_mode"]:
        files["om/op_precision.ini"] = "".join(f"{k}={v}\n" for k, v in sorted(atc["op_precision_mode"].items()))
        flags.append("--op_precision_mode=om/op_precision.ini")
    if atc["modify_mixlist"]:
        for lst, ops in atc["modify_mixlist"].items():
            if lst not in ("black-list", "white-list") or set(ops) - {"to-add", "to-remove"}:
                raise ConfigError(f"{source}: atc.modify_mixlist takes black-list / white-list, each with to-add / "
                                  f"to-remove lists of Ascend IR op types; got '{lst}': {sorted(ops)}")
        files["om/modify_mixlist.json"] = json.dumps(atc["modify_mixlist"], indent=2) + "\n"
        flags.append("--modify_mixlist=om/modify_mixlist.json")
    return flags, files


def _io_flags(cfg: dict) -> tuple[list[str], dict]:
    """AIPP (--insert_op_conf with build/<model>/aipp.cfg) and fp16 I/O (--input_fp16_nodes, --output_type)."""
    from .aipp import FILE, config_text, plan

    atc, source = cfg["atc"], cfg["_source"]
    flags, files = [], {}
    names = [t["name"] for t in cfg["inputs"]]
    unknown = [n for n in atc["input_fp16_nodes"] if n not in names]
    if unknown:
        raise ConfigError(f"{source}: atc.input_fp16_nodes names {unknown}, which are not inputs of the model "
                          f"({names}); list input names")
    p = plan(cfg)
    if p:
        files[FILE] = config_text(p)
        flags.append(f"--insert_op_conf={FILE}")
    if atc["input_fp16_nodes"]:
        flags.append("--input_fp16_nodes=" + ";".join(atc["input_fp16_nodes"]))
    if atc["output_fp16"]:
        flags.append("--output_type=FP16")
    return flags, files


def _check_extra_args(extra: list[str], source: str) -> None:
    for arg in extra:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if not name or not re.fullmatch(r"[a-z_0-9]+", name):
            raise ConfigError(f"{source}: atc.extra_args entry '{arg}' is not an ATC option; write --name=value")
        if name in MANAGED:
            raise ConfigError(f"{source}: atc.extra_args sets --{name}, which comes from {MANAGED[name]}; "
                              "remove it from extra_args")


def build_atc_jobs(cfg: dict, onnx_name: str, soc: str, cann_version: str | None = None,
                   v2_supported: bool | None = None) -> list[AtcJob]:
    """The ATC commands for this config: one per batch size (static or dims gears), or one dynamic-batch job.
    `onnx_name` is relative to the build folder; `soc` may be a placeholder (SOC_VERSION) for the script.
    The precision flag follows choose_precision(cann_version, v2_supported)."""
    atc, source = cfg["atc"], cfg["_source"]
    mode = atc["precision_mode"]
    if atc["batch_mode"] == "dynamic_batch_size" and atc["dynamic_dims"]:
        raise ConfigError(f"{source}: ATC cannot combine --dynamic_batch_size with --dynamic_dims; "
                          "use batch_mode: per_batch with dynamic_dims gears (one .om per batch size)")
    if atc["dynamic_dims"] and atc["input_format"] != "ND":
        raise ConfigError(f"{source}: atc.dynamic_dims needs atc.input_format: ND")
    if atc["modify_mixlist"] and mode not in MIXED:
        raise ConfigError(f"{source}: atc.modify_mixlist only works with a mixed precision mode "
                          f"(allow_mix_precision / mixed_float16), not {mode}")
    common = ["--framework=5", f"--model={onnx_name}", f"--soc_version={soc}",
              f"--input_format={atc['input_format']}", *precision_args(mode, cann_version, v2_supported)]
    _check_chip(mode, soc, source)
    _check_extra_args(atc["extra_args"], source)
    flags, side = _side_files(cfg, mode)
    io_flags, io_files = _io_flags(cfg)
    common += flags + io_flags
    side.update(io_files)
    name = cfg["name"]
    if atc["batch_mode"] == "dynamic_batch_size":
        _check_gears("dynamic_batch_size", atc["batch_sizes"], soc, source)
        shape, _ = input_shape(cfg, -1)
        prefix = f"om/{name}_dynbs"
        argv = ["atc", *common, f"--input_shape={shape}",
                "--dynamic_batch_size=" + ",".join(str(b) for b in atc["batch_sizes"]),
                f"--output={prefix}", *atc["extra_args"]]
        return [AtcJob(argv, prefix, None, "dymbatch", list(atc["batch_sizes"]), side, mode)]
    if len(set(atc["batch_sizes"])) != len(atc["batch_sizes"]):
        raise ConfigError(f"{source}: atc.batch_sizes repeats a value ({atc['batch_sizes']}); list each once")
    jobs = []
    for b in atc["batch_sizes"]:
        shape, gear_dims = input_shape(cfg, b)
        prefix = f"om/{name}_bs{b}"
        argv = ["atc", *common, f"--input_shape={shape}"]
        job_mode, gears = "static", []
        if atc["dynamic_dims"] and not gear_dims:
            raise ConfigError(f"{source}: atc.dynamic_dims is set but no input axis is left dynamic (all are "
                              "ints or in atc.fixed_dims); remove dynamic_dims or the fixed_dims entry")
        if gear_dims:
            bad = [g for g in atc["dynamic_dims"] if len(g) != gear_dims]
            if bad:
                raise ConfigError(f"{source}: each atc.dynamic_dims gear needs {gear_dims} value(s), got {bad[0]}")
            _check_gears("dynamic_dims", atc["dynamic_dims"], soc, source)
            argv.append("--dynamic_dims=" + ";".join(",".join(str(v) for v in g) for g in atc["dynamic_dims"]))
            job_mode, gears = "dymdims", [list(g) for g in atc["dynamic_dims"]]
        argv += [f"--output={prefix}", *atc["extra_args"]]
        jobs.append(AtcJob(argv, prefix, b, job_mode, gears, side, mode))
    return jobs


# first chip's Name column, prefixed with Ascend (310P3 -> Ascend310P3); empty on A3 (`Ascend910` needs the
# board query), so the script then asks for SOC_VERSION instead of compiling for the wrong chip
SOC_FROM_NPU_SMI = ('$( (npu-smi info 2>/dev/null || true) | awk \'/^\\| *[0-9]+ +[0-9A-Za-z_-]+ +\\| *[A-Za-z]+ +\\|/ '
                    '{s=$3; if (s == "Ascend910") exit; if (s !~ /^Ascend/) s="Ascend" s; print s; exit}\')')


def precision_block(mode: str) -> list[str]:
    """Bash lines that set PRECISION_FLAG when atc.sh runs: the v2 flag where this atc's --help lists it."""
    v1, v2 = spellings(mode)
    lines = ['atc_help="$(atc --help 2>&1 || true)"']
    if v1 and v2:
        lines += ['case "$atc_help" in',
                  f"  *--precision_mode_v2*) PRECISION_FLAG=--precision_mode_v2={v2}; "
                  "why='this atc lists --precision_mode_v2' ;;",
                  f"  *) PRECISION_FLAG=--precision_mode={v1}; "
                  f"why='this atc does not list --precision_mode_v2 (CANN before {V2_SINCE})' ;;",
                  "esac"]
    elif v1:
        lines = [f"PRECISION_FLAG=--precision_mode={v1}; why='{mode} has no --precision_mode_v2 spelling'"]
    else:
        lines += ['case "$atc_help" in',
                  f"  *--precision_mode_v2*) PRECISION_FLAG=--precision_mode_v2={v2}; "
                  f"why='{mode} has no --precision_mode spelling' ;;",
                  f"  *) echo \"atc.sh: atc.precision_mode {mode} needs --precision_mode_v2, which this atc lacks "
                  f"(CANN {V2_SINCE} or newer has it)\" >&2; exit 1 ;;",
                  "esac"]
    return lines + ['echo "atc.sh: precision flag $PRECISION_FLAG ($why)"']


def write_atc_script(jobs: list[AtcJob], path: Path, model: str, soc: str | None) -> Path:
    """build/<model>/atc.sh: the same commands for any host with CANN (any version: the precision flag is chosen
    when the script runs); writes the side files, then runs ATC with the log settings of `make om`."""
    from pipeline.atomic import write_text

    mode = jobs[0].precision_mode
    v1, v2 = spellings(mode)
    lines = [
        "#!/usr/bin/env bash",
        f"# ATC commands for {model}, written by `make om` from configs/{model}.yaml. Run from the repo root:",
        f"#   bash build/{model}/atc.sh        (SOC_VERSION=Ascend310P3 bash ... to choose the chip)",
        "# Needs the CANN toolkit environment; if atc is not on PATH the first set_env.sh found is sourced:",
        "#   source /usr/local/Ascend/ascend-toolkit/set_env.sh   # classic layout",
        "#   source /usr/local/Ascend/cann/set_env.sh             # new layout (CANN 8.5+)",
        f"# Precision: atc.precision_mode {mode}. The flag is chosen when this script runs, for the atc it runs:",
        "#   " + (f"--precision_mode_v2={v2} where `atc --help` lists --precision_mode_v2 (CANN {V2_SINCE} and "
                 f"newer), else --precision_mode={v1}." if v1 and v2 else
                 f"always --precision_mode={v1} (no v2 spelling)." if v1 else
                 f"always --precision_mode_v2={v2} (no v1 spelling; needs CANN {V2_SINCE} or newer)."),
        "# Logs: like `make om`, ATC runs with ASCEND_SLOG_PRINT_TO_STDOUT=1 and --log=error (unless set), so its",
        "# error log reaches the console; otherwise it goes to plog files under $HOME/ascend/log/debug/plog/",
        "# ($ASCEND_PROCESS_LOG_PATH/debug/plog/ if set). More detail: --log=info in atc.extra_args.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "if ! command -v atc >/dev/null 2>&1; then",
        "  for f in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann/set_env.sh "
        '"$HOME/Ascend/ascend-toolkit/set_env.sh" "$HOME/Ascend/cann/set_env.sh"; do',
        '    if [ -f "$f" ]; then set +u; source "$f"; set -u; break; fi',
        "  done",
        "fi",
        "command -v atc >/dev/null 2>&1 || { echo 'atc not found: install the CANN toolkit and source its set_env.sh' >&2; exit 1; }",
        f'SOC_VERSION="${{SOC_VERSION:-{soc}}}"' if soc else f'SOC_VERSION="${{SOC_VERSION:-{SOC_FROM_NPU_SMI}}}"',
        '[ -n "$SOC_VERSION" ] || { echo "set SOC_VERSION (npu-smi info, column Name, prefixed with Ascend; '
        'A3: npu-smi info -t board -i 0 -c 0 -> <Chip Name>_<NPU Name>)" >&2; exit 1; }',
        *precision_block(mode),
        *[f'export {k}="${{{k}:-{v}}}"' for k, v in LOG_ENV.items()],
        "mkdir -p om && chmod 750 om",
    ]
    written = set()
    for job in jobs:
        for rel, content in job.side_files.items():      # beside atc.sh too (aipp.cfg, keep_dtype.cfg, ...)
            write_text(path.parent / rel, content)
    for job in jobs:
        for rel, content in job.side_files.items():
            if rel not in written:
                lines += [f"cat > {shlex.quote(rel)} <<'ATC_CFG'", content.rstrip("\n"), "ATC_CFG"]
                written.add(rel)
    for job in jobs:
        quoted = ['"--soc_version=$SOC_VERSION"' if a.startswith("--soc_version=") else
                  '"$PRECISION_FLAG"' if a.startswith(("--precision_mode=", "--precision_mode_v2=")) else
                  shlex.quote(a) for a in job.argv + log_args(job.argv)]
        lines += [f"rm -f {shlex.quote(job.prefix)}.om {shlex.quote(job.prefix)}_*.om", " \\\n  ".join(quoted)]
    write_text(path, "\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path


def log_args(argv: list[str]) -> list[str]:
    """--log=error unless the command already sets --log (atc.extra_args)."""
    return [] if any(a.startswith("--log=") for a in argv) else [f"--log={LOG_LEVEL}"]


def atc_env(base: dict | None = None) -> dict:
    """Environment for ATC: the caller's, plus LOG_ENV where not set."""
    env = dict(os.environ if base is None else base)
    for k, v in LOG_ENV.items():
        env.setdefault(k, v)
    return env


def log_hint(env: dict, argv: list[str]) -> str:
    """Where ATC's detail went for this run, and how to get more."""
    level = next(a.split("=", 1)[1] for a in argv if a.startswith("--log="))
    if level == "null":
        return "ATC ran with --log=null: set --log=info in atc.extra_args for its debug log"
    if env.get("ASCEND_SLOG_PRINT_TO_STDOUT") == "1":
        return (f"it holds ATC's {level}-level log (ASCEND_SLOG_PRINT_TO_STDOUT=1 --log={level}); "
                "--log=info in atc.extra_args gives more")
    return (f"ATC's --log={level} log is in plog files under {PLOG_HINT}; ASCEND_SLOG_PRINT_TO_STDOUT=1 puts it "
            "in this log")


def atc_lists_v2(atc_binary: str, timeout: float = 60) -> bool | None:
    """Whether this atc's --help lists --precision_mode_v2; None when --help cannot be run."""
    try:
        p = subprocess.run([atc_binary, "--help"], capture_output=True, text=True, errors="replace", timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = p.stdout + p.stderr
    return "--precision_mode_v2" in out if "--precision_mode" in out else None


def om_pattern(prefix: str) -> re.Pattern:
    """`<prefix>.om`, or `<prefix>_<os>_<arch>.om` when ATC packs operator binaries; never `<prefix>6.om`."""
    return re.compile(rf"^{re.escape(Path(prefix).name)}(_[a-z]+_(x86_64|aarch64))?\.om$")


def find_om(build_dir: Path, prefix: str) -> Path:
    folder = build_dir / Path(prefix).parent
    pat = om_pattern(prefix)
    found = sorted(p for p in folder.glob(f"{Path(prefix).name}*.om") if pat.match(p.name))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise PipelineError(f"after ATC, {len(found)} file(s) match {prefix}.om / {prefix}_<os>_<arch>.om in "
                            f"{folder} ({names}); remove stale .om files and rerun `make om`")
    return found[0]


def _error_line(out: str, returncode: int) -> str:
    """The most telling line of a failed ATC run: a flag-parser ERROR, else the last error code that is not the
    generic E19999, else the failure banner."""
    lines = [ln.strip() for ln in out.splitlines()]
    flag = [ln for ln in lines if ln.startswith("ERROR: ")]
    if flag:
        hint = (f" (this ATC predates --precision_mode_v2, CANN < {V2_SINCE})"
                if "'precision_mode_v2'" in flag[-1] else "")
        return flag[-1][:240] + hint
    codes = [ln for ln in lines if re.search(r"\bE[A-Z]?\d{4,5}\b", ln)]
    specific = [ln for ln in codes if not ln.startswith("E19999")]
    if specific or codes:
        return (specific or codes)[-1][:240]
    failed = [ln for ln in lines if "ATC run failed" in ln]
    return (failed[-1][:240] if failed and returncode != 0 else
            f"exit code {returncode}, no '{SUCCESS}' line")


def _run(argv: list[str], cwd: Path, timeout: int) -> tuple[int | None, str]:
    """Run in its own process group so a timeout also stops ATC's compiler workers; None = timed out."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True, env=atc_env())
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out or ""


def run_atc(jobs: list[AtcJob], build_dir: Path, log_path: Path, atc_binary: str, timeout: int) -> list[dict]:
    """Run every job from `build_dir`; success = exit code 0 and 'ATC run success' in the output. The om/ folder
    starts without .om files (no stale matches). Returns one record per .om: batch, mode, gears, path, sha256."""
    from pipeline.atomic import write_text
    from pipeline.provenance import file_record

    om_dir = build_dir / "om"
    om_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(om_dir, 0o750)                         # ais_bench refuses group/other-writable folders
    for old in om_dir.glob("*.om"):
        old.unlink()
    for job in jobs:
        for rel, content in job.side_files.items():
            write_text(build_dir / rel, content)
    log, oms = [], []
    env = atc_env()
    settings = ", ".join(f"{k}={env[k]}" + ("" if os.environ.get(k) else " (set by make om)") for k in LOG_ENV)
    log.append(f"# log settings: {settings}; --log={LOG_LEVEL} unless atc.extra_args sets --log")
    for job in jobs:
        argv = [atc_binary, *job.argv[1:], *log_args(job.argv)]
        log.append(f"$ cd {build_dir} && {shlex.join(argv)}")
        t0 = time.perf_counter()
        try:
            code, out = _run(argv, build_dir, timeout)
        except OSError as exc:
            write_text(log_path, "\n".join(log) + f"\n{exc}\n")
            raise PipelineError(f"cannot run {atc_binary}: {exc.strerror or exc}; source the CANN set_env.sh "
                                "so that atc is on PATH (`make doctor` shows what is installed)") from None
        log += [out, f"exit code {code}, {time.perf_counter() - t0:.1f} s"]
        write_text(log_path, "\n".join(log) + "\n")
        if code is None:
            raise PipelineError(f"ATC did not finish within {timeout} s for {job.prefix}; raise atc.timeout_s or "
                                f"check {log_path}")
        if code != 0 or SUCCESS not in out:
            raise PipelineError(f"ATC failed for {job.prefix}: {_error_line(out, code)}; see {log_path} "
                                f"({log_hint(env, argv)}); pre-flight: `make preflight`")
        om = find_om(build_dir, job.prefix)
        os.chmod(om, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)   # 0640, what ais_bench accepts
        oms.append({"batch": job.batch, "mode": job.mode, "gears": job.gears, **file_record(om)})
    return oms
