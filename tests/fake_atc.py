"""TEST DOUBLE of CANN's `atc` (installed on PATH as `atc` by the tests). Modelled on hicann/ge api/atc
(main_impl.cc, cmd_flag_info.cc) and its --log / --precision_mode_v2 docs:

- prints the start banner first; `--help` prints the option list (stdout) and exits 0;
- an option it does not know: stderr `ERROR: unknown command line flag '<name>'`, then stdout `ATC run failed,
  Please check the detail log, ...` and the E19999 block, exit 255 (CheckRet(-1)). FAKE_ATC_CANN=<version>
  models a toolkit: before 6.3.RC2 --precision_mode_v2 is such an unknown option and --help does not list it;
  unset = a current toolkit;
- both precision flags: E10056; a precision or --log value outside the documented set: E10001;
- ATC's own log lines (`[ERROR] GE(pid,atc.bin):...`) reach stdout only with ASCEND_SLOG_PRINT_TO_STDOUT=1 and a
  --log level other than null (the default), as the docs say; a level filters them;
- "compiles" by copying the ONNX to <output>_linux_x86_64.om and records the static input shapes, infer mode and
  the precision flag in <om>.json for the ais_bench double.
FAKE_ATC_FAIL=1 imitates a parser error, FAKE_ATC_SILENT=1 exits 0 without the success line.

Static AIPP and fp16 I/O (modelled on hicann/ge@ffdcbc9: docs/zh/user_guides/atc_tools/AIPP/config_file_template.md,
CLI_options/--insert_op_conf.md, --input_fp16_nodes.md, --output_type.md; graph_metadef/proto/insert_op.proto;
api/atc/main_impl.cc and omg.cc; compiler/graph/preprocess/insert_op/{aipp_op,insert_aipp_op_util}.cc; the Aipp
op's InferShape in the built-in op proto aipp.cpp). See docs/aipp.md for the facts and their sources.

- `--insert_op_conf=<file>` (relative to the cwd): a protobuf text-format file of `aipp_op { ... }` blocks, read
  with our own parser with protobuf's rules: fields in any order, `name: value` (or `name : value`), # comments,
  an unknown field, an unknown enum name or a non-repeated field given twice is a parse error (E13005, "Failed to
  parse file"). Then ATC's checks: aipp_mode missing (E10052), input_format missing for static (E10052), a
  repeated var_reci/matrix/bias field (E10052), two blocks on one input (E10052), related_input_rank past the
  inputs (E10052), --dynamic_dims with AIPP (E10001), --input_fp16_nodes naming the AIPP input (E10034),
  --dynamic_image_size with crop/padding or src sizes (E10052), AIPP output H/W != the model's H/W (E70014, the
  Aipp InferShape check), crop window outside the source, out-of-range values, the reserved resize /
  support_rotation / single_line_mode switched on, a -1 or range dim on the AIPP input without a gear option
  (E10052; `rotation_angle`, in the template but not in insert_op.proto, is an unknown field: E13005).
  Not modelled (the fake refuses with "[fake atc] ... not modelled", E19999): aipp_mode dynamic, csc_switch true,
  input formats other than RGB888_U8 / XRGB8888_U8, a model input whose C is not 3.
  "Compiles" by rewriting the ONNX copy: the AIPP input becomes uint8 NHWC [N, src_h, src_w, C] (C=3 RGB888_U8,
  4 XRGB8888_U8: bytes R,G,B,X with ax_swap_switch false, X,R,G,B with true; X dropped), then Cast, channel
  Gather (rbuv_swap_switch swaps R and B first), crop Slice, Sub mean_chn, Sub min_chn (fp16-rounded), Mul
  var_reci_chn (fp16-rounded), Cast to fp16 and back (AIPP writes fp16), Pad (padding_value), Transpose to NCHW.
  `<om>.json` records that input as dtype "uint8", shape [N, H, W, C] (aclmdlGetInputDims for RGB888_U8 /
  XRGB8888_U8; the byte size is N*H*W*C), plus "aipp": the parsed blocks with the defaults filled in.
- `--input_fp16_nodes="a;b"`: those inputs become float16 (in `<om>.json` and the ONNX, with a Cast to the
  original type in front); a name that is not an input: E10016.
- `--output_type=FP32|FP16|UINT8|INT8` (the values api/atc/omg.cc accepts; the doc page lists more) casts every
  output; the per-node form `node:index:TYPE;...` needs each `node:index` in --out_nodes (E10001) and casts that
  output (the fake does not re-select outputs with --out_nodes: the named output must be a graph output).
  `<om>.json` "outputs" lists the output names and dtypes.
Without these three flags the ONNX is copied byte for byte, as before."""
import json
import os
import re
import shutil
import sys
import time

