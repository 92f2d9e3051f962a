"""Relation Networks: scores and loss against numpy, order invariance, any ways, config errors."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun import models
from metarun.algos import algos
from metarun.algos.base import outer_loss
from metarun.algos.relationnet import relationnet
from metarun.config import ConfigError
from metarun.experiment import build
from metarun.models.mlp import MLP
from metarun.types import CLASSIFICATION, Episode
from tests.algos.wide_episodes import MODEL, train_wide_test_narrow


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def toy_maps(params, x, context=None):
    """A stand-in for Conv-4's ``feature_maps``: a per-channel scale and tanh."""
    return jnp.tanh(x * params["w"])


def toy_episode(seed, ways=3, shots=3, queries=2, size=4, channels=2, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return Episode(
        support_x=jnp.asarray(rng.normal(size=(ways * shots, size, size, channels)), dtype),
        support_y=jnp.repeat(jnp.arange(ways), shots),
        query_x=jnp.asarray(rng.normal(size=(ways * queries, size, size, channels)), dtype),
        query_y=jnp.repeat(jnp.arange(ways), queries),
        ways=ways,
    )


def random_meta_params(learner, params, episode, seed):
    """Meta-parameters at ``learner.init``'s shapes (``eval_shape``: nothing compiled), drawn
    at random so that BatchNorm's ones and zeros and the zero biases do not hide a wrong
    parameter or a swapped operand."""
    shapes = jax.eval_shape(learner.init, params, jax.random.PRNGKey(0), episode)
    rng = np.random.default_rng(seed)
    draw = lambda s: jnp.asarray(rng.normal(0.5, 0.5, s.shape))  # noqa: E731  (x64: float64)
    return jax.tree.map(draw, shapes)


# --------------------------------------------------------- numpy reference ----


def np_block(x, kernel, scale, bias):
    """3×3 SAME conv, BatchNorm over (batch, h, w) with ε = 1e-3, ReLU, 2×2 pool if ≥ 2×2."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = sum(padded[:, i : i + h, j : j + w] @ kernel[i, j] for i in range(3) for j in range(3))
    y = (y - y.mean((0, 1, 2))) / np.sqrt(y.var((0, 1, 2)) + 1e-3) * scale + bias
    y = np.maximum(y, 0)
    if min(h, w) >= 2:
        h2, w2 = h // 2, w // 2
        y = y[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, -1).max((2, 4))
    return y


def np_scores(meta_params, episode):
    """The paper's r_{q,k} = g([Σ_{y_s = k} f(x_s) ‖ f(x̂_q)]), in numpy, one pair at a time."""
    p = jax.tree.map(np.asarray, meta_params)
    rel = p["relation"]
    maps = lambda x: np.tanh(np.asarray(x) * p["encoder"]["w"])  # noqa: E731
    support, queries = maps(episode.support_x), maps(episode.query_x)
    labels = np.asarray(episode.support_y)
    classes = [support[labels == k].sum(0) for k in range(episode.ways)]
    pairs = np.stack([np.concatenate([c, q], -1) for q in queries for c in classes])
    x = np_block(pairs, rel["conv0"]["kernel"], rel["norm0"]["scale"], rel["norm0"]["bias"])
    x = np_block(x, rel["conv1"]["kernel"], rel["norm1"]["scale"], rel["norm1"]["bias"])
    x = np.maximum(x.reshape(len(x), -1) @ rel["fc1"]["kernel"] + rel["fc1"]["bias"], 0)
    logits = (x @ rel["fc2"]["kernel"] + rel["fc2"]["bias"])[:, 0]
    return (1 / (1 + np.exp(-logits))).reshape(len(queries), episode.ways)


# ----------------------------------------------------------------- tests ----


# Module level, so that the tests below share compiled programs (same shapes, same learner).
LEARNER = relationnet(toy_maps, filters=3, hidden=4, conv="im2col")
PARAMS = {"w": jnp.array([0.7, -1.3]), "head": {"kernel": jnp.ones((2, 3))}}


@jax.jit
def toy_scores(meta_params, e):
    class_maps = LEARNER.adapt(meta_params, e.support_x, e.support_y, 0, e.ways)
    return LEARNER.predict(meta_params, class_maps, e.query_x)


@pytest.mark.parametrize("size", [1, 2, 5])  # 1×1 (Conv-4 on 28×28): no pooling; 5: odd edge
def test_scores_and_loss_match_a_direct_computation(x64, size):
    episodes = [toy_episode(t, size=size) for t in range(2)]
    meta_params = random_meta_params(LEARNER, PARAMS, episodes[0], seed=6)
    assert meta_params["relation"]["conv0"]["kernel"].dtype == jnp.float64
    assert "head" not in meta_params["encoder"]

    expected_losses = []
    for e in episodes:
        scores = toy_scores(meta_params, e)
        expected = np_scores(meta_params, e)
        np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-12)
        one_hot = np.eye(e.ways)[np.asarray(e.query_y)]
        expected_losses.append(np.mean((expected - one_hot) ** 2))
        np.testing.assert_allclose(LEARNER.loss(scores, e.query_y), expected_losses[-1], rtol=1e-10)
    # The shared outer objective scores a meta-batch with the learner's MSE, not cross-entropy.
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *episodes)
    loss, metrics = jax.jit(partial(outer_loss, LEARNER, CLASSIFICATION, num_steps=0))(
        meta_params, batch
    )
    np.testing.assert_allclose(loss, np.mean(expected_losses), rtol=1e-10)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_predictions_do_not_depend_on_the_support_order(x64):
    """The K shots of a class are summed, so shuffling the support set changes nothing."""
    e = toy_episode(0, size=5)
    meta_params = random_meta_params(LEARNER, PARAMS, e, seed=1)
    order = np.random.default_rng(2).permutation(len(e.support_y))
    shuffled = Episode(e.support_x[order], e.support_y[order], e.query_x, e.query_y, e.ways)
    assert not np.array_equal(shuffled.support_y, e.support_y)
    scores = toy_scores(meta_params, e)
    np.testing.assert_allclose(toy_scores(meta_params, shuffled), scores, rtol=1e-10)
    # Relabelling the classes permutes the score columns the same way.
    relabel = jnp.array([2, 0, 1])
    relabelled = Episode(e.support_x, relabel[e.support_y], e.query_x, e.query_y, e.ways)
    np.testing.assert_allclose(toy_scores(meta_params, relabelled)[:, relabel], scores, rtol=1e-10)


