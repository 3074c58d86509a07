"""Static AIPP (ATC --insert_op_conf): the image input of an .om as uint8 NHWC pixels, normalised on the NPU.

One plan per config (`plan(cfg)`), from the family's `aipp_source` (contract hook: mean, std, the pixel size the
host sends, a centre crop the device may do) and `atc.aipp`. From it come:
- the aipp_op file ATC reads (`config_text`, written beside atc.sh), per docs/aipp.md;
- the feeds the host sends (`device_inputs`: uint8 [batch, H, W, C]; also the float16 inputs of
  atc.input_fp16_nodes), and the bytes moved per item (`io_bytes`);
- the two ways a CPU target sees the same uint8 pixels (`HostAipp`): the fp32 reference gets the fp32
  normalisation (`reference`, bit for bit the non-AIPP host path), the ort-fp16 target AIPP's arithmetic with its
  fp16 parameters and fp16 results (`emulate`);
- the input noise AIPP adds (`noise`, `noise_bound`), which make compare reports apart from the network's error.
The AIPP formula: out = (in - mean_chn - min_chn) * var_reci_chn, after the channel swap and the crop; min_chn and
var_reci_chn are stored as float16, mean_chn as uint8 (docs/aipp.md gives the sources).
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError, PipelineError
from pipeline.runners import Runner, TensorMeta

FORMATS = {"RGB888_U8": 3}            # input_format -> channels the host sends (the ones implemented here)
OPTION_KEYS = {"enabled": bool, "input_format": str, "crop": str, "fallback": bool}
CROPS = ("auto", "host")              # auto: AIPP crops where the host's size before the crop is fixed
FILE = "aipp.cfg"                     # build/<model>/aipp.cfg, beside atc.sh


def options(cfg: dict) -> dict:
    """atc.aipp as a dict with every key: true/false, or a block of OPTION_KEYS; ConfigError (one line) else."""
    raw, src = cfg.get("atc", {}).get("aipp", False), cfg.get("_source", cfg.get("name", "config"))
    opts = {"enabled": False, "input_format": "RGB888_U8", "crop": "auto", "fallback": False}
    if isinstance(raw, bool):
        opts["enabled"] = raw
        return opts
    unknown = sorted(set(raw) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"{src}: atc.aipp has unknown key(s) {unknown}; it takes {', '.join(OPTION_KEYS)}")
    for k, v in raw.items():
        if not isinstance(v, OPTION_KEYS[k]):
            raise ConfigError(f"{src}: atc.aipp.{k} must be a {OPTION_KEYS[k].__name__}, got {v!r}")
    opts.update(raw)
    opts["enabled"] = raw.get("enabled", True)
    if opts["input_format"] not in FORMATS:
        raise ConfigError(f"{src}: atc.aipp.input_format {opts['input_format']} is not supported here; use "
                          f"{', '.join(FORMATS)} (uint8 R, G, B per pixel)")
    if opts["crop"] not in CROPS:
        raise ConfigError(f"{src}: atc.aipp.crop must be auto (AIPP crops when the host's size is fixed) or host")
    return opts


def enabled(cfg: dict) -> bool:
    return options(cfg)["enabled"]


def f16(x) -> np.ndarray:
    """Round to float16 and back: what a float16 register holds."""
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def _family(cfg):
    from pipeline.config import load_family

    return load_family(cfg["family"])


def plan(cfg: dict, family=None) -> dict | None:
    """The AIPP plan of this config, or None when AIPP is off (or refused with fallback: true, see `refusal`).

    {"input", "format", "channels", "src": [H, W], "crop": [top, left, H, W] | None, "swap", "mean", "std",
     "params": the aipp_op fields in file order}. ConfigError (one line) for what AIPP cannot express."""
    opts = options(cfg)
    if not opts["enabled"]:
        return None
    why = refusal(cfg, family)
    if why:
        if opts["fallback"]:
            return None
        raise ConfigError(f"{cfg.get('_source', cfg['name'])}: atc.aipp: {why}; fix that, or set atc.aipp: "
                          "{fallback: true} to build the .om without AIPP (the host then normalises)")
    src = (family or _family(cfg)).aipp_source(cfg)
    n, c, h, w = cfg["inputs"][0]["shape"]
    mean, std = [float(v) for v in src["mean"]], [float(v) for v in src["std"]]
    scale = float(src.get("value_scale", 255.0))
    crop = src.get("device_crop") if opts["crop"] == "auto" else None
    size = list(src["sent_size"]) if crop else [h, w]
    swap = False           # the host sends RGB, the network's order: no swap, and the parameters are in RGB order
    params = [("aipp_mode", "static"), ("related_input_rank", 0), ("input_format", opts["input_format"]),
              ("src_image_size_w", size[1]), ("src_image_size_h", size[0]), ("crop", bool(crop))]
    if crop:
        params += [("load_start_pos_w", crop[1]), ("load_start_pos_h", crop[0]),
                   ("crop_size_w", crop[3]), ("crop_size_h", crop[2])]
    params += [("csc_switch", False), ("rbuv_swap_switch", swap)]
    for i in range(3):
        params.append((f"mean_chn_{i}", 0))
    for i in range(3):
        params.append((f"min_chn_{i}", round(mean[i] * scale, 6)))
    for i in range(3):
        params.append((f"var_reci_chn_{i}", float(f"{1.0 / (std[i] * scale):.10f}")))
    return {"input": cfg["inputs"][0]["name"], "format": opts["input_format"], "channels": FORMATS[opts["input_format"]],
            "src": size, "crop": list(crop) if crop else None, "swap": swap, "mean": mean, "std": std,
            "value_scale": scale, "params": params, "file": FILE}


def refusal(cfg: dict, family=None) -> str | None:
    """Why AIPP cannot serve this config (one clause naming the part), or None."""
    ins = cfg["inputs"]
    shape = ins[0]["shape"] if ins else []
    if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) for d in shape[2:]):
        return (f"input {ins[0]['name'] if ins else '?'} {shape} is not a 4-D NCHW image with 3 channels and fixed "
                "H, W, which AIPP needs")
    if str(ins[0].get("dtype", "float32")) not in ("float32", "float16"):
        return f"input {ins[0]['name']} is {ins[0]['dtype']}; AIPP writes float pixels into the network"
    fam = family or _family(cfg)
    src = fam.aipp_source(cfg)
    if not src:
        return (f"the {cfg['family']} family's preprocessing is not one AIPP can express (AIPP does only a channel "
                "swap, a crop and a per-channel (x - mean) * scale; resizing stays on the host)")
    if isinstance(src, str):
        return src
    if len(src["mean"]) != 3 or len(src["std"]) != 3:
        return "the preprocessing's mean/std are not 3 per-channel values (a per-pixel mean image is not AIPP's)"
    if min(src["std"]) <= 0:
        return "a std of 0 or less has no reciprocal for var_reci_chn"
    if cfg["atc"]["dynamic_dims"]:
        return "ATC refuses AIPP together with --dynamic_dims (atc.dynamic_dims)"
    if ins[0]["name"] in cfg["atc"]["input_fp16_nodes"]:
        return f"ATC refuses AIPP and --input_fp16_nodes on the same input ({ins[0]['name']})"
    return None


def config_text(p: dict) -> str:
    """The aipp_op file ATC reads with --insert_op_conf (prototxt; one block for input 0)."""
    lines = ["# static AIPP written by make om (convert/aipp.py); see docs/aipp.md", "aipp_op {"]
    for key, value in p["params"]:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        lines.append(f"    {key} : {text}")
    return "\n".join(lines + ["}", ""])


def parse_text(text: str) -> dict:
    """An aipp_op file back into {field: value} (one block); PipelineError for anything else."""
    fields, inside = {}, False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.replace(" ", "") == "aipp_op{":
            inside = True
            continue
        if line == "}":
            inside = False
            continue
        if not inside or ":" not in line:
            raise PipelineError(f"aipp config line {raw.strip()!r} is not `field : value` inside aipp_op {{ }}")
        k, v = (s.strip() for s in line.split(":", 1))
        fields[k] = _value(v)
    return fields


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip('"')


# ---- what the host feeds, and what it moves -----------------------------------------------------------------

def device_inputs(cfg: dict, p: dict | None = None) -> list[dict]:
    """The inputs as the host feeds them: [{name, shape, dtype}] (AIPP: uint8 NHWC; fp16 input nodes: float16)."""
    out = []
    fp16 = set(cfg.get("atc", {}).get("input_fp16_nodes", []))
    p = p if p is not None else plan(cfg)
    for i, t in enumerate(cfg["inputs"]):
        t = dict(t)
        if i == 0 and p:
            t.update(shape=[t["shape"][0], *p["src"], p["channels"]], dtype="uint8")
        elif t["name"] in fp16:
            t["dtype"] = "float16"
        out.append(t)
    return out


def io_bytes(cfg: dict, batch_shapes: dict | None = None, p: dict | None = None) -> dict:
    """Bytes one item moves to and from the device: {input, output, total, per tensor}; dynamic dims from
    batch_shapes ({name: shape without batch}) where given, else None."""
    def size(t, dtype):
        dims = list((batch_shapes or {}).get(t["name"], t["shape"][1:]))
        if not all(isinstance(d, int) for d in dims):
            return None
        return int(np.prod(dims)) * np.dtype(dtype).itemsize
    ins = {t["name"]: size(t, t.get("dtype") or "float32") for t in device_inputs(cfg, p)}
    out_dtype = "float16" if cfg["atc"]["output_fp16"] else None
    outs = {t["name"]: size(t, out_dtype or t.get("dtype") or "float32") for t in cfg["outputs"]}
    known = all(v is not None for v in [*ins.values(), *outs.values()])
    tin, tout = sum(v or 0 for v in ins.values()), sum(v or 0 for v in outs.values())
    return {"inputs": ins, "outputs": outs, "input_bytes": tin if known else None,
            "output_bytes": tout if known else None, "total_bytes": tin + tout if known else None}


# ---- the same pixels on a CPU target ------------------------------------------------------------------------

def _to_rgb_crop(pixels: np.ndarray, p: dict) -> np.ndarray:
    x = pixels[..., ::-1] if p["swap"] else pixels
    if p["crop"]:
        top, left, h, w = p["crop"]
        x = x[:, top:top + h, left:left + w, :]
    return x


def reference(pixels: np.ndarray, p: dict) -> np.ndarray:
    """The fp32 normalisation of uint8 NHWC pixels, as the host computes it without AIPP: float32 NCHW."""
    from modality.image import normalize

    x = _to_rgb_crop(pixels, p)
    if p["value_scale"] != 255.0:
        raise PipelineError("the reference normalisation assumes pixel values scaled by 1/255")
    return np.ascontiguousarray(np.stack([normalize(im, p["mean"], p["std"]) for im in x]))


def stored(p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean_chn as uint8, min_chn as float16, var_reci_chn as float16), as the .om stores them."""
    vals = dict(p["params"])
    mean = np.array([vals[f"mean_chn_{i}"] for i in range(3)], np.float32)
    mins = f16([vals[f"min_chn_{i}"] for i in range(3)])
    var = f16([vals[f"var_reci_chn_{i}"] for i in range(3)])
    return mean, mins, var


