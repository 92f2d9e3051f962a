"""Siamese networks: pair loss, gradient and predictions against numpy, order invariance,
any ways, config errors."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun import models
from metarun.algos.base import outer_grad
from metarun.algos.siamese import siamese
from metarun.config import ConfigError
from metarun.experiment import build
from metarun.types import CLASSIFICATION, Episode
from tests.algos.wide_episodes import MODEL, train_wide_test_narrow


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def toy_embed(params, x, context=None):
    """A stand-in for Conv-4's ``embed``: one tanh layer on the flattened input."""
    return jnp.tanh(x.reshape(x.shape[0], -1) @ params["w"])


def toy_episode(seed, ways=3, shots=2, queries=2, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return Episode(
        support_x=jnp.asarray(rng.normal(size=(ways * shots, 2, 2, 1)), dtype),
        support_y=jnp.repeat(jnp.arange(ways), shots),
        query_x=jnp.asarray(rng.normal(size=(ways * queries, 2, 2, 1)), dtype),
        query_y=jnp.repeat(jnp.arange(ways), queries),
        ways=ways,
    )


def random_meta_params(learner, params, episode, seed):
    """Meta-parameters at ``learner.init``'s shapes, drawn at random (x64: float64)."""
    shapes = jax.eval_shape(learner.init, params, jax.random.PRNGKey(0), episode)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.7, s.shape)), shapes)


# --------------------------------------------------------- numpy reference ----


def np_logits(mp, e):
    """z[q, s] = Σ_j α_j |f(x̂_q)_j − f(x_s)_j| + b."""
    f = lambda x: np.tanh(np.asarray(x).reshape(len(x), -1) @ mp["encoder"]["w"])  # noqa: E731
    queries, support = f(e.query_x), f(e.support_x)
    return np.abs(queries[:, None] - support[None]) @ mp["alpha"] + mp["bias"]


def np_sampled_pair_loss(mp, e):
    """The paper's balanced pairs: for each query, the BCE of one same-class and one
    different-class support image, averaged over every such draw."""
    z = np_logits(mp, e)
    sy, qy = np.asarray(e.support_y), np.asarray(e.query_y)
    bce = lambda z, same: -np.log(1 / (1 + np.exp(-z)) if same else 1 - 1 / (1 + np.exp(-z)))  # noqa: E731
    per_query = []
    for q in range(len(qy)):
        draws = [
            0.5 * bce(z[q, p], True) + 0.5 * bce(z[q, n], False)
            for p in np.flatnonzero(sy == qy[q])
            for n in np.flatnonzero(sy != qy[q])
        ]
        per_query.append(np.mean(draws))
    return np.mean(per_query)


def np_class_logits(mp, e):
    """Each class's best match: the max of z over its support images."""
    z, sy = np_logits(mp, e), np.asarray(e.support_y)
    return np.stack([z[:, sy == k].max(1) for k in range(e.ways)], 1)


# ----------------------------------------------------------------- tests ----


def test_pair_loss_gradient_and_predictions_match_a_direct_computation(x64):
    learner = siamese(toy_embed)
    episodes = [toy_episode(t) for t in range(2)]
    params = {"w": jnp.zeros((4, 3)), "head": {"kernel": jnp.zeros((3, 3))}}
    mp = random_meta_params(learner, params, episodes[0], seed=1)
    assert mp["alpha"].shape == (3,) and mp["bias"].shape == () and "head" not in mp["encoder"]
    np_mp = jax.tree.map(np.asarray, mp)
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *episodes)

    grads, metrics = jax.jit(partial(outer_grad, learner, CLASSIFICATION, num_steps=0))(mp, batch)
    expected = [np_class_logits(np_mp, e) for e in episodes]
    np.testing.assert_allclose(
        metrics["loss"], np.mean([np_sampled_pair_loss(np_mp, e) for e in episodes]), rtol=1e-10
    )
    accuracy = np.mean(
        [
            np.mean(c.argmax(1) == np.asarray(e.query_y))
            for c, e in zip(expected, episodes, strict=True)
        ]
    )
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert 0 <= metrics["pair_accuracy"] <= 1

    @jax.jit
    def predictions(e):
        return learner.predict(
            mp, learner.adapt(mp, e.support_x, e.support_y, 0, e.ways), e.query_x
        )

    for c, e in zip(expected, episodes, strict=True):
        np.testing.assert_allclose(predictions(e), c, rtol=1e-10)

    # The meta-gradient, every coordinate, by central differences of the numpy loss.
    def np_loss(leaves):
        tree = jax.tree.unflatten(treedef, leaves)
        return np.mean([np_sampled_pair_loss(tree, e) for e in episodes])

    leaves, treedef = jax.tree.flatten(np_mp)
    fd = []
    for i, leaf in enumerate(leaves):
        for j in range(leaf.size):
            step = [np.zeros_like(x) for x in leaves]
            step[i].reshape(-1)[j] = 1e-6
            plus = np_loss([x + d for x, d in zip(leaves, step, strict=True)])
            minus = np_loss([x - d for x, d in zip(leaves, step, strict=True)])
            fd.append((plus - minus) / 2e-6)
    flat_grads = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
    np.testing.assert_allclose(flat_grads, fd, rtol=1e-6, atol=1e-9)


def test_loss_and_predictions_do_not_depend_on_the_support_order():
    learner = siamese(toy_embed)
    e = toy_episode(0, ways=4, shots=3, queries=2, dtype=np.float32)
    mp = random_meta_params(learner, {"w": jnp.zeros((4, 5))}, e, seed=2)
    order = np.random.default_rng(3).permutation(len(e.support_y))
    shuffled = Episode(e.support_x[order], e.support_y[order], e.query_x, e.query_y, e.ways)
    assert not np.array_equal(shuffled.support_y, e.support_y)

    @jax.jit
    def run(e):
        predictions = learner.predict(
            mp, learner.adapt(mp, e.support_x, e.support_y, 0, e.ways), e.query_x
        )
        _, metrics = learner.outer_grad(mp, jax.tree.map(lambda a: a[None], e), 0, 0)
        return predictions, metrics["loss"]

    for got, want in zip(run(shuffled), run(e), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_trains_10_way_and_evaluates_5_way_on_new_classes(make_config):
    """any_ways: the meta-step on 10-way episodes, then the evaluator on 5-way ones."""
    learner = siamese(models.network(MODEL).embed)
    assert learner.any_ways
    config = make_config("algo=siamese", "trainer.meta_batch=4")
    losses, metrics, before, after = train_wide_test_narrow(config, learner)
    assert set(metrics) == {"loss", "accuracy", "pair_accuracy", "grad_norm"}
    # Measured (seed 0): pair loss 0.71 -> 0.52 (mean of the first and last 10 steps), 5-way
    # accuracy on the held-out classes 0.05 -> 0.89; chance is 0.2 (at this init, larger
    # distances score higher: a query first matches its least similar class).
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), losses
    assert after > 0.7 and after > before + 0.3, (before, after)


def test_refuses_regression_data(make_config):
    with pytest.raises(ConfigError, match="algo=siamese is invalid with this data: it classif"):
        build(make_config("algo=siamese"))  # the default data: sinusoid regression
