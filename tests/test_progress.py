"""Progress: a mark at every 10% with the process's resident memory, one line per mark in logs."""
import mmap

import numpy as np

from pipeline.progress import Progress, rss_mb


def test_marks_every_tenth_with_resident_memory(capsys):
    p = Progress(50, "infer")
    for _ in range(50):
        p.update()
    p.close()
    assert [t["done"] for t in p.trace] == list(range(5, 51, 5))
    assert all(t["rss_mb"] > 10 for t in p.trace)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("infer |")]
    assert len(lines) == 10 and lines[-1].startswith("infer | 50/50 files") and " MB)" in lines[-1]


def test_resident_memory_follows_allocation():
    mm = mmap.mmap(-1, 64 * 2**20)                   # fresh pages: malloc could reuse memory already resident
    before = rss_mb()
    pages = np.frombuffer(mm, dtype=np.uint8)
    pages[:] = 1                                     # touch all 64 MB
    assert rss_mb() - before > 50
    del pages
    mm.close()


def test_small_totals_still_trace_but_print_nothing(capsys):
    p = Progress(3, "compare", unit="item")
    for _ in range(3):
        p.update()
    assert [t["done"] for t in p.trace] == [1, 2, 3]
    assert capsys.readouterr().err == ""
