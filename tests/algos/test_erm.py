"""Plain training: the gradient of the batch's mean loss, with the query set or without."""

import jax
import numpy as np
import pytest

from metarun.algos.erm import erm
from metarun.types import SUPERVISED
from tests.helpers import classification_problem, classifier_apply


@pytest.mark.parametrize("with_query", [False, True])
def test_the_update_is_the_gradient_of_the_mean_loss_of_the_batch(with_query):
    params, batch = classification_problem(5)
    batches = jax.tree.map(lambda a: np.stack([a, a[::-1]]), batch)  # two batches
    grads, metrics = erm(classifier_apply, SUPERVISED, with_query).outer_grad(params, batches, 0, 0)
    x, y = batch.support_x, batch.support_y
    if with_query:
        x, y = np.concatenate([x, batch.query_x]), np.concatenate([y, batch.query_y])
    expected = jax.grad(lambda p: SUPERVISED.loss(classifier_apply(p, x), y))(params)
    for name in params:  # the reversed batch has the same mean loss (no BatchNorm here)
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-4, atol=1e-6)
    assert float(metrics["loss"]) == pytest.approx(
        float(SUPERVISED.loss(classifier_apply(params, x), y)), rel=1e-5
    )
