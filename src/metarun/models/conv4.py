"""Conv-4: the four-block convolutional backbone of the few-shot image benchmarks.

Each block is a 3×3 convolution (padding SAME), BatchNorm, ReLU and a 2×2 max-pool;
``strided=True`` is MAML's Omniglot variant, stride-2 convolutions and no pooling,
the last feature maps averaged over space (``tf.reduce_mean`` in MAML's ``forward_conv``). A
Dense layer named ``head`` maps the features to ``output_dim`` logits; ``embed`` returns
the features alone, for metric-based learners that use the encoder without a head.
Typical settings: 64 filters on 28×28×1 Omniglot, 32 on 84×84×3 mini-ImageNet (MAML).

BatchNorm is transductive, in training and evaluation alike: every call normalises with
the statistics of the batch it is given, as MAML's code does (``tf.contrib`` batch norm
left in training mode). There are no running averages, hence no ``batch_stats``
collection: ``apply({"params": p}, x)`` is a pure function, and the support and query
sets of each task in a ``vmap`` are normalised with their own statistics. The other
evaluation mode of the literature, running averages gathered during meta-training, is
not implemented. Consequence: a prediction depends on the rest of its batch, and a batch
of one image has no variance to normalise by after the last pooling.

Where we differ from MAML's code (``maml.py``, ``utils.py``):

* no convolution bias: BatchNorm subtracts the per-channel batch mean right after, which
  cancels a bias exactly (its gradient is zero);
* BatchNorm has a learned scale and offset (``tf.contrib`` used an offset only) and they
  are ordinary parameters, so MAML adapts them in the inner loop; MAML's code kept them
  out of its fast weights (meta-learned, never adapted);
* the head is Glorot-uniform for every dataset (MAML's Omniglot head was N(0, 1)).

References:
  Vinyals et al. "Matching Networks for One Shot Learning". NeurIPS 2016.
  https://arxiv.org/abs/1606.04080 (the architecture)
  Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks". ICML 2017, §5.2. https://arxiv.org/abs/1703.03400
  Snell, Swersky, Zemel. "Prototypical Networks for Few-shot Learning". NeurIPS 2017.
  https://arxiv.org/abs/1703.05175
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarun.models import models

# MAML's code initialises the convolutions with Glorot (Xavier) uniform. BatchNorm makes
# the forward pass invariant to their scale, but not the gradient (∝ 1/|W|), so the init
# sets the effective inner step: keeping MAML's lets its inner learning rates carry over.
_INIT = nn.initializers.glorot_uniform()


class BatchStatNorm(nn.Module):
    """BatchNorm over the batch and spatial axes of the current batch, without state.

    Hand-written because ``nn.BatchNorm`` always declares and writes running averages in
    a ``batch_stats`` collection, so ``apply`` would need ``mutable=["batch_stats"]``
    even with ``use_running_average=False``, for averages we never read.
    """

    epsilon: float = 1e-3  # tf.contrib's default, as in MAML's code

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        axes = tuple(range(x.ndim - 1))
        # Biased variance (÷N), as tf and PyTorch normalise in training mode.
        mean, var = jnp.mean(x, axes), jnp.var(x, axes)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class _Block(nn.Module):
    filters: int
    strided: bool

    @nn.compact
    def __call__(self, x):
        stride = 2 if self.strided else 1
        conv = nn.Conv(
            self.filters, (3, 3), stride, "SAME", use_bias=False, kernel_init=_INIT, name="conv"
        )
        x = nn.relu(BatchStatNorm(name="norm")(conv(x)))
        if self.strided:
            return x
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Conv4(nn.Module):
    """Four conv blocks and a ``head``; input ``[batch, H, W, C]``, output ``[batch, output_dim]``.

    Features: ``filters × (H/16) × (W/16)`` flattened after max-pooling (rounded down at
    each pool: 84 → 5, 28 → 1), or the spatial mean of the last ``filters`` maps when
    ``strided``, as MAML's code reduces its 2×2 Omniglot maps.
    """

    filters: int
    output_dim: int
    strided: bool = False

    def setup(self):
        self.blocks = [_Block(self.filters, self.strided) for _ in range(4)]
        self.head = nn.Dense(self.output_dim, kernel_init=_INIT)

    def embed(self, x):
        """The features before the head. ``init(..., method="embed")`` creates no head."""
        if x.ndim != 4:
            raise ValueError(f"Conv4 expects images [batch, H, W, C]; got shape {x.shape}")
        for block in self.blocks:
            x = block(x)
        if self.strided:
            return jnp.mean(x, axis=(1, 2))
        return x.reshape(x.shape[0], -1)

    def __call__(self, x):
        return self.head(self.embed(x))


@models.register("conv4")
def make(cfg, output_dim: int) -> Conv4:
    return Conv4(filters=cfg.filters, output_dim=output_dim, strided=cfg.strided)
