"""Learning to Reweight Examples (Ren et al. 2018): weigh each training example by how much a
gradient step on it would lower the loss of a small clean set; train on the weighted loss.

For a batch of training examples (x_i, ỹ_i), labels possibly wrong, and a batch of clean
examples (x^c_j, y^c_j) (data/supervised.py):

    θ'(ε) = θ − α ∇θ Σ_i ε_i ℓ(f_θ(x_i), ỹ_i)                 a look-ahead step
    u_i   = −∂/∂ε_i 1/m Σ_j ℓ(f_θ'(ε)(x^c_j), y^c_j)  at ε = 0
    w_i   = max(u_i, 0) / Σ_k max(u_k, 0)                       (all 0 if no u_k > 0)
    g     = ∇θ Σ_i w_i ℓ(f_θ(x_i), ỹ_i),  w held constant     the optimizer's gradient

At ε = 0 the look-ahead point is θ itself, so u_i = α ⟨∇θ L_clean(θ), ∇θ ℓ_i(θ)⟩: how well
example i's gradient agrees with the clean set's. α scales every u_i alike, which the
normalisation removes, so metarun takes α = 1 (the paper: the learning rate). u is computed
as in the paper's algorithm, by differentiating the clean loss through the look-ahead step;
tests/algos/test_l2rw.py checks it against finite differences and against the inner products.
The clean examples' labels are never trained on, only weighed by (their images do enter
BatchNorm's running averages, with ``model.bn_mode=running``, as every batch's images do).

Metrics: ``loss`` is the weighted loss Σ w_i ℓ_i that is descended; ``train_loss`` and
``accuracy`` the plain mean over the batch and its (noisy) labels; ``clean_loss`` the clean
batch's; ``kept`` the share of examples with a positive weight.

Reference: Ren, Zeng, Yang, Urtasun. "Learning to Reweight Examples for Robust Deep
Learning". ICML 2018. https://arxiv.org/abs/1803.09050
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from metarun.algos import algos
from metarun.algos.base import MetaLearner, batch_mean_grad
from metarun.algos.erm import fixed_class_learner
from metarun.types import Array, Episode, Objective, Params


def alignment(
    apply_fn, objective: Objective, params: Params, batch: Episode
) -> tuple[Array, Array]:
    """u (the module docstring): minus the derivative of the clean batch's loss after a
    look-ahead step on the ε-weighted training loss, at ε = 0, one entry per training example;
    and that loss, the clean batch's at θ (the look-ahead point at ε = 0)."""

    def clean_loss_after(eps):
        def weighted(p):
            logits = apply_fn(p, batch.support_x)
            per_example = optax.losses.softmax_cross_entropy_with_integer_labels(
                logits, batch.support_y
            )
            return jnp.sum(eps * per_example)

        step = jax.grad(weighted)(params)
        ahead = jax.tree.map(jnp.subtract, params, step)  # α = 1
        return objective.loss(apply_fn(ahead, batch.query_x), batch.query_y)

    eps = jnp.zeros(batch.support_y.shape, jax.tree.leaves(params)[0].dtype)
    clean_loss, grad = jax.value_and_grad(clean_loss_after)(eps)
    return -grad, clean_loss


def example_weights(u: Array) -> Array:
    """w_i = max(u_i, 0) / Σ_k max(u_k, 0); all zero when no u_k is positive."""
    positive = jnp.maximum(u, 0.0)
    total = jnp.sum(positive)
    return jnp.where(total > 0, positive / jnp.where(total > 0, total, 1.0), 0.0)


def l2rw(apply_fn, objective: Objective) -> MetaLearner:
    """Learning to Reweight Examples over ``apply_fn(params, x, context)``."""

    def batch_metrics(params, batch, weights):
        logits = apply_fn(params, batch.support_x)
        per_example = optax.losses.softmax_cross_entropy_with_integer_labels(
            logits, batch.support_y
        )
        plain = objective.metrics(logits, batch.support_y)
        return {
            "loss": jnp.sum(weights * per_example),
            "train_loss": plain["loss"],
            "accuracy": plain["accuracy"],
            "kept": jnp.mean(weights > 0),
        }

    def outer_grad(params, batches, num_steps, step):
        del num_steps, step
        u, clean_loss = jax.vmap(lambda b: alignment(apply_fn, objective, params, b))(batches)
        weights = jax.lax.stop_gradient(jax.vmap(example_weights)(u))
        grads, metrics = batch_mean_grad(
            lambda p, bw: batch_metrics(p, *bw), params, (batches, weights)
        )
        metrics["clean_loss"] = jnp.mean(clean_loss)
        return grads, metrics

    return fixed_class_learner(apply_fn, outer_grad)


@algos.register("l2rw", tasks=("supervised",))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    del cfg  # no keys of its own
    return l2rw(net.apply, objective)
