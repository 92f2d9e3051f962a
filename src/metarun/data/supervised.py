"""One classification problem over fixed classes (``data.protocol=supervised``), for learners
that train a classifier instead of adapting to new classes: Learning to Reweight Examples
(algos/l2rw.py) and plain training (algos/erm.py).

The classes are ``data.ways`` classes of the few-shot train split (with ``data.rotations``,
of its 4 × characters turned classes), chosen with ``data.split_seed``. Each class's
drawings are divided by drawer, the same drawers in every class, so that validation and test
measure generalisation to new handwriting of the classes trained on:

=====================  ===============================  =====================================
drawings (of 20)       role                             labels
=====================  ===============================  =====================================
the first 20 − 9 − c   training set                     noisy: ``data.label_noise``
next c                 clean set (``clean_per_class``)  true; what L2RW weighs examples by
next 4                 validation (every choice)        true
last 5                 test (reported only)             true
=====================  ===============================  =====================================

Label noise is Ren et al.'s "uniform flip": each training label is replaced, with probability
``data.label_noise``, by one of the other classes drawn uniformly. It is drawn once, when the
source is built (seeded by ``data.split_seed``), so a mislabelled drawing stays mislabelled
in every epoch, as in a noisy dataset.

A training "task" is a batch (:class:`~metarun.types.Episode`): ``support`` holds
``data.batch_size`` drawings of the training set with their noisy labels, ``query`` as many of
the clean set (drawn with replacement, both). A validation or test "task" holds
``data.batch_size`` drawings of its split in ``query`` and an empty support set: the learners
of this protocol classify without adapting, and the evaluation protocol's mean over
``eval.episodes`` such batches is an unbiased estimate of the accuracy on the whole split
(its 95% interval: over batches).

``data.protocol=domains`` (domain generalisation's rotated-digits protocol, Ghifary et al.
2015's rotated MNIST, here on Omniglot): the same classes drawn in
several domains, each drawing turned by each of ``data.domain_angles`` (bilinear, the corners
filled with background). The first 11 drawings of every class are the training set, in every
domain but ``data.test_domain``; validation is the next 4 drawings in those source domains
(model selection never sees the unseen domain); the test is the last 5 drawings in the unseen
domain. A training batch picks one source domain at random as the meta-test domain:
``query`` holds ``data.batch_size`` of its drawings, ``support`` as many from the other source
domains (so each source domain gives 1/5 of a step's examples on average, with five sources).
``data.rotations`` is refused with it (config/data.py): a 90° turn is a class of its own there.

References: Ren, Zeng, Yang, Urtasun. "Learning to Reweight Examples for Robust Deep
Learning". ICML 2018. https://arxiv.org/abs/1803.09050. Li, Yang, Song, Hospedales.
"Learning to Generalize: Meta-Learning for Domain Generalization". AAAI 2018.
https://arxiv.org/abs/1710.03463
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from metarun.config import ConfigError
from metarun.data import arrays
from metarun.data.episodes import image_spec
from metarun.types import DOMAINS, SUPERVISED, DataSpec, Episode, PRNGKey, TaskSource

VAL_DRAWINGS = 4  # per class
TEST_DRAWINGS = 5  # per class


def spec(protocol: str, ways: int, size: int, channels: int, invert: bool) -> DataSpec:
    """:func:`~metarun.data.episodes.image_spec` of ``ways`` classes, scored as ``protocol``
    (``supervised`` or ``domains``)."""
    objective = DOMAINS if protocol == "domains" else SUPERVISED
    return image_spec(ways, size, channels, invert)._replace(objective=objective)


def noisy_labels(labels: np.ndarray, noise: float, classes: int, seed) -> np.ndarray:
    """``labels`` with each replaced, with probability ``noise``, by one of the ``classes - 1``
    other classes, uniformly (the draws of ``np.random.default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    flip = rng.random(labels.shape) < noise
    other = (labels + rng.integers(1, classes, labels.shape)) % classes
    return np.where(flip, other, labels).astype(np.int32)


def _draw(key: PRNGKey, images: jax.Array, labels: jax.Array, size: int):
    """``size`` (image, label) pairs drawn uniformly with replacement from ``images [classes,
    n, H, W, C]`` and ``labels [classes, n]``; images as float32 in [0, 1]."""
    classes, n = labels.shape
    drawn = jax.random.randint(key, (size,), 0, classes * n)
    cls, sample = jnp.divmod(drawn, n)
    return images[cls, sample].astype(jnp.float32) * arrays.PIXEL_SCALE, labels[cls, sample]


def sample_train(key: PRNGKey, images, labels, clean_images, clean_labels, *, size: int):
    """A training batch: ``size`` noisy training examples (support), ``size`` clean (query)."""
    k_train, k_clean = jax.random.split(key)
    support_x, support_y = _draw(k_train, images, labels, size)
    query_x, query_y = _draw(k_clean, clean_images, clean_labels, size)
    return Episode(support_x, support_y, query_x, query_y, ways=labels.shape[0])


def sample_eval(key: PRNGKey, images, labels, *, size: int):
    """An evaluation batch: ``size`` examples of the split (query), an empty support set."""
    query_x, query_y = _draw(key, images, labels, size)
    empty_x = jnp.zeros((0, *query_x.shape[1:]), query_x.dtype)
    return Episode(empty_x, jnp.zeros((0,), jnp.int32), query_x, query_y, ways=labels.shape[0])


def _classes(train: np.ndarray, cfg) -> np.ndarray:
    """The ``data.ways`` classes of ``train`` (``[characters, 20, H, W, C]``; with
    ``data.rotations`` each character turned as 4 classes), chosen with ``data.split_seed``.

    Raises:
      ConfigError: naming ``data.ways`` when the split has fewer classes.
    """
    if cfg.rotations:  # virtual class 4 c + k: character c turned k * 90 degrees, as episodes
        train = np.stack([np.rot90(train, k, axes=(2, 3)) for k in range(4)], axis=1)
        train = train.reshape(-1, *train.shape[2:])
    if cfg.ways > len(train):
        rotated = " (4 rotations of each character)" if cfg.rotations else ""
        raise ConfigError(
            f"data.ways={cfg.ways} is invalid with data.protocol={cfg.protocol}: the train "
            f"split of data={cfg.name} has {len(train)} classes{rotated}"
        )
    chosen = np.random.default_rng(cfg.split_seed).permutation(len(train))[: cfg.ways]
    return train[np.sort(chosen)]


def _put(x):
    return jax.device_put(np.ascontiguousarray(x))


def _sampler(fn, size: int, images, labels, **more):
    """``key -> Episode``: a ``Partial`` of ``fn`` whose arrays (keywords: a Partial passes the
    key first) reach jitted code as buffers."""
    arrays_ = {"images": images, "labels": labels, **more}
    return jax.tree_util.Partial(
        functools.partial(fn, size=size), **{k: _put(x) for k, x in arrays_.items()}
    )


def task_source(train: np.ndarray, cfg) -> TaskSource:
    """The :class:`TaskSource` of ``data.protocol`` (``supervised`` or ``domains``) over
    ``train``, the few-shot train split's ``uint8 [characters, 20, H, W, C]`` (see the module
    docstring for the division of its drawings).

    Raises:
      ConfigError: naming ``data.ways`` when the split has fewer classes.
    """
    if cfg.protocol == "domains":
        return _domain_source(_classes(train, cfg), cfg)
    images = _classes(train, cfg)
    drawings = images.shape[1]
    n_train = drawings - VAL_DRAWINGS - TEST_DRAWINGS - cfg.clean_per_class
    n_clean = n_train + cfg.clean_per_class
    n_val = n_clean + VAL_DRAWINGS
    true = np.broadcast_to(np.arange(cfg.ways, dtype=np.int32)[:, None], (cfg.ways, drawings))
    noisy = noisy_labels(true[:, :n_train], cfg.label_noise, cfg.ways, (cfg.split_seed, 1))
    size = cfg.batch_size
    train_sampler = _sampler(
        sample_train,
        size,
        images[:, :n_train],
        noisy,
        clean_images=images[:, n_train:n_clean],
        clean_labels=true[:, n_train:n_clean],
    )
    samplers = {
        "train": train_sampler,
        "val": _sampler(sample_eval, size, images[:, n_clean:n_val], true[:, n_clean:n_val]),
        "test": _sampler(sample_eval, size, images[:, n_val:], true[:, n_val:]),
    }
    return TaskSource(samplers, SUPERVISED, cfg.ways, batches=train_sampler)


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """``uint8 [..., H, W, C]`` turned ``degrees`` counter-clockwise about the centre (bilinear;
    the corners filled with 0, the background after preparation)."""
    if degrees % 360 == 0:
        return images
    return ndimage.rotate(
        images, degrees, axes=(-2, -3), reshape=False, order=1, mode="constant", cval=0
    )


def sample_domains(key: PRNGKey, images, labels, *, size: int):
    """A training batch of the domains protocol: one source domain drawn as the meta-test
    domain, ``size`` of its examples in ``query``, ``size`` of the other sources' in
    ``support``. ``images [domains, classes, n, H, W, C]``, ``labels [classes, n]``."""
    domains = images.shape[0]
    k_domain, k_offset, k_train, k_test = jax.random.split(key, 4)
    test = jax.random.randint(k_domain, (), 0, domains)
    # the support's domains: uniform over the others (an offset of 1..domains-1 from test)
    offsets = jax.random.randint(k_offset, (size,), 1, domains)
    classes, n = labels.shape
    drawn = jax.random.randint(k_train, (size,), 0, classes * n)
    cls, sample = jnp.divmod(drawn, n)
    support_x = images[(test + offsets) % domains, cls, sample]
    query_x, query_y = _draw(k_test, images[test], labels, size)
    support_x = support_x.astype(jnp.float32) * arrays.PIXEL_SCALE
    return Episode(support_x, labels[cls, sample], query_x, query_y, ways=classes)


def _domain_source(images: np.ndarray, cfg) -> TaskSource:
    """The domains protocol over ``images [classes, 20, H, W, C]`` (module docstring)."""
    classes, drawings = images.shape[:2]
    n_train = drawings - VAL_DRAWINGS - TEST_DRAWINGS
    n_val = n_train + VAL_DRAWINGS
    turned = np.stack([rotate(images, angle) for angle in cfg.domain_angles])
    sources = np.delete(turned, cfg.test_domain, axis=0)
    true = np.broadcast_to(np.arange(classes, dtype=np.int32)[:, None], (classes, drawings))
    # validation: the source domains' validation drawings, as classes x (domains x drawings)
    val = np.concatenate(list(sources[:, :, n_train:n_val]), axis=1)
    val_labels = np.concatenate([true[:, n_train:n_val]] * len(sources), axis=1)
    size = cfg.batch_size
    train_sampler = _sampler(sample_domains, size, sources[:, :, :n_train], true[:, :n_train])
    samplers = {
        "train": train_sampler,
        "val": _sampler(sample_eval, size, val, val_labels),
        "test": _sampler(sample_eval, size, turned[cfg.test_domain][:, n_val:], true[:, n_val:]),
    }
    return TaskSource(samplers, DOMAINS, classes, batches=train_sampler)
