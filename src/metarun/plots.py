"""Figures written to the run dir (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curves(history: list[dict], metric: str, path: Path) -> None:
    """Meta-training query loss and, where measured, the validation metric, per step."""
    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(steps, [r["loss"] for r in history])
    axes[0].set(xlabel="meta-training step", ylabel="query loss (train tasks)", yscale="log")
    val = [(r["step"], r[f"val_{metric}"]) for r in history if f"val_{metric}" in r]
    if val:
        axes[1].plot([s for s, _ in val], [v for _, v in val], marker="o")
    axes[1].set(xlabel="meta-training step", ylabel=f"validation {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
