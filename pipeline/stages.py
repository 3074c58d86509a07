"""The stage list: every stage declared once. The Makefile rules, the config stamps, the zoo, the report and the
tests derive from this table; `python3 -m pipeline.stages makefile` writes the Makefile's stage rules.

Standard library only: make runs it with the system python3 before the environment exists.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str                  # how stages name it (several names may share a flag: model, models)
    flag: str                  # --flag
    env: str = ""              # make exports it; the default comes from this variable
    default: str = ""
    kind: str = "str"          # str | int | flag | list
    make: str = ""             # what the generated make recipe passes, e.g. $(BK)
    help: str = ""

OPTIONS = {o.name: o for o in (
    Option("model", "--model", kind="str", help="model (config) name"),
    Option("models", "--model", kind="list", make="$(MODEL)", help="model names (default: every model)"),
    Option("backend", "--backend", env="BACKEND", default="auto", make="$(BK)", help="auto, or a backend of the registry"),
    Option("weights", "--weights", env="WEIGHTS", help="checkpoint file or folder"),
    Option("input", "--input", env="INPUT", help="input file or folder"),
    Option("device", "--device", env="DEVICE", default="0", kind="int", help="NPU device id"),
    Option("soc", "--soc", env="SOC", help="ATC --soc_version"),
    Option("engine", "--engine", env="ENGINE", default="local", help="local or ray"),
    Option("workers", "--workers", env="WORKERS", help="Ray actor pool size"),
    Option("batch_size", "--batch-size", default="0", kind="int", help="batch size (default: the config's)"),
    Option("fail_on_bad", "--fail-on-bad", env="FAIL_ON_BAD", kind="flag", help="exit non-zero when any input file fails"),
    Option("count", "--count", env="COUNT", default="1000", kind="int", make="$(COUNT)", help="generated inputs"),
    Option("small", "--small", default="0", kind="int", help="size of the first run (default: count / 10)"),
    Option("seed", "--seed", default="777", kind="int", help="seed of the generated inputs"),
    Option("soak", "--soak", env="SOAK", default="0", kind="int", help="extra inputs of a soak run"),
    Option("max_samples", "--max-samples", env="PRECISION_SAMPLES", default="2", kind="int", make="$(PRECISION_SAMPLES)",
           help="saved inputs the doctor compares"),
    Option("heavy", "--heavy", env="HEAVY", kind="flag", help="the config's bench.heavy set (long clips, big sizes)"),
    Option("onnx", "--onnx", help="check another ONNX file (default: build/<model>/model.sim.onnx)"),
    Option("publish", "--publish", env="PUBLISH", kind="flag", help="add the model-card section"),
    Option("zoo_list", "--list", env="ZOO_LIST", default="configs/zoo.yaml", make="$(ZOO_LIST)", help="the zoo list"),
    Option("only", "--only", env="ZOO", kind="list", help="zoo entries, timm names, torchvision:<name> or timm:<name> to (re)run"),
)}


@dataclass(frozen=True)
class Stage:
    name: str                  # the make target
    module: str                # python -m <module>; its main() parses these options and calls one library function
    what: str                  # one line for `make help`
    options: tuple[str, ...]
    result: str = ""           # the file it writes in results/<model>/ ("" when it writes none there)
    needs: tuple[str, ...] = ()    # stages whose files it reads
    code: tuple[str, ...] = ()     # source folders whose *.py it runs (make reruns it when they change)
    kind: str = "file"         # file: an incremental per-model file target; measure: runs every time, per model;
                               # tool: runs once for the MODEL list (or none)
    slice: bool = False        # reruns when a config key it read changes (build/<m>/cfg/<stage>.json)
    stamps: tuple[str, ...] = ()   # other stamps it depends on: weights, input, plan
    family: bool = False       # runs the family's code (models/<family>/)
    per_backend: bool = False  # its done-file is named by BACKEND
    zoo: bool = False          # make zoo runs it for every model
    variant: str = ""          # a make variable that names another done-file (bench: $(HV) for HEAVY=1)


STAGES: tuple[Stage, ...] = (
    Stage("export", "export", "PyTorch -> ONNX -> onnxsim, parity-checked", ("model", "weights"),
          result="export.json", code=("pipeline", "export"), slice=True, stamps=("weights",), family=True, zoo=True),
    Stage("preflight", "convert.preflight", "offline ATC compatibility check of the ONNX", ("model", "onnx", "soc"),
          result="preflight.json", needs=("export",), code=("convert",), kind="measure", zoo=True),
    Stage("om", "convert", "the deployable targets BACKEND needs here (.om via ATC, else ort-fp16)",
          ("model", "backend", "soc"), needs=("export",), code=("convert", "convert/backends"), slice=True,
          stamps=("plan",), per_backend=True, zoo=True),
    Stage("infer", "run.infer", "run the target on INPUT or generated samples", ("model", "backend", "input",
          "device", "batch_size", "engine", "workers", "fail_on_bad"), result="inference_result.json",
          needs=("om",), code=("run", "convert/backends"), slice=True, stamps=("input",), family=True, per_backend=True),
    Stage("compare", "compare", "target vs the onnxruntime CPU fp32 reference, with the gate",
          ("model", "backend", "engine", "workers"), result="accuracy_eval.json", needs=("infer",),
          code=("compare", "convert/backends"), slice=True, family=True, per_backend=True, zoo=True),
    Stage("precision", "precision", "where fp16 loses precision, and the keep_dtype fix",
          ("model", "max_samples"), result="precision_report.json", needs=("export",), code=("precision",),
          kind="measure", zoo=True),
    Stage("bench", "run.bench", "latency/throughput per batch size + PyTorch eager (HEAVY=1: bench.heavy too)",
          ("model", "backend", "device", "heavy"),
          result="performance_eval.json", needs=("om",), code=("run", "convert/backends"), slice=True, family=True,
          per_backend=True, zoo=True, variant="$(HV)"),
    Stage("dataset", "dataset", "infer + compare over COUNT generated inputs, memory and speed",
          ("model", "backend", "count", "small", "seed", "engine", "soak"), result="dataset_run.json",
          needs=("bench",), code=("dataset",), kind="measure"),
    Stage("accuracy", "dataset.accuracy", "top-1/top-5 on a labelled INPUT set: PyTorch eager, ONNX fp32, the target",
          ("model", "backend", "input", "device", "fail_on_bad"), result="labeled_accuracy.json", needs=("om",),
          code=("dataset",), kind="measure", family=True),
    Stage("doctor", "convert.doctor", "what Ascend software is installed, and what each stage does here",
          ("models", "backend"), kind="tool"),
    Stage("report", "report", "REPORT.md per model and combined, plots (PUBLISH=1: model card)",
          ("models", "publish"), kind="tool"),
    Stage("zoo", "zoo", "sweep ZOO_LIST (or ZOO=<names>) through every zoo stage -> results/zoo/ZOO.md",
          ("zoo_list", "only", "backend"), kind="tool"),
)
BY_NAME = {s.name: s for s in STAGES}
SLICE_STAGES = tuple(s.name for s in STAGES if s.slice)
ZOO_STAGES = tuple(s.name for s in STAGES if s.zoo)
RESULT_FILES = tuple(s.result for s in STAGES if s.result)


def get(name: str) -> Stage:
    if name not in BY_NAME:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(BY_NAME)}")
    return BY_NAME[name]


# ---- the stage entry points: arguments in, one library call, results out ------------------------------------
def parser(name: str) -> argparse.ArgumentParser:
    st = get(name)
    ap = argparse.ArgumentParser(prog=f"python -m {st.module}", description=st.what)
    for dest in st.options:
        o = OPTIONS[dest]
        env = os.environ.get(o.env, "") if o.env else ""
        value = env or o.default
        if o.kind == "flag":
            ap.add_argument(o.flag, dest=dest, action="store_true", default=value == "1", help=o.help)
        elif o.kind == "list":
            ap.add_argument(o.flag, dest=dest, nargs="*", default=value.split() if value else None, help=o.help)
        elif dest == "model":
            ap.add_argument(o.flag, dest=dest, required=True, help=o.help)
        else:
            ap.add_argument(o.flag, dest=dest, type=int if o.kind == "int" else str,
                            default=int(value or 0) if o.kind == "int" else value, help=o.help)
    return ap


def parse(name: str, argv=None) -> dict:
    return vars(parser(name).parse_args(argv))


def argv(name: str, **opts) -> list[str]:
    """The command line of a stage (for tools that run a stage in its own process: memory, time limits)."""
    st = get(name)
    cmd = [sys.executable, "-m", st.module]
    for dest, value in opts.items():
        if dest not in st.options:
            raise KeyError(f"stage {name} has no option {dest!r}; it takes {', '.join(st.options)}")
        o = OPTIONS[dest]
        if o.kind == "flag":
            cmd += [o.flag] if value else []
        elif o.kind == "list":
            cmd += [o.flag, *map(str, value)]
        else:
            cmd += [o.flag, str(value)]
    return cmd


# ---- the Makefile's stage rules --------------------------------------------------------------------------------
def done_file(st: Stage) -> str:
    """The file a per-model stage's make rule produces (export: the simplified ONNX)."""
    if st.name == "export":
        return "$(B)/%/model.sim.onnx"
    return f"$(B)/%/{st.name}-$(BK){st.variant}.done" if st.per_backend else f"$(B)/%/{st.name}{st.variant}.done"


