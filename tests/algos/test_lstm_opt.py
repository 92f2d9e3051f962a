"""The learned optimizer: hand-set SGD weights, preprocessing, coordinatewise sharing, the
truncated meta-gradient against a hand-built one, bad values (its baselines: test_baselines.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarun.algos.lstm_opt import init_lstm, lstm_opt, lstm_optimizer, lstm_step, preprocess
from metarun.config import ConfigError, QuadraticConfig
from metarun.data import quadratic
from metarun.train import train
from tests.helpers import task


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def quadratics(key, tasks: int, dimension: int):
    cfg = QuadraticConfig(dimension=dimension, init_std=0.5)
    return jax.vmap(lambda k: quadratic.episode(k, cfg))(jax.random.split(key, tasks))


def value(theta, e):
    return jnp.sum(jnp.square(e.support_x @ theta - e.support_y))


def sgd_weights(lr: float, scale: float, eps: float = 1e-7):
    """Two layers of one unit that pass ε·g through: every gate saturated open (σ(50) is 1.0 in
    float64), the forget gates shut, tanh(ε·g) = ε·g to O(ε³); the output reads −lr/(scale·ε)."""
    big = 50.0
    weights = jax.tree.map(jnp.zeros_like, init_lstm(jax.random.PRNGKey(0), 1, 1, 2, jnp.float64))
    for layer in ("layer_0", "layer_1"):
        # Rows: [input, h]; columns: gates i, f, g, o.
        w = jnp.zeros((2, 4)).at[0, 2].set(eps if layer == "layer_0" else 1.0)
        weights[layer] = {"w": w, "b": jnp.array([big, -big, 0.0, big])}
    weights["out"] = {"w": jnp.array([[-lr / (scale * eps)]]), "b": jnp.zeros(1)}
    return weights


def test_hand_set_weights_reproduce_sgd_step_for_step(x64):
    lr, scale = 0.01, 0.1
    e = task(quadratics(jax.random.PRNGKey(0), 1, 10), 0)
    learned = lstm_optimizer(sgd_weights(lr, scale), scale=scale, preprocess_name="none")
    sgd = optax.sgd(lr)
    theta_l = theta_s = quadratic.start(e.support_x)
    state_l, state_s = learned.init(theta_l), sgd.init(theta_s)
    grad, update_l, update_s = jax.jit(jax.grad(value)), jax.jit(learned.update), sgd.update
    for _ in range(30):
        updates, state_l = update_l(grad(theta_l, e), state_l)
        theta_l = optax.apply_updates(theta_l, updates)
        updates, state_s = update_s(grad(theta_s, e), state_s)
        theta_s = optax.apply_updates(theta_s, updates)
        np.testing.assert_allclose(theta_l, theta_s, rtol=1e-9, atol=1e-12)
    assert value(theta_s, e) < 0.5 * value(quadratic.start(e.support_x), e)  # it did descend


def numpy_preprocess(g: np.ndarray, p: float) -> np.ndarray:
    out = np.empty(g.shape + (2,))
    for i, x in enumerate(g):
        if abs(x) >= np.exp(-p):
            out[i] = np.log(abs(x)) / p, np.sign(x)
        else:
            out[i] = -1.0, np.exp(p) * x
    return out


@pytest.mark.parametrize("p", [10.0, 2.0])
def test_preprocessing_is_the_papers_on_both_sides_of_the_threshold(x64, p):
    edge = math.exp(-p)
    g = np.array(
        [3.0, -0.5, 1e-3, -2e-4, edge, edge * (1 + 1e-9), -edge * (1 - 1e-9), 0.3 * edge, 1e-9]
        + [0.0, -1e-30]
    )
    expected = numpy_preprocess(g, p)
    np.testing.assert_allclose(preprocess(jnp.asarray(g), p), expected, rtol=1e-12, atol=1e-15)
    assert expected[4, 1] == 1.0 and expected[6, 0] == -1.0  # each side of e^−p was exercised


def test_coordinates_share_one_lstm():
    weights = init_lstm(jax.random.PRNGKey(1), 2, 5, 2)
    opt = lstm_optimizer(weights)
    update = jax.jit(opt.update)
    scales = jnp.array([1e-6, 0.1, 3.0, 20.0])[:, None]  # below and above e^−p
    grads = scales * jax.random.normal(jax.random.PRNGKey(2), (4, 7))
    perm = np.random.default_rng(0).permutation(7)
    state, state_p = opt.init(grads[0]), opt.init(grads[0])
    for g in grads:  # a few steps: the hidden states differ by coordinate and must follow it
        update_, state = update(g, state)
        update_p, state_p = update(g[perm], state_p)
        np.testing.assert_allclose(update_p, update_[perm], rtol=1e-6, atol=1e-7)
    # Leaves of a pytree are coordinates like any other: one LSTM for all of them.
    tree = {"a": grads[0, :3], "b": grads[0, 3:].reshape(2, 2)}
    tree_update, _ = opt.update(tree, opt.init(tree))
    flat_update, _ = opt.update(grads[0], opt.init(grads[0]))
    np.testing.assert_allclose(
        jnp.concatenate([tree_update["a"], tree_update["b"].ravel()]), flat_update, rtol=1e-6
    )


def hand_built_meta_loss(weights, episodes, horizon: int, unroll: int, scale: float, p: float):
    """1/(T·tasks) Σ_tasks Σ_t f(θ_t), every step written out; θ and the LSTM state are cut from
    the graph at the start of each segment (every ``unroll`` steps)."""
    tasks, d = episodes.support_x.shape[:2]
    total = 0.0
    for k in range(tasks):
        e = task(episodes, k)
        theta = jnp.zeros((d, 1))
        hidden = tuple((jnp.zeros((d, 4)), jnp.zeros((d, 4))) for _ in range(2))
        for t in range(horizon):
            if t % unroll == 0:
                theta, hidden = jax.lax.stop_gradient((theta, hidden))
            g = jax.lax.stop_gradient(jax.grad(value)(theta, e))
            out, hidden = lstm_step(weights, preprocess(g[:, 0], p), hidden)
            theta = theta + scale * out[:, None]
            total = total + value(theta, e)
    return total / (horizon * tasks)


@pytest.mark.parametrize("unroll", [4, 2, 1], ids=["full-bptt", "two-segments", "one-step"])
def test_truncated_meta_gradient_equals_the_hand_built_one(x64, unroll):
    horizon, scale, p = 4, 0.1, 10.0
    episodes = quadratics(jax.random.PRNGKey(3), 2, 3)
    learner = lstm_opt(
        quadratic.predict,
        quadratic.QUADRATIC,
        horizon=horizon,
        unroll=unroll,
        hidden=4,
        layers=2,
        scale=scale,
        p=p,
        start=quadratic.start,
    )
    meta_params = learner.init(None, jax.random.PRNGKey(4), None)
    meta_params = jax.tree.map(lambda w: jnp.asarray(w, jnp.float64), meta_params)
    grads, metrics = jax.jit(learner.outer_grad, static_argnums=2)(meta_params, episodes, 0, 0)

    hand_built = jax.value_and_grad(hand_built_meta_loss)  # eager: one program per step size
    expected = hand_built(meta_params["lstm"], episodes, horizon, unroll, scale, p)
    np.testing.assert_allclose(metrics["loss"], expected[0], rtol=1e-10)
    for ours, theirs in zip(
        jax.tree.leaves(grads["lstm"]), jax.tree.leaves(expected[1]), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-12)
    if unroll < horizon:  # the truncation is real: full BPTT gives another gradient
        _, full = hand_built(meta_params["lstm"], episodes, horizon, horizon, scale, p)
        assert not np.allclose(grads["lstm"]["layer_0"]["w"], full["layer_0"]["w"], rtol=1e-3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.horizon=20", "algo.unroll=30"], "algo.unroll=30 is invalid: must be in 1 .. "),
        (["algo.horizon=50", "algo.unroll=20"], "algo.horizon=50 is invalid: must be a multiple"),
        (["algo.preprocess=sign"], "algo.preprocess='sign' is invalid"),
        (["algo.scale=0"], "algo.scale=0.0 is invalid"),
    ],
)
def test_bad_values_name_the_key(make_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("algo=lstm_opt", "data=quadratic", *overrides)


@pytest.mark.slow
@pytest.mark.extended
def test_the_learned_optimizer_beats_tuned_adam_on_held_out_quadratics(make_config, tmp_path):
    """The paper's §3.1 claim, in CPU seconds: 600 meta-steps of 25 quadratics (the paper: 128
    per update, many more updates), then 300 held-out quadratics at the trained horizon, 100."""
    config = make_config(
        "algo=lstm_opt",
        "data=quadratic",
        "trainer.steps=600",
        "trainer.meta_batch=25",
        "trainer.log_every=100",
        "trainer.val_every=0",
        "trainer.checkpoint_every=0",
        "optim.lr=3e-3",
        "eval.episodes=300",
    )
    result = train(config, tmp_path)
    # Measured (seed 0): learned 0.132 ± 0.048; Adam (lr 1) 0.314, RMSProp 0.662, SGD 1.035.
    assert result["mean"] < result["baselines"]["adam"], result
