"""Run one `make <stage> MODEL=<m>` under a time limit, its output in logs/zoo/<m>/<stage>.log."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_path
from pipeline.errors import ERROR_FILE_ENV
from pipeline.paths import ROOT

GRACE_S = 10.0


@dataclass
class Outcome:
    rc: int | None          # None: stopped at the time limit
    seconds: float
    started: float          # time.time() at the start, to tell this run's result files from older ones
    message: str            # the stage's own error line, one line
    log: Path
    error: dict | None = None   # what the failing stage recorded (pipeline.errors.record_failure): code, type, details

    @property
    def code(self) -> str | None:
        return (self.error or {}).get("code")

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def timed_out(self) -> bool:
        return self.rc is None


def child_env(results: Path, logs: Path) -> dict:
    """The stages write under results/zoo/models and logs/zoo/models; make's own job flags stay out."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PIPELINE_RESULTS_DIR"], env["PIPELINE_LOGS_DIR"] = str(results), str(logs)
    return env


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(target: str, model: str, backend: str, limit_s: float, log: Path, env: dict) -> Outcome:
    cmd = ["make", "--no-print-directory", target, f"MODEL={model}", f"BACKEND={backend}"]
    error_file = log.with_name(log.name + ".error.json")
    error_file.unlink(missing_ok=True)
    env = {**env, ERROR_FILE_ENV: str(error_file)}
    t0, started = time.perf_counter(), time.time()
    with atomic_path(log) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)   # its own process group: a time limit stops all of it
        try:
            rc = proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
            out.write(f"\nzoo | stopped at the time limit of {limit_s:g} s\n")
        except BaseException:       # Ctrl-C: stop the stage too; no row is written for this model
            _stop(proc)
            raise
    seconds = time.perf_counter() - t0
    message = "" if rc == 0 else (f"{target} did not finish within {limit_s:g} s" if rc is None
                                  else error_line(log.read_text(encoding="utf-8", errors="replace")))
    error = json.loads(error_file.read_text(encoding="utf-8")) if rc not in (0, None) and error_file.is_file() else None
    if error and error.get("message") and error["code"] != "crash":
        message = one_line(error["message"])
    return Outcome(rc, seconds, started, message, log, error)


_TRACE_END = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")


def error_line(text: str) -> str:
    """The stage's own `ERROR | ...` line, else the last line of a traceback, else make's last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pick in (lambda ln: ln.startswith("ERROR |"), lambda ln: bool(_TRACE_END.match(ln)),
                 lambda ln: "FAILED |" in ln, lambda ln: not ln.startswith("make")):
        hit = [ln for ln in lines if pick(ln)]
        if hit:
            return one_line(hit[-1].removeprefix("ERROR |").strip())
    return one_line(lines[-1]) if lines else "no output"


def one_line(text: str, width: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."
