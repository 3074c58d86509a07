"""Fingerprint files for make: `python -m pipeline.stamp {weights|input|om} --model M`.

Writes build/<model>/<kind>.stamp only when the fingerprint changes, so make reruns exactly the stages
that depend on the weights, the INPUT files or the ATC settings given on the command line.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .atomic import write_text
from .config import load_config
from .errors import cli
from .paths import ModelPaths, ROOT


def fingerprint(path: Path) -> list[str]:
    """(path, size, mtime) of a file or of every file below a folder; cheap even for thousands of files."""
    if not path.exists():
        return [f"{path} missing"]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    lines = []
    for f in files:
        st = f.stat()
        lines.append(f"{f} {st.st_size} {st.st_mtime_ns}")
    return lines


# which config sections each stage reads; a stage reruns only when one of its sections changes
STAGE_SECTIONS = {
    "export": ("family", "model", "weights", "inputs", "outputs", "export", "simplify", "preprocess", "onnxruntime"),
    "om": ("atc", "fp16", "inputs"),
    "infer": ("preprocess", "postprocess", "infer", "onnxruntime", "inputs", "outputs"),
    "compare": ("compare", "infer"),
    "bench": ("bench", "onnxruntime"),
}


def write_section_stamps(cfg: dict, paths: ModelPaths) -> None:
    import json

    for stage, sections in STAGE_SECTIONS.items():
        text = json.dumps({s: cfg[s] for s in sections}, sort_keys=True, indent=1) + "\n"
        out = paths.build / "cfg" / f"{stage}.json"
        if not out.exists() or out.read_text() != text:
            write_text(out, text)


@cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.stamp")
    ap.add_argument("kind", choices=("weights", "input", "om", "config"))
    ap.add_argument("--model", required=True)
    args = ap.parse_args(argv)
    cfg = load_config(args.model)
    paths = ModelPaths(cfg["name"])
    if args.kind == "weights":
        arg = os.environ.get("WEIGHTS", "")
        default = ROOT / cfg["weights"]["dir"] if cfg["weights"]["dir"] else None
        target = Path(arg).resolve() if arg else default
        lines = [f"WEIGHTS={arg}"] + (fingerprint(target) if target else ["stand-in"])
    elif args.kind == "input":
        arg = os.environ.get("INPUT", "")
        lines = [f"INPUT={arg}"] + (fingerprint(Path(arg).resolve()) if arg else ["generated"])
    elif args.kind == "om":
        lines = [f"SOC={os.environ.get('SOC', '')}"]
    else:
        write_section_stamps(cfg, paths)
        return 0
    text = "\n".join(lines) + "\n"
    out = paths.build / f"{args.kind}.stamp"
    if not out.exists() or out.read_text() != text:
        write_text(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
