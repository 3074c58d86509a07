"""The classifier task gate (pipeline/classify.py) and the classifier's default logits gate (compare_gate)."""
import numpy as np
import pytest
import yaml

from pipeline import classify
from pipeline.config import gate_for, load_config

GATE = dict(classify.TASK_GATE_DEFAULTS)


def cfg():
    return {"outputs": [{"name": "logits"}], "postprocess": {"task_gate": dict(GATE)}}


def source(ref, tgt, name="img"):
    items = lambda x: [{"logits": np.asarray(x, np.float32)[None]}]     # noqa: E731
    return {"source": name, **classify.classifier_task_metrics(cfg(), name, items(ref), items(tgt), {})}


def logits(top, n=10, second=None):
    x = -np.arange(n, dtype=np.float32)
    x[top] = 5.0
    if second is not None:
        x[second[0]] = second[1]
    return x


def test_agreement_ties_and_real_flips():
    same = source(logits(3), logits(3) + 0.01)
    assert same["top1_agree"] and same["top5_overlap"] == 1.0
    tie = source(logits(3, second=(4, 4.97)), logits(4, second=(3, 4.99)))       # reference gap 0.03 <= 0.1
    assert not tie["top1_agree"] and tie["tie"] and tie["ref_gap_logits"] == pytest.approx(0.03, abs=1e-5)
    flip = source(logits(3, second=(4, 4.0)), logits(4, second=(3, 3.0)))        # reference gap 1.0: a real flip
    assert not flip["tie"]
    good = [source(logits(i % 10), logits(i % 10), f"s{i}") for i in range(98)]
    v = {x["name"]: x for x in classify.classifier_task_gate(cfg(), good + [tie, tie])}
    assert v["top1"]["passed"] and v["top1"]["figures"]["top1_agreement"] == 1.0
    assert v["top1"]["figures"]["top1_agreement_raw"] == pytest.approx(0.98) and v["top1"]["figures"]["tie_flips"] == 2
    v = {x["name"]: x for x in classify.classifier_task_gate(cfg(), good + [flip, flip])}
    assert not v["top1"]["passed"] and v["top1"]["figures"]["top1_agreement"] == pytest.approx(0.98)
    assert "top-1 agrees on 98/100 image(s) (98.00% >= 99%" in v["top1"]["line"]


def test_top5_overlap_and_non_finite_fail():
    ref = logits(0)
    shuffled = ref.copy()
    shuffled[[1, 2, 3, 4]] = -100.0                                            # keep top-1, lose 4 of the top-5
    rows = [source(ref, shuffled, f"s{i}") for i in range(5)]
    v = {x["name"]: x for x in classify.classifier_task_gate(cfg(), rows)}
    assert v["top1"]["passed"] and not v["top5"]["passed"]
    assert v["top5"]["figures"]["mean_top5_overlap"] == pytest.approx(0.2)
    near = logits(0, second=(5, -4.05))                      # class 5 within 0.05 logits of the reference's 5th
    swapped = near.copy()
    swapped[[4, 5]] = [-5.0, -3.9]                            # the target puts 5 in its top-5 instead of 4
    tie5 = source(near, swapped)
    assert tie5["top5_overlap_raw"] == pytest.approx(0.8) and tie5["top5_overlap"] == 1.0
    bad = source(ref, np.full(10, np.nan, np.float32))
    v = {x["name"]: x for x in classify.classifier_task_gate(cfg(), [bad])}
    assert not v["top1"]["passed"] and "non-finite" in v["top1"]["line"]


def test_classifier_logits_gate_is_the_family_default_and_a_config_gate_wins(tmp_path):
    assert gate_for(load_config("resnet50_a1_in1k"), "logits")["max_rel_l2"] == classify.LOGITS_GATE["max_rel_l2"]
    assert gate_for(load_config("convnext_base_clip_laion2b"), "embedding")["max_rel_l2"] == 0.01   # embedding head
    raw = yaml.safe_load(open(load_config("resnet50_a1_in1k")["_path"]))
    raw.update(name="own_gate", compare={"gate": {"max_rel_l2": 0.02}})
    path = tmp_path / "own_gate.yaml"
    path.write_text(yaml.safe_dump(raw))
    c = load_config(str(path))
    assert gate_for(c, "logits")["max_rel_l2"] == 0.02 and gate_for(c, "logits")["min_cosine"] == 0.9999
