"""Reptile's update equals θ + ε (mean_t W_t − θ) with optim=sgd."""

import jax
import numpy as np
import optax

from metarun.algos.base import outer_grad
from metarun.algos.reptile import reptile
from tests.helpers import (
    OBJECTIVE,
    flat,
    support_loss,
    task,
    tiny_episodes,
    tiny_mlp_apply,
    tiny_mlp_params,
)


def test_update_is_the_hand_formula():
    params = tiny_mlp_params(jax.random.PRNGKey(0))
    episodes = tiny_episodes(jax.random.PRNGKey(1), tasks=3)
    alpha, epsilon, k = 0.02, 0.5, 4
    learner = reptile(tiny_mlp_apply, OBJECTIVE, inner_lr=alpha)
    grads, metrics = outer_grad(learner, OBJECTIVE, params, episodes, k)
    opt = optax.sgd(epsilon)
    updates, _ = opt.update(grads, opt.init(params))
    new = optax.apply_updates(params, updates)

    adapted = []
    for t in range(3):
        e = task(episodes, t)
        w = params
        for _ in range(k):
            g = jax.grad(support_loss)(w, e)
            w = jax.tree.map(lambda p, g: p - alpha * g, w, g)
        adapted.append(flat(w))
    theta = flat(params)
    expected = theta + epsilon * (np.mean(adapted, 0) - theta)
    np.testing.assert_allclose(flat(new), expected, rtol=1e-5, atol=1e-6)
    assert set(metrics) == {"loss", "mse"}
