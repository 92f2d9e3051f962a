"""Prototypical Networks: logits against a direct computation, and invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.base import adapt_and_predict
from metarun.algos.protonet import protonet
from metarun.config import ConfigError
from metarun.experiment import build

RNG = np.random.default_rng(0)
SUPPORT_X = RNG.normal(size=(6, 4))  # 3-way 2-shot, labels in no particular order
SUPPORT_Y = np.array([2, 0, 1, 0, 2, 1])
QUERY_X = RNG.normal(size=(5, 4))
W = RNG.normal(size=(4, 3))


def embed(params, x, context=None):
    """A linear encoder: enough to check what the learner does with the embeddings."""
    return x @ params["w"]


def predict(learner, support_x=SUPPORT_X, support_y=SUPPORT_Y):
    params = {"w": jnp.asarray(W)}
    return adapt_and_predict(learner, params, support_x, support_y, QUERY_X, 0, 3)


def test_logits_are_minus_squared_distances_to_the_class_means():
    with jax.enable_x64(True):
        logits = np.asarray(predict(protonet(embed)))
    z, q = SUPPORT_X @ W, QUERY_X @ W
    means = np.stack([z[SUPPORT_Y == k].mean(0) for k in range(3)])
    expected = -np.array([[np.sum((qi - c) ** 2) for c in means] for qi in q])
    np.testing.assert_allclose(logits, expected, rtol=1e-12)


def test_cosine_logits_are_scaled_cosines_to_the_class_means():
    with jax.enable_x64(True):
        logits = np.asarray(predict(protonet(embed, distance="cosine", cosine_scale=7.0)))
    z, q = SUPPORT_X @ W, QUERY_X @ W
    means = np.stack([z[SUPPORT_Y == k].mean(0) for k in range(3)])
    cos = (q @ means.T) / np.outer(np.linalg.norm(q, axis=1), np.linalg.norm(means, axis=1))
    np.testing.assert_allclose(logits, 7.0 * cos, rtol=1e-12)


def test_shuffling_the_support_set_changes_nothing():
    learner = protonet(embed)
    order = RNG.permutation(len(SUPPORT_Y))
    np.testing.assert_allclose(
        predict(learner), predict(learner, SUPPORT_X[order], SUPPORT_Y[order]), rtol=1e-6
    )


def test_the_meta_parameters_are_the_encoder_without_its_head():
    params = {"blocks_0": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    assert set(protonet(embed).init(params, None, None)) == {"blocks_0"}


def test_regression_data_is_refused(make_config):
    with pytest.raises(ConfigError, match="algo=protonet is invalid with this data: it classifies"):
        build(make_config("algo=protonet"))


def test_more_training_ways_need_a_learner_without_a_head(make_config, tmp_path):
    from tests.test_config import data_overrides

    extra = ["data=mini_imagenet", "data.train_ways=4", "data.ways=2"]
    extra += data_overrides("mini_imagenet", tmp_path)
    with pytest.raises(ConfigError, match="data.train_ways=4 is invalid with algo=maml"):
        build(make_config("algo=maml", *extra))
    exp = build(make_config("algo=protonet", *extra))
    train, test = (exp.source.samplers[s](jax.random.PRNGKey(0)) for s in ("train", "test"))
    assert (train.ways, test.ways) == (4, 2)
