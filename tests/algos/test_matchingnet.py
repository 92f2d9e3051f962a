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


def lstm_step(params, carry, x):
    """One LSTM step in numpy from Flax's ``LSTMCell`` parameters (Hochreiter & Schmidhuber):
    i, f, o = σ(x W_i· + h U_i· + b_·), g = tanh(x W_g + h U_g + b_g), c' = f c + i g,
    h' = o tanh(c')."""
    c, h = carry

    def gate(name):
        hidden = params["h" + name]
        return x @ params["i" + name]["kernel"] + h @ hidden["kernel"] + hidden["bias"]

    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    i, f, g, o = sigmoid(gate("i")), sigmoid(gate("f")), np.tanh(gate("g")), sigmoid(gate("o"))
    c = f * c + i * g
    return c, o * np.tanh(c)


def test_fce_two_steps_match_a_hand_unrolled_attention_lstm():
    """Vinyals et al. (2016), appendix A.1, unrolled by hand for K = 2 steps:
    ĥ_k, c_k = LSTM([f', r_{k-1}], h_{k-1}, c_{k-1}); h_k = ĥ_k + f';
    r_k = Σ_i softmax_i(h_k · g(x_i)) g(x_i); f(x̂, S) = h_K. The read-out r enters the input
    (the paper concatenates it to the state); the support g(x_i, S) = g'_i + h→_i + h←_i."""
    learner, meta = fce_learner(steps=2)
    noise = np.random.default_rng(2)  # every weight and bias away from its initial value
    meta["fce"] = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a + 0.5 * noise.normal(size=a.shape), jnp.float32), meta["fce"]
    )
    fce = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), meta["fce"])
    g0, f0 = SUPPORT_X @ W, QUERY_X @ W

    def run(params, xs):  # one sequence, from a zero state
        carry, outs = (np.zeros(3), np.zeros(3)), []
        for x in xs:
            carry = lstm_step(params, carry, x)
            outs.append(carry[1])
        return np.stack(outs)

    g = g0 + run(fce["support_forward"]["cell"], g0)
    g = g + run(fce["support_backward"]["cell"], g0[::-1])[::-1]

    def read(h):
        a = np.exp(h @ g.T - (h @ g.T).max(1, keepdims=True))
        return (a / a.sum(1, keepdims=True)) @ g

    zeros = np.zeros((5, 3))
    c1, h1 = lstm_step(fce["query_lstm"], (zeros, zeros), np.concatenate([f0, zeros], 1))
    h1 = h1 + f0  # step 1, from a zero state and a zero read-out
    _, h2 = lstm_step(fce["query_lstm"], (c1, h1), np.concatenate([f0, read(h1)], 1))
    f = h2 + f0  # step 2: the state of step 1 (skip included) and its read-out r_1
    cos = (f @ g.T) / np.outer(np.linalg.norm(f, axis=1), np.linalg.norm(g, axis=1))
    attention = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
    expected = np.stack([attention[:, SUPPORT_Y == k].sum(1) for k in range(3)], axis=1)
    np.testing.assert_allclose(np.exp(predict(learner, meta)), expected, rtol=1e-5)
    # A second step that did nothing, or ignored r_1 or c_1, would give step 1's answer.
    f1 = h1
    cos1 = (f1 @ g.T) / np.outer(np.linalg.norm(f1, axis=1), np.linalg.norm(g, axis=1))
    assert np.abs(cos1 - cos).max() > 1e-2


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
