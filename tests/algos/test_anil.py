"""ANIL adapts the head only; the body is still meta-learned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.anil import anil
from metarun.algos.base import outer_grad
from metarun.types import mse
from tests.helpers import OBJECTIVE, flat, task, tiny_episodes, tiny_mlp_apply, tiny_mlp_params


def test_inner_loop_changes_only_the_head():
    params = tiny_mlp_params(jax.random.PRNGKey(0))
    e = task(tiny_episodes(jax.random.PRNGKey(1), tasks=1), 0)
    adapted = anil(tiny_mlp_apply, mse, inner_lr=0.1).adapt(params, e.support_x, e.support_y, 3)
    np.testing.assert_array_equal(flat(adapted["Dense_0"]), flat(params["Dense_0"]))
    assert not np.allclose(flat(adapted["head"]), flat(params["head"]))


def test_body_gets_a_meta_gradient_through_the_head_adaptation():
    params = tiny_mlp_params(jax.random.PRNGKey(2))
    episodes = tiny_episodes(jax.random.PRNGKey(3), tasks=2)
    grads, _ = outer_grad(anil(tiny_mlp_apply, mse, inner_lr=0.1), OBJECTIVE, params, episodes, 1)
    assert jnp.linalg.norm(flat(grads["Dense_0"])) > 0


def test_model_without_head_is_refused():
    with pytest.raises(ValueError, match="head"):
        anil(tiny_mlp_apply, mse, inner_lr=0.1).init({"Dense_0": {}, "Dense_1": {}})
