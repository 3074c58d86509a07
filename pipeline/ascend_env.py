"""What Ascend software this host has: CANN toolkit, atc, npu-smi chips and soc_version, ais_bench, torch_npu.

Parsers are pure functions over text (tested on captured npu-smi outputs, tests/data/npu_smi/); probes run
commands as argument lists with timeouts and never import torch.
"""
from __future__ import annotations

import glob
import importlib.metadata as md
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
from pathlib import Path

# set_env.sh of the toolkit, most common first; `~` is the non-root install prefix
SET_ENV_CANDIDATES = (
    "/usr/local/Ascend/ascend-toolkit/set_env.sh",     # classic layout (toolkit <= 8.3)
    "/usr/local/Ascend/cann/set_env.sh",               # new layout (CANN 8.5+)
    "/usr/local/Ascend/cann-*/set_env.sh",             # new layout, versioned folder
    "~/Ascend/ascend-toolkit/set_env.sh",
    "~/Ascend/cann/set_env.sh",
    "~/Ascend/cann-*/set_env.sh",
)
INSTALL_CANN = ("install the CANN toolkit (Ascend-cann-toolkit_<version>_linux-<arch>.run from "
                "https://www.hiascend.com/developer/download, `bash <file>.run --install`), then "
                "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` (CANN 8.5+: /usr/local/Ascend/cann/set_env.sh)")
INSTALL_AIS_BENCH = (
    "pip3 install -v 'git+https://gitee.com/ascend/tools.git#egg=aclruntime&subdirectory=ais-bench_workload/tool/ais_bench/backend' "
    "&& pip3 install -v 'git+https://gitee.com/ascend/tools.git#egg=ais_bench&subdirectory=ais-bench_workload/tool/ais_bench'")
_VERSION = r"\d+\.\d+(?:\.[0-9A-Za-z]+)*(?:-[0-9A-Za-z.]+)?"      # 8.0.RC3, 8.0.0, 8.0.T6, 9.2.0-beta.2


