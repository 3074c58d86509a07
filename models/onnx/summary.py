"""Outputs of any ONNX model, summarised generically: per output shape, dtype, range, mean, std, finiteness; the
top-k of a [batch, N] score output when postprocess.top_k > 0."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import classify

from pipeline.errors import ConfigError
from pipeline.paths import ROOT


def stats(a: np.ndarray) -> dict:
    finite = np.isfinite(a) if a.dtype.kind == "f" else np.ones(a.shape, bool)
    v = a[finite].astype(np.float64)
    figures = {k: round(float(f(v)), 6) if v.size else None
               for k, f in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std))}
    return {"shape": list(a.shape), "dtype": str(a.dtype), "finite": bool(finite.all()), **figures}


def score_output(cfg: dict) -> dict | None:
    """The output top-k reads: postprocess.output, else the first 2-D output."""
    want = cfg["postprocess"]["output"]
    return next((t for t in cfg["outputs"] if (t["name"] == want if want else len(t["shape"]) == 2)), None)


def read_labels(cfg: dict, where: str | None = None) -> list[str] | None:
    post = cfg["postprocess"]
    if post["labels"]:
        return list(post["labels"])
    if not post["labels_file"]:
        return None
    path = Path(post["labels_file"]) if Path(post["labels_file"]).is_absolute() else ROOT / post["labels_file"]
    if not path.is_file():
        raise ConfigError(f"{where or cfg.get('_source', cfg['name'])}: postprocess.labels_file {post['labels_file']} "
                          "does not exist; give a text file with one class name a line")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def activate(scores: np.ndarray, how: str) -> np.ndarray:
    x = scores.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):     # a row with Inf gives NaN scores, shown as they are
        if how == "softmax":
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-x)) if how == "sigmoid" else x


def top_k(row: np.ndarray, k: int, labels: list[str] | None) -> list[dict]:
    idx = classify.top_k(row, k)
    return [{"index": int(i), "label": labels[i] if labels else f"class_{i}", "score": round(float(row[i]), 6)}
            for i in idx]


def postprocess(cfg: dict, source: Path, items: list[dict], meta: dict):
    arrays = {t["name"]: np.concatenate([np.asarray(it[t["name"]]) for it in items]) for t in cfg["outputs"]}
    summary = {"rows": len(items), "outputs": {n: stats(a) for n, a in arrays.items()}}
    post, scores = cfg["postprocess"], score_output(cfg)
    if post["top_k"] > 0 and scores is not None:
        rows = activate(arrays[scores["name"]].reshape(len(items), -1), post["activation"])
        labels = read_labels(cfg)
        summary["top_k"] = top_k(rows[0], post["top_k"], labels)
        if len(rows) > 1:
            summary["top_k_per_row"] = [top_k(r, post["top_k"], labels) for r in rows]
    return summary, arrays
