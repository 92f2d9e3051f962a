"""Hallucination (algo.hallucinate): augment's shapes and seeds, the episode's noise, M = 0 as
the plain learners, the meta-gradient reaching G (finite differences), the config checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos import hallucinate
from metarun.algos.base import adapt_and_predict, outer_grad, outer_loss
from metarun.algos.matchingnet import matchingnet
from metarun.algos.protonet import protonet
from metarun.config import ConfigError
from metarun.types import CLASSIFICATION, Episode
from tests.helpers import flat

RNG = np.random.default_rng(3)
SUPPORT_X = RNG.normal(size=(6, 4))  # 3-way 2-shot, labels in no particular order
SUPPORT_Y = np.array([2, 0, 1, 0, 2, 1])
QUERY_X = RNG.normal(size=(5, 4))
QUERY_Y = np.array([0, 1, 2, 1, 0])
W = RNG.normal(size=(4, 3))


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def embed(params, x, context=None):
    """A linear encoder with a ReLU: non-negative features, as Conv-4's."""
    return jax.nn.relu(x @ params["w"])


def episode(dtype=jnp.float32) -> Episode:
    return Episode(
        jnp.asarray(SUPPORT_X, dtype), SUPPORT_Y, jnp.asarray(QUERY_X, dtype), QUERY_Y, ways=3
    )


def test_augment_appends_m_examples_per_class_after_the_real_ones():
    features = jnp.asarray(RNG.normal(size=(6, 5)), jnp.float32)
    params = hallucinate.init(5, None, 7, jax.random.PRNGKey(0))
    key = hallucinate.episode_key(SUPPORT_X, SUPPORT_Y)
    out, labels = hallucinate.augment(params, features, SUPPORT_Y, 3, 4, key)
    assert out.shape == (6 + 3 * 4, 5) and labels.shape == (18,)
    np.testing.assert_array_equal(out[:6], features)
    np.testing.assert_array_equal(labels, [*SUPPORT_Y, *np.repeat([0, 1, 2], 4)])
    same, same_labels = hallucinate.augment(params, features, SUPPORT_Y, 3, 0, key)
    assert same is features and same_labels is SUPPORT_Y  # M = 0: nothing imagined
    wide = hallucinate.init(5, 11, 7, jax.random.PRNGKey(0))
    assert wide["Dense_0"]["kernel"].shape == (5 + 7, 11)
    assert hallucinate.augment(wide, features, SUPPORT_Y, 3, 2, key)[0].shape == (12, 5)


def test_seeds_cycle_through_each_class_in_episode_order():
    # Class 0 is at 1 and 3, class 1 at 2 and 5, class 2 at 0 and 4.
    seeds = hallucinate.seeds(jnp.asarray(SUPPORT_Y), 3, 3)
    np.testing.assert_array_equal(seeds, [1, 3, 1, 2, 5, 2, 0, 4, 0])
    one_shot = hallucinate.seeds(jnp.asarray([1, 0]), 2, 3)
    np.testing.assert_array_equal(one_shot, [1, 1, 1, 0, 0, 0])


def test_g_starts_as_the_identity_on_its_seeds():
    features = jnp.abs(jnp.asarray(RNG.normal(size=(6, 5)), jnp.float32))  # after a ReLU
    params = hallucinate.init(5, None, 7, jax.random.PRNGKey(0))
    key = hallucinate.episode_key(SUPPORT_X, SUPPORT_Y)
    out, _ = hallucinate.augment(params, features, SUPPORT_Y, 3, 3, key)
    np.testing.assert_array_equal(out[6:], features[hallucinate.seeds(SUPPORT_Y, 3, 3)])


def test_the_noise_key_is_a_function_of_the_support_set():
    key = hallucinate.episode_key(SUPPORT_X, SUPPORT_Y)
    np.testing.assert_array_equal(key, jax.jit(hallucinate.episode_key)(SUPPORT_X, SUPPORT_Y))
    one_bit = np.array(SUPPORT_X, np.float32)
    one_bit.view(np.uint32)[3, 2] ^= 1  # the last bit of one input
    labels = SUPPORT_Y[[1, 0, 2, 3, 4, 5]]
    for other in (
        hallucinate.episode_key(one_bit, SUPPORT_Y),
        hallucinate.episode_key(SUPPORT_X, labels),
    ):
        assert not np.array_equal(key, other)
    # Batched as in a meta-batch, each episode keeps its own key.
    batched = jax.vmap(hallucinate.episode_key)(
        np.stack([SUPPORT_X, one_bit]), np.stack([SUPPORT_Y] * 2)
    )
    np.testing.assert_array_equal(batched[0], key)


def run(learner, meta, e: Episode):
    """(predictions, meta-gradient) of ``learner`` on one episode."""
    predictions = adapt_and_predict(learner, meta, e.support_x, e.support_y, e.query_x, 0, 3)
    grads, _ = outer_grad(learner, CLASSIFICATION, meta, jax.tree.map(lambda a: a[None], e), 0)
    return predictions, grads


@pytest.mark.parametrize("make", [protonet, matchingnet])
def test_m_zero_is_the_plain_learner_bit_for_bit(make):
    """The same meta-parameters, predictions and meta-gradient, whatever G's other keys say."""
    plain, off = make(embed), make(embed, hallucinate=0, hallucinator_width=3, noise_dim=2)
    params = {"w": jnp.asarray(W, jnp.float32), "head": {"kernel": jnp.ones(2)}}
    e = episode()
    meta, meta_off = (learner.init(params, jax.random.PRNGKey(0), e) for learner in (plain, off))
    assert jax.tree.structure(meta) == jax.tree.structure(meta_off)
    assert "hallucinator" not in meta and off.encoder_key == plain.encoder_key
    (expected, expected_grads), (out, grads) = run(plain, meta, e), run(off, meta_off, e)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(flat(grads), flat(expected_grads))


