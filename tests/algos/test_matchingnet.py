"""Matching Networks: attention against a direct computation, invariance, and the FCE wiring."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metarun.algos.base import adapt_and_predict
from metarun.algos.matchingnet import FullContextEmbedding, matchingnet
from metarun.types import Episode

RNG = np.random.default_rng(1)
SUPPORT_X = RNG.normal(size=(6, 4))  # 3-way 2-shot, labels in no particular order
SUPPORT_Y = np.array([1, 2, 0, 0, 2, 1])
QUERY_X = RNG.normal(size=(5, 4))
W = RNG.normal(size=(4, 3))


def embed(params, x, context=None):
    return x @ params["w"]


def predict(learner, meta_params, support_x=SUPPORT_X, support_y=SUPPORT_Y):
    return adapt_and_predict(learner, meta_params, support_x, support_y, QUERY_X, 0, 3)


def test_log_probabilities_are_summed_cosine_attention():
    with jax.enable_x64(True):
        log_p = np.asarray(predict(matchingnet(embed), {"encoder": {"w": jnp.asarray(W)}}))
    g, f = SUPPORT_X @ W, QUERY_X @ W
    cos = (f @ g.T) / np.outer(np.linalg.norm(f, axis=1), np.linalg.norm(g, axis=1))
    attention = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
    expected = np.stack([attention[:, SUPPORT_Y == k].sum(1) for k in range(3)], axis=1)
    np.testing.assert_allclose(np.exp(log_p), expected, rtol=1e-12)


def test_shuffling_the_support_set_changes_nothing_without_fce():
    learner, meta = matchingnet(embed), {"encoder": {"w": jnp.asarray(W)}}
    order = RNG.permutation(len(SUPPORT_Y))
    np.testing.assert_allclose(
        predict(learner, meta), predict(learner, meta, SUPPORT_X[order], SUPPORT_Y[order]), 1e-6
    )


def fce_learner(steps: int):
    learner = matchingnet(embed, fce=True, fce_steps=steps)
    episode = Episode(SUPPORT_X, SUPPORT_Y, QUERY_X, np.zeros(5, np.int32), ways=3)
    meta = learner.init({"w": jnp.asarray(W)}, jax.random.PRNGKey(0), episode)
    return learner, meta


def test_fce_one_step_is_an_lstm_step_with_a_skip_connection_over_the_bilstm_support():
    learner, meta = fce_learner(steps=1)
    fce = meta["fce"]
    g0, f0 = SUPPORT_X @ W, QUERY_X @ W
    # The support: g' plus both directions of a BiLSTM, run here cell by cell.
    cell = nn.LSTMCell(3)

    def run(params, xs):
        carry, outs = cell.initialize_carry(jax.random.PRNGKey(0), xs[:1].shape), []
        for x in xs:
            carry, h = cell.apply({"params": params}, carry, x[None])
            outs.append(h[0])
        return np.stack(outs)

    fwd = run(fce["support_forward"]["cell"], g0)
    bwd = run(fce["support_backward"]["cell"], g0[::-1])[::-1]
    g = g0 + fwd + bwd
    # One attention-LSTM step from a zero state and a zero readout, plus f'.
    zeros = (np.zeros((5, 3)), np.zeros((5, 3)))
    _, h = cell.apply({"params": fce["query_lstm"]}, zeros, np.concatenate([f0, 0 * f0], 1))
    f = h + f0
    cos = (f @ g.T) / np.outer(np.linalg.norm(f, axis=1), np.linalg.norm(g, axis=1))
    attention = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
    expected = np.stack([attention[:, SUPPORT_Y == k].sum(1) for k in range(3)], axis=1)
    np.testing.assert_allclose(np.exp(predict(learner, meta)), expected, rtol=1e-5)


def test_fce_probabilities_are_a_distribution_that_depends_on_the_support_order():
    learner, meta = fce_learner(steps=3)
    p = np.exp(np.asarray(predict(learner, meta)))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    order = np.arange(6)[::-1]
    shuffled = np.exp(np.asarray(predict(learner, meta, SUPPORT_X[order], SUPPORT_Y[order])))
    assert not np.allclose(p, shuffled, atol=1e-4)  # the BiLSTM reads the set as a sequence


def test_fce_modules_hold_the_three_lstms():
    _, meta = fce_learner(steps=2)
    assert set(meta["fce"]) == {"support_forward", "support_backward", "query_lstm"}
    assert isinstance(FullContextEmbedding(3, 2), nn.Module)
