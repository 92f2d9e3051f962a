"""Prototypical Networks: classify a query by its distance to each class's mean embedding.

    c_k = 1/|S_k| Σ_{(x, y) ∈ S, y = k} f_φ(x)          (the prototype of class k)
    p(y = k | x̂) = softmax_k(−d(f_φ(x̂), c_k)),   d = squared Euclidean distance

Meta-parameters are the encoder's φ (the model without its ``head``); "adapting" to a task
is computing its prototypes, one forward pass over the support set. The number of classes
only shapes the prototypes, so training may use more ways than testing (the paper trains
Omniglot 60-way, ``data.train_ways``).

``distance=cosine`` scores ``cosine_scale · cos(f_φ(x̂), c_k)`` instead, the variant of
Chen et al. 2019 ("A Closer Look at Few-shot Classification", Baseline++); the scale keeps
the softmax from being too flat (cosines lie in [−1, 1]).

Differences from the authors' code: support and query sets go through the encoder as two
batches, so BatchNorm normalises each with its own statistics (their code encodes the
concatenated episode); both are transductive in the same way (see ``models.conv4``).

Reference: Snell, Swersky, Zemel. "Prototypical Networks for Few-shot Learning".
NeurIPS 2017. https://arxiv.org/abs/1703.05175
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarun.algos import algos
from metarun.algos.base import MetaLearner, drop_head
from metarun.config import BN_MODES
from metarun.types import Array, Objective


def class_means(embeddings: Array, labels: Array, ways: int) -> Array:
    """``[ways, d]``: the mean embedding of each label 0..ways-1 (any order, any counts)."""
    onehot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)  # [n, ways]
    return (onehot.T @ embeddings) / jnp.sum(onehot, axis=0)[:, None]


def squared_distances(a: Array, b: Array) -> Array:
    """``[n, m]``: ‖a_i − b_j‖², by differences rather than ‖a‖² − 2 a·b + ‖b‖², which
    cancels catastrophically when the two are close (a query at its own prototype)."""
    return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)


def cosine_similarities(a: Array, b: Array, eps: float = 1e-8) -> Array:
    """``[n, m]``: cos(a_i, b_j)."""
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
    return a @ b.T


def protonet(embed, *, distance: str = "euclidean", cosine_scale: float = 10.0) -> MetaLearner:
    """Prototypical Networks over an encoder ``embed(params, x) -> [n, d]``.

    Args:
      embed: the encoder f_φ.
      distance: ``euclidean`` (squared, the paper) or ``cosine``.
      cosine_scale: multiplies the cosines when ``distance="cosine"``.
    """

    def adapt(params, support_x, support_y, num_steps, ways):
        del num_steps  # no inner loop: the prototypes are the adaptation
        return class_means(embed(params, support_x), support_y, ways)

    def predict(params, prototypes, query_x, support_x=None):
        queries = embed(params, query_x, support_x)
        if distance == "cosine":
            return cosine_scale * cosine_similarities(queries, prototypes)
        return -squared_distances(queries, prototypes)

    return MetaLearner(
        init=drop_head, adapt=adapt, predict=predict, any_ways=True, bn_modes=BN_MODES
    )


@algos.register("protonet", tasks=("classification",))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return protonet(net.embed, distance=cfg.distance, cosine_scale=cfg.cosine_scale)
