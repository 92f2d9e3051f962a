"""Every figure metarun draws (matplotlib, headless), and which of them a run writes.

The trainer asks for a run's figures through :func:`plot_run`; the baselines experiment
(metarun/baselines.py) draws its curves with :func:`plot_optimizer_curves`. Datasets and
algorithms draw nothing: the figures sit above them and call them (sampling a sinusoid,
adapting a learner), never the reverse.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from metarun import algos  # noqa: E402
from metarun.algos.base import adapt_and_predict  # noqa: E402
from metarun.data import sinusoid  # noqa: E402

LEARNING_CURVES = "learning_curves.png"
ADAPTATION = "adaptation.png"


def plot_run(exp, meta_params, history: list[dict], run_dir: Path) -> None:
    """The figures of a finished run (``exp``: its ``experiment.Experiment``), in ``run_dir``:
    :data:`LEARNING_CURVES` when steps were logged, and :data:`ADAPTATION` for a dataset that
    has one: the sinusoid (:func:`plot_sinusoid`) and the image datasets (classification,
    :func:`plot_episodes`), adapted by the evaluation learner as in the meta-test."""
    config, objective = exp.config, exp.source.objective
    if history:
        plot_learning_curves(history, objective.metric, run_dir / LEARNING_CURVES)
    steps = algos.eval_steps(exp.eval_learner, config)
    if config.data.name == "sinusoid":
        plot_sinusoid(exp.eval_learner, meta_params, steps, run_dir / ADAPTATION, config.data)
    elif objective.task == "classification":
        sampler = exp.source.samplers["test"]
        plot_episodes(exp.eval_learner, meta_params, steps, run_dir / ADAPTATION, sampler)


def _thousands(step: float, _position=None) -> str:
    """A step count as 500, 10k, 2.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(step) >= scale:
            return f"{step / scale:g}{suffix}"
    return f"{step:g}"


def _step_axis(ax) -> None:
    """At most 6 ticks at round whole steps (1, 2 or 5 times a power of ten), written 20k: the
    default puts up to seven five-digit labels under each of two side-by-side panels, where they
    run into each other, a ×1e6 offset past a million, and fractional steps on a short run."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10], integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_thousands))


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
    for ax in axes:
        _step_axis(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sinusoid(learner, meta_params, inner_steps: int, path: Path, cfg, key=None) -> None:
    """MAML Figure 2: the true curve, the support points, predictions after 0..k steps
    (``cfg``: the sinusoid's data config)."""
    key = jax.random.PRNGKey(0) if key is None else key
    k_task, k_support = jax.random.split(key)
    task = sinusoid.sample_task(k_task, cfg)
    support_x, support_y = sinusoid.sample_points(k_support, task, cfg.shots, cfg)
    grid = jnp.linspace(cfg.x_min, cfg.x_max, 200)[:, None]
    steps = sorted({s for s in (0, 1, 5, 10) if s <= inner_steps} | {inner_steps})

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, task(grid), color="black", label="ground truth")
    for s in steps:
        pred = adapt_and_predict(learner, meta_params, support_x, support_y, grid, s, 0)
        style = ":" if s == 0 else "--"
        label = "pre-update" if s == 0 else f"after {s} step{'s' if s > 1 else ''}"
        ax.plot(grid, np.asarray(pred), style, label=label)
    ax.scatter(
        support_x, support_y, color="red", marker="^", zorder=3, label=f"{cfg.shots} support points"
    )
    ax.set(xlabel="x", ylabel="y", title="Sinusoid: adaptation on one test task")
    ax.legend(fontsize=8)
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


def plot_optimizer_curves(curves: dict[str, np.ndarray], lrs: dict[str, float], path: Path) -> None:
    """Mean loss against optimizee step, log scale (the paper's Figure 4, quadratics):
    ``curves`` maps ``learned`` and each baseline to ``[tasks, T + 1]``, ``lrs`` each baseline
    to its learning rate (metarun/baselines.py)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        label = "LSTM (learned)" if name == "learned" else f"{name} (lr {lrs[name]:g})"
        style = "-" if name == "learned" else "--"
        ax.plot(np.arange(values.shape[1]), values.mean(axis=0), style, label=label)
    ax.set(
        xlabel="step",
        ylabel="mean loss (held-out quadratics)",
        yscale="log",
        title="Quadratics: learned optimizer vs hand-designed",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
