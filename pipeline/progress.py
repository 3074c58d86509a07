"""Progress for long runs: a tqdm bar on a terminal, a line every 10% in logs and CI, and the process's
resident memory at every 10% mark (`trace`), so a long run shows whether memory stays flat."""
from __future__ import annotations

import sys
import time


def rss_mb() -> float | None:
    """Current resident memory of this process in MB (psutil, as the bench reads it), None where unreadable."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:                     # ImportError, psutil.Error: a progress line must never fail a stage
        return None


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "file"):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.bar = None
        self.next_mark = 0.1
        self.start = time.perf_counter()
        self.trace: list[dict] = []          # {done, elapsed_s, rss_mb} at every 10% of total
        if sys.stderr.isatty() and total > 1:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
            except ImportError:
                self.bar = None

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        if self.total <= 0 or self.n / self.total < self.next_mark - 1e-9:
            return
        elapsed = time.perf_counter() - self.start
        rss = rss_mb()
        self.trace.append({"done": self.n, "elapsed_s": round(elapsed, 3), "rss_mb": rss})
        if self.bar is None and self.total >= 50:
            mem = f", RSS {rss:.0f} MB" if rss is not None else ""
            print(f"{self.desc} | {self.n}/{self.total} {self.unit}s ({self.n / max(elapsed, 1e-9):.1f}/s{mem})",
                  file=sys.stderr, flush=True)
        while self.n / self.total >= self.next_mark - 1e-9:
            self.next_mark += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