def test_trains_10_way_and_evaluates_5_way_on_new_classes(make_config):
    """any_ways: the meta-step on 10-way episodes, then the evaluator on 5-way ones."""
    # XLA's convolution: on these 4×4 maps it compiles and runs faster than im2col (the other
    # tests cover im2col, which conv=auto picks on CPU).
    maps = models.network(MODEL).feature_maps
    learner = relationnet(maps, filters=8, hidden=8, conv="xla")
    assert learner.any_ways
    config = make_config("algo=relationnet", "trainer.meta_batch=4")
    losses, _, before, after = train_wide_test_narrow(config, learner)
    # Measured (seed 0): loss 0.144 -> 0.066 (MSE, mean of the first and last 10 steps), 5-way
    # accuracy on the held-out classes 0.26 -> 0.94; chance is 0.2.
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses
    assert after > 0.75 and after > before + 0.3, (before, after)


def test_refuses_regression_data_and_models_without_feature_maps(make_config):
    config = make_config("algo=relationnet")  # the default data: sinusoid regression
    with pytest.raises(ConfigError, match="algo=relationnet is invalid with this data: it clas"):
        build(config)
    mlp = models.network(MLP(hidden=(8,), output_dim=5))
    with pytest.raises(ConfigError, match="compare feature maps, and MLP has none; use a conv"):
        algos.get("relationnet")(config.algo, mlp, CLASSIFICATION)


def test_config_keys_and_their_checks(make_config):
    algo = make_config("algo=relationnet").algo
    assert (algo.name, algo.filters, algo.hidden) == ("relationnet", 64, 8)
    with pytest.raises(ConfigError, match=r"algo.hidden=0 is invalid: must be >= 1"):
        make_config("algo=relationnet", "algo.hidden=0")
