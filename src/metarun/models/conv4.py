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

On a CPU, im2col lays its work out for the caches (:data:`CPU_PATCH_BLOCK_BYTES`): a deep
layer runs in chunks of images whose patches stay in the cache, and the first layer's kernel
gradient multiplies its small patches transposed, so that XLA:CPU need not transpose the
large output gradient (max-pool MAML 14 -> 19 tasks/s on this project's 2-core CPU; ResNet-12
ProtoNet 140 -> 195 GFLOP/s; docs/speed.md).

A third, ``conv=direct`` (:func:`direct_conv3x3`), is for weights shared by a batch's tasks,
as a metric-based learner's encoder: XLA's convolution where XLA:CPU runs it well (the output
and the input gradient, no im2col buffer) and im2col's product for the kernel gradient.
MAML's per-task passes run slower with it (docs/speed.md has the figures and their
command), so ``auto`` does not pick it.

BatchNorm has four modes (``model.bn_mode``; :class:`BatchStatNorm`), the ones the
few-shot literature evaluates with (Bronskill et al. 2020, "TaskNorm", compares them):

* ``transductive``: every call normalises with the statistics of the batch it is given, in
  training and evaluation alike, as MAML's code does (``tf.contrib`` batch norm left in
  training mode). A task's query set is normalised with its own statistics, so a query's
  prediction depends on the other queries.
* ``support`` (MetaBN): the query set is normalised with the support set's statistics (under
  the same parameters), so each query is predicted independently of the others.
* ``task_norm`` (TaskNorm-I): the support statistics blended with each example's own
  (instance-norm) statistics, μ = α μ_support + (1 − α) μ_instance (and the variance
  likewise, with the spread of the means), α = sigmoid(a·n + b) learned per layer, n the
  support set's size; a and b start at 0 (α = 0.5).
* ``running``: conventional BatchNorm. Meta-training normalises with the batch's own
  statistics and keeps exponential averages of them (``running_mean``/``running_var``
  leaves among the parameters, updated by the meta-step, never by a gradient);
  evaluation normalises with those averages.

The query pass of ``support`` and ``task_norm`` runs on the support and query sets stacked,
with the statistics taken over the first ``context_rows`` rows (the support set)
(:func:`metarun.models.network`). Without running averages, ``apply({"params": p}, x)`` is
a pure function of the parameters and the batch; a batch of one image has no variance to
normalise by after the last pooling in ``transductive`` mode.

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

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarun.config import BN_MODES, CONV_IMPLS
from metarun.models import models

# MAML's code initialises the convolutions with Glorot (Xavier) uniform. BatchNorm makes
# the forward pass invariant to their scale, but not the gradient (∝ 1/|W|), so the init
# sets the effective inner step: keeping MAML's lets its inner learning rates carry over.
_INIT = nn.initializers.glorot_uniform()


# model.bn_mode (BN_MODES, from config): see the module docstring.
# The running averages' update, x̄ ← (1 − m) x̄ + m x (PyTorch's default momentum).
RUNNING_MOMENTUM = 0.1
RUNNING_STATS = ("running_mean", "running_var")
TASK_NORM_MIX = ("alpha_scale", "alpha_offset")  # task_norm's blend of batch and instance
# The parameters a BatchNorm layer has in some modes only (trainer.init_from: they start at
# their initial values when the other run trained in a mode without them).
BN_MODE_PARAMS = RUNNING_STATS + TASK_NORM_MIX


