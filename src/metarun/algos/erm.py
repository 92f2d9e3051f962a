"""Plain training (empirical risk minimisation), the baseline of the learners of one
classifier over fixed classes (data/supervised.py): L2RW's (``data.protocol=supervised``) and
MLDG's (``data.protocol=domains``, with ``with_query=True``: all the source domains).

Each meta-step's tasks are training batches; the update is the gradient of their mean
cross-entropy, L(θ) = 1/n Σ_i ℓ(f_θ(x_i), ỹ_i), on the training examples and their (noisy)
labels. ``with_query=True`` trains on each batch's query set too, as one batch of both (its
mean loss): under ``supervised`` the clean examples (oversampled, as often as the training
set: a baseline that uses the clean set as directly as it can), under ``domains`` the
meta-test domain's, so that every source domain is trained on. Nothing is adapted at test:
a validation or test batch is classified by the trained network.

Meta-parameters: the model's parameters, with its ``data.ways``-way head.
"""

from __future__ import annotations

import jax.numpy as jnp

from metarun.algos import algos
from metarun.algos.base import MetaLearner, batch_mean_grad, predict_with_adapted
from metarun.types import FIXED_CLASSES, Objective

# The modes of a network classifying a batch on its own: BatchNorm by the batch's statistics
# or by running averages; the others normalise a query by a support set, which it has none of.
BN_MODES = ("transductive", "running")


def no_adaptation(meta_params, support_x, support_y, num_steps, ways):
    """``adapt`` of a learner that classifies as trained: its meta-parameters."""
    del support_x, support_y, num_steps, ways
    return meta_params


def keep_params(params, key=None, episode=None):
    """``init``: the model's parameters, nothing else meta-learned."""
    del key, episode
    return params


def fixed_class_learner(apply_fn, outer_grad) -> MetaLearner:
    """A learner of one classifier ``apply_fn(params, x, context)`` over fixed classes, trained
    on batches by ``outer_grad``; it classifies as trained."""
    return MetaLearner(
        init=keep_params,
        adapt=no_adaptation,
        predict=predict_with_adapted(apply_fn),
        outer_grad=outer_grad,
        bn_modes=BN_MODES,
        trains_on="batches",
    )


def erm(apply_fn, objective: Objective, with_query: bool = False) -> MetaLearner:
    """Plain training of ``apply_fn(params, x, context)`` on the batches' training examples
    (``with_query``: and on their query sets, in one batch)."""

    def batch_metrics(params, batch):
        x, y = batch.support_x, batch.support_y
        if with_query:
            x = jnp.concatenate([x, batch.query_x])
            y = jnp.concatenate([y, batch.query_y])
        return objective.metrics(apply_fn(params, x), y)

    def outer_grad(params, batches, num_steps, step):
        del num_steps, step
        return batch_mean_grad(batch_metrics, params, batches)

    return fixed_class_learner(apply_fn, outer_grad)


@algos.register("erm", tasks=FIXED_CLASSES)
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return erm(net.apply, objective, with_query=cfg.with_query)
