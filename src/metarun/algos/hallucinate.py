"""Learning from imagined support data: a hallucinator G adds M feature vectors per class.

    x̃ = G([f_φ(x), z]),   z ~ N(0, I_noise_dim),   x a support example of the class (its seed)
    S' = S ∪ {(x̃_kj, k) : k = 1..ways, j = 1..M}

G is a three-layer MLP with leaky ReLU on ``[features, noise]``, as in the paper; the
metric learners (``protonet``, ``matchingnet``) compute their prototypes or their attention
memory from the augmented support set S' (``algo.hallucinate=M``). G has no loss of its own:
the meta-objective, through the imagined examples, is its only training signal.

Seeds: the j-th imagined example of class k grows from the (j mod n_k)-th support example of
class k in episode order (n_k its support examples): 1-shot seeds every one from the one
example, k-shot cycles through them, so each seed is used ⌊M/n_k⌋ or ⌈M/n_k⌉ times.

Noise: ``adapt(meta_params, support_x, support_y, ...)`` has no key, and must stay a pure
function of its inputs so that evaluation, ``metarun.load(...).predict`` and a vmapped
meta-batch against a loop give the same numbers. The noise key is therefore a fixed key
folded with a hash of the support set's bits (its inputs and labels, :func:`episode_key`):
the same episode always imagines the same examples, different episodes (every training
episode is freshly sampled) imagine different ones. The hash reads the raw inputs, not their
features, so the noise does not move as the encoder learns, and no gradient flows through it.

Initialisation: G starts as the identity on its seed (each weight matrix a rectangular
identity, the noise's rows and the biases zero; Conv-4's features are non-negative, after a
ReLU, so leaky ReLU passes them), so a learner that hallucinates starts as the one that does
not (1-shot: the same prototypes), and the meta-objective decides how far G moves from its
seeds (``tests/algos/test_hallucinate.py`` checks the identity start). This start is a design
choice, not one measured against others on validation. At zero the noise's weights get a
gradient from every episode (δ zᵀ) but none in expectation (z is independent of everything
else): they move by the episodes' fluctuations, and then as far as
noise helps the meta-objective. ``algo.hallucinator_width`` defaults to the feature width,
where these identities are exact.

Differences from the paper: G works on the configured encoder's features (Conv-4 by default)
rather than a pre-trained ResNet-10's, trained jointly from the start; it runs in float32
under ``trainer.precision=bf16``.

Reference: Wang, Girshick, Hebert, Hariharan. "Low-Shot Learning from Imaginary Data".
CVPR 2018. https://arxiv.org/abs/1801.05401
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarun.types import Array, Params, PRNGKey

# The key every episode's noise key is folded from (any constant would do).
NOISE_SEED = 1801_05401


def _identity(noise_rows: int = 0):
    """A kernel initialiser: a rectangular identity, with zero rows for the last
    ``noise_rows`` inputs (the noise)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        eye = jnp.eye(shape[0] - noise_rows, shape[1], dtype=dtype)
        return jnp.concatenate([eye, jnp.zeros((noise_rows, shape[1]), dtype)])

    return init


class Hallucinator(nn.Module):
    """G(x, z): ``[n, features], [n, noise_dim] -> [n, features]``, a three-layer MLP."""

    features: int  # d, the encoder's feature width
    width: int  # the two hidden layers'
    noise_dim: int

    @nn.compact
    def __call__(self, x: Array, z: Array) -> Array:
        h = jnp.concatenate([x, z], axis=-1)
        h = nn.leaky_relu(nn.Dense(self.width, kernel_init=_identity(self.noise_dim))(h))
        h = nn.leaky_relu(nn.Dense(self.width, kernel_init=_identity())(h))
        return nn.Dense(self.features, kernel_init=_identity())(h)


def init(features: int, width: int | None, noise_dim: int, key: PRNGKey) -> Params:
    """G's parameters for features of width ``features``; ``width`` None: the feature width."""
    module = Hallucinator(features, features if width is None else width, noise_dim)
    return module.init(key, jnp.zeros((1, features)), jnp.zeros((1, noise_dim)))["params"]


