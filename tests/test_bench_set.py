"""make bench's two sets: the config's bench keys by default (light: a first `make all` stays quick), and with
HEAVY=1 the non-empty keys of bench.heavy over them (long clips, big frame counts)."""
from run.bench import bench_set

BENCH = {"batch_sizes": [101, 1001], "warmup": 1, "runs": 3, "torch_baseline": True, "shapes": [],
         "pipeline_sources": 0}


def test_default_set_is_the_bench_keys():
    cfg = {"bench": {**BENCH, "heavy": {"batch_sizes": [101, 1001, 6001], "shapes": [], "warmup": 0, "runs": 0,
                                        "pipeline_sources": 0}}}
    assert bench_set(cfg) == (BENCH, "default")


def test_heavy_set_replaces_only_what_it_sets():
    heavy = {"batch_sizes": [101, 1001, 6001], "shapes": [], "warmup": 2, "runs": 0, "pipeline_sources": 100}
    got, name = bench_set({"bench": {**BENCH, "heavy": heavy}}, heavy=True)
    assert name == "heavy"
    assert got == {**BENCH, "batch_sizes": [101, 1001, 6001], "warmup": 2, "pipeline_sources": 100}


def test_heavy_without_a_heavy_set_runs_the_default_set():
    assert bench_set({"bench": dict(BENCH)}, heavy=True) == (BENCH, "default")
    empty = {"batch_sizes": [], "shapes": [], "warmup": 0, "runs": 0, "pipeline_sources": 0}
    assert bench_set({"bench": {**BENCH, "heavy": empty}}, heavy=True) == (BENCH, "default")
