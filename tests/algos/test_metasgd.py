"""Meta-SGD: per-parameter learning rates are used and learned."""

import jax
import jax.numpy as jnp
import numpy as np

from metarun.algos.base import outer_grad
from metarun.algos.metasgd import metasgd
from metarun.types import mse
from tests.helpers import (
    OBJECTIVE,
    flat,
    query_loss,
    support_loss,
    task,
    tiny_episodes,
    tiny_mlp_apply,
    tiny_mlp_params,
)


def test_inner_step_uses_per_parameter_rates():
    params = tiny_mlp_params(jax.random.PRNGKey(0))
    e = task(tiny_episodes(jax.random.PRNGKey(1), tasks=1), 0)
    learner = metasgd(tiny_mlp_apply, mse, inner_lr=0.01)
    meta = learner.init(params)
    assert all(np.allclose(a, 0.01) for a in jax.tree.leaves(meta["inner_lr"]))
    meta["inner_lr"] = jax.tree.map(
        lambda a: a * jnp.arange(1, a.size + 1).reshape(a.shape), meta["inner_lr"]
    )
    g = jax.grad(support_loss)(params, e)
    expected = jax.tree.map(lambda p, a, g: p - a * g, params, meta["inner_lr"], g)
    adapted = learner.adapt(meta, e.support_x, e.support_y, 1)
    np.testing.assert_allclose(flat(adapted), flat(expected), rtol=1e-6)


def test_gradient_with_respect_to_rates_is_the_hand_formula():
    """One step: ∂L_q(θ − α⊙g)/∂α = −g ⊙ ∇L_q(θ'), averaged over tasks."""
    params = tiny_mlp_params(jax.random.PRNGKey(2))
    episodes = tiny_episodes(jax.random.PRNGKey(3), tasks=3)
    learner = metasgd(tiny_mlp_apply, mse, inner_lr=0.05)
    grads, _ = outer_grad(learner, OBJECTIVE, learner.init(params), episodes, 1)
    expected = []
    for t in range(3):
        e = task(episodes, t)
        g = jax.grad(support_loss)(params, e)
        adapted = jax.tree.map(lambda p, g: p - 0.05 * g, params, g)
        gq = jax.grad(query_loss)(adapted, e)
        expected.append(flat(jax.tree.map(lambda a, b: -a * b, g, gq)))
    np.testing.assert_allclose(flat(grads["inner_lr"]), np.mean(expected, 0), rtol=1e-4, atol=1e-7)
