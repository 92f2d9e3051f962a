"""Relation Networks: a learned module scores how well a query's feature maps match a class's.

    C_k = Σ_{(x, y) ∈ S, y = k} f_φ(x)                          (the class's summed maps)
    r_{q,k} = g_ψ([C_k ‖ f_φ(x̂_q)]) ∈ (0, 1)                    (‖: channel concatenation)
    L = 1/(|Q| N) Σ_{q,k} (r_{q,k} − 1[y_q = k])²               (MSE to the one-hot labels)

The embedding f_φ is the model's ``feature_maps`` (the model without its ``head``); the
relation module g_ψ is two blocks of [3×3 conv, BatchNorm, ReLU, 2×2 max-pool], then
FC(``hidden``) + ReLU and FC(1) + sigmoid. Meta-parameters are ``{"encoder": φ, "relation":
ψ}``; "adapting" to a task is summing its support maps per class, one forward pass. The
predictions are the relation scores ``[queries, ways]``, so the class is their argmax; the loss
regresses them on the one-hot labels, as the paper does. Nothing in g_ψ depends on the number
of classes, so training may use more ways than testing (``data.train_ways``).

Map sizes: a block max-pools only maps of at least 2×2 (a 1-pixel map has nothing to pool).
Our Conv-4 pools four times, so 28×28 Omniglot gives 1×1 maps (84×84 mini-ImageNet 5×5, the
strided Conv-4 2×2): on 1×1 maps each 3×3 convolution of g_ψ sees only its centre tap (the
rest is SAME padding), so it acts as a 1×1 convolution, a dense layer on each pair, and no
block pools.

As in the authors' code, BatchNorm by default normalises with the statistics of its batch
(their ``momentum=1``, never switched to evaluation mode): the support and query sets go
through the encoder as two batches, and g_ψ sees all the query pairs of an episode at once
(``model.bn_mode=transductive``). With ``support`` or ``task_norm`` both the encoder and g_ψ
take their statistics from the support set: g_ψ's from the pairs (class k, support example),
scored with the query pairs stacked after them, so each query is scored on its own.
``running`` is not offered: g_ψ keeps no running averages.

Differences from the authors' code (LearningToCompare_FSL):

* their Omniglot embedding pools in its first two blocks only, with unpadded convolutions,
  giving 5×5×64 maps that g_ψ pools to 1×1; ours is the configured model (Conv-4: 1×1 maps);
* BatchNorm ε = 1e-3 (``conv4.BatchStatNorm``), theirs 1e-5; g_ψ's convolutions have no bias
  (BatchNorm cancels it); initialisation is Conv-4's Glorot-uniform convolutions and flax's
  LeCun-normal dense layers, where theirs draws He-normal convolutions and N(0, 0.01) dense
  weights with biases of 1;
* the loss is the mean over the pairs (their ``nn.MSELoss``), the paper writes the sum.

Reference: Sung, Yang, Zhang, Xiang, Torr, Hospedales. "Learning to Compare: Relation Network
for Few-Shot Learning". CVPR 2018. https://arxiv.org/abs/1711.06025
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarun import models
from metarun.algos import algos
from metarun.algos.base import MetaLearner, drop_head
from metarun.config import ConfigError
from metarun.models import CONTEXT_MODES
from metarun.models.conv4 import BatchStatNorm, Conv3x3, max_pool2x2, resolve_conv
from metarun.types import Array, Objective, mse


class RelationModule(nn.Module):
    """g_ψ: ``[pairs, h, w, 2c]`` concatenated maps -> ``[pairs]`` relation logits; BatchNorm
    in ``bn_mode`` with the statistics of the first ``context_rows`` pairs (0: all)."""

    filters: int = 64
    hidden: int = 8
    conv: str = "auto"
    bn_mode: str = "transductive"
    context_rows: int = 0

    @nn.compact
    def __call__(self, pairs):
        conv = resolve_conv(self.conv)
        x = pairs
        for i in range(2):
            x = Conv3x3(self.filters, 1, conv, name=f"conv{i}")(x)
            norm = BatchStatNorm(self.bn_mode, context_rows=self.context_rows, name=f"norm{i}")
            x = nn.relu(norm(x))
            if min(x.shape[1:3]) >= 2:  # a 1-pixel map has nothing to pool (see the module doc)
                x = max_pool2x2(x)
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x.reshape(x.shape[0], -1)))
        return nn.Dense(1, name="fc2")(x)[:, 0]


def class_sums(maps: Array, labels: Array, ways: int) -> Array:
    """``[ways, h, w, c]``: the sum of the maps of each label 0..ways-1 (the paper's K-shot)."""
    onehot = jax.nn.one_hot(labels, ways, dtype=maps.dtype)  # [n, ways]
    return jnp.einsum("nk,nhwc->khwc", onehot, maps)


def relation_pairs(class_maps: Array, query_maps: Array) -> Array:
    """``[queries * ways, h, w, 2c]``: (class k, query q) concatenated on channels, q-major."""
    q, k = query_maps.shape[0], class_maps.shape[0]
    shape = (q, k, *class_maps.shape[1:])
    pairs = jnp.concatenate(
        [
            jnp.broadcast_to(class_maps[None], shape),
            jnp.broadcast_to(query_maps[:, None], shape),
        ],
        axis=-1,
    )
    return pairs.reshape(q * k, *pairs.shape[2:])


def relation_loss(scores: Array, labels: Array) -> Array:
    """Mean squared error of the scores ``[queries, ways]`` to the one-hot labels."""
    return mse(scores, jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype))


