"""Conv-4: the four-block convolutional backbone of the few-shot image benchmarks.

Each block is a 3×3 convolution (padding SAME), BatchNorm, ReLU and a 2×2 max-pool;
``strided=True`` is MAML's Omniglot variant, stride-2 convolutions and no pooling,
the last feature maps averaged over space (``tf.reduce_mean`` in MAML's ``forward_conv``). A
Dense layer named ``head`` maps the features to ``output_dim`` logits; ``embed`` returns
the features alone and ``feature_maps`` the last maps, for metric-based learners that use the
encoder without a head.
Typical settings: 64 filters on 28×28×1 Omniglot, 32 on 84×84×3 mini-ImageNet (MAML).

Two implementations of the same convolution, chosen per backend (``conv="auto"``): im2col on
CPU and GPU (nine shifted slices of the input concatenated on the channel axis and one matrix
product), XLA's own convolution on TPU (not measured). They differ for per-task weights: under
``vmap`` over tasks (MAML's adapted parameters) XLA turns the convolution into a grouped one.
XLA:CPU runs that about 24× slower than the equivalent batched matrix product (second-order
MAML, 32 tasks of 5-way 1-shot on 28×28, strided: 29 s per meta-step against 1.2 s;
``scripts/bench.py --workload maml-omniglot-xlaconv --workload maml-omniglot``). On an H100,
cuDNN runs it with generic fp32 kernels plus layout transposes, 1,345 kernels per step:
3,318 tasks/s with ``conv=xla`` against 9,013 with im2col's batched matrix products on the
tensor cores (``scripts/bench.py --workload maml-omniglot --set model.conv=xla|im2col``,
``scripts/profile_step.py`` for the kernels).

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

from metarun.config import CONV_IMPLS
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
        # Statistics in float32 even under bfloat16 (trainer.precision=bf16): a bf16 mean
        # over thousands of activations loses most of its digits.
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float64 stays float64
        # Biased variance (÷N), as tf and PyTorch normalise in training mode.
        mean, var = jnp.mean(x32, axes), jnp.var(x32, axes)
        out = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return out.astype(x.dtype)


def resolve_conv(conv: str) -> str:
    """``auto`` -> ``im2col`` on CPU and GPU, ``xla`` on TPU (the module docstring says why)."""
    if conv not in CONV_IMPLS:
        raise ValueError(f"conv must be one of {CONV_IMPLS}, got {conv!r}")
    if conv == "auto":
        return "im2col" if jax.default_backend() in ("cpu", "gpu") else "xla"
    return conv


def im2col_conv3x3(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, stride, "SAME")`` for a 3×3 NHWC/HWIO kernel.

    Written out because neither XLA:CPU nor cuDNN has a fast path for the grouped
    convolutions that ``vmap`` makes of per-task kernels, while both run the batched matrix
    products well.
    """
    _, height, width, channels = x.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    # SAME padding as XLA pads it: the odd pixel, if any, goes after.
    pad_h = max((out_h - 1) * stride + 3 - height, 0)
    pad_w = max((out_w - 1) * stride + 3 - width, 0)
    x = jnp.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    patches = jnp.concatenate(
        [
            x[
                :,
                i : i + (out_h - 1) * stride + 1 : stride,
                j : j + (out_w - 1) * stride + 1 : stride,
            ]
            for i in range(3)
            for j in range(3)
        ],
        axis=-1,
    )  # [N, out_h, out_w, 9 C], ordered (i, j, c) as the HWIO kernel reshapes
    return patches @ kernel.reshape(9 * channels, -1)


def max_pool2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, VALID (odd edges dropped), as the maximum of four strided slices.

    Equal to ``nn.max_pool(x, (2, 2), (2, 2))``, which XLA:CPU runs slower (``reduce_window``
    and its scatter gradient). Not ``x.reshape(..., 2, ..., 2, C).max((2, 4))``: under ``vmap``,
    ``jit(grad(...))`` of that form gave wrong gradients on XLA:CPU (jax 0.10.2; eager and
    finite differences disagreed with it), see ``test_max_pool_gradient_under_vmap_and_jit``.
    """
    height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :height, :width]
    rows = jnp.maximum(x[:, 0::2], x[:, 1::2])
    return jnp.maximum(rows[:, :, 0::2], rows[:, :, 1::2])


class Conv3x3(nn.Module):
    """A 3×3 SAME convolution without bias; the parameter is ``kernel``, HWIO, as ``nn.Conv``."""

    filters: int
    stride: int
    conv: str  # "xla" or "im2col", already resolved

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _INIT, (3, 3, x.shape[-1], self.filters))
        if self.conv == "im2col":
            return im2col_conv3x3(x, kernel, self.stride)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (self.stride, self.stride),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class _Block(nn.Module):
    filters: int
    strided: bool
    conv: str

    @nn.compact
    def __call__(self, x):
        stride = 2 if self.strided else 1
        x = Conv3x3(self.filters, stride, self.conv, name="conv")(x)
        x = nn.relu(BatchStatNorm(name="norm")(x))
        return x if self.strided else max_pool2x2(x)


class Conv4(nn.Module):
    """Four conv blocks and a ``head``; input ``[batch, H, W, C]``, output ``[batch, output_dim]``.

    Features: ``filters × (H/16) × (W/16)`` flattened after max-pooling (rounded down at
    each pool: 84 → 5, 28 → 1), or the spatial mean of the last ``filters`` maps when
    ``strided``, as MAML's code reduces its 2×2 Omniglot maps.
    """

    filters: int
    output_dim: int
    strided: bool = False
    conv: str = "auto"  # "auto", "xla" or "im2col": see the module docstring

    def setup(self):
        conv = resolve_conv(self.conv)
        self.blocks = [_Block(self.filters, self.strided, conv) for _ in range(4)]
        self.head = nn.Dense(self.output_dim, kernel_init=_INIT)

    def feature_maps(self, x):
        """The last block's maps ``[batch, h, w, filters]`` (Relation Networks compare them)."""
        if x.ndim != 4:
            raise ValueError(f"Conv4 expects images [batch, H, W, C]; got shape {x.shape}")
        if not self.strided and min(x.shape[1:3]) < 16:
            raise ValueError(
                f"Conv4 with max-pooling needs images of at least 16×16 (four halvings), got "
                f"{x.shape[1]}×{x.shape[2]}: use model.strided=true or a larger data.image_size"
            )
        for block in self.blocks:
            x = block(x)
        return x

    def embed(self, x):
        """The features before the head."""
        x = self.feature_maps(x)
        if self.strided:
            return jnp.mean(x, axis=(1, 2))
        return x.reshape(x.shape[0], -1)

    def __call__(self, x):
        return self.head(self.embed(x))


@models.register("conv4")
def make(cfg, output_dim: int) -> Conv4:
    return Conv4(filters=cfg.filters, output_dim=output_dim, strided=cfg.strided, conv=cfg.conv)
