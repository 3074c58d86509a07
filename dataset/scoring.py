"""The three runs of `make accuracy` over one labelled set: PyTorch eager, the fp32 ONNX reference, the target.

Every file is prepared once with the family's `prepare` (exactly as `make infer` does, bad files caught per file)
and the same arrays go to the three runs, in batches of infer.batch_size run by the one batching rule
(pipeline.batching.run_rows: built sizes, padding). Only the top-k class indices of each file are kept, so memory
stays flat over any number of files. A stateful family (state_carry) is scored one file per device run, never
stacked or padded (pipeline.batching.run_sequence: its one item runs with the initial state prepare gave).
"""
from __future__ import annotations

import numpy as np

from pipeline.batching import feed_names, run_rows, run_sequence, signature, stack
from pipeline.classify import top_k
from pipeline.errors import ConfigError, PipelineError
from pipeline.progress import Progress
from run.engine import prepare_source
from run.infer import prefetch

RUNS = ("torch", "onnx", "target")          # the columns, in the order the tables show them
NO_TORCH = "not run: no torch on this host"


def score_output(cfg: dict) -> tuple[str, int]:
    """The output holding the class scores, [batch, classes], and the number of classes."""
    heads = [t for t in cfg["outputs"] if len(t["shape"]) == 2 and isinstance(t["shape"][1], int)]
    if len(heads) != 1:
        raise ConfigError(f"{cfg['_source']}: make accuracy needs exactly one output of shape [batch, classes]; "
                          f"the outputs are {[(t['name'], t['shape']) for t in cfg['outputs']]}")
    return heads[0]["name"], heads[0]["shape"][1]


def torch_module(cfg: dict, family, meta: dict):
    """(module, description) of PyTorch eager with the weights `make export` used (build/<m>/weights.json), or
    (None, why not) where this host cannot run it."""
    try:
        import torch
    except ImportError:
        return None, NO_TORCH
    if family.source_onnx(cfg) is not None:
        return None, "not run: the model comes as an ONNX file, there is no PyTorch model"
    from export.weights import build_model, resolve_weights

    weights = None if meta.get("kind") == "stand-in" else resolve_weights(cfg, meta["path"], family)
    try:
        model, prov = build_model(cfg, family, weights)
    except ImportError as exc:                   # the family's torch side needs a package this host lacks
        return None, f"not run: {exc.name or exc} is not installed on this host"
    if (prov.get("sha256"), prov.get("seed")) != (meta.get("sha256"), meta.get("seed")):
        raise PipelineError(f"the weights differ from the ones `make export` used (build/{cfg['name']}/weights.json); "
                            f"run `make export MODEL={cfg['name']}` again so that all three runs use the same weights")
    return family.export_module(model, cfg), f"PyTorch {torch.__version__} eager on the CPU"


class Runs:
    """The opened runners (target, reference) and the torch module (or None); top-k indices of a batch per run."""

    def __init__(self, cfg: dict, target, reference, module, output: str, k: int, carry: dict | None = None):
        self.cfg, self.target, self.reference, self.module = cfg, target, reference, module
        self.output, self.k, self.carry = output, k, carry or {}

    def run(self, runner, feeds: dict) -> np.ndarray:
        if self.carry:              # one file (one item) per device run, its state as prepared
            return run_sequence(runner, [feeds], self.carry, feed_names(self.cfg))[0][1][self.output]
        return run_rows(runner, feeds, self.cfg["infer"]["pad"])[0][self.output]

    def batch(self, feeds: dict) -> dict[str, np.ndarray]:
        from convert.aipp import network_feeds
        from export.stage import torch_outputs

        scores = {"onnx": self.run(self.reference, feeds), "target": self.run(self.target, feeds)}
        if self.module is not None:
            scores["torch"] = torch_outputs(self.module, network_feeds(self.cfg, feeds), self.cfg)[self.output]
        return {run: top_k(s, self.k) for run, s in scores.items()}


def score_set(cfg: dict, family, lset, runs: Runs, input_meta) -> tuple[list[dict], list[dict]]:
    """Per-file predictions {file, label, torch, onnx, target} in set order, and the files that failed."""
    names, size = feed_names(cfg), 1 if runs.carry else cfg["infer"]["batch_size"]
    jobs = ((i,) for i in range(len(lset.files)))
    prepared = prefetch(lambda i: prepare_source(family, cfg, input_meta, i, lset.files[i]), jobs, max(2, 2 * size))
    progress = Progress(len(lset.files), "accuracy")
    rows, failed, groups = [], [], {}
    for p in prepared:
        progress.update()
        if "error" in p:
            failed.append({"file": lset.rel(lset.files[p["index"]]), "error": p["error"]})
            continue
        if len(p["items"]) != 1:
            raise PipelineError(f"{p['source']}: the {cfg['family']} family gave {len(p['items'])} input items; "
                                "make accuracy scores one item per file")
        group = groups.setdefault(signature(p["items"][0], names), [])
        group.append(p)
        if len(group) == size:
            rows += _run_group(runs, group, lset, names)
            group.clear()
    for group in groups.values():
        rows += _run_group(runs, group, lset, names) if group else []
    progress.close()
    rows.sort(key=lambda r: r["index"])
    return [{k: v for k, v in r.items() if k != "index"} for r in rows], failed


def _run_group(runs: Runs, group: list[dict], lset, names: list[str]) -> list[dict]:
    tops = runs.batch(stack([p["items"][0] for p in group], names))
    return [{"index": p["index"], "file": lset.rel(lset.files[p["index"]]), "label": lset.labels[p["index"]],
             **{run: tops[run][j].tolist() if run in tops else None for run in RUNS}}
            for j, p in enumerate(group)]


def column(rows: list[dict], run: str) -> dict:
    """top-1 / top-k of one run over the scored files (counts and percent)."""
    n = len(rows)
    top1 = sum(r[run][0] == r["label"] for r in rows)
    topk = sum(r["label"] in r[run] for r in rows)
    return {"images": n, "top1_count": top1, "top5_count": topk, "top1_pct": 100.0 * top1 / n,
            "top5_pct": 100.0 * topk / n}