def init_like(
    embed, encoder: Params, x: Array, width: int | None, noise_dim: int, key: PRNGKey
) -> Params:
    """G's parameters for the features ``embed(encoder, x)`` (their shape only: nothing runs)."""
    return init(jax.eval_shape(embed, encoder, x).shape[-1], width, noise_dim, key)


def options(cfg) -> dict:
    """The learner's keyword arguments from its algo config (``hallucinate``, the width, the
    noise), for ``from_config``."""
    return {
        "hallucinate": cfg.hallucinate,
        "hallucinator_width": cfg.hallucinator_width,
        "noise_dim": cfg.noise_dim,
    }


def _mix(bits: Array) -> Array:
    """MurmurHash3's 32-bit finaliser, elementwise on ``uint32``: every bit reaches every bit."""
    bits = bits ^ (bits >> 16)
    bits = bits * jnp.uint32(0x85EBCA6B)
    bits = bits ^ (bits >> 13)
    bits = bits * jnp.uint32(0xC2B2AE35)
    return bits ^ (bits >> 16)


def episode_key(support_x: Array, support_y: Array) -> PRNGKey:
    """The noise key of an episode: ``NOISE_SEED`` folded with a 32-bit hash of the support
    set's bits (inputs as float32, labels), each element mixed and weighted by its position;
    a pure function of the support set, the same on every device and in every program."""
    x = jax.lax.bitcast_convert_type(support_x.astype(jnp.float32), jnp.uint32).ravel()
    bits = jnp.concatenate([x, support_y.astype(jnp.uint32).ravel()])
    position = jnp.arange(bits.size, dtype=jnp.uint32)
    digest = jnp.sum(_mix(_mix(bits) ^ (position * jnp.uint32(0x9E3779B9))), dtype=jnp.uint32)
    return jax.random.fold_in(jax.random.PRNGKey(NOISE_SEED), digest)


def seeds(labels: Array, ways: int, m: int) -> Array:
    """``[ways · m]``: the support index of each imagined example's seed, class-major; the
    j-th of class k is the (j mod n_k)-th example of class k in episode order (every class
    is assumed to have one)."""
    order = jnp.argsort(labels, stable=True)  # the support set grouped by class
    counts = jnp.sum(jax.nn.one_hot(labels, ways, dtype=jnp.int32), axis=0)
    starts = jnp.cumsum(counts) - counts
    j = jnp.arange(m)
    return order[(starts[:, None] + j[None] % jnp.maximum(counts, 1)[:, None]).ravel()]


def augment(
    params: Params,
    features: Array,
    labels: Array,
    ways: int,
    m: int,
    key: PRNGKey,
) -> tuple[Array, Array]:
    """The support set with ``m`` imagined examples per class appended.

    Args:
      params: G's parameters (:func:`init`).
      features: ``[n, d]``, the support set's features f_φ(x).
      labels: ``[n]``, their classes in 0..ways-1.
      ways: the number of classes (static).
      m: imagined examples per class (static; 0 returns the inputs).
      key: the noise key (:func:`episode_key`).

    Returns:
      ``([n + ways·m, d], [n + ways·m])``: the real examples, then the imagined ones class
      by class.
    """
    if m == 0:
        return features, labels
    labels = jnp.asarray(labels)
    d = features.shape[-1]
    inputs, width = params["Dense_0"]["kernel"].shape  # G's sizes, from its parameters
    x = features[seeds(labels, ways, m)]
    z = jax.random.normal(key, (ways * m, inputs - d), features.dtype)
    imagined = Hallucinator(d, width, inputs - d).apply({"params": params}, x, z)
    new_labels = jnp.repeat(jnp.arange(ways, dtype=labels.dtype), m)
    return (
        jnp.concatenate([features, imagined.astype(features.dtype)]),
        jnp.concatenate([labels, new_labels]),
    )


def augment_episode(
    params: Params, features: Array, support_x: Array, support_y: Array, ways: int, m: int
) -> tuple[Array, Array]:
    """:func:`augment` the support set's ``features`` with the noise of its episode
    (:func:`episode_key` of ``support_x`` and ``support_y``)."""
    key = episode_key(support_x, support_y)
    return augment(params, features, support_y, ways, m, key)
