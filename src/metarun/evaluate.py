"""Meta-evaluation: adapt on each episode's support set, score on its query set.

The episodes are drawn from ``eval.seed`` and the split alone, so every run with
the same data config — any algorithm, any training seed — is scored on the same
tasks. The result is the mean over episodes with a 95% confidence interval
(1.96 standard errors), the protocol of the MAML and ProtoNet papers.
"""

from __future__ import annotations

import zlib
from functools import partial
from typing import NamedTuple

import jax
import numpy as np

from metarun.algos.base import MetaLearner, task_metrics
from metarun.types import Objective


class EvalResult(NamedTuple):
    mean: float
    ci95: float
    values: np.ndarray  # the headline metric of every episode
    # Episodes whose query loss is not finite: their accuracy is that of NaN predictions (the
    # argmax of NaNs is class 0), so a mean that counts them is no measurement of a learner.
    nonfinite: int = 0


def episode_keys(seed: int, split: str, episodes: int) -> jax.Array:
    """The evaluation episodes of a split: fixed by ``seed`` and the split's name."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(split.encode()))
    return jax.random.split(key, episodes)


def confidence_interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% normal confidence interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def make_evaluator(learner: MetaLearner, objective: Objective, *, inner_steps: int, batch: int):
    """Jitted ``(meta_params, sample, keys) -> per-episode metrics``, ``batch`` tasks at once.

    ``sample`` is a split's sampler (a ``jax.tree_util.Partial``), passed in so that the split's
    arrays are inputs of the compiled program, not constants in it.
    """

    def one(meta_params, sample, key):
        return task_metrics(learner, objective, meta_params, sample(key), inner_steps)

    @jax.jit
    def run(meta_params, sample, keys):
        return jax.lax.map(partial(one, meta_params, sample), keys, batch_size=batch)

    return run


def evaluate(evaluator, meta_params, sample, keys: jax.Array, metric: str) -> EvalResult:
    metrics = jax.device_get(evaluator(meta_params, sample, keys))
    values = np.asarray(metrics[metric])
    mean, ci95 = confidence_interval(values)
    return EvalResult(mean, ci95, values, int(np.sum(~np.isfinite(metrics["loss"]))))
