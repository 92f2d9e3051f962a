"""Siamese networks: twin encoders and a learned weighted L1 distance say whether two images match.

    p(x₁, x₂ same class) = σ(z),   z = Σ_j α_j |f_φ(x₁)_j − f_φ(x₂)_j| + b
    L = 1/|Q| Σ_q [ ½ mean_{s: y_s = y_q} −log σ(z_qs) + ½ mean_{s: y_s ≠ y_q} −log(1 − σ(z_qs)) ]
    ŷ(x̂) = argmax_k max_{s: y_s = k} z(x̂, x_s)

Meta-parameters are ``{"encoder": φ, "alpha": α, "bias": b}``, φ the model without its
``head`` (``Network.embed``). Training is verification, not classification: each query of an
episode is paired with every support image, and the binary cross-entropy weighs the same-class
and the different-class pairs half each. Test time is one-shot classification by the most
similar support image; with K shots a class scores its best match (the max over its K
images: a nearest neighbour in the learned metric, which the paper, one-shot only, leaves
open). The predictions are those per-class logits ``[queries, ways]``, so nothing depends on
the number of classes and training may use more ways than testing (``data.train_ways``).
The ``loss`` of an evaluation is the dataset's (softmax cross-entropy of these logits); the
training metrics report the pair loss as ``loss``, the episodes' query ``accuracy`` and the
balanced ``pair_accuracy``.

Pairs without randomness: the paper draws a balanced set of same and different pairs; the loss
above is the expectation, over the draw, of one random same-class and one random
different-class support image per query, so it needs no key (``outer_grad`` receives none), has
less variance, and costs little: the encoder runs once per image, the pairs only take
``queries × supports`` weighted L1 distances.

Differences from the paper (which has no released code):

* the twin is the configured model's ``embed`` (Conv-4 on 28×28: 64 features after ReLU),
  not their 105×105 network with its 4096-unit sigmoid layer;
* pairs come from the episodes (queries against the support set; different-class pairs only
  from the episode's classes), not from the whole background set, and there are no affine
  distortions (Omniglot episodes rotate classes instead);
* the outer optimizer is metarun's (Adam by default), without their per-layer learning rates,
  momentum schedule and L2 penalties;
* support and query sets go through the encoder as two batches, so BatchNorm normalises each
  with its own statistics (see ``models.conv4``); their network had no BatchNorm.

Initialisation as theirs: α ~ N(0, 0.2²), b ~ N(0.5, 0.01²).

Reference: Koch, Zemel, Salakhutdinov. "Siamese Neural Networks for One-shot Image
Recognition". ICML Deep Learning Workshop 2015. https://www.cs.cmu.edu/~rsalakhu/papers/oneshot1.pdf
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarun.algos import algos
from metarun.algos.base import MetaLearner, drop_head
from metarun.config import BN_MODES
from metarun.types import Array, Objective


def pair_logits(meta_params, a: Array, b: Array) -> Array:
    """``[n, m]``: z_ij = Σ_d α_d |a_id − b_jd| + b, the logit of p(a_i, b_j same class)."""
    distances = jnp.abs(a[:, None, :] - b[None, :, :])  # [n, m, d]
    return distances @ meta_params["alpha"] + meta_params["bias"]


def class_logits(logits: Array, support_onehot: Array) -> Array:
    """``[n, ways]``: each class's best pair logit, max over its support images ``[n, m]``."""
    same = support_onehot.T[None] > 0  # [1, ways, m]
    return jnp.max(jnp.where(same, logits[:, None, :], -jnp.inf), axis=-1)


def balanced_pair_loss(logits: Array, query_y: Array, support_y: Array) -> Array:
    """Binary cross-entropy of the ``[queries, supports]`` pair logits, same-class pairs and
    different-class pairs weighing half each for every query."""
    same = (query_y[:, None] == support_y[None, :]).astype(logits.dtype)
    # −log σ(z) = softplus(−z) and −log(1 − σ(z)) = softplus(z), stable for any z.
    positive = jnp.sum(same * jax.nn.softplus(-logits), 1) / jnp.sum(same, 1)
    negative = jnp.sum((1 - same) * jax.nn.softplus(logits), 1) / jnp.sum(1 - same, 1)
    return jnp.mean(0.5 * positive + 0.5 * negative)


def balanced_pair_accuracy(logits: Array, query_y: Array, support_y: Array) -> Array:
    """Verification accuracy (p > ½ means same), same and different pairs weighing half each."""
    same = query_y[:, None] == support_y[None, :]
    correct = (logits > 0) == same
    hits_same = jnp.sum(correct & same, 1) / jnp.sum(same, 1)
    hits_other = jnp.sum(correct & ~same, 1) / jnp.sum(~same, 1)
    return jnp.mean(0.5 * hits_same + 0.5 * hits_other)


def siamese(embed) -> MetaLearner:
    """Siamese networks over an encoder ``embed(params, x) -> [n, d]``."""

    def init(params, key, episode):
        encoder = drop_head(params)
        features = jax.eval_shape(embed, encoder, episode.support_x)
        k_alpha, k_bias = jax.random.split(key)
        dtype = features.dtype
        return {
            "encoder": encoder,
            "alpha": 0.2 * jax.random.normal(k_alpha, features.shape[-1:], dtype),
            "bias": 0.5 + 0.01 * jax.random.normal(k_bias, (), dtype),
        }

    def adapt(meta_params, support_x, support_y, num_steps, ways):
        del num_steps  # no inner loop: remembering the support set is the adaptation
        support = embed(meta_params["encoder"], support_x)
        return support, jax.nn.one_hot(support_y, ways, dtype=support.dtype)

    def predict(meta_params, task_params, query_x, support_x=None):
        support, onehot = task_params
        queries = embed(meta_params["encoder"], query_x, support_x)
        logits = pair_logits(meta_params, queries, support)
        return class_logits(logits, onehot)

    def episode_loss(meta_params, episode):
        support = embed(meta_params["encoder"], episode.support_x)
        queries = embed(meta_params["encoder"], episode.query_x, episode.support_x)
        logits = pair_logits(meta_params, queries, support)
        loss = balanced_pair_loss(logits, episode.query_y, episode.support_y)
        onehot = jax.nn.one_hot(episode.support_y, episode.ways, dtype=logits.dtype)
        predicted = jnp.argmax(class_logits(logits, onehot), axis=-1)
        return loss, {
            "loss": loss,
            "accuracy": jnp.mean(predicted == episode.query_y),
            "pair_accuracy": balanced_pair_accuracy(logits, episode.query_y, episode.support_y),
        }

    def outer_grad(meta_params, episodes, num_steps, step):
        del num_steps, step

        def meta_batch_loss(mp):
            losses, metrics = jax.vmap(lambda e: episode_loss(mp, e))(episodes)
            return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)

        return jax.grad(meta_batch_loss, has_aux=True)(meta_params)

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        outer_grad=outer_grad,
        any_ways=True,
        bn_modes=BN_MODES,
        encoder_key="encoder",
    )


@algos.register("siamese", tasks=("classification",))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return siamese(net.embed)
