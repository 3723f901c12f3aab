"""Figures. Training curves of one run here; the study figures live with the study tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from . import params  # noqa: E402


def save(fig, out: Path) -> None:
    """Write a figure atomically (PNG, plus PDF beside it when out ends in .png)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in [out] + ([out.with_suffix(".pdf")] if out.suffix == ".png" else []):
        with params.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix[1:])
    plt.close(fig)


def curves(history_csv: Path, out: Path, title: str = "") -> None:
    """Loss, contrastive accuracy / train accuracy and learning rate against epoch."""
    h = pd.read_csv(history_csv)
    cols = [c for c in ("loss", "contrastive_acc", "train_acc", "entropy", "lr") if c in h and h[c].abs().sum() > 0]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3))
    labels = {"loss": "training loss", "contrastive_acc": "contrastive accuracy (top-1 of 2N-1)",
              "train_acc": "training accuracy", "entropy": "entropy of softmax (nats)", "lr": "learning rate"}
    for ax, col in zip(axes, cols):
        ax.plot(h["epoch"], h[col], marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(labels[col])
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"training curves: {Path(history_csv).parent.name}")
    fig.tight_layout()
    save(fig, out)