def run(argv: list[str], timeout: float = 20) -> tuple[int, str]:
    """Run a command (argument list, no shell); (exit code, stdout+stderr); -1 when it cannot run."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return p.returncode, p.stdout + p.stderr


# ---- CANN toolkit ------------------------------------------------------------------------------------
def find_set_env() -> str | None:
    for pattern in SET_ENV_CANDIDATES:
        for p in sorted(glob.glob(str(Path(pattern).expanduser())), reverse=True):   # newest cann-x.y first
            if Path(p).is_file():
                return str(Path(p))
    return None


def find_toolkit(env: dict | None = None) -> dict:
    """Toolkit home, set_env.sh and CANN version. ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH (exported by
    set_env.sh) win; else the standard install places (`<dir>/latest` in the classic layout)."""
    env = os.environ if env is None else env
    home = env.get("ASCEND_TOOLKIT_HOME") or env.get("ASCEND_HOME_PATH")
    set_env = find_set_env()
    if not home and set_env:
        base = Path(set_env).parent
        home = str(base / "latest") if (base / "latest").is_dir() else str(base)
    return {"home": home, "set_env": set_env, "version": cann_version(home) if home else None}


def parse_install_info(text: str) -> str | None:
    """`<arch>-linux/ascend_toolkit_install.info` (lines key=value): the `version=` value, e.g. 8.0.RC3."""
    m = re.search(rf"^\s*version\s*=\s*({_VERSION})\s*$", text, re.M)
    return m.group(1) if m else None


def parse_version_cfg(text: str) -> str | None:
    """`<toolkit>/version.cfg`: `toolkit_running_version=[7.3.0.1.231:8.0.RC2]`; the CANN version is after the
    colon (before it is an internal build number). Any other *_running_version is the fallback."""
    for key in ("toolkit_running_version", "toolkit_installed_version", r"\w+_running_version"):
        m = re.search(rf"^\s*{key}\s*=\s*\[[^:\]]*:({_VERSION})\]", text, re.M)
        if m:
            return m.group(1)
    return None


def cann_version(home: str) -> str | None:
    """CANN version of a toolkit folder: install.info, then version.cfg, then the folder name (cann-8.5.0)."""
    root = Path(home)
    for info in sorted(root.glob("*-linux/ascend_toolkit_install.info")) + [root / "ascend_toolkit_install.info"]:
        if info.is_file():
            v = parse_install_info(info.read_text(errors="replace"))
            if v:
                return v
    cfg = root / "version.cfg"
    if cfg.is_file():
        v = parse_version_cfg(cfg.read_text(errors="replace"))
        if v:
            return v
    path = str(root.resolve()) if root.exists() else str(root)
    m = re.search(rf"(?:ascend-toolkit|cann)[-/]({_VERSION})(?:/|$)", path)
    return m.group(1) if m else None


def find_atc(toolkit: dict | None = None) -> dict:
    """atc on PATH, else inside the toolkit. atc has no --version option: its version is the CANN version of
    the toolkit it belongs to (found by walking up from the binary)."""
    path = shutil.which("atc")
    if not path and toolkit and toolkit.get("home"):
        for rel in ("bin/atc", "compiler/bin/atc", "atc/bin/atc"):
            if (Path(toolkit["home"]) / rel).is_file():
                path = str(Path(toolkit["home"]) / rel)
                break
    if not path:
        return {"path": None, "version": None, "on_path": False}
    version = None
    for parent in list(Path(path).resolve().parents)[:4]:
        version = cann_version(str(parent))
        if version:
            break
    return {"path": path, "version": version, "on_path": shutil.which("atc") is not None}


# ---- npu-smi -----------------------------------------------------------------------------------------
_BUS = re.compile(r"^[0-9A-Fa-f]{4}:")
_HEALTH = re.compile(r"^[A-Za-z][A-Za-z ]*$")       # OK, Warning, Alarm, Critical, ...


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _number(token: str):
    try:
        return float(token)
    except ValueError:
        return None


def parse_npu_smi_info(text: str) -> dict:
    """`npu-smi info` table -> {"version" (npu-smi), "driver_version", "chips": [...]}.

    Each chip: npu, chip, device (or Phy-ID; None on 910B tables), name, health, bus_id, power_w, temp_c,
    aicore_percent, ddr_used_mb/ddr_total_mb (Memory-Usage), hbm_used_mb/hbm_total_mb (HBM-Usage, A2/A3), and
    memory_used_mb/memory_total_mb = the model memory: HBM where the card has it, else Memory-Usage.
    The process table that follows the chip table is ignored.
    """
    m = re.search(r"npu-smi\s+(\d\S*)", text)
    d = re.search(r"Version:\s*(\d\S*)", text)
    has_hbm = "HBM-Usage" in text
    chips, pending = [], None
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("|"):
            continue
        if "Process id" in s or "Process name" in s or "No running processes" in s:
            break
        cells = _cells(s)
        if len(cells) < 3:
            continue
        first = cells[0].split()
        if not first or not first[0].isdigit():
            continue                                       # headers, banners
        if _BUS.match(cells[1]) or (pending and cells[1] == "NA"):
            if pending is None:
                continue
            chip = {**pending, "chip": int(first[0]),
                    "device": int(first[1]) if len(first) > 1 and first[1].isdigit() else None,
                    "bus_id": cells[1]}
            tokens = cells[2].split()
            chip["aicore_percent"] = _number(tokens[0]) if tokens else None
            pairs = [(int(a), int(b)) for a, b in re.findall(r"(\d+)\s*/\s*(\d+)", cells[2])]
            ddr = pairs[0] if pairs else None
            hbm = pairs[1] if has_hbm and len(pairs) > 1 else None
            if ddr:
                chip["ddr_used_mb"], chip["ddr_total_mb"] = ddr
            if hbm:
                chip["hbm_used_mb"], chip["hbm_total_mb"] = hbm
            main = hbm or ddr
            if main:
                chip["memory_used_mb"], chip["memory_total_mb"] = main
            chips.append(chip)
            pending = None
        elif len(first) >= 2 and _HEALTH.match(cells[1]):
            tokens = cells[2].split()
            pending = {"npu": int(first[0]), "name": " ".join(first[1:]), "health": cells[1],
                       "power_w": _number(tokens[0]) if tokens else None,
                       "temp_c": _number(tokens[1]) if len(tokens) > 1 else None}
    return {"version": m.group(1) if m else None, "driver_version": d.group(1) if d else None, "chips": chips}


def parse_board_info(text: str) -> dict:
    """`npu-smi info -t board -i N [-c M]` `key : value` lines -> dict."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            if k.strip():
                out[k.strip()] = v.strip()
    return out


