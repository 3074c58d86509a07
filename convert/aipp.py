"""Static AIPP (ATC --insert_op_conf): the image input of an .om as uint8 NHWC pixels, normalised on the NPU.

device_inputs(cfg) is the one place that says what the host feeds the target: the config's inputs, with an
AIPP input as uint8 [batch, H, W, C] and the inputs in atc.input_fp16_nodes as float16.
"""
from __future__ import annotations


def enabled(cfg: dict) -> bool:
    a = cfg.get("atc", {}).get("aipp", False)
    return bool(a) if not isinstance(a, dict) else a.get("enabled", True)


def device_inputs(cfg: dict) -> list[dict]:
    """The inputs as the host feeds them: [{name, shape, dtype}] (AIPP: uint8 NHWC; fp16 input nodes: float16)."""
    out = []
    fp16 = set(cfg.get("atc", {}).get("input_fp16_nodes", []))
    for i, t in enumerate(cfg["inputs"]):
        t = dict(t)
        if i == 0 and enabled(cfg):
            n, c, h, w = t["shape"]
            t.update(shape=[n, h, w, c], dtype="uint8")
        elif t["name"] in fp16:
            t["dtype"] = "float16"
        out.append(t)
    return out