import numpy as np

OPTIONS = {"framework", "model", "output", "soc_version", "input_format", "input_shape", "precision_mode",
           "precision_mode_v2", "dynamic_batch_size", "dynamic_dims", "dynamic_image_size", "keep_dtype",
           "op_precision_mode", "modify_mixlist", "log", "enable_small_channel", "out_nodes", "output_type",
           "insert_op_conf", "input_fp16_nodes", "fusion_switch_file", "op_select_implmode",
           "optypelist_for_implmode", "host_env_os", "host_env_cpu", "core_type", "mode", "customize_dtypes",
           "op_compiler_cache_mode", "op_compiler_cache_dir", "buffer_optimize", "jit_compile", "help"}
V1 = {"force_fp16", "force_fp32", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
      "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16"}
V2 = {"fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "cube_hif8", "mixed_hif8"}
LEVELS = ["debug", "info", "warning", "error"]          # "null" (default): no debug log at all
FAILED = "ATC run failed, Please check the detail log, Try 'atc --help' for more information"


def has_v2() -> bool:
    m = re.match(r"(\d+)\.(\d+)\.(?:RC(\d+)|(\d+))", os.environ.get("FAKE_ATC_CANN", "8.0.RC3"))
    major, minor, rc = int(m.group(1)), int(m.group(2)), m.group(3)
    key = (major, minor, 0 if rc else 1, int(rc or m.group(4)))
    return key >= (6, 3, 0, 2)


def options() -> set:
    return OPTIONS if has_v2() else OPTIONS - {"precision_mode_v2"}


def plog(level: str, args: dict, text: str) -> None:
    """A debug-log line, printed only where the real ATC would print it to the console."""
    want = args.get("log", "null")
    if os.environ.get("ASCEND_SLOG_PRINT_TO_STDOUT") == "1" and want in LEVELS and \
            LEVELS.index(level) >= LEVELS.index(want):
        stamp = time.strftime("%Y-%m-%d-%H:%M:%S.000.000")
        print(f"[{level.upper()}] GE({os.getpid()},atc.bin):{stamp} [main_impl.cc:1]{os.getpid()} {text}")


def fail(code: str, text: str) -> int:
    print(FAILED)
    print(f"{code}: {text}")
    return 1


def onnx_input_dtypes(path) -> dict:
    """The graph's input element types (an .om keeps the ONNX input dtypes unless told otherwise)."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:           # some tests hand the fake a placeholder file: float32 inputs, as before
        return {}
    return {i.name: str(tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in graph.input}


class Reject(Exception):
    """An ATC failure: code and text for fail()."""

    def __init__(self, code: str, text: str):
        super().__init__(f"{code}: {text}")
        self.code, self.text = code, text


def not_modelled(what: str):
    return Reject("E19999", f"[fake atc] {what} is not modelled by the fake ATC (real ATC may accept it).")


# ---- the AIPP configuration file (graph_metadef/proto/insert_op.proto, message AippOpParams) -------------------
MODES = {"undefined": 0, "static": 1, "dynamic": 2}
INPUT_FORMATS = {"UNDEFINED": 0, "YUV420SP_U8": 1, "XRGB8888_U8": 2, "RGB888_U8": 3, "YUV400_U8": 4,
                 "NC1HWC0DI_FP16": 5, "NC1HWC0DI_S8": 6, "ARGB8888_U8": 7, "YUYV_U8": 8, "YUV422SP_U8": 9,
                 "AYUV444_U8": 10, "RAW10": 11, "RAW12": 12, "RAW16": 13, "RAW24": 14, "RGB16": 15, "RGB20": 16,
                 "RGB24": 17, "RGB8_IR": 18, "RGB16_IR": 19, "RGB24_IR": 20}
# name -> (type, repeated); every field of AippOpParams, nothing else
AIPP_FIELDS = {"aipp_mode": ("mode", False), "related_input_rank": ("uint32", False),
               "related_input_name": ("string", False), "input_edge_idx": ("uint32", True),
               "max_src_image_size": ("uint32", False), "support_rotation": ("bool", False),
               "input_format": ("format", False), "csc_switch": ("bool", False), "cpadding_value": ("float", False),
               "rbuv_swap_switch": ("bool", False), "ax_swap_switch": ("bool", False),
               "single_line_mode": ("bool", False), "src_image_size_w": ("int32", False),
               "src_image_size_h": ("int32", False), "crop": ("bool", False), "load_start_pos_w": ("int32", False),
               "load_start_pos_h": ("int32", False), "crop_size_w": ("int32", False), "crop_size_h": ("int32", False),
               "resize": ("bool", False), "resize_output_w": ("int32", False), "resize_output_h": ("int32", False),
               "padding": ("bool", False), "left_padding_size": ("int32", False),
               "right_padding_size": ("int32", False), "top_padding_size": ("int32", False),
               "bottom_padding_size": ("int32", False), "padding_value": ("float", False),
               "raw_rgbir_to_f16_n": ("uint32", False)}
AIPP_FIELDS.update({f"mean_chn_{i}": ("int32", False) for i in range(4)})
AIPP_FIELDS.update({f"min_chn_{i}": ("float", False) for i in range(4)})
AIPP_FIELDS.update({f"var_reci_chn_{i}": ("float", True) for i in range(4)})
AIPP_FIELDS.update({f"matrix_r{r}c{c}": ("int32", True) for r in range(3) for c in range(3)})
AIPP_FIELDS.update({f"{k}_bias_{i}": ("int32", True) for k in ("input", "output") for i in range(3)})
ZERO = {"mode": "undefined", "format": "UNDEFINED", "bool": False, "float": 0.0, "int32": 0, "uint32": 0,
        "string": ""}
TOKEN = re.compile(r'\s+|#[^\n]*|(?P<tok>"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[A-Za-z_][A-Za-z0-9_.]*'
                   r'|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?|[{}<>:;,\[\]])')


class ParseError(Exception):
    pass


def tokenize(text: str) -> list:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"unexpected character {text[pos]!r}")
        if m.group("tok"):
            out.append(m.group("tok"))
        pos = m.end()
    return out


def scalar(kind: str, tok: str, name: str):
    """One text-format value of a field of type kind (protobuf TextFormat rules, as far as the fake needs them)."""
    def is_int(t):
        return re.fullmatch(r"[-+]?\d+", t) is not None
    if kind in ("mode", "format"):
        table = MODES if kind == "mode" else INPUT_FORMATS
        if tok in table:
            return tok
        if is_int(tok) and int(tok) in table.values():
            return next(k for k, v in table.items() if v == int(tok))
        raise ParseError(f'Unknown enumeration value of "{tok}" for field "{name}".')
    if kind == "bool":
        if tok in ("true", "True", "t", "1"):
            return True
        if tok in ("false", "False", "f", "0"):
            return False
        raise ParseError(f'Invalid value for boolean field "{name}". Value: "{tok}".')
    if kind in ("int32", "uint32"):
        if not is_int(tok) or (kind == "uint32" and int(tok) < 0) or not -2**31 <= int(tok) < 2**32:
            raise ParseError(f'Expected integer, got: {tok}')
        return int(tok)
    if kind == "float":
        t = tok[:-1] if re.fullmatch(r".*\d[fF]", tok) else tok
        if not re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|infinity|nan)", t, re.I):
            raise ParseError(f"Expected double, got: {tok}")
        return float(t)
    if tok[:1] in "\"'":
        return tok[1:-1]
    raise ParseError(f"Expected string, got: {tok}")


def parse_insert_op_conf(text: str) -> list:
    """The aipp_op blocks of an insert_op_conf file: one dict per block, holding only the fields written (repeated
    fields as lists). Raises ParseError where protobuf's TextFormat::Parse fails."""
    toks, i, blocks = tokenize(text), 0, []

    def take(want=None):
        nonlocal i
        if i >= len(toks):
            raise ParseError("Unexpected end of input")
        t = toks[i]
        if want is not None and t not in want:
            raise ParseError(f'Expected "{"/".join(want)}", found "{t}".')
        i += 1
        return t

    while i < len(toks):
        name = take()
        if name not in ("aipp_op", "multi_shape_op"):
            raise ParseError(f'Message type "domi.InsertNewOps" has no field named "{name}".')
        if name == "multi_shape_op":
            raise ParseError("[fake atc] multi_shape_op is not modelled")
        if toks[i:i + 1] == [":"]:
            take()
        close = {"{": "}", "<": ">"}[take(("{", "<"))]
        block = {}
        while toks[i:i + 1] != [close]:
            field = take()
            if field not in AIPP_FIELDS:
                raise ParseError(f'Message type "domi.AippOpParams" has no field named "{field}".')
            kind, repeated = AIPP_FIELDS[field]
            take((":",))
            if repeated and toks[i:i + 1] == ["["]:
                take()
                values = []
                while toks[i:i + 1] != ["]"]:
                    values.append(scalar(kind, take(), field))
                    if toks[i:i + 1] == [","]:
                        take()
                take()
            else:
                values = [scalar(kind, take(), field)]
            if repeated:
                block.setdefault(field, []).extend(values)
            elif field in block:
                raise ParseError(f'Non-repeated field "{field}" is specified multiple times.')
            else:
                block[field] = values[0]
            if toks[i:i + 1] in ([";"], [","]):
                take()
        take((close,))
        blocks.append(block)
    return blocks


def aipp_value(block: dict, name: str):
    """A field's value after ATC's SetDefaultParams: the proto3 zero, var_reci_chn_* 1.0."""
    kind, repeated = AIPP_FIELDS[name]
    if repeated:
        vals = block.get(name, [])
        return vals[0] if vals else (1.0 if name.startswith("var_reci") else 0)
    return block.get(name, ZERO[kind])


def check_aipp_blocks(blocks: list, args: dict) -> list:
    """ATC's checks of the parsed file (InsertAippOpUtil::Parse: position not repeated, --dynamic_image_size,
    AippOp::ValidateParams), in that order; returns the blocks with every field filled in."""
    ranks = [aipp_value(b, "related_input_rank") for b in blocks]
    if len(set(ranks)) != len(ranks):
        raise Reject("E10052", "AIPP configuration is invalid. Reason: Cannot insert aipp to the same position! "
                               "Please ensure related_input_rank param is different in different aipp config.")
    full = []
    for b in blocks:
        v = {name: aipp_value(b, name) for name in AIPP_FIELDS}
        if "dynamic_image_size" in args:
            if v["crop"] or v["padding"]:
                raise Reject("E10052", "AIPP configuration is invalid. Reason: When --dynamic_image_size is set, "
                                       "crop and padding cannot be set to 'true'.")
            if v["aipp_mode"] == "static" and (v["src_image_size_w"] or v["src_image_size_h"]):
                raise Reject("E10052", "AIPP configuration is invalid. Reason: When --dynamic_image_size is set, "
                                       "src_image_size_w and src_image_size_h must be set to '0'.")
        if v["aipp_mode"] not in ("static", "dynamic"):
            raise Reject("E10052", "AIPP configuration is invalid. Reason: When insert AIPP op, aipp_mode must be "
                                   "configured as static or dynamic.")
        for name, (kind, repeated) in AIPP_FIELDS.items():
            if repeated and len(b.get(name, [])) > 1 and name != "input_edge_idx":
                raise Reject("E10052", f"AIPP configuration is invalid. Reason: The parameter {name} cannot be "
                                       "configured repeatedly.")
        if v["aipp_mode"] == "static":
            if v["input_format"] == "UNDEFINED":
                raise Reject("E10052", "AIPP configuration is invalid. Reason: Input format of AIPP conf must be "
                                       "set in static aipp.")
            for name in ("src_image_size_w", "src_image_size_h", "load_start_pos_w", "load_start_pos_h",
                         "crop_size_w", "resize_output_w", "resize_output_h", "left_padding_size",
                         "right_padding_size", "top_padding_size", "bottom_padding_size"):
                if v[name] < 0:
                    raise Reject("E10052", f"AIPP configuration is invalid. Reason: {name.capitalize()} must not "
                                           "be configured smaller than 0.")
        full.append(v)
    return full


def aipp_geometry(v: dict, shape: list, name: str) -> dict:
    """The Aipp op's InferShape for one static block on an NCHW model input: source size, crop window, padding;
    rejects what the template's constraints and the InferShape check reject."""
    def bad(reason):
        return Reject("E10052", f"AIPP configuration is invalid. Reason: {reason}.")
    for switch in ("resize", "support_rotation", "single_line_mode"):
        if v[switch]:
            raise bad(f"{switch} is a reserved field and is not supported")
    if v["csc_switch"]:
        raise not_modelled("csc_switch: true (colour space conversion)")
    if v["input_format"] not in ("RGB888_U8", "XRGB8888_U8"):
        raise not_modelled(f"input_format {v['input_format']}")
    if len(shape) != 4:
        raise Reject("E10001", f"Value [{name}] for parameter [--input_shape] is invalid. Reason: an input with "
                               "AIPP must be 4-D (NCHW for an ONNX model).")
    n, c, h, w = shape
    if c != 3:
        raise not_modelled(f"AIPP into a model input with C={c}")
    src_h, src_w = v["src_image_size_h"] or h, v["src_image_size_w"] or w
    if (v["crop"] or v["padding"]) and not (v["src_image_size_w"] and v["src_image_size_h"]):
        raise bad("src_image_size_w and src_image_size_h can be 0 or unset only when crop and padding are off")
    if not (2 <= src_w <= 4096 and 1 <= src_h <= 4096):
        raise bad(f"src_image_size_w must be in [2,4096] and src_image_size_h in [1,4096], got {src_w}x{src_h}")
    top = left = 0
    crop_h, crop_w = src_h, src_w
    if v["crop"]:
        if v["padding"] and not (v["crop_size_w"] and v["crop_size_h"]):
            raise bad("crop_size_w and crop_size_h can be 0 or unset only when padding is off")
        top, left = v["load_start_pos_h"], v["load_start_pos_w"]
        crop_h, crop_w = v["crop_size_h"] or h, v["crop_size_w"] or w
        if top + crop_h > src_h or left + crop_w > src_w:
            raise bad(f"load_start_pos_w + crop_size_w <= src_image_size_w and load_start_pos_h + crop_size_h <= "
                      f"src_image_size_h are required, got ({left}+{crop_w}, {top}+{crop_h}) for a "
                      f"{src_w}x{src_h} source")
    pads = [0, 0, 0, 0]
    if v["padding"]:
        pads = [v["top_padding_size"], v["bottom_padding_size"], v["left_padding_size"], v["right_padding_size"]]
        if any(not 0 <= p <= 32 for p in pads):
            raise bad("left/right/top/bottom_padding_size must be in [0,32]")
    out_h, out_w = crop_h + pads[0] + pads[1], crop_w + pads[2] + pads[3]
    if (out_h, out_w) != (h, w):
        raise Reject("E70014", f"The AIPP output H [{out_h}] and W [{out_w}] do not match the H [{h}] and W [{w}] "
                               f"of data node [{name}]: the aipp output H and W must equal the model input's.")
    for i in range(4):
        if not 0 <= v[f"mean_chn_{i}"] <= 255:
            raise bad(f"mean_chn_{i} must be in [0,255]")
        if not 0 <= v[f"min_chn_{i}"] <= 255:
            raise bad(f"min_chn_{i} must be in [0,255]")
        if not -65504 <= v[f"var_reci_chn_{i}"] <= 65504:
            raise bad(f"var_reci_chn_{i} must be in [-65504,65504]")
    if v["input_format"] == "RGB888_U8":
        channels, order = 3, [0, 1, 2]
    else:                                   # XRGB8888_U8: X first with ax_swap_switch, else last; X is dropped
        channels, order = 4, ([1, 2, 3] if v["ax_swap_switch"] else [0, 1, 2])
    if v["rbuv_swap_switch"]:
        order = order[::-1]
    return {"n": n, "src_h": src_h, "src_w": src_w, "channels": channels, "order": order, "top": top,
            "left": left, "crop_h": crop_h, "crop_w": crop_w, "pads": pads}


# ---- rewriting the ONNX copy ------------------------------------------------------------------------------------
def consumers_use(graph, old: str, new: str) -> None:
    """Every node input (subgraphs included) and graph output that reads tensor old reads new instead."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                consumers_use(sub, old, new)
    for o in graph.output:
        if o.name == old:
            o.name = new


def prepend(graph, nodes, inits) -> None:
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(list(nodes) + old)
    graph.initializer.extend(inits)


def add_aipp(graph, inp, v: dict, geo: dict, tag: str) -> None:
    """Turn graph input inp into uint8 NHWC and put AIPP's arithmetic in front of the network."""
    from onnx import TensorProto, helper, numpy_helper

    name, orig_type = inp.name, inp.type.tensor_type.elem_type
    out = f"{name}__aipp_out"
    consumers_use(graph, name, out)
    p = lambda s: f"{tag}_{s}"   # noqa: E731
    min16 = np.array([v[f"min_chn_{i}"] for i in range(4)], np.float16).astype(np.float32)
    var16 = np.array([v[f"var_reci_chn_{i}"] for i in range(4)], np.float16).astype(np.float32)
    mean = np.array([v[f"mean_chn_{i}"] for i in range(4)], np.float32)
    k = len(geo["order"])
    t, pads = geo["top"], geo["pads"]
    inits = [numpy_helper.from_array(np.array(geo["order"], np.int64), p("order")),
             numpy_helper.from_array(np.array([t, geo["left"]], np.int64), p("crop_start")),
             numpy_helper.from_array(np.array([t + geo["crop_h"], geo["left"] + geo["crop_w"]], np.int64),
                                     p("crop_end")),
             numpy_helper.from_array(np.array([1, 2], np.int64), p("hw_axes")),
             numpy_helper.from_array(mean[:k], p("mean_chn")),
             numpy_helper.from_array(min16[:k], p("min_chn")),
             numpy_helper.from_array(var16[:k], p("var_reci_chn")),
             numpy_helper.from_array(np.array([0, pads[0], pads[2], 0, 0, pads[1], pads[3], 0], np.int64),
                                     p("pads")),
             numpy_helper.from_array(np.array(np.float16(v["padding_value"]), np.float32), p("pad_value"))]
    nodes = [helper.make_node("Cast", [name], [p("f32")], to=TensorProto.FLOAT, name=p("cast_in")),
             helper.make_node("Gather", [p("f32"), p("order")], [p("swapped")], axis=3, name=p("swap")),
             helper.make_node("Slice", [p("swapped"), p("crop_start"), p("crop_end"), p("hw_axes")], [p("crop")],
                              name=p("crop")),
             helper.make_node("Sub", [p("crop"), p("mean_chn")], [p("sub_mean")], name=p("sub_mean")),
             helper.make_node("Sub", [p("sub_mean"), p("min_chn")], [p("sub_min")], name=p("sub_min")),
             helper.make_node("Mul", [p("sub_min"), p("var_reci_chn")], [p("mul")], name=p("mul_var_reci")),
             helper.make_node("Cast", [p("mul")], [p("f16")], to=TensorProto.FLOAT16, name=p("to_fp16")),
             helper.make_node("Cast", [p("f16")], [p("norm")], to=TensorProto.FLOAT, name=p("from_fp16")),
             helper.make_node("Pad", [p("norm"), p("pads"), p("pad_value")], [p("padded")], mode="constant",
                              name=p("padding")),
             helper.make_node("Transpose", [p("padded")], [p("nchw")], perm=[0, 3, 1, 2], name=p("to_nchw"))]
    nodes.append(helper.make_node("Identity" if orig_type == TensorProto.FLOAT else "Cast", [p("nchw")], [out],
                                  name=p("out"), **({} if orig_type == TensorProto.FLOAT else {"to": orig_type})))
    prepend(graph, nodes, inits)
    dims = [geo["n"], geo["src_h"], geo["src_w"], geo["channels"]]
    inp.type.tensor_type.elem_type = TensorProto.UINT8
    del inp.type.tensor_type.shape.dim[:]
    for d in dims:
        dim = inp.type.tensor_type.shape.dim.add()
        if d >= 0:
            dim.dim_value = d
        else:
            dim.dim_param = "N"


def add_fp16_input(graph, inp) -> None:
    from onnx import TensorProto, helper

    out = f"{inp.name}__from_fp16"
    orig = inp.type.tensor_type.elem_type
    consumers_use(graph, inp.name, out)
    prepend(graph, [helper.make_node("Cast", [inp.name], [out], to=orig, name=f"{inp.name}__fp16_cast")], [])
    inp.type.tensor_type.elem_type = TensorProto.FLOAT16


OUTPUT_TYPES = {"FP32": 1, "FP16": 10, "UINT8": 2, "INT8": 3}          # onnx.TensorProto codes
OUTPUT_TYPES_950 = {"HIF8", "HIF4", "FP8E5M2", "FP8E4M3FN"}           # accepted by omg.cc, Ascend 950 only
OUTPUT_TYPE_SUPPORT = ("The value must be FP32, FP16, UINT8, INT8. A node can only have one type. The correct "
                       "example is: --output_type=FP32.")
OUTPUT_TYPE_ERROR = ("In the mode of specified node, the correct example is: node1:0:FP16;node2:0:FP32.The nodes "
                     "set in --output_type must be found in --out_nodes.")


def output_type_dtype(t: str) -> int:
    if t in OUTPUT_TYPES_950:
        raise not_modelled(f"--output_type {t}")
    if t not in OUTPUT_TYPES:
        raise Reject("E10001", f"Value [{t}] for parameter [--output_type] is invalid. Reason: "
                               f"{OUTPUT_TYPE_SUPPORT}")
    return OUTPUT_TYPES[t]


def parse_output_type(value: str, out_nodes: str):
    """api/atc/omg.cc ParseOutputType: a bare type for every output, or node:index:type;... checked against
    --out_nodes. Returns ("all", dtype) or ("nodes", {(node, index): dtype})."""
    if ":" not in value:
        return "all", output_type_dtype(value)
    wanted = {}
    for part in value.split(";"):
        bits = part.split(":")
        if len(bits) != 3:
            raise Reject("E10001", f"Value [{part}] for parameter [--output_type] is invalid. Reason: The parameter "
                                   "is invalid. Valid format \"opname:index:dtype\".")
        if not bits[1].isdigit():
            raise Reject("E10001", f"Value [{bits[1]}] for parameter [--output_type] is invalid. Reason: The value "
                                   "is not a positive integer.")
        wanted[(bits[0], int(bits[1]))] = output_type_dtype(bits[2])
    listed = {p.strip() for p in out_nodes.split(";") if p.strip()}
    for node, idx in wanted:
        if f"{node}:{idx}" not in listed:
            raise Reject("E10001", f"Value [{node}:{idx}] for parameter [--output_type] is invalid. Reason: "
                                   f"{OUTPUT_TYPE_ERROR}")
    return "nodes", wanted


def cast_output(graph, out, dtype: int) -> None:
    from onnx import helper

    if out.type.tensor_type.elem_type == dtype:
        return
    pre = f"{out.name}__before_output_type"
    for node in graph.node:
        for k, name in enumerate(node.output):
            if name == out.name:
                node.output[k] = pre
        for k, name in enumerate(node.input):
            if name == out.name:
                node.input[k] = pre
    graph.node.append(helper.make_node("Cast", [pre], [out.name], to=dtype, name=f"{out.name}__output_type"))
    out.type.tensor_type.elem_type = dtype


def np_name(elem_type: int) -> str:
    from onnx.helper import tensor_dtype_to_np_dtype

    return str(tensor_dtype_to_np_dtype(elem_type))


def compile_io(args: dict, inputs: list, om: str) -> dict:
    """--insert_op_conf / --input_fp16_nodes / --output_type: check as ATC does, write the rewritten ONNX to om,
    update the input records; returns the extra <om>.json keys."""
    import onnx

    model = onnx.load(args["model"])
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    data = [i for i in graph.input if i.name not in inits]          # ATC's Data nodes, in order
    by_name = {i.name: i for i in data}
    fp16 = [n.strip() for n in args.get("input_fp16_nodes", "").strip('"').split(";") if n.strip()]
    for n in fp16:
        if n not in by_name:
            raise Reject("E10016", f"Op name {n} specified in --input_fp16_nodes is not found in the model. Confirm "
                                   "whether this node name exists, or whether the node is not split with the "
                                   "specified delimiter ';'.")
    outputs = parse_output_type(args["output_type"].strip('"'), args.get("out_nodes", "").strip('"')) \
        if args.get("output_type") else None
    extra, records = {}, {r["name"]: r for r in inputs}
    if args.get("insert_op_conf"):
        try:
            with open(args["insert_op_conf"]) as f:
                blocks = parse_insert_op_conf(f.read())
        except ParseError as e:
            raise Reject("E13005", f"Failed to parse file {args['insert_op_conf']}. ({e})") from None
        aipp = check_aipp_blocks(blocks, args)
        for k, v in enumerate(aipp):
            rank = v["related_input_rank"]
            if v["related_input_name"]:
                raise not_modelled("related_input_name (Caffe only)")
            if rank >= len(data):
                raise Reject("E10052", "AIPP configuration is invalid. Reason: Cannot find the data node by aipp "
                                       f"parameter related_input_rank {rank}.")
            inp = data[rank]
            if inp.name in fp16:
                raise Reject("E10034", f"Nodes (for example, {inp.name}) connected to AIPP must not be of type "
                                       "FP16.")
            if v["aipp_mode"] == "dynamic":
                raise not_modelled("aipp_mode: dynamic")
            rec = records.get(inp.name)
            if rec is None:
                raise Reject("E10001", f"Value [{inp.name}] for parameter [--input_shape] is invalid. Reason: the "
                                       "fake ATC needs the AIPP input's shape in --input_shape.")
            if rec.get("ranged") or (-1 in rec["shape"] and not any(
                    g in args for g in ("dynamic_batch_size", "dynamic_image_size"))):
                raise Reject("E10052", "AIPP configuration is invalid. Reason: static AIPP cannot be set on an input "
                                       f"with a dynamic shape ({inp.name}); set it on another input.")
            geo = aipp_geometry(v, rec["shape"], inp.name)
            add_aipp(graph, inp, v, geo, f"aipp{k}")
            rec["dtype"] = "uint8"
            rec["shape"] = [geo["n"], geo["src_h"], geo["src_w"], geo["channels"]]
            rec["format"] = "NHWC"
        extra["aipp"] = aipp
    for n in fp16:
        add_fp16_input(graph, by_name[n])
        if n in records:
            records[n]["dtype"] = "float16"
    if outputs:
        kind, want = outputs
        if kind == "all":
            for o in graph.output:
                cast_output(graph, o, want)
        else:
            produced = {(node.name, j): o for node in graph.node for j, o in enumerate(node.output)}
            names = {o.name: o for o in graph.output}
            for (node, idx), dtype in want.items():
                tensor = produced.get((node, idx))
                if tensor is None or tensor not in names:
                    raise not_modelled(f"--output_type for {node}:{idx}, which is not a graph output of the ONNX")
                cast_output(graph, names[tensor], dtype)
    extra["outputs"] = [{"name": o.name, "dtype": np_name(o.type.tensor_type.elem_type)} for o in graph.output]
    onnx.checker.check_model(model)
    onnx.save(model, om)
    return extra


def main(argv):
    print("ATC start working now, please wait for a moment.")
    if "--help" in argv or "-h" in argv:
        print("usage: atc <args>\n  --model  ...\n  --precision_mode        precision mode, support force_fp16, ..."
              + ("\n  --precision_mode_v2     precision mode v2, support fp16(default), ..." if has_v2() else ""))
        return 0
    args = {}
    for a in argv:
        name, _, value = a[2:].partition("=")
        if not a.startswith("--") or name not in options():
            print(f"ERROR: unknown command line flag '{name if a.startswith('--') else a}'", file=sys.stderr)
            print(FAILED)
            print("E19999: Internal Error!\n        An unknown error occurred. Please check the log.\n")
            return 255
        args[name] = value
    if args.get("log", "null") not in LEVELS + ["null"]:
        return fail("E10001", f"Value [{args['log']}] for parameter [--log] is invalid.")
    plog("info", args, f"atc argv: {' '.join(argv)}")
    if os.environ.get("FAKE_ATC_FAIL"):
        plog("error", args, "[Parse][Model] onnx parser failed: no parser for op type STFT")
        print(FAILED)
        print("E19010: No parser is registered for Op [/STFT, optype [ai.onnx::17::STFT]].")
        return 1
    for need in ("framework", "model", "output", "soc_version", "input_shape"):
        if need not in args:
            return fail("E10001", f"missing --{need}")
    if args["framework"] != "5":
        return fail("E10007", "bad --framework")
    if "precision_mode" in args and "precision_mode_v2" in args:
        return fail("E10056", "Parameters [--precision_mode] and [--precision_mode_v2] cannot be configured at the "
                              "same time.")
    for flag, allowed in (("precision_mode", V1), ("precision_mode_v2", V2)):
        if flag in args and args[flag] not in allowed:
            return fail("E10001", f"Value [{args[flag]}] for parameter [--{flag}] is invalid.")
    for f in ("keep_dtype", "op_precision_mode", "modify_mixlist"):
        if f in args and not os.path.isfile(args[f]):
            return fail("E10002", f"--{f} file {args[f]} not found")
    if args.get("insert_op_conf") and args.get("dynamic_dims"):
        return fail("E10001", f"Value [{args['insert_op_conf']}] for parameter [--insert_op_conf] is invalid. "
                              "Reason: The dynamic dims function does not support AIPP.")
    if args.get("insert_op_conf") and not os.path.isfile(args["insert_op_conf"]):
        return fail("E10001", f"Value [{args['insert_op_conf']}] for parameter [--insert_op_conf] is invalid. "
                              "Reason: file not found.")
    dtypes = onnx_input_dtypes(args["model"])
    inputs = []
    for part in args["input_shape"].strip('"').split(";"):
        name, dims = part.rsplit(":", 1)
        ranged = "~" in dims
        shape = [int(d) if "~" not in d else -1 for d in dims.split(",")]
        inputs.append({"name": name, "dtype": dtypes.get(name, "float32"), "shape": shape, **({"ranged": True} if
                                                                                                ranged else {})})
    mode = "dymbatch" if "dynamic_batch_size" in args else "dymdims" if "dynamic_dims" in args else "static"
    gears = [int(g) for g in args.get("dynamic_batch_size", "").split(",") if g]
    precision = next((f"--{k}={args[k]}" for k in ("precision_mode", "precision_mode_v2") if k in args), None)
    om = args["output"] + "_linux_x86_64.om"
    extra = {}
    if any(args.get(k) for k in ("insert_op_conf", "input_fp16_nodes", "output_type")):
        try:
            extra = compile_io(args, inputs, om)
        except Reject as e:
            plog("error", args, f"[Check][Param] {e.text}")
            return fail(e.code, e.text)
    else:
        shutil.copyfile(args["model"], om)
    for r in inputs:
        r.pop("ranged", None)
    with open(om + ".json", "w") as f:
        json.dump({"inputs": inputs, "mode": mode, "gears": gears, "soc": args["soc_version"],
                   "precision": precision, **extra}, f)
    if os.environ.get("FAKE_ATC_SILENT"):
        return 0
    print("ATC run success, welcome to the next use.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