def _bare(name: str) -> str:
    return name.replace(" ", "").removeprefix("Ascend")


def needs_board_query(name: str) -> bool:
    """A3 nodes list every chip as `Ascend910`; 950 needs the board query too (docs/atc.md,
    "9. --soc_version and npu-smi")."""
    return name.replace(" ", "") == "Ascend910" or _bare(name).startswith("950")


def soc_from_name(name: str, board: dict | None = None) -> str | None:
    """The --soc_version a chip implies. Name column + `Ascend` (310P3 -> Ascend310P3, 910B4-1 ->
    Ascend910B4-1); with a board query: A3 `<Chip Name>_<NPU Name>` (Ascend910_9391), A2 `Ascend<Chip Name>`.
    None when only the board query could tell (A3/950 without it)."""
    def ascend(n: str) -> str:
        n = n.replace(" ", "")
        return n if n.startswith("Ascend") else f"Ascend{n}"

    if board and board.get("Chip Name") and board.get("NPU Name"):
        return f"{ascend(board['Chip Name'])}_{board['NPU Name']}"
    if board and board.get("Chip Name") and not needs_board_query(board["Chip Name"]):
        return ascend(board["Chip Name"])
    if not name or needs_board_query(name):
        return None
    return ascend(name)


def probe_npus(smi: str | None = None) -> dict:
    """Chips from `npu-smi info`, and the --soc_version of the first one (board query on A3/950)."""
    smi = smi or shutil.which("npu-smi")
    if not smi:
        return {"npu_smi": None, "npu_smi_version": None, "driver_version": None, "chips": [],
                "soc_version": None, "error": None}
    rc, out = run([smi, "info"])
    info = parse_npu_smi_info(out) if rc == 0 else {"version": None, "driver_version": None, "chips": []}
    soc, board = None, None
    if info["chips"]:
        c = info["chips"][0]
        if needs_board_query(c["name"]):
            argv = [smi, "info", "-t", "board", "-i", str(c["npu"])]
            if not _bare(c["name"]).startswith("950"):          # 950: per NPU, no -c (unverified)
                argv += ["-c", str(c["chip"])]
            rc_b, out_b = run(argv)
            board = parse_board_info(out_b) if rc_b == 0 else None
        soc = soc_from_name(c["name"], board)
    return {"npu_smi": smi, "npu_smi_version": info["version"], "driver_version": info["driver_version"],
            "chips": info["chips"], "soc_version": soc, "board": board,
            "error": None if rc == 0 else out.strip()[:200]}


# ---- Python packages ---------------------------------------------------------------------------------
def _dist_version(*names: str) -> str | None:
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            continue
    return None


LIST_ONLY = re.compile(r"check_(?:all_)?list\(\s*feeds")      # interface_check on infer()'s feeds, 2024-11 on


def _source(func) -> str | None:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return None


