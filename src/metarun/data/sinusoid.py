"""Sinusoid regression (MAML §5.1), generated on the device.

A task is y = A sin(x − φ) with amplitude A ~ U[0.1, 5.0] and phase φ ~ U[0, π];
inputs x ~ U[−5, 5]. Support and query points are drawn independently from the
same task, so the train/val/test splits are the same distribution seen through
different random keys.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metarun.data import sources, specs
from metarun.types import REGRESSION, DataSpec, Episode, PRNGKey, TaskSource


class Sinusoid(NamedTuple):
    amplitude: jax.Array
    phase: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.amplitude * jnp.sin(x - self.phase)


def sample_task(key: PRNGKey, cfg) -> Sinusoid:
    k_amp, k_phase = jax.random.split(key)
    amplitude = jax.random.uniform(k_amp, (), minval=cfg.amplitude_min, maxval=cfg.amplitude_max)
    phase = jax.random.uniform(k_phase, (), minval=cfg.phase_min, maxval=cfg.phase_max)
    return Sinusoid(amplitude, phase)


def sample_points(key: PRNGKey, task: Sinusoid, n: int, cfg) -> tuple[jax.Array, jax.Array]:
    x = jax.random.uniform(key, (n, 1), minval=cfg.x_min, maxval=cfg.x_max)
    return x, task(x)


def episode(key: PRNGKey, cfg) -> Episode:
    k_task, k_support, k_query = jax.random.split(key, 3)
    task = sample_task(k_task, cfg)
    support_x, support_y = sample_points(k_support, task, cfg.shots, cfg)
    query_x, query_y = sample_points(k_query, task, cfg.queries, cfg)
    return Episode(support_x, support_y, query_x, query_y)


def plot(learner, meta_params, inner_steps: int, path, cfg, key: PRNGKey | None = None) -> None:
    """MAML Figure 2: the true curve, the support points, predictions after 0..k steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metarun.algos.base import adapt_and_predict

    key = jax.random.PRNGKey(0) if key is None else key
    k_task, k_support = jax.random.split(key)
    task = sample_task(k_task, cfg)
    support_x, support_y = sample_points(k_support, task, cfg.shots, cfg)
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


@specs.register("sinusoid")
def spec(cfg) -> DataSpec:
    return DataSpec(REGRESSION, output_dim=1, input_shape=(1,), preprocess=_as_points)


def _as_points(x) -> np.ndarray:
    """Inputs ``x`` as ``float32 [n, 1]`` (a flat list of n points is accepted)."""
    return np.asarray(x, np.float32).reshape(-1, 1)


@sources.register("sinusoid")
def make(cfg) -> TaskSource:
    sampler = jax.tree_util.Partial(partial(episode, cfg=cfg))  # no arrays: generated on the fly
    return TaskSource(
        samplers={"train": sampler, "val": sampler, "test": sampler},
        objective=REGRESSION,
        output_dim=1,
        plot=partial(plot, cfg=cfg),
    )
