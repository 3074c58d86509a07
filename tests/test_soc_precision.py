"""convert.soc_precision: --soc_version -> family, and which ONNX ops each family can compute in fp32 on the AI Core."""
import pytest

from convert.soc_precision import FAMILIES, compiles_on, compiles_text, fp32_capable, soc_family


@pytest.mark.parametrize("soc, family", [
    ("Ascend310", "Ascend310"), ("Ascend310P3", "Ascend310P"), ("Ascend310P1", "Ascend310P"),
    ("Ascend910A", "Ascend910"), ("Ascend910ProB", "Ascend910"),
    ("Ascend910B", "Ascend910"),              # no digit: the first-generation 910 (GE's capability table)
    ("Ascend910B3", "Ascend910B"), ("Ascend910B4-1", "Ascend910B"), ("ascend910b2", "Ascend910B"),
    ("Ascend910_9392", "Ascend910_93"), ("Ascend310B1", "Ascend310B"),
    ("Ascend999", None), ("", None), (None, None)])
def test_soc_family(soc, family):
    assert soc_family(soc) == family


def test_no_fp32_cube_before_a2():
    for soc in ("Ascend310", "Ascend310P3", "Ascend910A"):
        for op in ("Conv", "MatMul", "Gemm"):
            ok, why = fp32_capable(op, soc)
            assert ok is False and "CD " in why                     # each verdict names its source
    for op in ("Conv", "MatMul", "Gemm"):
        assert fp32_capable(op, "Ascend910B2")[0] is True


def test_recurrences_are_fp16_only_everywhere():
    for family_soc in ("Ascend310", "Ascend310P3", "Ascend910A", "Ascend910B2", "Ascend910_9392", "Ascend310B1", None):
        assert fp32_capable("GRU", family_soc)[0] is False
        assert fp32_capable("LSTM", family_soc)[0] is False


def test_vector_ops_and_the_exceptions():
    for op in ("Add", "Mul", "Pow", "ReduceMean", "Sigmoid", "BatchNormalization", "Clip", "LayerNormalization"):
        assert fp32_capable(op, "Ascend310P3")[0] is True
    assert fp32_capable("Exp", "Ascend310")[0] is False and fp32_capable("Exp", "Ascend310P3")[0] is True
    assert fp32_capable("AveragePool", "Ascend910B2")[0] is False                # AvgPoolV2: fp16 only
    assert fp32_capable("Softmax", "Ascend910B2")[0] is None                     # not verified: allowed, warned


def test_unknown_soc_and_op():
    ok, why = fp32_capable("Conv", "Ascend999")
    assert ok is None and "unknown SoC" in why
    assert fp32_capable("SomeCustomOp", "Ascend310P3")[0] is None


def test_without_a_soc_every_family_is_checked():
    ok, why = fp32_capable("Conv", None)
    assert ok is None and "not on Ascend310, Ascend310P, Ascend910" in why
    per = compiles_on(["Conv", "Add"])
    assert set(per) == set(FAMILIES)
    assert per["Ascend910B"]["ok"] is True and per["Ascend310P"]["ok"] is False
    assert "Conv" in per["Ascend310P"]["blocked"]
    text = compiles_text(per)
    assert text.startswith("compiles on: Ascend910B") and "Ascend310P (Conv)" in text
    assert compiles_on([])["Ascend310"]["ok"] is True                      # nothing in fp32: compiles anywhere
