"""Stage log: lines go to the console and, at the end, to logs/<model>/<stage>.log (written atomically)."""
from __future__ import annotations

import sys
import time

from .atomic import write_text


class StageLog:
    def __init__(self, path):
        self.path = path
        self.lines: list[str] = []
        self.start = time.time()

    def __call__(self, line: str = "", stream=None) -> None:
        print(line, file=stream or sys.stdout, flush=True)     # sys.stdout now, not at import (pytest swaps it)
        self.lines.append(line)

    def save(self) -> None:
        write_text(self.path, "\n".join(self.lines) + "\n")