def ais_bench_api(session) -> dict:
    """Features of an ais_bench InferSession class or live session, by introspection only (nothing runs on the NPU):
    spelling of summary()/sumary() and reset_summaryinfo()/reset_sumaryinfo(), whether infer() handles `dymbatch`
    (`infer_mode_switch`/_dymbatch_prepare since 2023-09-08; absent in 2023 before), the lower-level
    set_dynamic_batchsize, list-only feeds (check_list(feeds), 2024-11 on), free_resource, finalize kind.
    None = could not tell (no source)."""
    cls = session if isinstance(session, type) else type(session)
    switch = getattr(session, "infer_mode_switch", None) if not isinstance(session, type) else None
    infer_src = _source(getattr(cls, "infer", None))
    if isinstance(switch, dict):
        dymbatch = "dymbatch" in switch
    elif hasattr(cls, "_dymbatch_prepare"):
        dymbatch = True
    else:
        dymbatch = None if infer_src is None else "dymbatch" in infer_src
    fin = inspect.getattr_static(cls, "finalize", None)
    try:
        out_array = "out_array" in inspect.signature(cls.infer).parameters
    except (AttributeError, TypeError, ValueError):
        out_array = None
    return {"summary": "summary" if hasattr(session, "summary") else "sumary" if hasattr(session, "sumary") else None,
            "reset": next((n for n in ("reset_summaryinfo", "reset_sumaryinfo") if hasattr(session, n)), None),
            "infer_dymbatch": dymbatch, "set_dynamic_batchsize": hasattr(session, "set_dynamic_batchsize"),
            "list_only_feeds": None if infer_src is None else bool(LIST_ONLY.search(infer_src)),
            "infer_out_array": out_array, "free_resource": hasattr(session, "free_resource"),
            "finalize": None if fin is None else ("static" if isinstance(fin, staticmethod) else "instance")}


def api_label(api: dict, interface_check: bool | None) -> str:
    """`sumary, infer without dymbatch` ... `summary, dymbatch, interface_check, list-only feeds`: features only."""
    parts = [api["summary"] or "no summary", {True: "dymbatch", False: "infer without dymbatch",
                                              None: "dymbatch unknown"}[api["infer_dymbatch"]]]
    parts += ["interface_check"] * bool(interface_check) + ["list-only feeds"] * bool(api["list_only_feeds"])
    return ", ".join(parts)


def api_era(api: dict, interface_check: bool | None) -> str:
    """The upstream period these features match (from the features, for the reader)."""
    if api["infer_dymbatch"] is False:
        return "before 2023-09-08"
    if api["summary"] == "sumary":
        return "2023-09-08 .. 2023-10"
    if api["list_only_feeds"]:
        return "2024-11 or later"
    return "2024-06 .. 2024-11" if interface_check else "2023-11 .. 2024-06"


def ais_bench_flavour() -> dict:
    """Whether ais_bench/aclruntime import, and the API flavour: a label built from the features present
    (ais_bench_api), never from a version number or year."""
    out = {"ais_bench": _dist_version("ais_bench", "ais-bench"), "aclruntime": _dist_version("aclruntime"),
           "importable": False, "flavour": None}
    try:
        from ais_bench.infer.interface import InferSession
    except Exception as exc:  # missing package, or the CANN runtime libraries not loadable
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        out["import_error"] = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        return out
    api = ais_bench_api(InferSession)
    try:
        checks = importlib.util.find_spec("ais_bench.infer.interface_check") is not None
    except (ImportError, ValueError):
        checks = False
    out.update(importable=True, has_summary=api["summary"] == "summary", has_sumary_only=api["summary"] == "sumary",
               has_free_resource=api["free_resource"], has_reset_summaryinfo=api["reset"] == "reset_summaryinfo",
               finalize=api["finalize"], interface_check=checks, api=api,
               flavour=api_label(api, checks), era=api_era(api, checks))
    return out


def torch_npu_info() -> dict:
    """torch_npu from package metadata only (importing it would import torch, which a host need not have)."""
    return {"version": _dist_version("torch_npu", "torch-npu")}