def emulate(pixels: np.ndarray, p: dict) -> np.ndarray:
    """AIPP's arithmetic on uint8 NHWC pixels: swap, crop, (x - mean_chn - min_chn) * var_reci_chn with the
    parameters as stored (fp16 min_chn/var_reci_chn), the result rounded to fp16 (AIPP's output type); float32
    NCHW holding fp16 values. The documents do not state AIPP's internal precision: x - mean_chn - min_chn is exact
    in fp32 here (an integer minus an fp16 value), and the product is rounded once."""
    mean, mins, var = stored(p)
    x = _to_rgb_crop(pixels, p).astype(np.float32)
    out = f16((x - mean - mins) * var)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def noise(pixels: np.ndarray, p: dict) -> dict:
    """How far AIPP's input is from the fp32 normalisation of the same pixels."""
    a, b = emulate(pixels, p).astype(np.float64), reference(pixels, p).astype(np.float64)
    d = a - b
    return {"max_abs": float(np.abs(d).max()), "rel_l2": float(np.linalg.norm(d) / max(np.linalg.norm(b), 1e-30)),
            "elements": int(d.size)}


def noise_bound(p: dict) -> dict:
    """The largest input difference over all 256 levels and 3 channels, and without the final fp16 rounding."""
    levels = np.arange(256, dtype=np.uint8)
    px = np.stack([levels] * 3, -1)[None, :, None, :]          # [1, 256, 1, 3]
    q = {**p, "crop": None, "swap": False}
    mean, mins, var = stored(q)
    exact = reference(px, q).astype(np.float64)
    params_only = ((px.astype(np.float64) - mean - mins) * var).transpose(0, 3, 1, 2)
    return {"max_abs": float(np.abs(emulate(px, q) - exact).max()),
            "max_abs_parameters_only": float(np.abs(params_only - exact).max()),
            "definition": "max over uint8 levels 0..255 and the 3 channels of |AIPP result - fp32 normalisation|; "
                          "parameters_only: fp16 min_chn/var_reci_chn with exact arithmetic"}


