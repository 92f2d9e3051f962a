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


@specs.register("sinusoid")
def spec(cfg) -> DataSpec:
    return DataSpec(REGRESSION, output_dim=1, input_shape=(1,), preprocess=_as_points)


def _as_points(x) -> np.ndarray:
    """Inputs ``x`` as ``float32 [n, 1]`` (a flat list of n points is accepted)."""
    return np.asarray(x, np.float32).reshape(-1, 1)


@sources.register("sinusoid")
def make(cfg) -> TaskSource:
    sampler = jax.tree_util.Partial(partial(episode, cfg=cfg))  # no arrays: generated on the fly
    # Pre-training on the points of random tasks is training on all tasks jointly (MAML §5.1's
    # "pretrained" comparison): the batches are the training episodes.
    return TaskSource(
        samplers={"train": sampler, "val": sampler, "test": sampler},
        objective=REGRESSION,
        output_dim=1,
        batches=sampler,
    )
