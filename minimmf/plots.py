"""Loss curves from ``metrics.jsonl``: train and validation loss against tokens seen and against
wall-clock, and the fraction of ternary weight codes that are zero.

Taught in chapter 8 (``chapters/08-training.md``).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from .fileio import atomic_write_bytes


def read_metrics(path) -> list[dict]:
    """The evaluation records of a run, one dict per line of metrics.jsonl."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_metrics(metrics_path, png_path) -> Path:
    """Write a three-panel PNG (atomically) and return its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics_path)
    if not recs:
        raise ValueError(f"{metrics_path} holds no evaluations yet; nothing to plot")
    tok = [r["tokens"] for r in recs]
    sec = [r["seconds"] for r in recs]
    tr = [r["train_loss"] for r in recs]
    va = [r["val_loss"] for r in recs]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for a, x, label in ((ax[0], tok, "tokens seen"), (ax[1], sec, "wall-clock seconds")):
        a.plot(x, tr, "o-", ms=3, label="train (mean since last eval)")
        a.plot(x, va, "o-", ms=3, label="validation")
        a.set_xlabel(label)
        a.set_ylabel("loss, nats/token")
        a.grid(alpha=0.3)
        a.legend()
    ax[2].plot(tok, [r.get("ternary_zero_fraction", float("nan")) for r in recs], "o-", ms=3)
    ax[2].set_xlabel("tokens seen")
    ax[2].set_ylabel("fraction of ternary codes = 0")
    ax[2].grid(alpha=0.3)
    last = recs[-1]
    fig.suptitle(f"step {last['step']}: validation {last['val_loss']:.3f} nats/token, "
                 f"{last['val_bpc']:.3f} bits/char")
    fig.tight_layout()
    png_path = Path(png_path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
    return png_path
