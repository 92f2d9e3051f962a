"""Episode sampling: structure, randomness and rotations, read back from the pixels.

Every synthetic image carries its identity, pixel [0, 0] = class and [0, 1] = sample, over
seeded noise, so each example of an episode can be traced to the (class, sample) it came from
and to the rotation that was applied (the noise makes exactly one of four turns match).
"""

import re
from functools import cache, partial

import jax
import numpy as np
import pytest

from metarun.data.episodes import make_sampler, sample_episode

CLASSES, SAMPLES, SIZE = 20, 20, 8
IMAGES = np.random.default_rng(0).integers(0, 256, (CLASSES, SAMPLES, SIZE, SIZE, 1), np.uint8)
IMAGES[:, :, 0, 0, 0] = np.arange(CLASSES)[:, None]
IMAGES[:, :, 0, 1, 0] = np.arange(SAMPLES)[None, :]

# scipy.stats.chi2.ppf(0.999, df), hardcoded so the tests need no scipy.
CHI2_999 = {4: 18.4668, 19: 43.8202, 79: 123.5944}

# Few episode sizes, each compiled once: plain, rotated, and every virtual class and every
# sample in each episode (the edge of sampling without replacement).
PLAIN = dict(ways=5, shots=2, queries=3, rotations=False)
ROTATED = dict(ways=5, shots=2, queries=3, rotations=True)
EVERYTHING = dict(ways=4 * CLASSES, shots=5, queries=SAMPLES - 5, rotations=True)
KEYS = jax.random.split(jax.random.PRNGKey(0), 2000)


@cache
def _compiled(ways: int, shots: int, queries: int, rotations: bool):
    sample = partial(sample_episode, ways=ways, shots=shots, queries=queries, rotations=rotations)
    return jax.jit(jax.vmap(sample, in_axes=(0, None)))


def sample_batch(keys, **sizes):
    """Episodes for ``keys`` from one jitted, vmapped call, as numpy arrays."""
    return jax.tree.map(np.asarray, _compiled(**sizes)(keys, IMAGES))


@cache
def episodes(n: int = len(KEYS), **sizes):
    """Episodes for the first ``n`` of KEYS, shared by the tests: compiling dominates their time."""
    return sample_batch(KEYS[:n], **sizes)


