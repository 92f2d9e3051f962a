"""Reptile: move the initialisation toward the weights that SGD finds on each task.

    W_t = SGD on support_t from θ (``inner_steps`` steps of size α)
    θ ← θ + ε (1/T Σ_t W_t − θ)

The meta-update is written as a pseudo-gradient g = θ − 1/T Σ_t W_t handed to the
outer optax optimizer: ``optim=sgd`` with ``lr=ε`` is the formula above; Adam on g
is the variant the paper suggests ("treat θ − W as a gradient and plug it into
Adam"). Differences from the authors' code: the inner loop is full-batch SGD on
the support set (they use Adam on mini-batches), and the query set is used for
monitoring only.

Reference: Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms".
2018. https://arxiv.org/abs/1803.02999
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarun.algos import algos
from metarun.algos.base import (
    MetaLearner,
    gradient_descent,
    init_params,
    predict_with_adapted,
)
from metarun.config import ConfigError
from metarun.types import Objective


def reptile(apply_fn, objective: Objective, *, inner_lr: float) -> MetaLearner:
    """Reptile; the meta-parameters are the model's initial parameters θ."""

    def adapt(params, support_x, support_y, num_steps, ways=0):
        del ways  # the head has data.ways outputs

        def support_loss(p):
            return objective.loss(apply_fn(p, support_x), support_y)

        return gradient_descent(support_loss, params, inner_lr, num_steps, first_order=True)

    def outer_grad(params, episodes, num_steps, step):
        del step
        adapted = jax.vmap(adapt, in_axes=(None, 0, 0, None))(
            params, episodes.support_x, episodes.support_y, num_steps
        )
        mean_adapted = jax.tree.map(lambda w: jnp.mean(w, axis=0), adapted)
        pseudo_grad = jax.tree.map(jnp.subtract, params, mean_adapted)
        query_metrics = jax.vmap(lambda w, x, y: objective.metrics(apply_fn(w, x), y))(
            adapted, episodes.query_x, episodes.query_y
        )
        return pseudo_grad, jax.tree.map(jnp.mean, query_metrics)

    return MetaLearner(
        init=init_params,
        adapt=adapt,
        predict=predict_with_adapted(apply_fn),
        outer_grad=outer_grad,
    )


@algos.register("reptile")
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    if not cfg.first_order:
        raise ConfigError(
            "algo.first_order=False is invalid: Reptile is first-order by "
            "construction (it never differentiates through the inner loop)"
        )
    return reptile(net.apply, objective, inner_lr=cfg.inner_lr)
