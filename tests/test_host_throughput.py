"""Host throughput (issue 22): stage timing, the replay runner, host processes that give the same bytes, and the
bench's host figure beside the published per-chip rate. No timing is asserted, only presence and consistency."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.runners import Runner, TensorMeta
from pipeline.stage_clock import collect, stage

MODEL = "cnn8rnn_audioset_sed"


class SedDouble(Runner):
    """A deterministic stand-in for CNN8RNN: outputs computed from the log-mel, so replays are checkable."""

    backend, device = "double", "cpu"

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def get_input_metadata(self):
        return [TensorMeta("logmel", "float32", [None, 1, None, 64])]

    def get_output_names(self):
        return ["segmentwise_output", "clipwise_output"]

    def describe(self):
        return {"runner": "SedDouble"}

    def _infer(self, feeds):
        x = feeds["logmel"][:, 0]
        b, t, _ = x.shape
        seg = x[:, : (t // 4) * 4].reshape(b, t // 4, 4, 64).mean(2)
        seg = 1 / (1 + np.exp(-(np.tile(seg, (1, 1, 7))[:, :, :447] + 40) / 10))
        return {"segmentwise_output": seg.astype(np.float32), "clipwise_output": seg.mean(1).astype(np.float32)}


def test_stage_clock_is_exclusive_and_sums_to_at_most_the_wall():
    t0 = time.perf_counter()
    with collect() as st:
        with stage("decode"):
            time.sleep(0.01)
            with stage("resample"):
                time.sleep(0.01)
        with stage("write"):
            pass
    wall = time.perf_counter() - t0
    assert set(st) == {"decode", "resample", "write"}
    assert st["decode"] < st["decode"] + st["resample"] <= wall
    with stage("nothing-open"):         # no collector: a no-op
        pass


@pytest.fixture
def sed(isolated_dirs):
    from pipeline.config import load_config, load_family

    cfg = load_config(MODEL, stage="infer")
    family = load_family(cfg["family"])
    sources = family.generate_sources(cfg, isolated_dirs / "src", count=6, seed=3)
    return cfg, family, sources, isolated_dirs


def run_engine(cfg, family, sources, work: Path, runner, pool=None) -> list[dict]:
    from run.engine import BlockWorker, plan_blocks
    from run.infer import iter_blocks

    worker = BlockWorker(cfg, family, runner, {}, work, 2)
    blocks = plan_blocks(len(sources), 2)
    return list(iter_blocks(worker, family, cfg, sources, blocks, range(len(blocks)), 4, pool))


def test_replay_runner_returns_the_recorded_outputs_and_is_host_only(sed):
    from pipeline.errors import PipelineError
    from run.host_bench import HOST_ONLY, ReplayRunner

    cfg, family, sources, tmp = sed
    real = SedDouble()
    real.activate()
    replay = ReplayRunner(real)
    feeds = {"logmel": np.random.default_rng(0).normal(-40, 10, (1, 1, 301, 64)).astype(np.float32)}
    first = replay.infer(feeds)
    replay.freeze()
    again = replay.infer({"logmel": np.zeros((1, 1, 301, 64), np.float32)})     # same shape: the recorded outputs
    for name, arr in real.infer(feeds).items():
        assert np.array_equal(first[name], arr) and np.array_equal(again[name], arr)
    assert replay.describe()["label"] == HOST_ONLY and HOST_ONLY in replay.device and replay.host_only
    assert replay.describe()["real_runner_calls"] == 1
    with pytest.raises(PipelineError, match="no recorded outputs"):
        replay.infer({"logmel": np.zeros((1, 1, 101, 64), np.float32)})


def test_stage_times_are_present_and_within_the_step_times(sed):
    cfg, family, sources, tmp = sed
    with SedDouble() as runner:
        entries = run_engine(cfg, family, sources, tmp / "w", runner)
    for e in entries:
        st = e["stats"]["stages"]
        assert {"decode", "front-end", "write", "events", "top-k"} <= set(st)
        host = {k: v for k, v in st.items() if k != "write"}
        assert sum(host.values()) <= e["stats"]["prepare_s"] + e["stats"]["post_s"] + 1e-6


def test_two_host_processes_write_the_bytes_of_one(sed):
    from run.engine import HostPool

    cfg, family, sources, tmp = sed
    one, two = tmp / "one", tmp / "two"
    with SedDouble() as runner:
        e1 = run_engine(cfg, family, sources, one, runner)
    with HostPool(2, cfg, {}, two) as pool:
        assert len(pool.pids) >= 1
        with SedDouble() as runner:
            e2 = run_engine(cfg, family, sources, two, runner, pool)

    def strip(entries):
        return [[{k: v for k, v in r.items() if k != "summary"} | {"summary": {k: v for k, v in r["summary"].items()
                                                                              if "real_time" not in k}}
                 for r in e["records"]] for e in entries]
    assert json.dumps(strip(e1), sort_keys=True) == json.dumps(strip(e2), sort_keys=True)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file()) and files
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def test_prepare_threads_write_the_bytes_of_one_thread_in_order(sed):
    """Several prepare threads in one process: the same entries, in order, and the same file bytes."""
    import copy

    cfg, family, sources, tmp = sed
    runs = {}
    for n in (1, 3):
        c = copy.deepcopy(cfg)
        c["infer"]["prepare_threads"] = n
        with SedDouble() as runner:
            runs[n] = run_engine(c, family, sources, tmp / f"t{n}", runner)
    keep = lambda es: [[{k: v for k, v in r.items() if k != "summary"} for r in e["records"]] for e in es]  # noqa: E731
    assert json.dumps(keep(runs[1]), sort_keys=True) == json.dumps(keep(runs[3]), sort_keys=True)
    assert [r["source"] for e in runs[3] for r in e["records"]] == [str(s) for s in sources]
    files = sorted(p.relative_to(tmp / "t1") for p in (tmp / "t1").rglob("*") if p.is_file())
    assert files and all((tmp / "t1" / f).read_bytes() == (tmp / "t3" / f).read_bytes() for f in files)


def test_prepare_threads_follow_the_config_then_the_family(monkeypatch):
    import os

    from pipeline.config import load_config, load_family
    from run.engine import prepare_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    sed_cfg, img_cfg = load_config(MODEL, stage="infer"), load_config("mobilenet_v2_imagenet1k", stage="infer")
    sed_fam, img_fam = load_family(sed_cfg["family"]), load_family(img_cfg["family"])
    assert sed_fam.PREPARE_THREADS == 1 and img_fam.PREPARE_THREADS == 0
    assert prepare_threads(sed_cfg, sed_fam) == 1          # the front-end holds the GIL: one thread
    assert prepare_threads(img_cfg, img_fam) == 6          # Pillow releases it: one per core
    img_cfg["infer"]["prepare_threads"] = 2
    assert prepare_threads(img_cfg, img_fam) == 2


def test_host_figure_stands_beside_the_published_rate(sed):
    from pipeline.config import load_config
    from run.host_bench import HOST_ONLY, host_figures

    _, family, _, tmp = sed
    cfg = load_config(MODEL, stage="bench")
    lines = []
    with SedDouble() as runner:
        out = host_figures(cfg, family, runner, {}, tmp / "build", [], None, lines.append, count=6)
    assert out["label"] == HOST_ONLY and out["needed"]["items_per_s"] == 182.0 and not out["needed"]["measured"]
    assert out["files_per_s"] > 0 and out["ratio"] == pytest.approx(out["files_per_s"] / 182.0)
    fig = out["figures"][0]
    assert "3-s clips at 32 kHz" in fig["inputs"] and fig["runner"]["runner"] == "ReplayRunner"
    assert {"decode", "front-end", "write"} <= set(fig["one_process"]["stage_ms_per_file"])
    assert len(lines) == 1 and lines[0].startswith(f"bench | host | {MODEL}: ") and "needs 182 files/s" in lines[0]
    cfg["bench"]["npu_rate"] = {}
    lines.clear()
    with SedDouble() as runner:
        out = host_figures(cfg, family, runner, {}, tmp / "build", [], None, lines.append, count=6)
    assert out["needed"] is None and "no published per-chip rate" in lines[0]


def test_save_npy_writes_np_save_bytes_atomically(tmp_path):
    """The fast .npy writer gives np.save's bytes for every kind of array, new files get the umask's usual
    mode, a missing folder is made, and a killed writer's temp file is what remove_orphans deletes."""
    import io
    import os
    import stat

    from pipeline.atomic import _create_temp, npy_bytes_ok, remove_orphans, save_npy

    rng = np.random.default_rng(0)
    arrays = [np.zeros((1, 1, 301, 64), np.float32), rng.random((3, 447)).astype(np.float32), np.float32(3.5),
              np.arange(10, dtype=">i4"), np.zeros((0, 5)), np.ones((2, 3), np.float16), np.array([True, False]),
              rng.random((4, 4)) + 1j, np.zeros((1, 224, 224, 3), np.uint8), np.asfortranarray(rng.random((3, 4))),
              rng.random((5, 6))[:, ::2], np.array(["ab", "c"]), np.array([1, "x"], dtype=object),
              np.zeros(3, [("a", "<i4")]), np.zeros((2,) * 20)]
    for i, a in enumerate(arrays):
        ref = io.BytesIO()
        np.save(ref, a)
        path = save_npy(tmp_path / "deep" / "er" / f"{i}.npy", a)
        assert path.read_bytes() == ref.getvalue(), (i, a.dtype)
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert npy_bytes_ok(arrays[0]) and not npy_bytes_ok(arrays[9])
    fd, tmp = _create_temp(tmp_path / "deep" / "killed.npy")
    os.close(fd)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == [Path(tmp).name, "er"]
    assert remove_orphans(tmp_path) == 1


