"""TEST DOUBLE of CANN's `atc` (installed on PATH as `atc` by the tests): checks the flags the way ATC
documents them, "compiles" by copying the ONNX to <output>_linux_x86_64.om and records the static input
shapes and infer mode in <om>.json for the ais_bench double. FAKE_ATC_FAIL=1 imitates a parser error,
FAKE_ATC_SILENT=1 exits 0 without the success line."""
import json
import os
import shutil
import sys


def main(argv):
    args = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    print("ATC start working now, please wait for a moment.")
    if os.environ.get("FAKE_ATC_FAIL"):
        print("E19010: No parser is registered for Op [/STFT, optype [ai.onnx::17::STFT]].")
        print("ATC run failed, Please check the detail log, Try 'atc --help' for more information")
        return 1
    for need in ("framework", "model", "output", "soc_version", "input_shape"):
        if need not in args:
            print(f"E10001: missing --{need}")
            return 1
    if args["framework"] != "5" or ("precision_mode" in args and "precision_mode_v2" in args):
        print("E10007: bad --framework or both precision flags")
        return 1
    for f in ("keep_dtype", "op_precision_mode", "modify_mixlist"):
        if f in args and not os.path.isfile(args[f]):
            print(f"E10002: --{f} file {args[f]} not found")
            return 1
    inputs = []
    for part in args["input_shape"].split(";"):
        name, dims = part.split(":")
        inputs.append({"name": name, "dtype": "float32", "shape": [int(d) for d in dims.split(",")]})
    mode = "dymbatch" if "dynamic_batch_size" in args else "dymdims" if "dynamic_dims" in args else "static"
    gears = [int(g) for g in args.get("dynamic_batch_size", "").split(",") if g]
    om = args["output"] + "_linux_x86_64.om"
    shutil.copyfile(args["model"], om)
    with open(om + ".json", "w") as f:
        json.dump({"inputs": inputs, "mode": mode, "gears": gears, "soc": args["soc_version"]}, f)
    if os.environ.get("FAKE_ATC_SILENT"):
        return 0
    print("ATC run success, welcome to the next use.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