class BatchStatNorm(nn.Module):
    """BatchNorm over the batch and spatial axes, in one of the :data:`BN_MODES`.

    Hand-written because ``nn.BatchNorm`` keeps running averages in a mutable ``batch_stats``
    collection, which would make every forward pass of every algorithm stateful; here the
    averages of ``running`` mode are ordinary leaves of the parameters that the meta-step
    overwrites (:func:`metarun.models.update_running_stats`), and the other modes have none.

    Attributes:
      mode: one of :data:`BN_MODES`.
      training: ``running`` mode only: normalise with the batch (and let the meta-step
        average its statistics) rather than with the running averages.
      context_rows: ``support`` and ``task_norm``: the statistics are those of the first
        ``context_rows`` rows (the support set stacked before the queries); 0 = all rows.
    """

    mode: str = "transductive"
    training: bool = True
    context_rows: int = 0
    epsilon: float = 1e-3  # tf.contrib's default, as in MAML's code

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        axes = tuple(range(x.ndim - 1))
        # Statistics in float32 even under bfloat16 (trainer.precision=bf16): a bf16 mean
        # over thousands of activations loses most of its digits.
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float64 stays float64
        reference = x32[: self.context_rows] if self.context_rows else x32
        # Biased variance (÷N), as tf and PyTorch normalise in training mode.
        mean, var = jnp.mean(reference, axes), jnp.var(reference, axes)
        if self.mode == "running":
            running_mean = self.param(RUNNING_STATS[0], nn.initializers.zeros, (channels,))
            running_var = self.param(RUNNING_STATS[1], nn.initializers.ones, (channels,))
            if self.training:
                self.sow("norm_stats", "mean_var", (mean, var))  # for the running averages
            else:
                mean, var = running_mean, running_var
        elif self.mode == "task_norm":
            a = self.param(TASK_NORM_MIX[0], nn.initializers.zeros, ())
            b = self.param(TASK_NORM_MIX[1], nn.initializers.zeros, ())
            alpha = jax.nn.sigmoid(a * reference.shape[0] + b)
            spatial = tuple(range(1, x.ndim - 1))  # instance statistics: each example's own
            mean_in = jnp.mean(x32, spatial, keepdims=True)
            var_in = jnp.var(x32, spatial, keepdims=True)
            blended = alpha * mean + (1 - alpha) * mean_in
            var = alpha * (var + (mean - blended) ** 2) + (1 - alpha) * (
                var_in + (mean_in - blended) ** 2
            )
            mean = blended
        if self.mode in ("transductive", "running") and self.training and not self.context_rows:
            out = batch_norm(x32, scale, bias, self.epsilon)  # the same sums, a lighter gradient
        else:
            out = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """``(x − μ) / sqrt(σ² + ε) · scale + bias``, μ and σ² (biased) over all but the last axis.

    Its gradient is BatchNorm's textbook one, ``dx = scale · r / N · (N g − Σ g − x̂ Σ g x̂)``
    (``r = 1 / sqrt(σ² + ε)``, ``x̂ = (x − μ) r``): two reductions and one elementwise pass.
    JAX's derivative of the forward keeps the paths through μ and σ² apart, a few more passes
    over the activations: max-pool MAML 1,349 -> 1,151 ms a step, 5-shot 2,085 -> 1,994,
    ProtoNet 1,545 -> 1,384, first-order MAML 1,118 -> 1,067, strided MAML 371 -> 332
    (``trainer.task_chunk=1``, both steps compiled in one process and timed alternately,
    docs/speed.md). The same function; the gradients equal up to rounding
    (``tests/models/test_conv4.py``), to second order: the backward pass is plain JAX, which
    second-order MAML differentiates. Reverse mode only, as :func:`max_pool2x2`.

    :class:`BatchStatNorm` uses it where a batch is normalised with its own statistics; the
    modes that normalise with other rows' statistics or running averages keep JAX's
    derivative.
    """
    return _normalized(x, epsilon)[0] * scale + bias


def _normalized(x, epsilon):
    axes = tuple(range(x.ndim - 1))
    mean, var = jnp.mean(x, axes), jnp.var(x, axes)
    r = jax.lax.rsqrt(var + epsilon)
    return (x - mean) * r, mean, r


def _batch_norm_fwd(x, scale, bias, epsilon):
    x_hat, mean, r = _normalized(x, epsilon)
    return x_hat * scale + bias, (x, mean, r, scale)


def _batch_norm_bwd(epsilon, saved, g):
    x, mean, r, scale = saved
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    x_hat = (x - mean) * r
    d_bias = jnp.sum(g, axes)
    d_scale = jnp.sum(g * x_hat, axes)
    dx = (scale * r / n) * (n * g - d_bias - x_hat * d_scale)
    return dx, d_scale, d_bias


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def resolve_conv(conv: str) -> str:
    """``auto`` -> ``im2col`` on CPU and GPU, ``xla`` on TPU (the module docstring says why)."""
    if conv not in CONV_IMPLS:
        raise ValueError(f"conv must be one of {CONV_IMPLS}, got {conv!r}")
    if conv == "auto":
        return "im2col" if jax.default_backend() in ("cpu", "gpu") else "xla"
    return conv


def _patches(x: jax.Array, stride: int) -> jax.Array:
    """The im2col patches of a 3×3 SAME convolution: ``[N, out_h, out_w, 9 C]``, the nine
    shifted (strided) slices of the padded input on the channel axis, ordered (i, j, c) as
    an HWIO kernel reshapes."""
    _, height, width, _ = x.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    # SAME padding as XLA pads it: the odd pixel, if any, goes after.
    pad_h = max((out_h - 1) * stride + 3 - height, 0)
    pad_w = max((out_w - 1) * stride + 3 - width, 0)
    x = jnp.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    return jnp.concatenate(
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
    )


