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


def plot_episodes(
    learner, meta_params, inner_steps: int, path: Path, sampler, episodes: int = 2
) -> None:
    """Test episodes as image grids: per class a row, its support images then some queries.

    Each query is titled with the label the learner predicts after ``inner_steps`` of
    adaptation on the support set, green when right and red when wrong.
    """
    import jax
    import numpy as np

    from metarun.algos.base import adapt_and_predict

    max_queries = 4
    fig_rows = []
    for key in jax.random.split(jax.random.PRNGKey(0), episodes):
        episode = sampler(key)
        logits = adapt_and_predict(
            learner,
            meta_params,
            episode.support_x,
            episode.support_y,
            episode.query_x,
            inner_steps,
            episode.ways,
        )
        fig_rows.append(jax.device_get((episode, np.argmax(logits, axis=-1))))

    episode, _ = fig_rows[0]
    ways = episode.ways
    shots, queries = len(episode.support_y) // ways, len(episode.query_y) // ways
    shown = min(queries, max_queries)
    cols = shots + shown
    fig, axes = plt.subplots(
        episodes * ways, cols, figsize=(1.1 * cols, 1.1 * episodes * ways), squeeze=False
    )
    for e, (episode, predicted) in enumerate(fig_rows):
        for label in range(ways):
            row = axes[e * ways + label]
            images = [episode.support_x[label * shots + s] for s in range(shots)]
            images += [episode.query_x[label * queries + q] for q in range(shown)]
            for col, (ax, image) in enumerate(zip(row, images, strict=True)):
                ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
                ax.set_xticks([]), ax.set_yticks([])
                if col < shots:
                    ax.set_title(f"support {label}" if col == 0 else "", fontsize=7)
                    for spine in ax.spines.values():
                        spine.set_color("tab:blue"), spine.set_linewidth(2)
                else:
                    guess = int(predicted[label * queries + col - shots])
                    color = "tab:green" if guess == label else "tab:red"
                    ax.set_title(f"→ {guess}", fontsize=7, color=color)
    fig.suptitle(
        f"{episodes} test episodes: support (blue) and queries with the prediction"
        + (
            f" after {inner_steps} inner step{'s' if inner_steps != 1 else ''}"
            if inner_steps
            else ""
        ),
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
