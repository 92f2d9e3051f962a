"""Reptile: the update θ + ε (mean_t W_t − θ) with optim=sgd, W_t trained on each training
episode's support and query sets together; evaluation adapts on the support set alone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarun.algos.base import adapt_and_predict, outer_grad, task_metrics
from metarun.algos.reptile import reptile
from metarun.types import Episode
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


def apply(params, x, context=None):
    """The tiny MLP; ``context`` (a support set some models normalise with) is not read."""
    del context
    return tiny_mlp_apply(params, x)


def sgd(params, e: Episode, alpha: float, k: int):
    """``k`` full-batch steps of θ ← θ − α ∇L_support(θ), by hand."""
    w = params
    for _ in range(k):
        g = jax.grad(support_loss)(w, e)
        w = jax.tree.map(lambda p, g: p - alpha * g, w, g)
    return w


def both(e: Episode) -> Episode:
    """The episode whose support set is ``e``'s support and query sets together."""
    x = jnp.concatenate([e.support_x, e.query_x])
    y = jnp.concatenate([e.support_y, e.query_y])
    return Episode(x, y, e.query_x, e.query_y)


def test_update_is_the_hand_formula_on_support_and_queries(x64):
    params = tiny_mlp_params(jax.random.PRNGKey(0), jnp.float64)
    episodes = tiny_episodes(jax.random.PRNGKey(1), tasks=3, dtype=jnp.float64)
    alpha, epsilon, k = 0.02, 0.5, 4
    learner = reptile(apply, OBJECTIVE, inner_lr=alpha)
    grads, metrics = outer_grad(learner, OBJECTIVE, params, episodes, k)
    opt = optax.sgd(epsilon)
    updates, _ = opt.update(grads, opt.init(params))
    new = optax.apply_updates(params, updates)

    theta, tasks = flat(params), [task(episodes, t) for t in range(3)]
    on_both = np.mean([flat(sgd(params, both(e), alpha, k)) for e in tasks], 0)
    np.testing.assert_allclose(flat(new), theta + epsilon * (on_both - theta), rtol=1e-12)
    np.testing.assert_allclose(flat(grads), theta - on_both, rtol=1e-12, atol=1e-15)
    # Not the support-only update it used to be (5 support and 7 query points per task).
    on_support = np.mean([flat(sgd(params, e, alpha, k)) for e in tasks], 0)
    assert np.abs(on_both - on_support).max() > 1e-3

    # The logged metrics are the evaluation's: adapted on the support set, scored on queries.
    losses = [query_loss(sgd(params, e, alpha, k), e) for e in tasks]
    assert set(metrics) == {"loss", "mse"}
    np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-12)


def test_evaluation_adapts_on_the_support_set_alone(x64):
    params = tiny_mlp_params(jax.random.PRNGKey(2), jnp.float64)
    e = task(tiny_episodes(jax.random.PRNGKey(3), tasks=1, dtype=jnp.float64), 0)
    alpha, k = 0.05, 3
    learner = reptile(apply, OBJECTIVE, inner_lr=alpha)
    adapted = sgd(params, e, alpha, k)
    predictions = adapt_and_predict(learner, params, e.support_x, e.support_y, e.query_x, k, 0)
    np.testing.assert_allclose(predictions, apply(adapted, e.query_x), rtol=1e-12)
    # What evaluate.py scores: the query loss of the support-adapted weights, not of weights
    # that saw the queries (which score lower).
    metrics = task_metrics(learner, OBJECTIVE, params, e, k)
    np.testing.assert_allclose(metrics["loss"], query_loss(adapted, e), rtol=1e-12)
    assert query_loss(sgd(params, both(e), alpha, k), e) < metrics["loss"]
