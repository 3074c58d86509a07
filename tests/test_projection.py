"""dataset/projection.py: the formula on made-up figures, and the one-line error without a host measurement."""
import subprocess
import sys

import pytest

from conftest import ROOT, run_env
from dataset import projection

HOST = {"host_s_per_file": 0.05, "parallel_efficiency": None, "max_loadavg_1min": 5.0, "items_per_file": 1.0, "bytes_per_file": 1e6}
OVERHEAD = {"runs": [
    {"inputs": 200, "local_wall_s": 20.0, "ray_wall_s": 22.0,
     "ray_cost": {"journal_s": 0.4, "driver_blocks": 40, "calls": 10, "blocks_per_call": 16}},
    {"inputs": 1000, "local_wall_s": 100.0, "ray_wall_s": 103.0,
     "ray_cost": {"journal_s": 2.0, "driver_blocks": 40, "calls": 60, "blocks_per_call": 16}}]}


def test_cells_follow_the_formula():
    inp = projection.inputs_from(HOST, OVERHEAD, {"items_per_s": 182.0, "source": "s"}, 1, 1.0)
    assert inp["ray_fixed_s"]["value"] == pytest.approx(2.0)              # mean Ray - local at the smallest size
    assert inp["parallel_efficiency"]["value"] == 0.9 and not inp["parallel_efficiency"]["measured"]   # busy machine
    assert inp["driver_s_per_block"]["value"] == pytest.approx(0.0025)    # journal_s / actor blocks, the worst run
    cells = {(c["hosts"], c["npus"], c["cores"]): c for c in projection.project(inp)}
    assert len(cells) == 27
    host_rate = 2 * 0.9 / 0.05                                            # 36 files/s on 2 cores
    assert cells[(1, 1, 2)]["files_per_s"] == pytest.approx(host_rate) and cells[(1, 1, 2)]["limit"] == "host"
    assert cells[(1, 1, 96)]["files_per_s"] == pytest.approx(182.0) and cells[(1, 1, 96)]["limit"] == "npu"
    assert cells[(4, 8, 96)]["files_per_s"] == pytest.approx(400.0) and cells[(4, 8, 96)]["limit"] == "driver"
    assert cells[(2, 1, 32)]["files_per_s"] == pytest.approx(2 * 182.0) and cells[(2, 4, 32)]["limit"] == "driver"
    storage = projection.cell({**inp, "bytes_per_file": {"value": 1e8, "source": "", "measured": True}}, 4, 8, 96)
    assert storage["limit"] == "storage" and storage["files_per_s"] == pytest.approx(10.0)
    md = projection.markdown(inp, list(cells.values()))
    assert md.count("\n| ") == 9 and "assumed" in md and "measured here" in md


def test_without_a_host_measurement_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "dataset.projection", "--model", "cnn8rnn_audioset_sed"], cwd=ROOT,
                       env=run_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "dataset.host_ray" in p.stderr