def identify(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, sample, turn) of each image in ``x [..., H, W, 1]``, which must equal
    ``np.rot90(IMAGES[class, sample], turn) / 255`` for exactly one turn."""
    pixels = np.rint(x * 255).astype(np.uint8)
    np.testing.assert_allclose(x, pixels / 255, rtol=1e-6)
    flat = pixels.reshape(-1, SIZE, SIZE, 1)
    cls, sample, turn = (np.full(len(flat), -1) for _ in range(3))
    for k in range(4):
        back = np.rot90(flat, -k, axes=(1, 2))
        c, s = back[:, 0, 0, 0].astype(int), back[:, 0, 1, 0].astype(int)
        known = (c < CLASSES) & (s < SAMPLES)
        match = known & (IMAGES[c % CLASSES, s % SAMPLES] == back).all(axis=(1, 2, 3))
        assert not (match & (turn >= 0)).any(), "an image matches two rotations"
        cls[match], sample[match], turn[match] = c[match], s[match], k
    assert (turn >= 0).all(), "an image is no rotation of any dataset image"
    shape = x.shape[:-3]
    return cls.reshape(shape), sample.reshape(shape), turn.reshape(shape)


def subset_chi2(counts: np.ndarray, per_draw: int) -> float:
    """χ² statistic of ``counts`` over n categories, each draw a uniform ``per_draw``-subset.

    A subset's indicators have variance p(1 - p), p = per_draw / n, and covariance
    -p(1 - p) / (n - 1), so Pearson's statistic times (n - 1) / (n (1 - p)) is χ²(n - 1)
    under uniformity. With per_draw = 1 it is Pearson's statistic itself.
    """
    n = len(counts)
    expected = counts.sum() / n
    p = per_draw / n
    return float(np.sum((counts - expected) ** 2 / expected) * (n - 1) / (n * (1 - p)))


# 80-way episodes of 20 samples are large: fewer of them.
@pytest.mark.parametrize(
    "sizes, n",
    [(PLAIN, len(KEYS)), (ROTATED, len(KEYS)), (EVERYTHING, 50)],
    ids=["plain", "rotated", "all"],
)
def test_episodes_are_well_formed(sizes, n):
    ways, shots, queries = sizes["ways"], sizes["shots"], sizes["queries"]
    ep = episodes(n, **sizes)
    image = (SIZE, SIZE, 1)
    assert ep.support_x.shape == (n, ways * shots, *image)
    assert ep.query_x.shape == (n, ways * queries, *image)
    assert ep.support_x.dtype == ep.query_x.dtype == np.float32
    assert ep.support_y.dtype == ep.query_y.dtype == np.int32
    for x in (ep.support_x, ep.query_x):
        assert 0 <= x.min() and x.max() <= 1
    # Grouped by label: shots copies of 0, then of 1, ...
    np.testing.assert_array_equal(ep.support_y, np.tile(np.repeat(np.arange(ways), shots), (n, 1)))
    np.testing.assert_array_equal(ep.query_y, np.tile(np.repeat(np.arange(ways), queries), (n, 1)))

    # [episode, label, example]; a rotated copy of a class is its own (virtual) class.
    support = [a.reshape(n, ways, shots) for a in identify(ep.support_x)]
    query = [a.reshape(n, ways, queries) for a in identify(ep.query_x)]
    virtual_s, virtual_q = (4 * c + t for c, _, t in (support, query))
    if not sizes["rotations"]:
        assert (support[2] == 0).all() and (query[2] == 0).all()
    # One virtual class per label, the same in support and query, distinct across labels.
    label_class = virtual_s[:, :, :1]
    assert (virtual_s == label_class).all() and (virtual_q == label_class).all()
    assert all(len(set(row)) == ways for row in label_class[:, :, 0])
    # No (virtual class, sample) twice in an episode, within or across support and query.
    drawn = np.concatenate([support[1], query[1]], axis=2)
    assert all(len(set(row)) == shots + queries for row in drawn.reshape(-1, shots + queries))


def test_same_key_same_episode_other_key_other_episode():
    first = episodes(**ROTATED)
    again = sample_batch(KEYS.at[1].set(KEYS[0]), **ROTATED)  # same shape: no recompile
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(b[1], b[0])
        np.testing.assert_array_equal(a[2:], b[2:])
    assert not np.array_equal(first.query_x[0], first.query_x[1])


def test_vmapped_sampler_equals_looped_calls():
    batched = episodes(**ROTATED)
    single = jax.jit(make_sampler(IMAGES, **ROTATED))
    for i, key in enumerate(KEYS[:4]):
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single(key)), strict=True):
            np.testing.assert_array_equal(a[i], b)


def test_sampler_takes_the_split_as_an_argument_not_a_constant():
    sampler = make_sampler(IMAGES, **PLAIN)
    [leaf] = jax.tree.leaves(sampler)
    assert isinstance(leaf, jax.Array) and leaf.shape == IMAGES.shape
    meta_batch = jax.make_jaxpr(lambda s, k: jax.vmap(s)(k))(sampler, KEYS[:2])
    assert meta_batch.consts == [] and meta_batch.in_avals[0].shape == IMAGES.shape


def test_labels_are_randomly_permuted():
    # Which label the smallest chosen class gets: uniform over the labels, not always 0.
    cls, _, _ = identify(episodes(**PLAIN).support_x[:, :: PLAIN["shots"]])
    counts = np.bincount(cls.argmin(axis=1), minlength=PLAIN["ways"])
    assert counts[0] < 0.3 * len(KEYS), counts
    assert subset_chi2(counts, per_draw=1) < CHI2_999[PLAIN["ways"] - 1], counts


def test_classes_are_drawn_uniformly():
    cls, _, _ = identify(episodes(**PLAIN).support_x[:, :: PLAIN["shots"]])
    counts = np.bincount(cls.ravel(), minlength=CLASSES)
    assert subset_chi2(counts, per_draw=PLAIN["ways"]) < CHI2_999[CLASSES - 1], counts


def test_rotated_virtual_classes_are_drawn_uniformly():
    cls, _, turn = identify(episodes(**ROTATED).support_x[:, :: ROTATED["shots"]])
    assert (turn == 0).any() and (turn != 0).any()
    counts = np.bincount((4 * cls + turn).ravel(), minlength=4 * CLASSES)
    assert subset_chi2(counts, per_draw=ROTATED["ways"]) < CHI2_999[4 * CLASSES - 1], counts


@pytest.mark.parametrize(
    "images, sizes, name",
    [
        (IMAGES, dict(ways=CLASSES + 1, shots=1, queries=1), "ways"),
        (IMAGES, dict(ways=4 * CLASSES + 1, shots=1, queries=1, rotations=True), "ways"),
        (IMAGES, dict(ways=0, shots=1, queries=1), "ways"),
        (IMAGES, dict(ways=5, shots=0, queries=1), "shots"),
        (IMAGES, dict(ways=5, shots=1, queries=0), "queries"),
        (IMAGES, dict(ways=5, shots=5, queries=SAMPLES - 4), "shots + queries"),
        (IMAGES[:, :, :, :4], dict(ways=5, shots=1, queries=1, rotations=True), "rotations"),
        (IMAGES.astype(np.float32), dict(ways=5, shots=1, queries=1), "images"),
        (IMAGES[0], dict(ways=5, shots=1, queries=1), "images"),
    ],
)
def test_bad_arguments_are_named(images, sizes, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        sample_episode(jax.random.PRNGKey(0), images, **sizes)
    with pytest.raises(ValueError, match=re.escape(name)):
        make_sampler(images, **sizes)
