"""MAML's meta-gradient: finite differences in float64, first-order, inner loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.anil import anil
from metarun.algos.base import outer_grad, outer_loss
from metarun.algos.maml import fomaml, maml
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


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _directional_fd(f, params, direction, eps=1e-5):
    plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
    return (f(plus) - f(minus)) / (2 * eps)


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(x64, inner_steps):
    params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
    episodes = tiny_episodes(jax.random.PRNGKey(1), tasks=3, dtype=jnp.float64)
    learner = maml(tiny_mlp_apply, mse, inner_lr=0.1)

    @jax.jit
    def loss(p):
        return outer_loss(learner, OBJECTIVE, p, episodes, inner_steps)[0]

    grads, _ = outer_grad(learner, OBJECTIVE, params, episodes, inner_steps)
    # Full gradient, coordinate by coordinate, by central differences.
    leaves, treedef = jax.tree.flatten(params)
    fd = []
    for i, leaf in enumerate(leaves):
        for j in range(leaf.size):
            basis = [jnp.zeros_like(x) for x in leaves]
            basis[i] = basis[i].ravel().at[j].set(1.0).reshape(leaf.shape)
            fd.append(_directional_fd(loss, params, jax.tree.unflatten(treedef, basis)))
    fd = jnp.stack(fd)
    rel_error = jnp.linalg.norm(flat(grads) - fd) / jnp.linalg.norm(fd)
    assert rel_error < 1e-4, rel_error


@pytest.mark.parametrize("make", [maml, metasgd, anil])
def test_remat_gives_the_same_meta_gradient(x64, make):
    """jax.checkpoint changes what is stored for the backward pass, never its result."""
    params = tiny_mlp_params(jax.random.PRNGKey(6), jnp.float64)
    episodes = tiny_episodes(jax.random.PRNGKey(7), tasks=3, dtype=jnp.float64)
    results = []
    for remat in (False, True):
        learner = make(tiny_mlp_apply, mse, inner_lr=0.1, remat=remat)
        step = jax.jit(lambda mp, learner=learner: outer_grad(learner, OBJECTIVE, mp, episodes, 4))
        results.append(flat(step(learner.init(params))[0]))
    assert float(jnp.linalg.norm(results[0])) > 0
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12, atol=1e-14)


def test_remat_recomputes_the_inner_loop_instead_of_storing_it():
    """XLA's buffer assignment: without remat the backward pass keeps every inner step's
    activations, so the step's temporaries grow with the inner steps; with it they do not."""
    params = tiny_mlp_params(jax.random.PRNGKey(8))
    episodes = tiny_episodes(jax.random.PRNGKey(9), tasks=8, shots=200)

    def temp_bytes(remat, steps):
        learner = maml(tiny_mlp_apply, mse, inner_lr=0.1, remat=remat)
        step = jax.jit(lambda p: outer_grad(learner, OBJECTIVE, p, episodes, steps))
        return step.lower(params).compile().memory_analysis().temp_size_in_bytes

    growth = {remat: temp_bytes(remat, 16) - temp_bytes(remat, 4) for remat in (False, True)}
    assert growth[True] < growth[False] / 2, growth


def test_first_order_differs_from_second_order(x64):
    params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
    episodes = tiny_episodes(jax.random.PRNGKey(1), tasks=3, dtype=jnp.float64)
    second, _ = outer_grad(maml(tiny_mlp_apply, mse, inner_lr=0.1), OBJECTIVE, params, episodes, 2)
    first, _ = outer_grad(fomaml(tiny_mlp_apply, mse, inner_lr=0.1), OBJECTIVE, params, episodes, 2)
    gap = jnp.linalg.norm(flat(second) - flat(first)) / jnp.linalg.norm(flat(second))
    assert gap > 1e-3, "second-order terms should matter on a curved loss"


def test_first_order_is_the_query_gradient_at_the_adapted_weights(x64):
    """FOMAML = MAML with the inner gradient stopped: mean_t ∇θ' L_query_t(θ'_t)."""
    params = tiny_mlp_params(jax.random.PRNGKey(2), jnp.float64)
    episodes = tiny_episodes(jax.random.PRNGKey(3), tasks=4, dtype=jnp.float64)
    lr, steps = 0.05, 3
    grads, _ = outer_grad(
        fomaml(tiny_mlp_apply, mse, inner_lr=lr), OBJECTIVE, params, episodes, steps
    )

    expected = []
    for t in range(4):
        e = task(episodes, t)
        adapted = params
        for _ in range(steps):  # plain Python inner loop, no scan, no stop_gradient
            g = jax.grad(support_loss)(adapted, e)
            adapted = jax.tree.map(lambda p, g: p - lr * g, adapted, g)
        expected.append(flat(jax.grad(query_loss)(adapted, e)))
    np.testing.assert_allclose(flat(grads), jnp.mean(jnp.stack(expected), 0), rtol=1e-10)


def test_adapt_is_repeated_sgd_on_the_support_set():
    params = tiny_mlp_params(jax.random.PRNGKey(4))
    e = task(tiny_episodes(jax.random.PRNGKey(5), tasks=1), 0)
    learner = maml(tiny_mlp_apply, mse, inner_lr=0.1)
    adapted = learner.adapt(params, e.support_x, e.support_y, 2)
    manual = params
    for _ in range(2):
        g = jax.grad(support_loss)(manual, e)
        manual = jax.tree.map(lambda p, g: p - 0.1 * g, manual, g)
    np.testing.assert_allclose(flat(adapted), flat(manual), rtol=1e-5, atol=1e-6)
    assert learner.adapt(params, e.support_x, e.support_y, 0) is not None
    np.testing.assert_array_equal(
        flat(learner.adapt(params, e.support_x, e.support_y, 0)), flat(params)
    )
