"""Learning to Reweight Examples: the weights' meta-gradient against finite differences and
against its closed form, the normalisation, and mislabelled examples weighed down."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metarun
from metarun import data
from metarun.algos.l2rw import alignment, example_weights, l2rw
from metarun.evaluate import episode_keys, make_evaluator
from metarun.types import SUPERVISED, Episode
from tests.helpers import classification_problem, classifier_apply
from tests.test_api import raw_omniglot


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def clean_loss_after_step(params, batch, eps):
    """L_clean(θ − ∇θ Σ ε_i ℓ_i(θ)), written out independently of algos/l2rw.py."""

    def weighted(p):
        logits = classifier_apply(p, batch.support_x)
        log_p = jax.nn.log_softmax(logits)
        return -jnp.sum(eps * log_p[jnp.arange(len(eps)), batch.support_y])

    grads = jax.grad(weighted)(params)
    ahead = {k: params[k] - grads[k] for k in params}
    return SUPERVISED.loss(classifier_apply(ahead, batch.query_x), batch.query_y)


def test_alignment_is_the_derivative_through_the_look_ahead_step(x64):
    params, batch = classification_problem(0)
    u, clean_loss = alignment(classifier_apply, SUPERVISED, params, batch)
    h = 1e-6
    numeric = []
    for i in range(len(batch.support_y)):
        e = jnp.zeros(len(batch.support_y)).at[i].set(h)
        up = clean_loss_after_step(params, batch, e)
        down = clean_loss_after_step(params, batch, -e)
        numeric.append(-(up - down) / (2 * h))
    np.testing.assert_allclose(u, numeric, rtol=1e-6, atol=1e-10)
    # The loss it returns is the clean batch's at θ, the look-ahead point at ε = 0.
    at_theta = SUPERVISED.loss(classifier_apply(params, batch.query_x), batch.query_y)
    np.testing.assert_allclose(clean_loss, at_theta, rtol=1e-12)


def test_alignment_is_the_inner_product_of_clean_and_example_gradients(x64):
    """At ε = 0: u_i = ⟨∇ L_clean(θ), ∇ ℓ_i(θ)⟩ (per-example gradients: no BatchNorm here)."""
    params, batch = classification_problem(1)
    clean = jax.grad(lambda p: SUPERVISED.loss(classifier_apply(p, batch.query_x), batch.query_y))
    per_example = jax.vmap(
        jax.grad(lambda p, x, y: SUPERVISED.loss(classifier_apply(p, x[None]), y[None])),
        in_axes=(None, 0, 0),
    )(params, batch.support_x, batch.support_y)
    g = clean(params)
    expected = sum(jnp.einsum("n...,...->n", per_example[k], g[k]) for k in params)
    np.testing.assert_allclose(
        alignment(classifier_apply, SUPERVISED, params, batch)[0], expected, rtol=1e-10
    )


def test_weights_are_the_positive_part_normalised():
    weights = example_weights(jnp.array([2.0, -1.0, 0.0, 6.0]))
    np.testing.assert_allclose(weights, [0.25, 0, 0, 0.75])
    np.testing.assert_array_equal(example_weights(jnp.array([-2.0, -1.0])), [0.0, 0.0])


def test_the_update_is_the_gradient_of_the_weighted_loss(x64):
    params, batch = classification_problem(2)
    batches = jax.tree.map(lambda a: a[None], batch)
    grads, metrics = l2rw(classifier_apply, SUPERVISED).outer_grad(params, batches, 0, 0)
    w = example_weights(alignment(classifier_apply, SUPERVISED, params, batch)[0])

    def weighted(p):
        logits = classifier_apply(p, batch.support_x)
        return jnp.sum(
            w * optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch.support_y)
        )

    expected = jax.grad(weighted)(params)
    for k in params:
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-10)
    assert metrics["kept"] == pytest.approx(float(np.mean(w > 0)))


def test_mislabelled_examples_are_weighed_down():
    """Four Gaussian classes at the corners of a square, a linear classifier at its start and a
    batch with half its labels flipped: the flipped examples' gradients oppose the clean set's,
    the others' agree with it, so the flipped get (almost) no weight."""
    rng = np.random.default_rng(0)
    corners = 3 * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])

    def draw(n):
        y = rng.integers(0, 4, n)
        return jnp.asarray(corners[y] + 0.5 * rng.normal(size=(n, 2)), jnp.float32), y

    def apply(p, x, context=None):
        return x @ p["w"] + p["b"]

    params = {"w": jnp.zeros((2, 4)), "b": jnp.zeros(4)}
    train_x, true = draw(40)
    flipped = np.arange(40) % 2 == 0
    noisy = np.where(flipped, (true + 1 + rng.integers(0, 3, 40)) % 4, true)
    clean_x, clean_y = draw(40)
    batch = Episode(train_x, jnp.asarray(noisy), clean_x, jnp.asarray(clean_y), ways=4)
    w = np.asarray(example_weights(alignment(apply, SUPERVISED, params, batch)[0]))
    assert w[flipped].sum() < 0.05, w[flipped].sum()
    assert (w[~flipped] > 0).all()


def test_the_cli_trains_a_reweighted_classifier_and_tests_it(omniglot, tmp_path):
    """`metarun algo=l2rw data=omniglot` (its preset: data.protocol=supervised, 40% label
    noise), shrunk: the loop, its guards, validation and the test of the real entry point."""
    from tests.conftest import FAST
    from tests.test_cli import run

    small = ["data.ways=10", "data.batch_size=16", "model.filters=8"]
    proc = run("algo=l2rw", *omniglot, *small, *FAST, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "run/result.json").read_text())
    assert result["metric"] == "accuracy" and result["bn_mode"] == "running"
    assert 0 <= result["mean"] <= 1 and "val_mean" in result
    records = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in records]
    assert {"kept", "clean_loss", "train_loss"} <= set(logged[-1])
    assert "test accuracy" in proc.stdout + proc.stderr
    # metarun.load: the saved classifier predicts the class of each test drawing (no support
    # set) as the evaluation did, batch by batch.
    learner = metarun.load(tmp_path / "run")
    source = data.make(learner.config.data)
    keys = episode_keys(learner.config.eval.seed, "test", learner.config.eval.episodes)
    evaluator = make_evaluator(learner._learner, source.objective, inner_steps=0, batch=10)
    reported = np.asarray(evaluator(learner.meta_params, source.samplers["test"], keys)["accuracy"])
    assert result["mean"] == pytest.approx(float(np.mean(reported)), abs=1e-6)
    for key, accuracy in zip(keys[:3], reported[:3], strict=True):
        batch = jax.device_get(source.samplers["test"](key))
        predicted = learner.predict([], [], raw_omniglot(batch.query_x))
        assert np.mean(predicted == batch.query_y) == pytest.approx(accuracy, abs=1e-6)
