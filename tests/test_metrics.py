import numpy as np
import pytest

from pipeline.metrics import compare_arrays, cosine, rel_l2


def test_rel_l2_and_cosine_known_values():
    b = np.array([3.0, 4.0])
    assert rel_l2(b * 1.01, b) == pytest.approx(0.01, rel=1e-12)
    assert cosine(b * 2, b) == pytest.approx(1.0)            # cosine is blind to scale ...
    assert rel_l2(b * 2, b) == pytest.approx(1.0)            # ... relative L2 is not
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(0.0)


def test_masked_relative_error_near_zero():
    ref = np.array([1.0, 0.5, 1e-9, 0.0])
    tgt = np.array([1.0, 0.5, 2e-9, 1e-6])
    m = compare_arrays(tgt, ref)
    # float32 eps is 1.19e-7, so both tiny reference elements are masked out (msit rule)
    assert m["masked_rel_max"] == 0.0
    ref2 = np.array([1.0, 1e-6])
    m2 = compare_arrays(np.array([1.0, 2e-6]), ref2)
    assert m2["masked_rel_max"] == pytest.approx(1.0)
    assert m2["rel_l2"] < 1e-5                                 # the tensor is fine


def test_violation_fraction_and_nonfinite():
    ref = np.ones(1000)
    tgt = ref.copy()
    tgt[:5] += 0.5                                           # 5 elements far outside atol+rtol*|ref|
    tgt[5] = np.nan
    m = compare_arrays(tgt, ref, rtol=0.01, atol_scale=0.01)
    assert m["nonfinite_in_target"] == 1
    assert m["violation_fraction"] == pytest.approx(6 / 1000)  # the NaN counts as a zero, far off


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        compare_arrays(np.zeros(3), np.zeros(4))


def test_gate_check_each_criterion_fails_on_its_own():
    from pipeline.metrics import gate_check

    ref = np.linspace(1.0, 2.0, 1000)
    gate = {"max_rel_l2": 0.01, "min_cosine": 0.9999, "max_violation_fraction": None}
    assert gate_check(ref * 1.001, ref, gate)[1] == []
    assert gate_check(ref * 1.02, ref, gate)[1] == ["rel_l2 2.000e-02 > 0.01"]   # scale: cosine stays 1
    noisy = ref + np.random.default_rng(0).normal(0, 0.05, ref.size)
    m, fails = gate_check(noisy, ref, {**gate, "max_rel_l2": 1.0})
    assert m["cosine"] < 0.9999 and fails == [f"cosine {m['cosine']:.7f} < 0.9999"]
    tgt = ref * 1.004                                       # inside rel L2 and cosine, outside rtol 1e-3
    m, fails = gate_check(tgt, ref, {**gate, "max_violation_fraction": 0.5}, rtol=1e-3, atol_scale=1e-4)
    assert m["violation_fraction"] == 1.0 and fails == ["violation fraction 1.00e+00 > 0.5"]
    bad = ref.copy()
    bad[0] = np.inf
    assert gate_check(bad, ref, gate)[1][0] == "1 NaN/Inf where the reference is finite"