FCE = lambda embed, **kw: matchingnet(embed, fce=True, **kw)  # noqa: E731


@pytest.mark.parametrize(
    "make", [protonet, matchingnet, FCE], ids=["protonet", "matchingnet", "fce"]
)
def test_hallucination_adds_g_to_the_meta_parameters_and_to_the_predictions(make):
    learner = make(embed, hallucinate=2, noise_dim=3)
    params = {"w": jnp.asarray(W, jnp.float32), "head": {"kernel": jnp.ones(2)}}
    meta = learner.init(params, jax.random.PRNGKey(0), episode())
    assert learner.encoder_key == "encoder" and set(meta) >= {"encoder", "hallucinator"}
    assert "head" not in meta["encoder"]
    e = episode()
    before = adapt_and_predict(learner, meta, e.support_x, e.support_y, e.query_x, 0, 3)
    moved = jax.tree.map(lambda p: p + 0.3, meta["hallucinator"])
    after = adapt_and_predict(
        learner, {**meta, "hallucinator": moved}, e.support_x, e.support_y, e.query_x, 0, 3
    )
    assert not np.allclose(before, after)  # the imagined examples count
    grads = run(learner, meta, e)[1]["hallucinator"]
    assert all(np.any(g != 0) for g in jax.tree.leaves(grads))  # the meta-loss reaches G


def _directional_fd(f, params, direction, eps=1e-6):
    plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
    return (f(plus) - f(minus)) / (2 * eps)


@pytest.mark.parametrize("make", [protonet, matchingnet], ids=["protonet", "matchingnet"])
def test_the_meta_gradient_reaches_g_and_matches_finite_differences(x64, make):
    """The meta-loss is G's only signal: its gradient from ``outer_grad`` is nonzero, and the
    whole meta-gradient (encoder and G) matches central differences along random directions,
    in float64 (which Flax's LSTMs of fce do not run in: the test above covers fce), on two
    3-way 2-shot episodes; G moved off its identity start first, so that
    the noise and the leaky ReLUs' negative sides are in play."""
    learner = make(embed, hallucinate=3, noise_dim=2)
    e = episode(jnp.float64)
    params = {"w": jnp.asarray(W), "head": {"kernel": jnp.ones(2)}}
    meta = learner.init(params, jax.random.PRNGKey(0), e)
    noise = np.random.default_rng(4)
    meta = jax.tree.map(
        lambda p: jnp.asarray(p + 0.3 * noise.normal(size=p.shape), jnp.float64), meta
    )
    episodes = jax.tree.map(
        lambda *a: jnp.stack(a),
        e,
        dataclasses.replace(e, support_x=e.support_x[::-1], support_y=e.support_y[::-1]),
    )
    grads, _ = outer_grad(learner, CLASSIFICATION, meta, episodes, 0)
    assert all(np.any(g != 0) for g in jax.tree.leaves(grads["hallucinator"]))

    loss = jax.jit(lambda mp: outer_loss(learner, CLASSIFICATION, mp, episodes, 0)[0])
    leaves, treedef = jax.tree.flatten(meta)
    for _ in range(2):
        direction = jax.tree.unflatten(treedef, [noise.normal(size=x.shape) for x in leaves])
        fd = _directional_fd(loss, meta, direction)
        analytic = jnp.vdot(flat(grads), flat(direction))
        np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9)
    # G alone: the directional derivative along its coordinates only.
    only_g = jax.tree.map(jnp.zeros_like, meta) | {
        "hallucinator": jax.tree.map(jnp.ones_like, meta["hallucinator"])
    }
    np.testing.assert_allclose(
        jnp.vdot(flat(grads), flat(only_g)), _directional_fd(loss, meta, only_g), rtol=1e-6
    )


@pytest.mark.parametrize("name", ["protonet", "matchingnet"])
@pytest.mark.parametrize(
    "key, value, rule",
    [
        ("hallucinate", -1, "must be >= 0"),
        ("hallucinator_width", 0, "must be >= 1, or null for the feature width"),
        ("noise_dim", 0, "must be >= 1"),
    ],
)
def test_bad_values_are_named(make_config, name, key, value, rule):
    with pytest.raises(ConfigError, match=f"algo.{key}={value} is invalid: {rule}"):
        make_config(f"algo={name}", f"algo.{key}={value}")


def test_the_config_reaches_the_learner(make_config):
    from metarun import algos

    cfg = make_config(
        "algo=matchingnet", "algo.hallucinate=2", "algo.hallucinator_width=5", "algo.noise_dim=3"
    )
    net = type("Net", (), {"embed": staticmethod(embed)})
    learner = algos.make(cfg.algo, net, CLASSIFICATION)
    params = {"w": jnp.asarray(W, jnp.float32), "head": {"kernel": jnp.ones(2)}}
    meta = learner.init(params, jax.random.PRNGKey(0), episode())
    assert meta["hallucinator"]["Dense_0"]["kernel"].shape == (3 + 3, 5)
    out, _ = run(learner, meta, episode())
    assert out.shape == (5, 3) and np.all(np.isfinite(out))