# On a CPU, im2col computes a deep stride-1 layer in chunks of images whose patches (nine
# times the chunk's input) take at most this many bytes, so that they stay in the caches
# (32 MiB of L3 on this project's CPU) between being written and multiplied, forward and
# backward. The bound is per task: under ``vmap`` over a chunk of tasks each loop step holds
# that many tasks' patches, so it is met with ``trainer.task_chunk=1``, the CPU's setting.
# 8 MiB holds 18 of Omniglot's 14×14×64 maps, so a task's 75 queries go in chunks of 15:
# max-pool MAML 13.4-14.1 -> 16.1-16.3 tasks/s; chunks of 5 images: 15.8, of 25: 14.5
# (``scripts/bench.py --workload maml-omniglot-maxpool --set trainer.task_chunk=1``).
CPU_PATCH_BLOCK_BYTES = 8 * 2**20


def im2col_conv3x3(
    x: jax.Array, kernel: jax.Array, stride: int, block_bytes: int | None = None
) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, stride, "SAME")`` for a 3×3 NHWC/HWIO kernel.

    Written out because neither XLA:CPU nor cuDNN has a fast path for the grouped
    convolutions that ``vmap`` makes of per-task kernels, while both run the batched matrix
    products well.

    ``block_bytes`` (a CPU's layout, :data:`CPU_PATCH_BLOCK_BYTES`; ``None`` on a GPU, whose
    products want the whole batch): a stride-1 layer with a few input channels (an image's)
    multiplies its patches stored transposed (:func:`_shallow_conv`); a deeper one runs in
    chunks of images whose patches take at most ``block_bytes`` (:func:`_blocked_conv`).
    The same sums either way.
    """
    if block_bytes is not None and stride == 1:
        if x.shape[-1] < _SHALLOW_CHANNELS:
            return _shallow_conv(x, kernel, block_bytes)
        return _blocked_conv(x, kernel, block_bytes)
    return _patches(x, stride) @ kernel.reshape(9 * x.shape[-1], -1)


# Fewer input channels than this (an image's 1 or 3, or a tiny test model's maps): patches
# small enough to store transposed whole.
_SHALLOW_CHANNELS = 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shallow_conv(x: jax.Array, kernel: jax.Array, block_bytes: int) -> jax.Array:
    """A stride-1 layer on an image: im2col's product, whose kernel gradient multiplies the
    patches stored transposed, ``[9 C, pixels] @ [pixels, filters]``, the layouts both
    operands are stored in (:func:`_shallow_kernel_grad`).

    XLA:CPU otherwise transposes the output gradient for it instead, inside the loop fusion
    of BatchNorm's and the max-pool's backward passes that computes it, written in the
    transposed order: the transposed patches are a ninth of its size (``C = 1``). A custom
    VJP rather than the transposed patches in the forward product too: there XLA's layout
    assignment lays them out untransposed again when the kernel is shared by the tasks of a
    batch (ProtoNet's encoder), and runs the product on Eigen rather than YNNPACK. Max-pool
    ProtoNet 1,807 -> 1,593 ms a step, first-order MAML 1,175 -> 1,145 (``trainer.task_chunk=1``,
    both steps compiled in one process and timed alternately, docs/speed.md); second-order
    MAML level (its per-task kernels kept the transposed layout).
    Closed under differentiation, so second-order MAML differentiates through it; reverse
    mode only, as :func:`direct_conv3x3`. ``block_bytes`` is for the input gradient, a deep
    layer's convolution.
    """
    return _shallow_product(x, kernel)


def _shallow_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
    n, height, width, channels = x.shape
    out = _patches(x, 1).reshape(-1, 9 * channels) @ kernel.reshape(9 * channels, -1)
    return out.reshape(n, height, width, -1)


def _shallow_conv_fwd(x, kernel, block_bytes):
    return _shallow_product(x, kernel), (x, kernel)


def _shallow_conv_bwd(block_bytes, saved, g):
    x, kernel = saved
    # The input gradient is itself a stride-1 convolution, of g by the flipped kernel.
    dx = im2col_conv3x3(g, _flipped(kernel), 1, block_bytes)
    return dx, _shallow_kernel_grad(x, g, block_bytes)


_shallow_conv.defvjp(_shallow_conv_fwd, _shallow_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shallow_kernel_grad(x: jax.Array, g: jax.Array, block_bytes: int) -> jax.Array:
    """``dW[i, j, c, f] = Σ_{n,h,w} x_pad[n, h+i, w+j, c] g[n, h, w, f]``, the kernel
    gradient of ``_shallow_conv(x, ·)`` at output gradient ``g``, with the patches transposed
    (the barrier keeps XLA from folding the transpose into the product's dimensions)."""
    channels, filters = x.shape[-1], g.shape[-1]
    patches_t = jax.lax.optimization_barrier(_patches(x, 1).reshape(-1, 9 * channels).T)
    return (patches_t @ g.reshape(-1, filters)).reshape(3, 3, channels, filters)


def _shallow_kernel_grad_fwd(x, g, block_bytes):
    return _shallow_kernel_grad(x, g, block_bytes), (x, g)


def _shallow_kernel_grad_bwd(block_bytes, saved, d):
    x, g = saved
    # Bilinear in (x, g), as _kernel_grad.
    return im2col_conv3x3(g, _flipped(d), 1, block_bytes), _shallow_conv(x, d, block_bytes)


_shallow_kernel_grad.defvjp(_shallow_kernel_grad_fwd, _shallow_kernel_grad_bwd)


def _blocked_conv(x: jax.Array, kernel: jax.Array, block_bytes: int) -> jax.Array:
    """A stride-1 layer in chunks of images (a loop), each chunk's patches at most
    ``block_bytes``: the largest divisor of the batch that fits, so the chunks are equal.

    Each chunk is recomputed on the backward pass (``jax.checkpoint``), so that its patches
    are built in the cache there too rather than saved for the kernel gradient.
    """
    n, height, width, channels = x.shape
    per_image = height * width * 9 * channels * x.dtype.itemsize
    fits = max(1, block_bytes // per_image)
    chunk = max(d for d in range(1, min(fits, n) + 1) if n % d == 0)
    flat_kernel = kernel.reshape(9 * channels, -1)
    if chunk == n:
        return _patches(x, 1) @ flat_kernel

    @jax.checkpoint
    def conv(carry, images):
        return carry, _patches(images, 1) @ flat_kernel

    # lax.map's loop, written as the scan it is: scripts/bench.py counts the FLOPs of a step
    # with jax.lax.scan unrolled (XLA's cost analysis counts a loop's body once).
    _, out = jax.lax.scan(conv, None, x.reshape(n // chunk, chunk, height, width, channels))
    return out.reshape(n, height, width, -1)


def _xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _flipped(kernel: jax.Array) -> jax.Array:
    """The kernel of a stride-1 SAME convolution's input gradient: flipped in space, input
    and output channels swapped."""
    return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


def direct_conv3x3(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, stride, "SAME")``, model.conv=direct.

    Stride 1: XLA's convolution for the output and for the input gradient (XLA:CPU runs
    both as direct convolutions, with no im2col buffer), the kernel gradient as im2col's
    matrix product (:func:`_kernel_grad`; XLA's own, a convolution with an H×W window, is
    slower on XLA:CPU: max-pool ProtoNet 7.2 tasks/s with ``conv=xla``, 13.5 with
    ``direct``, ``scripts/bench.py``). Custom VJPs closed under differentiation, so second-order
    MAML differentiates through them; reverse mode only (``jax.jvp`` and ``jacfwd`` refuse
    a custom VJP; nothing in metarun uses forward mode). Stride 2 (``strided`` Conv-4) is
    im2col's.
    """
    if stride != 1:
        return im2col_conv3x3(x, kernel, stride)
    return _direct(x, kernel)


@jax.custom_vjp
def _direct(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _xla_conv(x, kernel)


def _direct_fwd(x, kernel):
    return _xla_conv(x, kernel), (x, kernel)


def _direct_bwd(saved, g):
    x, kernel = saved
    # The input gradient is itself a stride-1 convolution, of g by the flipped kernel.
    return _direct(g, _flipped(kernel)), _kernel_grad(x, g)


_direct.defvjp(_direct_fwd, _direct_bwd)


@jax.custom_vjp
def _kernel_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """``dW[i, j, c, f] = Σ_{n,h,w} x_pad[n, h+i, w+j, c] g[n, h, w, f]``, the kernel
    gradient of ``_direct(x, ·)`` at output gradient ``g``."""
    channels, filters = x.shape[-1], g.shape[-1]
    return jnp.einsum("nhwk,nhwf->kf", _patches(x, 1), g).reshape(3, 3, channels, filters)


def _kernel_grad_fwd(x, g):
    return _kernel_grad(x, g), (x, g)


def _kernel_grad_bwd(saved, d):
    x, g = saved
    # Bilinear in (x, g): ⟨d, dW(x, g)⟩ = ⟨_direct(x, d), g⟩ = ⟨x, _direct(g, flipped d)⟩.
    return _direct(g, _flipped(d)), _direct(x, d)


_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


@jax.custom_vjp
def max_pool2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, VALID (odd edges dropped), as the maximum of four strided slices.

    Equal to ``nn.max_pool(x, (2, 2), (2, 2))``, which XLA:CPU runs slower (``reduce_window``
    and its scatter gradient). Not ``x.reshape(..., 2, ..., 2, C).max((2, 4))``: under ``vmap``,
    ``jit(grad(...))`` of that form gave wrong gradients on XLA:CPU (jax 0.10.2; eager and
    finite differences disagreed with it), see ``test_max_pool_gradient_under_vmap_and_jit``.

    Its gradient (:func:`_max_pool_bwd`) is JAX's own for these maxima, written as one
    elementwise pass over the input's 2×2 windows: differentiated by JAX, the strided slices'
    transposes are padded copies of the input's size, two levels of them. Max-pool ProtoNet
    1,927 -> 1,788 ms a step (``protonet-omniglot-maxpool``, ``trainer.task_chunk=1``: both
    steps compiled in one process and timed alternately, 5 rounds of 4 steps, medians);
    second-order MAML level (1,629 -> 1,547 and 1,303 -> 1,322 in two such runs). Reverse
    mode only, as :func:`direct_conv3x3` (``jax.jvp`` refuses a custom VJP).
    """
    height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :height, :width]
    rows = jnp.maximum(x[:, 0::2], x[:, 1::2])
    return jnp.maximum(rows[:, :, 0::2], rows[:, :, 1::2])


def _max_weight(a: jax.Array, b: jax.Array) -> jax.Array:
    """The derivative of ``jnp.maximum(a, b)`` with respect to ``a``: 1 where ``a`` is the
    larger, 0.5 at a tie, 0 where ``b`` is the larger or either is NaN (``lax.max``'s rule)."""
    return jnp.where(a > b, 1.0, jnp.where(a == b, 0.5, 0.0))


def _max_pool_fwd(x):
    return max_pool2x2(x), x


def _max_pool_bwd(x, g):
    n, height, width, channels = x.shape
    h, w = height // 2, width // 2
    # The 2×2 windows as axes of a view: x6[n, i, a, j, b, c] = x[n, 2i + a, 2j + b, c].
    x6 = x[:, : 2 * h, : 2 * w].reshape(n, h, 2, w, 2, channels)
    rows = jnp.maximum(x6[:, :, :1], x6[:, :, 1:])  # the forward's first maxima
    weight = _max_weight(x6, jnp.flip(x6, 2)) * _max_weight(rows, jnp.flip(rows, 4))
    dx = (g[:, :, None, :, None, :] * weight.astype(g.dtype)).reshape(n, 2 * h, 2 * w, -1)
    return (jnp.pad(dx, ((0, 0), (0, height - 2 * h), (0, width - 2 * w), (0, 0))),)


max_pool2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def norm_settings(model) -> dict:
    """The :class:`BatchStatNorm` attributes of a model's ``bn_*`` and ``context_rows``."""
    if model.bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {model.bn_mode!r}")
    return {
        "mode": model.bn_mode,
        "training": model.bn_training,
        "context_rows": model.context_rows,
    }


class Conv3x3(nn.Module):
    """A 3×3 SAME convolution without bias; the parameter is ``kernel``, HWIO, as ``nn.Conv``."""

    filters: int
    stride: int
    conv: str  # "xla", "im2col" or "direct", already resolved

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _INIT, (3, 3, x.shape[-1], self.filters))
        if self.conv == "im2col":
            block = CPU_PATCH_BLOCK_BYTES if jax.default_backend() == "cpu" else None
            return im2col_conv3x3(x, kernel, self.stride, block)
        if self.conv == "direct":
            return direct_conv3x3(x, kernel, self.stride)
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
    norm: dict  # BatchStatNorm's attributes

    @nn.compact
    def __call__(self, x):
        stride = 2 if self.strided else 1
        x = Conv3x3(self.filters, stride, self.conv, name="conv")(x)
        x = nn.relu(BatchStatNorm(**self.norm, name="norm")(x))
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
    conv: str = "auto"  # "auto", "xla", "im2col" or "direct": see the module docstring
    bn_mode: str = "transductive"  # BatchStatNorm's mode, training and context_rows
    bn_training: bool = True
    context_rows: int = 0

    def setup(self):
        conv = resolve_conv(self.conv)
        norm = norm_settings(self)
        self.blocks = [_Block(self.filters, self.strided, conv, norm) for _ in range(4)]
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
    return Conv4(
        filters=cfg.filters,
        output_dim=output_dim,
        strided=cfg.strided,
        conv=cfg.conv,
        bn_mode=cfg.bn_mode,
    )
