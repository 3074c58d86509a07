"""PNG plots beside the report tables (matplotlib, Agg). Each returns the file written, or None."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.plotting import pyplot, save_png


def latency_throughput(perf: dict | None, path: Path) -> Path | None:
    rows = (perf or {}).get("results") or []
    if not rows:
        return None
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    groups: dict[str, list] = {}
    for r in rows:
        shape = next(iter(r["shapes"].values()))
        groups.setdefault("×".join(map(str, shape[1:])), []).append(r)
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["batch_size"])
        b = [r["batch_size"] for r in rs]
        a1.plot(b, [r["latency_ms"]["mean"] for r in rs], "o-", label=f"{perf['backend']} {key}")
        a2.plot(b, [r["throughput_samples_per_s"] for r in rs], "o-", label=f"{perf['backend']} {key}")
        if all("torch_eager" in r for r in rs):
            a2.plot(b, [r["torch_eager"]["throughput_samples_per_s"] for r in rs], "x--", label=f"PyTorch eager {key}")
    a1.set(xlabel="batch size", ylabel="mean latency (ms)", title="Latency")
    a2.set(xlabel="batch size", ylabel="samples / s (wall clock)", title="Throughput")
    for a in (a1, a2):
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def error_distribution(acc: dict | None, path: Path) -> Path | None:
    outs = (acc or {}).get("outputs") or {}
    if not outs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(outs), figsize=(4.5 * len(outs), 3.4), squeeze=False)
    for ax, (name, o) in zip(axes[0], outs.items()):
        vals = [max(s["rel_l2"], 1e-12) for s in o["samples"]]
        ax.scatter(range(len(vals)), vals, s=10)
        ax.axhline(o["summary"]["gate"]["max_rel_l2"], color="red", ls="--", lw=1, label="gate")
        ax.set_yscale("log")
        ax.set(title=name, xlabel="sample", ylabel="relative L2 vs fp32 reference")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def audio_heatmap(target_frames: np.ndarray, ref_frames: np.ndarray, labels: list[str], events: list[dict],
                  hop_s: float, path: Path, k: int = 10) -> Path:
    plt = pyplot()
    top = np.argsort(-ref_frames.max(axis=0))[:k]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    extent = [0, ref_frames.shape[0] * hop_s, k - 0.5, -0.5]
    for ax, data, title in ((axes[0], ref_frames, "reference (onnxruntime CPU fp32)"), (axes[1], target_frames, "target")):
        ax.imshow(data[:, top].T, aspect="auto", extent=extent, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
        ax.set(title=title, xlabel="time (s)")
        for ev in events:
            if ev["index"] in set(top.tolist()):
                row = int(np.where(top == ev["index"])[0][0])
                ax.plot([ev["onset_s"], ev["offset_s"]], [row, row], color="cyan", lw=2)
    axes[0].set_yticks(range(k))
    axes[0].set_yticklabels([labels[i][:28] for i in top], fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def embedding_difference(target: np.ndarray, ref: np.ndarray, path: Path, what: str = "") -> Path:
    """target − reference per dimension of one item's raw embedding output; `what` names that item in the title
    (e.g. "output embedding of item 1 of 3 of cat.jpg": a file of several items shows its first, not a mean)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(target.ravel() - ref.ravel(), lw=0.6)
    title = "embedding difference per dimension (target − reference)" + (f"\n{what}" if what else "")
    ax.set(title=title, xlabel="dimension", ylabel="difference")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)
