"""Random quadratics: the packing into an episode, the distribution, and who may use them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.config import ConfigError, QuadraticConfig
from metarun.data import quadratic
from metarun.experiment import build


def test_an_episode_is_the_quadratic_shifted_to_start_at_zero():
    cfg = QuadraticConfig(dimension=6, init_std=0.3)
    key = jax.random.PRNGKey(0)
    q, e = quadratic.sample_task(key, cfg), quadratic.episode(key, cfg)
    assert e.support_x.shape == (6, 6) and e.support_y.shape == (6, 1) and e.ways == 0
    np.testing.assert_array_equal(e.query_x, e.support_x)  # the function scored is the one
    np.testing.assert_array_equal(e.query_y, e.support_y)  # optimised
    delta0 = quadratic.start(e.support_x)
    assert delta0.shape == (6, 1) and not np.any(delta0)

    def packed(delta):
        return quadratic.QUADRATIC.loss(quadratic.predict(delta, e.support_x), e.support_y)

    # f(θ) = ‖Wθ − y‖² at θ = θ_0 + δ, for the start and for other points; gradients too, so
    # every gradient-reading optimizer takes the same steps on either form.
    for delta in [delta0[:, 0], *jax.random.normal(jax.random.PRNGKey(1), (3, 6))]:
        theta = q.theta0 + delta
        expected = np.sum(np.square(np.asarray(q.w) @ np.asarray(theta) - np.asarray(q.y)))
        np.testing.assert_allclose(packed(delta[:, None]), expected, rtol=1e-5)
        np.testing.assert_allclose(
            jax.grad(packed)(delta[:, None])[:, 0], jax.grad(q)(theta), rtol=1e-4, atol=1e-4
        )
    assert packed(delta0) != pytest.approx(float(jnp.sum(q.y**2)), rel=1e-6)  # θ_0 is used


def test_w_and_y_are_standard_normal_and_the_start_has_init_std():
    cfg = QuadraticConfig(dimension=10, init_std=0.01)
    tasks = jax.jit(jax.vmap(lambda k: quadratic.sample_task(k, cfg)))(
        jax.random.split(jax.random.PRNGKey(2), 2000)
    )
    for values, std in ((tasks.w, 1.0), (tasks.y, 1.0), (tasks.theta0, 0.01)):
        values = np.asarray(values).ravel()
        assert abs(values.mean()) < 5 * std / np.sqrt(values.size)
        assert values.std() == pytest.approx(std, rel=0.05)
    assert not np.allclose(tasks.w[0], tasks.w[1])  # a new quadratic per key


def test_the_spec_reads_w_as_rows():
    spec = quadratic.spec(QuadraticConfig(dimension=3))
    assert spec.input_shape == (3,) and spec.output_dim == 1 and not spec.objective.maximize
    assert spec.preprocess(list(range(9))).shape == (3, 3)


@pytest.mark.parametrize("algo", ["maml", "reptile", "protonet"])
def test_only_learned_optimizers_take_quadratics(make_config, algo):
    config = make_config(f"algo={algo}", "data=quadratic")
    with pytest.raises(ConfigError, match=f"algo={algo} is invalid with data=quadratic.*lstm_opt"):
        build(config)
