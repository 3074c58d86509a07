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
FAKE_ATC_FAIL=1 imitates a parser error, FAKE_ATC_SILENT=1 exits 0 without the success line."""
import json
import os
import re
import shutil
import sys
import time

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
    dtypes = onnx_input_dtypes(args["model"])
    inputs = []
    for part in args["input_shape"].split(";"):
        name, dims = part.split(":")
        inputs.append({"name": name, "dtype": dtypes.get(name, "float32"), "shape": [int(d) for d in dims.split(",")]})
    mode = "dymbatch" if "dynamic_batch_size" in args else "dymdims" if "dynamic_dims" in args else "static"
    gears = [int(g) for g in args.get("dynamic_batch_size", "").split(",") if g]
    precision = next((f"--{k}={args[k]}" for k in ("precision_mode", "precision_mode_v2") if k in args), None)
    om = args["output"] + "_linux_x86_64.om"
    shutil.copyfile(args["model"], om)
    with open(om + ".json", "w") as f:
        json.dump({"inputs": inputs, "mode": mode, "gears": gears, "soc": args["soc_version"],
                   "precision": precision}, f)
    if os.environ.get("FAKE_ATC_SILENT"):
        return 0
    print("ATC run success, welcome to the next use.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