def _for_model(path: str, var: str = "$(m)") -> str:
    return path.replace("%", var)


def _flags(st: Stage, model: str) -> str:
    out = []
    for dest in st.options:
        o = OPTIONS[dest]
        if dest == "model":
            out.append(f"--model {model}")
        elif o.make:
            out.append(f"{o.flag} {o.make}")
    return " ".join(out)


def _rule(st: Stage) -> list[str]:
    deps = [done_file(BY_NAME[n]) for n in st.needs]
    deps += [f"$(B)/%/cfg/{st.name}.json"] if st.slice else []
    deps += [f"$(B)/%/{s}.stamp" if s != "plan" else "$(B)/%/plan-$(BK).stamp" for s in st.stamps]
    deps += [f"$(wildcard {' '.join(c + '/*.py' for c in st.code)})"]
    deps += ["$$(call FAMILY_SRC,$$*)"] if st.family else []
    head = f"{done_file(st)}: {' '.join(deps)} | $(ENV_STAMP)"
    recipe = [f"\t$(PY) -m {st.module} {_flags(st, '$*')}"]
    if st.name != "export":
        recipe.append("\t@touch $@")
    return [head, *recipe]


def makefile() -> str:
    """The stage rules the Makefile includes (build/stages.mk)."""
    out = ["# Generated by `python3 -m pipeline.stages makefile` from pipeline/stages.py: do not edit.", ""]
    out.append("STAGE_NAMES := " + " ".join(s.name for s in STAGES))
    out.append("SLICE_STAGES := " + " ".join(SLICE_STAGES))
    out.append(".PHONY: " + " ".join(s.name for s in STAGES))
    out.append("")
    for st in STAGES:
        if st.kind == "file":
            if st.name == "export":
                out += ["ifeq ($(ENV),host)",
                        "# An Ascend host has no torch: the exported model comes from the workstation's build folder",
                        f"{done_file(st)}:",
                        "\t@test -f $@ || { echo \"ERROR | $@ is missing: run 'make export' on a workstation and copy "
                        "build/$*/ here (README: Running on an Ascend host)\" >&2; exit 2; }",
                        "else", *_rule(st), "endif"]
            else:
                out += _rule(st)
            out.append(f"{st.name}: $(foreach m,$(MODEL),{_for_model(done_file(st))})")
        elif st.kind == "measure":
            deps = " ".join(f"$(foreach m,$(MODEL),{_for_model(done_file(BY_NAME[n]))})" for n in st.needs)
            out.append(f"{st.name}: {deps} | $(ENV_STAMP)")
            out.append(f"\t@rc=0; for m in $(MODEL); do $(PY) -m {st.module} {_flags(st, '$$m')} || rc=1; done; "
                       "exit $$rc")
        else:
            extra = {"report": "$(if $(PUBLISH),--publish,)", "zoo": "$(if $(ZOO),--only $(ZOO),)"}.get(st.name, "")
            out.append(f"{st.name}: | $(ENV_STAMP)")
            out.append(f"\t$(PY) -m {st.module} {_flags(st, '')} {extra}".rstrip())
        out.append("")
    return "\n".join(out)


def help_lines() -> list[str]:
    return [f"  make {s.name:<10} {s.what}" + (f" -> results/<model>/{s.result}" if s.result else "") for s in STAGES]


def main(args=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m pipeline.stages")
    ap.add_argument("command", choices=("makefile", "names", "help"))
    a = ap.parse_args(args)
    if a.command == "makefile":
        sys.stdout.write(makefile())
    elif a.command == "names":
        print(" ".join(s.name for s in STAGES))
    else:
        print("\n".join(help_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