def test_crepe_viterbi_step_equals_the_banded_and_dense_scans():
    """The gather-free Viterbi step gives the previous banded scan's bins and cents exactly (and the dense
    scan's), on random, peaky, tied and masked activations; its fallback branch equals _best_sources."""
    from models.crepe import decode as dec

    rng = np.random.default_rng(0)
    for trial in range(24):
        n = int(rng.integers(1, 200))
        act = [rng.random((n, 360)), rng.random((n, 360)) ** 20, np.round(rng.random((n, 360)), 1)][trial % 3]
        act = act.astype(np.float32)
        act[: n // 3] = 0.01                                          # flat: all ties
        for lo, hi in [(0, 360), dec.bin_range(50.0, 1000.0), dec.bin_range(50.0, 2006.0)]:
            m = dec.masked(act, lo, hi)
            bins, cents = dec.viterbi(m)
            ref_bins, ref_cents = dec.viterbi_banded(m)
            assert np.array_equal(bins, ref_bins) and np.array_equal(cents, ref_cents)
            if trial % 6 == 0:
                assert np.array_equal(bins, dec.viterbi_dense(m))
    step, (kc, band, far) = dec._Step(), dec._band_tables()
    for i in range(50):
        value = rng.normal(0, 300, 360)
        value[rng.random(360) < 0.5] = -np.inf if i % 2 else -1e300
        got, want = step(value), dec._best_sources(value, kc, band, far)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_host_before_after_needs_another_checkout(tmp_path):
    from dataset.host_before_after import main

    with pytest.raises(SystemExit, match=r"--before '.*nowhere' is not a checkout of this repository; make one with "
                                         r"`git worktree add build/before <commit>`"):
        main(["--model", "crepe_tiny", "--before", str(tmp_path / "nowhere")])
