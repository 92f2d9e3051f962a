"""MLDG, meta-learning for domain generalisation (Li et al. 2018): train so that a step on the
meta-train domains also lowers the loss on a held-out meta-test domain.

Each training batch (``data.protocol=domains``, data/supervised.py) holds examples of the
meta-train domains (``support``) and of one meta-test domain drawn among the sources
(``query``):

    θ'   = θ − α ∇θ L_tr(θ)
    F(θ) = L_tr(θ) + β L_te(θ')

and the optimizer descends ∇θ F, through the inner step: ∇θ L_te(θ') (I − α ∇²θ L_tr(θ)), the
second-order term the paper keeps (``algo.first_order=true`` drops the Hessian, treating the
inner gradient as a constant). tests/algos/test_mldg.py checks ∇θ F against finite
differences in float64. Nothing is adapted at test: a batch of the unseen domain is classified
by the trained network.

Metrics: ``loss`` is F; ``train_loss`` L_tr; ``test_loss`` and ``accuracy`` those of the
meta-test domain after the inner step.

Reference: Li, Yang, Song, Hospedales. "Learning to Generalize: Meta-Learning for Domain
Generalization". AAAI 2018. https://arxiv.org/abs/1710.03463
"""

from __future__ import annotations

from functools import partial

import jax

from metarun.algos import algos
from metarun.algos.base import MetaLearner, batch_mean_grad
from metarun.algos.erm import fixed_class_learner
from metarun.types import Episode, Objective, Params


def mldg_objective(
    apply_fn, objective: Objective, params: Params, batch: Episode, *, inner_lr, beta, first_order
) -> dict:
    """F(θ) of one batch (``loss``) and its parts, as the module docstring."""

    def train_loss(p):
        return objective.loss(apply_fn(p, batch.support_x), batch.support_y)

    l_tr, grads = jax.value_and_grad(train_loss)(params)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    ahead = jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)
    test = objective.metrics(apply_fn(ahead, batch.query_x), batch.query_y)
    return {
        "loss": l_tr + beta * test["loss"],
        "train_loss": l_tr,
        "test_loss": test["loss"],
        "accuracy": test["accuracy"],
    }


def mldg(
    apply_fn, objective: Objective, inner_lr: float, beta: float = 1.0, first_order: bool = False
) -> MetaLearner:
    """MLDG over ``apply_fn(params, x, context)``; α = ``inner_lr``, β = ``beta``."""

    batch_metrics = partial(
        mldg_objective, apply_fn, objective, inner_lr=inner_lr, beta=beta, first_order=first_order
    )

    def outer_grad(params, batches, num_steps, step):
        del num_steps, step
        return batch_mean_grad(batch_metrics, params, batches)

    return fixed_class_learner(apply_fn, outer_grad)


@algos.register("mldg", tasks=("domains",))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return mldg(net.apply, objective, cfg.inner_lr, cfg.beta, cfg.first_order)
