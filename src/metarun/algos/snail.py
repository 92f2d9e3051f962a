"""SNAIL: a causal sequence model reads the labelled support set, then predicts the query's label.

Each query is the last step of its own sequence of T = N·K + 1 inputs, the support pairs
followed by the query with its label withheld (zeros):

    input_i = [f_φ(x_i), onehot(y_i)] (i ≤ N·K),   input_T = [f_φ(x̂), 0]
    DenseBlock(X; d, D) = X ⊕ tanh(W_f ⋆_d X) ⊙ sigmoid(W_g ⋆_d X)   (⋆_d: causal conv, kernel 2,
                                                                      dilation d; ⊕: concatenate)
    TCBlock(X; T, D) = DenseBlock(·; 2^i, D) for i = 1, ..., ⌈log2 T⌉
    AttentionBlock(X; K, V) = X ⊕ softmax(causal(Q Kᵀ / √K)) V,   Q, K = X W_q, X W_k (K wide),
                                                                  V = X W_v (V wide)
    p(ŷ | x̂, S) = softmax(W_o h_T)                                  (the last step's output)

The blocks alternate, attention first; the defaults are the Omniglot network as the public
reimplementations take it from the paper's appendix (eambutu/snail-pytorch): AttentionBlock(64, 32),
TCBlock(T, 128), AttentionBlock(256, 128), TCBlock(T, 128), AttentionBlock(512, 256), then a 1×1
convolution (a Dense layer per step) to N logits. The dilations are 2, 4, ... as the paper's
pseudo-code writes them (2^i from i = 1), so a TC block alone never sees the step just before;
the attention blocks do.

Meta-parameters: ``{"encoder": φ, "snail": the blocks}``; training is the shared outer loss on
the query predictions. A sequence model depends on the order of its inputs: the support set
goes in a pseudo-random order that is a function of its examples' contents
(:func:`metarun.algos.mann.set_order`), so a prediction depends on the support *set* only (the
sampler's grouped-by-label order would otherwise be the only one ever seen), and each query
sees the same support sequence.

All queries of an episode go through one pass: the support steps are computed once and each
query is appended at step T, seeing the support steps and itself only (its convolution taps and
attention mask are those of step T of its own sequence). The output equals one sequence per
query (``vmap``), at the cost of N·K + Q steps instead of Q·(N·K + 1).

Differences from the paper: the encoder is the configured model's ``embed`` (Conv-4), trained
end to end; an episode scores all its queries against one support set (the paper: one query per
sequence); the TC blocks get ⌈log2 T⌉ dense blocks for the training episodes' T, and evaluation
with another support size reuses them; the sequence model runs in float32 under
``trainer.precision=bf16`` (only the encoder is cast).

Reference: Mishra, Rohaninejad, Chen, Abbeel. "A Simple Neural Attentive Meta-Learner".
ICLR 2018. https://arxiv.org/abs/1707.03141
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metarun.algos import algos
from metarun.algos.base import MetaLearner, drop_head
from metarun.algos.mann import set_order
from metarun.types import Array, Objective


def step_times(length: int, context: int) -> np.ndarray:
    """``[length]``: the step each position plays. The first ``context`` positions are the shared
    sequence (steps 0, 1, ...); every later position is a query at step ``context``."""
    return np.minimum(np.arange(length), context)


def causal_mask(length: int, context: int) -> np.ndarray:
    """``[length, length]``: whom each position attends to, its earlier context and itself."""
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    return (j == i) | ((j < context) & (j <= i))


class DenseBlock(nn.Module):
    """X ⊕ tanh(W_f ⋆_d X) ⊙ sigmoid(W_g ⋆_d X), the two causal convolutions as one matrix."""

    filters: int
    dilation: int
    context: int  # positions from here on are independent queries (see the module docstring)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        source = step_times(x.shape[0], self.context) - self.dilation  # the tap d steps back
        past = jnp.where((source >= 0)[:, None], x[np.maximum(source, 0)], 0)  # zero padding
        # Kernel size 2: W_0 x_{t−d} + W_1 x_t, for the filter and the gate at once.
        both = nn.Dense(2 * self.filters, name="conv")(jnp.concatenate([past, x], axis=-1))
        f, g = jnp.split(both, 2, axis=-1)
        return jnp.concatenate([x, jnp.tanh(f) * nn.sigmoid(g)], axis=-1)


class TCBlock(nn.Module):
    """``depth`` dense blocks of dilations 2, 4, ..., 2^depth."""

    filters: int
    depth: int
    context: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i in range(1, self.depth + 1):
            x = DenseBlock(self.filters, 2**i, self.context, name=f"dense{i - 1}")(x)
        return x


class AttentionBlock(nn.Module):
    """X ⊕ softmax(causal(Q Kᵀ / √K)) V."""

    key_size: int
    value_size: int
    context: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        queries = nn.Dense(self.key_size, name="query")(x)
        keys = nn.Dense(self.key_size, name="key")(x)
        values = nn.Dense(self.value_size, name="value")(x)
        logits = queries @ keys.T / math.sqrt(self.key_size)
        # Every row keeps its diagonal, so no softmax is over an empty set.
        logits = jnp.where(causal_mask(x.shape[0], self.context), logits, -jnp.inf)
        return jnp.concatenate([x, jax.nn.softmax(logits, axis=-1) @ values], axis=-1)


class SNAILNetwork(nn.Module):
    """The blocks, alternating from the first attention block, and the output layer.

    ``x [length, features] -> logits [length, ways]``; with ``context < length`` the positions
    from ``context`` on are queries, each computed as step ``context`` of its own sequence.
    """

    ways: int
    attention: Sequence[tuple[int, int]]  # (key size, value size) per attention block
    tc_filters: Sequence[int]
    depth: int  # dense blocks per TC block: ⌈log2 T⌉
    context: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i in range(max(len(self.attention), len(self.tc_filters))):
            if i < len(self.attention):
                key_size, value_size = self.attention[i]
                x = AttentionBlock(key_size, value_size, self.context, name=f"attention{i}")(x)
            if i < len(self.tc_filters):
                x = TCBlock(self.tc_filters[i], self.depth, self.context, name=f"tc{i}")(x)
        return nn.Dense(self.ways, name="output")(x)


def tc_depth(sequence_length: int) -> int:
    """⌈log2 T⌉, at least 1: enough dilations for the TC block to span the sequence."""
    return max(1, math.ceil(math.log2(sequence_length)))


def snail(
    embed,
    *,
    attention: Sequence[tuple[int, int]] = ((64, 32), (256, 128), (512, 256)),
    tc_filters: Sequence[int] = (128, 128),
) -> MetaLearner:
    """SNAIL over an encoder ``embed(params, x) -> [n, d]``.

    Args:
      embed: the encoder f_φ.
      attention: (key size, value size) of each attention block.
      tc_filters: filters D of each TC block; ``len(attention) - len(tc_filters)`` is 0 or 1.
    """
    attention = tuple(tuple(block) for block in attention)
    tc_filters = tuple(tc_filters)

    def network(ways: int, depth: int, context: int) -> SNAILNetwork:
        return SNAILNetwork(ways, attention, tc_filters, depth, context)

    def init(params, key, episode):
        encoder = drop_head(params)
        features = jax.eval_shape(embed, encoder, episode.support_x).shape[-1]
        shots = episode.support_x.shape[0]  # N·K, the support steps of a training sequence
        x = jnp.zeros((shots + 1, features + episode.ways))
        net = network(episode.ways, tc_depth(shots + 1), shots)
        # Jitted: one compilation instead of one per operation, seconds on a loaded CPU.
        return {"encoder": encoder, "snail": jax.jit(net.init)(key, x)["params"]}

    def adapt(meta_params, support_x, support_y, num_steps, ways):
        del num_steps  # no inner loop: the support sequence is the adaptation
        order = set_order(support_x)
        features = embed(meta_params["encoder"], support_x)[order]
        return features, jax.nn.one_hot(support_y[order], ways, dtype=features.dtype)

    def predict(meta_params, task_params, query_x, support_x=None):
        del support_x  # model.bn_mode=transductive only (bn_modes)
        features, onehot = task_params
        queries = embed(meta_params["encoder"], query_x)
        withheld = jnp.zeros((queries.shape[0], onehot.shape[-1]), queries.dtype)
        x = jnp.concatenate(
            [
                jnp.concatenate([features, onehot], axis=-1),
                jnp.concatenate([queries, withheld], axis=-1),
            ]
        )
        params = meta_params["snail"]
        depth = len(params["tc0"]) if "tc0" in params else 0  # fixed at init, see above
        context = features.shape[0]
        logits = network(onehot.shape[-1], depth, context).apply({"params": params}, x)
        return logits[context:]

    # The TC and attention blocks run in float32 whatever trainer.precision says.
    return MetaLearner(init=init, adapt=adapt, predict=predict, bf16=False, encoder_key="encoder")


@algos.register("snail", tasks=("classification",))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    attention = tuple(zip(cfg.attention_keys, cfg.attention_values, strict=True))
    return snail(net.embed, attention=attention, tc_filters=cfg.tc_filters)
