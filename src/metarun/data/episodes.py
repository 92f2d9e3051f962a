"""N-way K-shot classification episodes, sampled inside jit from a dataset held on the device.

The split is one ``uint8 [classes, samples, H, W, C]`` array. An episode (Vinyals et al., 2016,
https://arxiv.org/abs/1606.04080) picks ``ways`` classes, gives them the labels 0..ways-1 in random
order, and splits ``shots + queries`` distinct samples of each class into support and query.
Everything is a pure function of a PRNG key with static shapes, so a meta-batch is
``jax.vmap(sampler)(keys)`` and sampling costs no host round trip.

Both sets come grouped by label, not shuffled: support is ``shots`` examples of label 0, then
``shots`` of label 1, and so on; query likewise with ``queries``. Every learner in metarun is
order-invariant over a set, so shuffling would only cost a gather.

Rotations (Santoro et al., 2016; used by MAML and Prototypical Networks on Omniglot) turn each
class into four, the same images turned by 0, 90, 180 and 270 degrees. We follow the
Prototypical Networks code: an episode draws from the ``4 * classes`` virtual classes, so one
character may appear twice in an episode under two rotations. MAML's code instead draws distinct
characters and then a rotation for each; the two differ in about 0.6% of 5-way episodes over 4800
virtual classes.

Pre-training baselines learn from ordinary mini-batches of the train split instead
(:func:`sample_batch`): examples drawn from all its classes, labelled by their class in the split.
They are sampled on the device in the same way, so that they serve as another kind of training
task (``TaskSource.batches``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from metarun.config import ConfigError
from metarun.data import arrays
from metarun.types import CLASSIFICATION, DataSpec, Episode, PRNGKey, TaskSource


def _check(shape, dtype, *, ways: int, shots: int, queries: int, rotations: bool) -> None:
    """Raises ValueError, naming the argument, for a request the split cannot serve."""
    if len(shape) != 5 or dtype != jnp.uint8:
        raise ValueError(f"images must be uint8 [classes, samples, H, W, C], got {dtype} {shape}")
    classes, samples, height, width, _ = shape
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {name}={value}")
    virtual = 4 * classes if rotations else classes
    if ways > virtual:
        pool = f"4 x {classes} = {virtual} rotated classes" if rotations else f"{classes} classes"
        raise ValueError(f"ways={ways} exceeds the {pool}")
    if shots + queries > samples:
        raise ValueError(
            f"shots + queries = {shots} + {queries} exceeds the {samples} samples per class"
        )
    if rotations and height != width:
        raise ValueError(f"rotations=True needs square images, got H x W = {height} x {width}")


def _rotate(turn: jax.Array, images: jax.Array) -> jax.Array:
    """``images [n, H, W, C]`` turned ``turn * 90`` degrees counter-clockwise, as np.rot90."""
    branches = [functools.partial(jnp.rot90, k=k, axes=(1, 2)) for k in range(4)]
    return jax.lax.switch(turn, branches, images)


def sample_episode(
    key: PRNGKey, images: jax.Array, *, ways: int, shots: int, queries: int, rotations: bool = False
) -> Episode:
    """One ``ways``-way ``shots``-shot episode with ``queries`` query examples per class.

    Args:
      key: the only source of randomness; the same key gives the same episode.
      images: ``uint8 [classes, samples, H, W, C]``, values 0..255.
      ways, shots, queries: static episode sizes.
      rotations: draw from ``4 * classes`` virtual classes, class ``c`` turned by ``k * 90``
        degrees counter-clockwise (virtual class ``4 c + k``); needs ``H == W``.

    Returns:
      An :class:`Episode`: ``support_x`` float32 ``[ways * shots, H, W, C]`` in [0, 1],
      ``support_y`` int32 ``[ways * shots]``, ``query_x`` ``[ways * queries, H, W, C]``,
      ``query_y`` int32 ``[ways * queries]``; both sets grouped by label (0, 0, ..., 1, 1, ...).
    """
    _check(images.shape, images.dtype, ways=ways, shots=shots, queries=queries, rotations=rotations)
    classes, samples, height, width, channels = images.shape
    per_class = shots + queries
    k_classes, k_samples = jax.random.split(key)

    # Sampling without replacement as the top k of i.i.d. uniform keys: O(n) per draw, where
    # jax.random.choice(replace=False) sorts a full permutation, and integer keys miss XLA's
    # float top_k and sort too; both are 20-50x slower on CPU for 4800 classes. The order of the
    # top k is itself uniformly random, so label i -> chosen[i] is already a random labelling
    # and needs no second permutation. Keys have 23 random bits; a tie at the k-th place (chance
    # about n / 2^23, 6e-4 for 4800 classes) goes to the lower index, a bias no run can see.
    virtual = 4 * classes if rotations else classes
    chosen = jax.lax.top_k(jax.random.uniform(k_classes, (virtual,)), ways)[1]
    # Only the chosen classes draw samples: ways x samples keys, whatever the number of classes.
    picked = jax.lax.top_k(jax.random.uniform(k_samples, (ways, samples)), per_class)[1]

    if rotations:
        cls, turn = jnp.divmod(chosen, 4)
        # Only the sampled images are turned, never the split. Under vmap the switch becomes a
        # select over all four branches, so each is turned four ways: on CPU that is as fast as no
        # rotation, where folding the rotation into the gather (per-pixel indices) was 3-5x slower.
        x = jax.vmap(_rotate)(turn, images[cls[:, None], picked])
    else:
        x = images[chosen[:, None], picked]
    x = x.astype(jnp.float32) * arrays.PIXEL_SCALE  # [ways, shots + queries, H, W, C]

    labels = jnp.arange(ways, dtype=jnp.int32)
    image_shape = (height, width, channels)
    return Episode(
        support_x=x[:, :shots].reshape(ways * shots, *image_shape),
        support_y=jnp.repeat(labels, shots),
        query_x=x[:, shots:].reshape(ways * queries, *image_shape),
        query_y=jnp.repeat(labels, queries),
        ways=ways,
    )


def sample_batch(
    key: PRNGKey, images: jax.Array, *, support: int, query: int, rotations: bool = False
) -> Episode:
    """A mini-batch of ``support + query`` examples of the whole split, as one :class:`Episode`.

    Each example is a uniform draw from every (class, sample) pair of ``images``, with
    replacement; its label is its class's index in the split (virtual class ``4 c + k`` with
    ``rotations``, as :func:`sample_episode` turns them). ``ways`` is the number of (virtual)
    classes, the width of a classifier over all of them. The two sets are two parts of one
    batch: a learner that pre-trains fits both.
    """
    classes, samples, height, width, channels = images.shape
    virtual = 4 * classes if rotations else classes
    drawn = jax.random.randint(key, (support + query,), 0, virtual * samples)
    label, sample = jnp.divmod(drawn, samples)
    if rotations:
        cls, turn = jnp.divmod(label, 4)
        x = jax.vmap(lambda k, image: _rotate(k, image[None])[0])(turn, images[cls, sample])
    else:
        x = images[label, sample]
    x = x.astype(jnp.float32) * arrays.PIXEL_SCALE
    label = label.astype(jnp.int32)
    return Episode(x[:support], label[:support], x[support:], label[support:], ways=virtual)


def make_sampler(
    images, *, ways: int, shots: int, queries: int, rotations: bool = False
) -> Callable[[PRNGKey], Episode]:
    """``key -> Episode`` over ``images`` (host or device array), moved to the device once.

    The arguments are checked here, so a bad config fails when the task source is built. The
    sampler is a ``jax.tree_util.Partial`` whose only leaf is the device array: ``jax.vmap(
    sampler)(keys)`` gives a meta-batch, and a jitted function that takes the sampler as an
    argument receives the split as a buffer, where closing over it would compile it in as a
    constant (jax 0.10 embeds closed-over arrays in the program).
    """
    _check(images.shape, images.dtype, ways=ways, shots=shots, queries=queries, rotations=rotations)
    images = jax.device_put(images)
    episode = functools.partial(
        sample_episode, ways=ways, shots=shots, queries=queries, rotations=rotations
    )
    return jax.tree_util.Partial(episode, images=images)


def make_batch_sampler(
    images, *, support: int, query: int, rotations: bool = False
) -> Callable[[PRNGKey], Episode]:
    """``key -> Episode`` of :func:`sample_batch` over ``images``, a ``Partial`` as
    :func:`make_sampler`'s (an array already on the device is not copied again)."""
    _check(images.shape, images.dtype, ways=1, shots=1, queries=1, rotations=rotations)
    batch = functools.partial(sample_batch, support=support, query=query, rotations=rotations)
    return jax.tree_util.Partial(batch, images=jax.device_put(images))


