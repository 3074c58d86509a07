"""Progress for long runs: a tqdm bar on a terminal, a line every 10% in logs and CI."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "file"):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.bar = None
        self.next_mark = 0.1
        self.start = time.perf_counter()
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
        elif self.total >= 50 and self.n / self.total >= self.next_mark:
            rate = self.n / max(time.perf_counter() - self.start, 1e-9)
            print(f"{self.desc} | {self.n}/{self.total} {self.unit}s ({rate:.1f}/s)", file=sys.stderr, flush=True)
            while self.n / self.total >= self.next_mark:
                self.next_mark += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