def relationnet(
    feature_maps,
    *,
    filters: int = 64,
    hidden: int = 8,
    conv: str = "auto",
    bn_mode: str = "transductive",
) -> MetaLearner:
    """Relation Networks over an embedding ``feature_maps(params, x) -> [n, h, w, c]``.

    Args:
      feature_maps: the embedding module f_φ.
      filters: channels of g_ψ's two convolutions (64 in the paper).
      hidden: width of g_ψ's fully connected layer (8 in the paper).
      conv: how g_ψ convolves (``models.conv4.resolve_conv``).
      bn_mode: ``model.bn_mode``, for g_ψ's BatchNorm (the module docstring).
    """
    module = RelationModule(filters=filters, hidden=hidden, conv=conv, bn_mode=bn_mode)

    def relation(params, pairs, context_pairs=None):
        if context_pairs is None or bn_mode not in CONTEXT_MODES:
            return module.apply({"params": params}, pairs)
        return models.in_context(
            lambda m, xs: m.apply({"params": params}, xs), module, pairs, context_pairs
        )

    def init(params, key, episode):
        encoder = drop_head(params)
        maps = jax.eval_shape(feature_maps, encoder, episode.support_x)
        _, h, w, c = maps.shape
        # Two pairs, so that BatchNorm has a batch; only the shapes matter.
        example = jnp.zeros((2, h, w, 2 * c), maps.dtype)
        return {"encoder": encoder, "relation": module.init(key, example)["params"]}

    def adapt(meta_params, support_x, support_y, num_steps, ways):
        del num_steps  # no inner loop: the class sums are the adaptation
        return class_sums(feature_maps(meta_params["encoder"], support_x), support_y, ways)

    def predict(meta_params, class_maps, query_x, support_x=None):
        query_maps = feature_maps(meta_params["encoder"], query_x, support_x)
        context = None
        if support_x is not None and bn_mode in CONTEXT_MODES:
            support_maps = feature_maps(meta_params["encoder"], support_x)
            context = relation_pairs(class_maps, support_maps)
        pairs = relation_pairs(class_maps, query_maps)
        logits = relation(meta_params["relation"], pairs, context)
        return jax.nn.sigmoid(logits).reshape(query_maps.shape[0], class_maps.shape[0])

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        loss=relation_loss,
        any_ways=True,
        bn_modes=("transductive", *CONTEXT_MODES),
        encoder_key="encoder",
    )


@algos.register("relationnet", tasks=("classification",))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    if net.feature_maps is None:
        raise ConfigError(
            f"algo={cfg.name} is invalid with this model: Relation Networks compare feature "
            f"maps, and {type(net.module).__name__} has none; use a convolutional model "
            "(model=conv4, model=resnet12)"
        )
    return relationnet(
        net.feature_maps,
        filters=cfg.filters,
        hidden=cfg.hidden,
        conv=getattr(net.module, "conv", "auto"),  # g_ψ convolves as the encoder does
        bn_mode=models.bn_mode(net.module),
    )