def image_spec(ways: int, size: int, channels: int, invert: bool) -> DataSpec:
    """The :class:`DataSpec` of ``ways``-way classification of ``size × size × channels`` images.

    Raw images reach the model through :func:`metarun.data.arrays.prepare_images`, the steps
    the dataset's preparation took (``invert``: Omniglot's dark strokes become ink = 1).
    """
    from metarun.data.arrays import prepare_images

    prepare = functools.partial(prepare_images, size=size, channels=channels, invert=invert)
    return DataSpec(CLASSIFICATION, ways, (size, size, channels), prepare)


def image_task_source(images: dict, cfg) -> TaskSource:
    """The :class:`TaskSource` of an image dataset: one sampler per split, classification.

    Args:
      images: split name (``train``, ``val``, ``test``) -> ``uint8 [classes, samples, H, W, C]``.
      cfg: the data config; ``ways``, ``shots``, ``queries`` give the evaluation episodes (val
        and test), ``train_ways``, ``train_shots`` and ``train_queries`` (None: the same) the
        training ones. The mini-batches of the train split (``TaskSource.batches``) hold as
        many examples as a training episode, in the same support and query sizes.

    Raises:
      ConfigError: naming the key, when a split cannot serve the episodes asked for.
    """
    samplers, batches = {}, None
    for split, array in images.items():
        array = jax.device_put(array)  # once: the train split serves episodes and batches
        train = split == "train"
        ways = cfg.train_ways if train and cfg.train_ways else cfg.ways
        shots = cfg.train_shots if train and cfg.train_shots else cfg.shots
        queries = cfg.train_queries if train and cfg.train_queries else cfg.queries
        classes, samples = array.shape[:2]
        pool = 4 * classes if cfg.rotations else classes
        if ways > pool:
            rotated = f" ({classes} × 4 rotations)" if cfg.rotations else ""
            key = "data.train_ways" if train and cfg.train_ways else "data.ways"
            raise ConfigError(
                f"{key}={ways} is invalid: the {split} split of data={cfg.name} has "
                f"{pool} classes{rotated}; ask for fewer ways or choose a larger split"
            )
        if shots + queries > samples:
            prefix = "data.train_" if train and (cfg.train_shots or cfg.train_queries) else "data."
            raise ConfigError(
                f"{prefix}shots + {prefix}queries = {shots} + {queries} is invalid: the {split} "
                f"split of data={cfg.name} has {samples} samples per class"
            )
        samplers[split] = make_sampler(
            array, ways=ways, shots=shots, queries=queries, rotations=cfg.rotations
        )
        if train:
            batches = make_batch_sampler(
                array, support=ways * shots, query=ways * queries, rotations=cfg.rotations
            )
    return TaskSource(
        samplers=samplers,
        objective=CLASSIFICATION,
        output_dim=cfg.ways,
        batches=batches,
    )