def network_feeds(cfg: dict, feeds: dict, p: dict | None = None) -> dict:
    """Feeds for the network itself (PyTorch eager, the ONNX as exported): AIPP pixels become the fp32
    normalisation of the same pixels, as the reference computes it; other feeds pass as they are."""
    p = p if p is not None else plan(cfg)
    if not p or p["input"] not in feeds or np.asarray(feeds[p["input"]]).dtype != np.uint8:
        return feeds
    return {**feeds, p["input"]: reference(np.asarray(feeds[p["input"]]), p)}


class HostAipp(Runner):
    """A CPU target behind the .om's AIPP input: takes uint8 NHWC pixels, hands its network float32 NCHW.
    mode "reference": the fp32 normalisation (what the host computes without AIPP); "emulate": AIPP's arithmetic."""

    def __init__(self, inner: Runner, p: dict, mode: str):
        super().__init__()
        if mode not in ("reference", "emulate"):
            raise ValueError(mode)
        self.inner, self.p, self.mode = inner, p, mode
        self.backend, self.device = inner.backend, inner.device

    def _activate(self) -> None:
        self.inner.activate()

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def _infer(self, feeds):
        name = self.p["input"]
        fed = dict(feeds)
        fed[name] = (reference if self.mode == "reference" else emulate)(feeds[name], self.p)
        out = self.inner.infer(fed)
        self.last_device_ms = self.inner.last_device_ms
        return out

    def get_input_metadata(self) -> list[TensorMeta]:
        out = []
        for m in self.inner.get_input_metadata():
            if m.name == self.p["input"]:
                m = TensorMeta(m.name, "uint8", [m.shape[0] if m.shape else None, *self.p["src"], self.p["channels"]])
            out.append(m)
        return out

    def get_output_names(self) -> list[str]:
        return self.inner.get_output_names()

    def accepted_batch_sizes(self):
        return self.inner.accepted_batch_sizes()

    def unsupported(self, shapes: dict):
        name = self.p["input"]
        if name in shapes:
            n = shapes[name][0]
            shapes = {**shapes, name: (n, 3, *([self.p["crop"][2], self.p["crop"][3]] if self.p["crop"]
                                              else self.p["src"]))}
        return self.inner.unsupported(shapes)

    def describe(self) -> dict:
        d = dict(self.inner.describe())
        d["aipp"] = {"mode": self.mode, "input": self.p["input"], "sent": f"uint8 NHWC {self.p['src']}",
                     "host_does": ("the fp32 normalisation of the same uint8 pixels (the reference)"
                                   if self.mode == "reference" else
                                   "AIPP's arithmetic: fp16 min_chn/var_reci_chn, fp16 results (emulation)")}
        return d


def host_side(cfg: dict, runner: Runner, mode: str) -> Runner:
    """A CPU target's runner as the stages see it: behind HostAipp when the config uses AIPP."""
    p = plan(cfg)
    return HostAipp(runner, p, mode) if p else runner
