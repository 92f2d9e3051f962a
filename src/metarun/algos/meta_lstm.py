"""Meta-learner LSTM: the learner's parameters are the cell state of an LSTM that updates them.

    c_t = f_t ⊙ c_{t−1} + i_t ⊙ (−∇θ_{t−1} L_t),      θ_t = c_t,   c_0 = θ_0 (learned)
    i_t = σ(W_I · [h_t, θ_{t−1}, i_{t−1}] + b_I)
    f_t = σ(W_F · [h_t, θ_{t−1}, f_{t−1}] + b_F)
    h_t = LSTM([pre(∇θ_{t−1} L_t), pre(L_t)], h_{t−1})      (20 units)

for t = 1 … T (``inner_steps``), L_t the loss on the whole support set. With f = 1 and i = α
this is gradient descent; the meta-learner learns when to step further (i) and when to
shrink the parameters (f), and the initialisation c_0. Everything is coordinatewise: each
coordinate of θ has its own LSTM state (h, c, f, i), and every coordinate uses the same
weights. ``pre`` is the preprocessing of Andrychowicz et al. (2016, appendix A),

    pre(x) = (log|x| / p, sign(x))  if |x| ≥ e^−p,   (−1, e^p x)  otherwise,   p = 10,

and the loss, one scalar, is given to every coordinate. Meta-parameters: ``params`` (c_0,
the model's parameters) and ``meta_learner`` (the first LSTM's kernel and bias, and the
kernels and biases of the two gates). The meta-gradient is the gradient of the query loss
after T updates, with the learner's gradients and losses treated as constants (§3.2,
"we ignore the second derivatives"): ``stop_gradient`` on ∇L_t and L_t.

As the paper (§3.2, §5 and the authors' code, ``model/lstm/meta-learner-lstm.lua``):

* two layers: a standard LSTM of 20 units reads the preprocessed (∇, L), and its hidden
  state h_t replaces (∇, L) in the gates of the second layer, whose cell state is θ; the raw
  gradient enters the cell update only;
* every meta-learner weight starts U(−0.01, 0.01); the forget-gate bias starts large, the
  input-gate bias small, so that training starts from gradient descent with a small step.

Where we differ:

* the gate biases start at logit(``forget_init``) and logit(``inner_lr``), one value each
  (the authors' code: b_F ~ U(4, 5), b_I ~ U(−5, −4), i.e. f ≈ 0.98-0.99, i ≈ 0.007-0.018);
* f_{t−1} and i_{t−1} fed back to the gates are the gate values, as the paper's equations
  write them (the authors' code feeds back the pre-sigmoid values); f_0 = i_0 = 0;
* each update uses the whole support set, as the paper describes (the authors' code draws
  batches of 5 from it: the whole set in 5-way 1-shot);
* no batch normalisation inside the meta-learner (an option of the authors' code, off in
  their configs), and the learner's BatchNorm is metarun's transductive one (models/conv4.py).

References:
Ravi, Larochelle. "Optimization as a Model for Few-Shot Learning". ICLR 2017.
https://openreview.net/forum?id=rJY0-Kcll (code: github.com/twitter-research/meta-learning-lstm)
Andrychowicz et al. "Learning to learn by gradient descent by gradient descent". NeurIPS 2016.
https://arxiv.org/abs/1606.04474
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metarun.algos import algos
from metarun.algos.base import MetaLearner, predict_with_adapted
from metarun.algos.lstm_opt import preprocess, preprocess_pair
from metarun.types import Array, Objective

P = 10.0  # Andrychowicz et al.'s preprocessing threshold e^−p


class MetaLSTMState(NamedTuple):
    """The meta-learner's state after step t, one row per coordinate of the learner.

    Attributes:
      theta: c_t = θ_t, the flattened learner parameters ``[n]``.
      h, c: the first LSTM layer's hidden and cell states ``[n, hidden]``.
      f, i: the forget and input gates of step t ``[n]``.
    """

    theta: Array
    h: Array
    c: Array
    f: Array
    i: Array


def initial_state(theta: Array, hidden: int) -> MetaLSTMState:
    """c_0 = θ_0; zero states and gates elsewhere."""
    zeros = jnp.zeros(theta.shape, theta.dtype)
    rows = jnp.zeros((*theta.shape, hidden), theta.dtype)
    return MetaLSTMState(theta, rows, rows, zeros, zeros)


def meta_lstm_step(
    weights, state: MetaLSTMState, grad: Array, loss: Array, p: float = P
) -> MetaLSTMState:
    """One update of the learner, c_t = f_t ⊙ c_{t−1} − i_t ⊙ ∇_t: rows (coordinates) apart.

    Args:
      weights: the meta-learner, ``meta_params["meta_learner"]``.
      state: the state after step t − 1.
      grad: ∇θ_{t−1} L_t, flattened like ``state.theta``.
      loss: L_t, a scalar.
      p: the preprocessing's threshold e^−p.
    """
    # [pre(∇), pre(L), h] @ W, one LSTM gate at a time: slices of the small kernel, never of
    # the [n, 4·hidden] rows (whose gradient would be a concatenation). pre(L) is one row.
    kernel, hidden = weights["lstm"]["kernel"], state.h.shape[-1]
    g1, g2 = preprocess_pair(grad, p)
    shared = preprocess(loss, p) @ kernel[2:4] + weights["lstm"]["bias"]

    def lstm_gate(j):
        cols = slice(j * hidden, (j + 1) * hidden)
        rows = g1[:, None] * kernel[0, cols] + g2[:, None] * kernel[1, cols]
        return rows + state.h @ kernel[4:, cols] + shared[cols]

    z_i, z_f, z_g, z_o = (lstm_gate(j) for j in range(4))
    c = jax.nn.sigmoid(z_f) * state.c + jax.nn.sigmoid(z_i) * jnp.tanh(z_g)
    h = jax.nn.sigmoid(z_o) * jnp.tanh(c)

    def gate(w, previous):  # W · [h_t, θ_{t−1}, gate_{t−1}] + b, a row at a time
        k = w["kernel"][:, 0]
        return jax.nn.sigmoid(h @ k[:-2] + state.theta * k[-2] + previous * k[-1] + w["bias"][0])

    f, i = gate(weights["forget"], state.f), gate(weights["input"], state.i)
    return MetaLSTMState(f * state.theta - i * grad, h, c, f, i)


def meta_lstm(
    apply_fn,
    loss_fn,
    *,
    inner_lr: float = 0.01,
    forget_init: float = 0.99,
    hidden: int = 20,
    weight_init: float = 0.01,
    p: float = P,
    remat: bool = False,
) -> MetaLearner:
    """The meta-learner LSTM; ``meta_params = {"params": c_0, "meta_learner": weights}``.

    Args:
      apply_fn: ``(params, x) -> predictions``.
      loss_fn: ``(predictions, targets) -> scalar`` inner loss, on the whole support set.
      inner_lr: the input gate at initialisation, σ(b_I): the first updates are θ − i ∇L.
      forget_init: the forget gate at initialisation, σ(b_F).
      hidden: units of the first LSTM layer.
      weight_init: every other meta-learner weight starts U(−weight_init, weight_init).
      p: the preprocessing's threshold e^−p.
      remat: recompute each step's LSTM activations on the backward pass (``jax.checkpoint``):
        the backward pass keeps about 2·hidden + 4 numbers per coordinate and step (the
        step's inputs) instead of about 8·hidden.
    """
    step_fn = partial(meta_lstm_step, p=p)
    step_fn = jax.checkpoint(step_fn) if remat else step_fn

    def init(params, key=None, episode=None):
        del episode
        key = jax.random.PRNGKey(0) if key is None else key
        k_lstm, k_bias, k_f, k_i = jax.random.split(key, 4)
        dtype = jax.dtypes.canonicalize_dtype(float)  # not weak: the first update keeps it

        def uniform(k, shape):
            return jax.random.uniform(k, shape, dtype, -weight_init, weight_init)

        def gate(k, start):
            logit = math.log(start) - math.log1p(-start)
            return {"kernel": uniform(k, (hidden + 2, 1)), "bias": jnp.full((1,), logit, dtype)}

        weights = {
            "lstm": {
                "kernel": uniform(k_lstm, (4 + hidden, 4 * hidden)),
                "bias": uniform(k_bias, (4 * hidden,)),
            },
            "forget": gate(k_f, forget_init),
            "input": gate(k_i, inner_lr),
        }
        return {"params": params, "meta_learner": weights}

    def adapt(meta_params, support_x, support_y, num_steps, ways=0):
        del ways  # the head has data.ways outputs
        theta, unravel = ravel_pytree(meta_params["params"])

        def support_loss(flat):
            return loss_fn(apply_fn(unravel(flat), support_x), support_y)

        def step(state, _):
            # The learner's loss and gradient are inputs, not functions of the meta-parameters.
            loss, grad = jax.value_and_grad(support_loss)(jax.lax.stop_gradient(state.theta))
            return step_fn(meta_params["meta_learner"], state, grad, loss), None

        state, _ = jax.lax.scan(step, initial_state(theta, hidden), None, num_steps)
        return unravel(state.theta)

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict_with_adapted(apply_fn),
        encoder_key="params",
        inner_loop=True,
    )


@algos.register("meta_lstm")
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return meta_lstm(
        net.apply,
        objective.loss,
        inner_lr=cfg.inner_lr,
        forget_init=cfg.forget_init,
        hidden=cfg.hidden,
        weight_init=cfg.weight_init,
        p=cfg.p,
        remat=cfg.remat,
    )
