"""Reptile: move the initialisation toward the weights that SGD finds on each task.

    W_t = SGD from θ on D_t = support_t ∪ query_t (``inner_steps`` full-batch steps of size α)
    θ ← θ + ε (1/T Σ_t W_t − θ)

The meta-update is written as a pseudo-gradient g = θ − 1/T Σ_t W_t handed to the
outer optax optimizer: ``optim=sgd`` with ``lr=ε`` is the formula above; Adam on g
is the variant the paper suggests ("treat θ − W as a gradient and plug it into
Adam").

Meta-training trains the inner loop on every labelled example of a training episode, its
support and its query set together: ``data.train_shots + data.train_queries`` examples per
class (``data.shots + data.queries`` when those are unset), the data the MAML family learns
from in a meta-step (it adapts on the support set and differentiates the query loss). The
authors' code does the same with more examples per class at training than at test
(``--train-shots``, 10 in its Omniglot commands, against ``--shots`` 1 or 5). Evaluation
adapts on the support set alone and predicts the query set, as for every learner. The
training metrics (``loss``, ``accuracy``) are those of that evaluation, from a second
adaptation on the support set alone: the weights W_t have trained on the queries, so their
query loss would be a training loss. That adaptation costs ``shots / (shots + queries)`` of
the first one.

Difference from the authors' code: the inner loop is full-batch SGD on D_t, ``inner_steps``
steps each on all of it (they use Adam on mini-batches of ``--inner-batch`` examples drawn
from it, ``--inner-iters`` of them).

Reference: Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms". 2018.
https://arxiv.org/abs/1803.02999; code: https://github.com/openai/supervised-reptile
(``--train-shots``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarun.algos import algos
from metarun.algos.base import MetaLearner
from metarun.algos.maml import maml
from metarun.types import Episode, Objective


def reptile(apply_fn, objective: Objective, *, inner_lr: float) -> MetaLearner:
    """Reptile; the meta-parameters are the model's initial parameters θ.

    Args:
      apply_fn: the model, ``(params, x) -> predictions``.
      objective: the task loss and metrics.
      inner_lr: the inner step size α.

    Returns:
      A :class:`MetaLearner` whose ``adapt`` runs full-batch SGD on the set it is given (the
      support set at evaluation) and whose ``outer_grad`` adapts on each training episode's
      support and query sets together and returns θ − mean_t(W_t).
    """

    # Evaluation adapts as first-order MAML does; meta-training has its own update.
    learner = maml(apply_fn, objective.loss, inner_lr=inner_lr, first_order=True)

    def adapt_each(params, x, y, num_steps):
        return jax.vmap(learner.adapt, in_axes=(None, 0, 0, None))(params, x, y, num_steps)

    def outer_grad(params, episodes: Episode, num_steps, step):
        del step
        # D_t: the support and query sets of each task, one full batch (axis 0 is the task).
        train_x = jnp.concatenate([episodes.support_x, episodes.query_x], axis=1)
        train_y = jnp.concatenate([episodes.support_y, episodes.query_y], axis=1)
        adapted = adapt_each(params, train_x, train_y, num_steps)
        mean_adapted = jax.tree.map(lambda w: jnp.mean(w, axis=0), adapted)
        pseudo_grad = jax.tree.map(jnp.subtract, params, mean_adapted)
        # The evaluation's metrics: adapted on the support set alone, scored on the queries.
        on_support = adapt_each(params, episodes.support_x, episodes.support_y, num_steps)
        query_metrics = jax.vmap(lambda w, x, s, y: objective.metrics(apply_fn(w, x, s), y))(
            on_support, episodes.query_x, episodes.support_x, episodes.query_y
        )
        return pseudo_grad, jax.tree.map(jnp.mean, query_metrics)

    return learner._replace(outer_grad=outer_grad)


@algos.register("reptile")
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return reptile(net.apply, objective, inner_lr=cfg.inner_lr)
