"""What Ascend software this host has: CANN toolkit, atc, npu-smi chips and soc_version, ais_bench, torch_npu.

Parsers are pure functions over text (tested on real npu-smi outputs); probes run commands as argument
lists with timeouts.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
from pathlib import Path

SET_ENV_CANDIDATES = (
    "/usr/local/Ascend/ascend-toolkit/set_env.sh",     # classic layout
    "/usr/local/Ascend/cann/set_env.sh",               # new layout (CANN 8.5+)
    "~/Ascend/ascend-toolkit/set_env.sh",
    "~/Ascend/cann/set_env.sh",
)
INSTALL_CANN = ("install the CANN toolkit (Ascend-cann-toolkit_<version>_linux-<arch>.run --install, from "
                "hiascend.com) and run `source /usr/local/Ascend/ascend-toolkit/set_env.sh` "
                "(new layout: /usr/local/Ascend/cann/set_env.sh)")
INSTALL_AIS_BENCH = (
    "pip3 install -v 'git+https://gitee.com/ascend/tools.git#egg=aclruntime&subdirectory=ais-bench_workload/tool/ais_bench/backend' "
    "&& pip3 install -v 'git+https://gitee.com/ascend/tools.git#egg=ais_bench&subdirectory=ais-bench_workload/tool/ais_bench'")


def run(argv: list[str], timeout: float = 20) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return p.returncode, p.stdout + p.stderr


# ---- CANN toolkit ------------------------------------------------------------------------------------
def find_toolkit(env: dict | None = None) -> dict:
    """Toolkit home and set_env.sh, from ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH or the standard places."""
    env = os.environ if env is None else env
    home = env.get("ASCEND_TOOLKIT_HOME") or env.get("ASCEND_HOME_PATH")
    set_env = next((str(Path(p).expanduser()) for p in SET_ENV_CANDIDATES if Path(p).expanduser().is_file()), None)
    if not home and set_env:
        base = Path(set_env).parent
        home = str(base / "latest") if (base / "latest").exists() else str(base)
    return {"home": home, "set_env": set_env, "version": cann_version(home) if home else None}


def cann_version(home: str) -> str | None:
    """Read the version from the toolkit's version files (names differ across releases)."""
    root = Path(home)
    for cand in [root / "version.cfg", *root.glob("*/ascend_toolkit_install.info"),
                 root / "ascend_toolkit_install.info", *root.glob("*/version.info"), root / "version.info"]:
        if cand.is_file():
            text = cand.read_text(errors="replace")
            m = re.search(r"(?:^|\n)\s*(?:version|Version|toolkit_installed_version)\s*[=:]\s*\[?([0-9][\w.\-]*)", text)
            if m:
                return m.group(1)
    m = re.search(r"(\d+\.\d+\.(?:RC)?\d*\w*)", str(root.resolve()) if root.exists() else str(root))
    return m.group(1) if m else None


def find_atc(toolkit: dict | None = None) -> dict:
    path = shutil.which("atc")
    if not path and toolkit and toolkit.get("home"):
        for rel in ("bin/atc", "compiler/bin/atc", "atc/bin/atc"):
            if (Path(toolkit["home"]) / rel).is_file():
                path = str(Path(toolkit["home"]) / rel)
                break
    if not path:
        return {"path": None, "version": None}
    rc, out = run([path, "--help"], timeout=60)
    m = re.search(r"(?i)version[^\n]*?(\d+\.\d+[\w.]*)", out)
    return {"path": path, "version": m.group(1) if m else None}


# ---- npu-smi -----------------------------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_npu_smi_info(text: str) -> dict:
    """`npu-smi info` table -> {"version", "chips": [{npu, chip, name, health, bus_id, memory/hbm used, total}]}."""
    version = None
    m = re.search(r"npu-smi\s+(\S+)", text)
    if m:
        version = m.group(1)
    chips, pending = [], None
    for line in text.splitlines():
        if not line.startswith("|") or "=" in line[:3] or "NPU " in line and "Name" in line or "Bus-Id" in line:
            continue
        cells = _cells(line)
        if len(cells) < 3:
            continue
        first = cells[0].split()
        is_chip_row = bool(re.match(r"^([0-9A-Fa-f]{4}:|NA$)", cells[1]))
        if len(first) == 2 and first[0].isdigit() and not is_chip_row:
            pending = {"npu": int(first[0]), "name": first[1], "health": cells[1]}
            continue
        if pending and first and first[0].isdigit():
            chip = {**pending, "chip": int(first[0]), "bus_id": cells[1]}
            usage = re.findall(r"(\d+)\s*/\s*(\d+)", cells[2])
            if usage:                              # last pair is HBM where present, else memory
                used, total = usage[-1]
                chip["memory_used_mb"], chip["memory_total_mb"] = int(used), int(total)
            chips.append(chip)
            pending = None
    return {"version": version, "chips": chips}


def parse_board_info(text: str) -> dict:
    """`npu-smi info -t board -i N -c M` key : value lines -> dict."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def soc_from_name(name: str, board: dict | None = None) -> str | None:
    """The --soc_version a chip implies: Ascend + Name (310P3 -> Ascend310P3); A3 nodes name their chips
    `Ascend910` and need the board query: <Chip Name>_<NPU Name> (Ascend910_9391)."""
    if board and board.get("Chip Name") and board.get("NPU Name"):
        return f"{board['Chip Name']}_{board['NPU Name']}"
    if name == "Ascend910":            # A3: ambiguous without the board query
        return None
    return name if name.startswith("Ascend") else f"Ascend{name}"


def probe_npus() -> dict:
    smi = shutil.which("npu-smi")
    if not smi:
        return {"npu_smi": None, "chips": [], "soc_version": None}
    rc, out = run([smi, "info"])
    info = parse_npu_smi_info(out) if rc == 0 else {"version": None, "chips": []}
    soc = None
    if info["chips"]:
        c = info["chips"][0]
        board = None
        if c["name"] == "Ascend910":
            rc_b, out_b = run([smi, "info", "-t", "board", "-i", str(c["npu"]), "-c", str(c["chip"])])
            board = parse_board_info(out_b) if rc_b == 0 else None
        soc = soc_from_name(c["name"], board)
    return {"npu_smi": smi, "npu_smi_version": info["version"], "chips": info["chips"], "soc_version": soc,
            "error": None if rc == 0 else out.strip()[:200]}


# ---- Python packages ---------------------------------------------------------------------------------
def ais_bench_flavour() -> dict:
    """Whether ais_bench/aclruntime import, and which API flavour (summary vs sumary, free_resource)."""
    out = {"ais_bench": None, "aclruntime": None, "importable": False}
    for name in ("ais_bench", "aclruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        from ais_bench.infer.interface import InferSession  # noqa: F401
    except Exception as exc:  # missing package, or CANN libraries not loadable
        out["import_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
        return out
    out["importable"] = True
    out["has_summary"] = hasattr(InferSession, "summary")
    out["has_sumary_only"] = not out["has_summary"] and hasattr(InferSession, "sumary")
    out["has_free_resource"] = hasattr(InferSession, "free_resource")
    out["flavour"] = "2024+" if out["has_summary"] else "2023"
    return out


def torch_npu_info() -> dict:
    try:
        mod = importlib.import_module("torch_npu")
        return {"version": getattr(mod, "__version__", None)}
    except Exception:  # absent, or present without the NPU driver
        return {"version": None}
