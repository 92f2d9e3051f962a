"""Learning to learn by gradient descent by gradient descent: an LSTM is the optimizer.

    ∇_t = ∇θ f(θ_t)                          (a constant: the paper drops second derivatives)
    [g_t; h_{t+1}] = m(ρ(∇_t), h_t; φ)       (m: one LSTM for every coordinate of θ)
    θ_{t+1} = θ_t + g_t
    L(φ) = E_f [ 1/T Σ_{t=1..T} f(θ_t) ]     (T = ``algo.horizon``, the paper's weights w_t = 1)

m is coordinatewise: a two-layer LSTM of 20 units (``algo.layers``, ``algo.hidden``) with a
linear output scaled by 0.1 (``algo.scale``), applied to each coordinate of θ as a batch, with
a hidden state of its own per coordinate and the weights φ shared by all, so an update does
not depend on the order of the coordinates or their number. ρ is the paper's preprocessing
(Appendix A), p = 10 (``algo.p``):

    ρ(∇) = (log|∇| / p, sign ∇)   if |∇| ≥ e^−p
           (−1, e^p ∇)            otherwise

``algo.preprocess=none`` feeds ∇ itself, as the authors' code does on quadratics.

Truncated backpropagation through time. The paper runs each optimizee for 100 steps in
segments of 20 (``algo.unroll``): it backpropagates through one segment, updates φ, and
continues the same optimizees from where the segment stopped, θ and the LSTM's state carried
over, no gradient flowing back across the cut. metarun's train loop makes one optimizer update
per meta-step on fresh tasks, so :func:`outer_grad` runs the whole horizon and returns the sum
of the horizon/unroll segment gradients, each the paper's, with the segment's start held
constant:

    ∇φ L ≈ 1/T Σ_k ∇φ Σ_{t ∈ segment k} f(θ_t) |  θ_{kU}, h_{kU} constant    (U = unroll)

(and the mean over the meta-batch). The difference is when the segment gradients are applied:
the paper updates φ after every segment, so the later segments of a run are produced by an
updated optimizer; here all of a run's segments come from the same φ, and there are
horizon/unroll times fewer updates per optimizee step. Memory grows with the unroll, not the
horizon: each segment is differentiated on its own.

Task families:

* tasks that are functions to minimise (``data=quadratic``): θ is the function's variable and
  f its value, both from the objective's ``optimizee`` (types.Optimizee: θ_0 = ``start``, f(θ)
  = ``objective.loss(apply(θ, support_x), support_y)``; a quadratic folds its θ_0 into the
  targets, δ = θ − θ_0 starting at 0, data/quadratic.py): the gradient read and the meta-loss
  are the same function. The dataset's module is never imported here.
* any other dataset: the optimizee is the configured model, started from a fixed
  initialisation (the model's parameters at the run's seed, kept in ``meta_params["init"]`` and
  given a zero meta-gradient; ``optim=adamw``'s weight decay still shrinks them) and trained by
  the learned optimizer on the support set, ∇_t = ∇θ L_support(θ_t). The meta-loss is the
  query loss along the trajectory, 1/T Σ_t L_query(θ_t). Why the query set: the paper's f is
  both what the optimizer minimises and what it is scored on; an episode is scored on its query
  set, which the optimizer never reads (it sees support gradients only, in training as at
  test), so the meta-loss is what evaluation reports, summed along the trajectory as in the
  paper rather than taken at its end as in MAML. On a quadratic the two sets are one.
  Cost: every parameter of the model is a coordinate, so each optimizee step runs the LSTM on
  all of them (Conv-4 at 64 filters: 112k per task, times the meta-batch, times the unroll in
  memory for the backward pass); on a CPU, a narrow model or a small meta-batch.

Evaluation: ``adapt`` runs the learned optimizer for ``algo.horizon`` steps on the support set
(``eval.inner_steps`` does not apply) and ``predict`` applies the result to the query set; on
quadratics the headline metric is the final value f(θ_T). The hand-designed optimizers it is
compared with there (SGD, Adam, RMSProp, tuned on training quadratics) are an experiment of
their own, run by the trainer (metarun/baselines.py), which builds the learned one from
:func:`lstm_optimizer` and follows it with :func:`trajectory`.

Meta-training metrics: ``loss`` is the meta-loss; the dataset's metrics after the last step,
with its loss as ``final_loss``.

Differences from the authors' code (deepmind/learning-to-learn): on quadratics it feeds the raw
gradient (``preprocess=none``) with output scale 1; it draws the quadratics from U[0, 1) (see
data/quadratic.py); its LSTM initialisation is Sonnet's, here N(0, 1/fan_in) with a forget-gate
bias of 1.

Reference: Andrychowicz, Denil, Gómez, Hoffman, Pfau, Schaul, Shillingford, de Freitas.
"Learning to learn by gradient descent by gradient descent". NeurIPS 2016.
https://arxiv.org/abs/1606.04474
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from metarun.algos import algos
from metarun.algos.base import MetaLearner
from metarun.types import Array, Objective, Params, PRNGKey

# ---------------------------------------------------------------- The optimizer ----


def preprocess_pair(g: Array, p: float) -> tuple[Array, Array]:
    """(log|g|/p, sign g) where |g| ≥ e^−p, else (−1, e^p g) (Appendix A); also the
    Meta-LSTM's preprocessing (algos/meta_lstm.py)."""
    threshold = math.exp(-p)
    large = jnp.abs(g) >= threshold
    log = jnp.log(jnp.maximum(jnp.abs(g), threshold)) / p  # the max: no log 0 on either branch
    return jnp.where(large, log, -1.0), jnp.where(large, jnp.sign(g), math.exp(p) * g)


def preprocess(g: Array, p: float) -> Array:
    """:func:`preprocess_pair` stacked on a last axis of 2."""
    return jnp.stack(preprocess_pair(g, p), axis=-1).astype(g.dtype)


def init_lstm(key: PRNGKey, inputs: int, hidden: int, layers: int, dtype=jnp.float32) -> Params:
    """Weights of m: per layer ``w [in + hidden, 4 hidden]`` (gates i, f, g, o) and ``b``, and
    the linear output ``out``. N(0, 1/fan_in) weights, forget-gate bias 1, other biases 0."""
    keys = jax.random.split(key, layers + 1)
    weights, fan_in = {}, inputs
    for layer in range(layers):
        w = jax.random.normal(keys[layer], (fan_in + hidden, 4 * hidden), dtype)
        b = jnp.zeros((4 * hidden,), dtype).at[hidden : 2 * hidden].set(1.0)
        weights[f"layer_{layer}"] = {"w": w / math.sqrt(fan_in + hidden), "b": b}
        fan_in = hidden
    w_out = jax.random.normal(keys[-1], (hidden, 1), dtype) / math.sqrt(hidden)
    weights["out"] = {"w": w_out, "b": jnp.zeros((1,), dtype)}
    return weights


def lstm_step(weights: Params, x: Array, hidden: tuple) -> tuple[Array, tuple]:
    """One step of m on a batch of coordinates.

    Args:
      weights: from :func:`init_lstm`.
      x: ``[n, inputs]``, one row per coordinate.
      hidden: per layer ``(h, c)``, each ``[n, hidden]``.

    Returns:
      ``[n]`` outputs (before ``scale``) and the new ``hidden``.
    """
    new_hidden = []
    for layer, (h, c) in enumerate(hidden):
        w = weights[f"layer_{layer}"]
        z = jnp.concatenate([x, h], axis=-1) @ w["w"] + w["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        new_hidden.append((h, c))
        x = h
    out = x @ weights["out"]["w"] + weights["out"]["b"]
    return out[:, 0], tuple(new_hidden)


class LSTMOptimizerState(NamedTuple):
    """Per layer ``(h, c)``, each ``[n, hidden]``: one row per coordinate of the parameters,
    in ``jax.flatten_util.ravel_pytree`` order."""

    hidden: tuple


def lstm_optimizer(
    weights: Params, *, scale: float = 0.1, preprocess_name: str = "log_sign", p: float = 10.0
) -> optax.GradientTransformation:
    """m as an optax optimizer: ``update(grads, state) -> (scale · m(ρ(grads)), state)``.

    Args:
      weights: the LSTM's weights φ (:func:`init_lstm`); differentiable.
      scale: the output scale (the paper's 0.1).
      preprocess_name: ``log_sign`` (ρ above) or ``none`` (the gradient itself).
      p: ρ's threshold parameter.

    Returns:
      A ``GradientTransformation`` that treats every coordinate of every leaf alike.
    """
    layers = sum(name.startswith("layer_") for name in weights)

    def init(params) -> LSTMOptimizerState:
        flat, _ = ravel_pytree(params)
        w = weights["layer_0"]["b"]
        zeros = jnp.zeros((flat.shape[0], w.shape[0] // 4), w.dtype)
        return LSTMOptimizerState(tuple((zeros, zeros) for _ in range(layers)))

    def update(grads, state: LSTMOptimizerState, params=None):
        del params
        flat, unravel = ravel_pytree(grads)
        x = preprocess(flat, p) if preprocess_name == "log_sign" else flat[:, None]
        out, hidden = lstm_step(weights, x, state.hidden)
        return unravel((scale * out).astype(flat.dtype)), LSTMOptimizerState(hidden)

    return optax.GradientTransformation(init, update)


def trajectory(
    opt: optax.GradientTransformation,
    grad_loss: Callable[[Params], Array],
    theta: Params,
    steps: int,
    opt_state=None,
    meta_loss: Callable[[Params], Array] | None = None,
):
    """``steps`` updates of ``opt`` on ``grad_loss`` from ``theta``, as a ``lax.scan``.

    The gradient each step reads is a constant (``stop_gradient``): differentiating the result
    with respect to the optimizer's weights follows θ and the optimizer's state, not the
    second derivatives of ``grad_loss``.

    Returns:
      ``((θ_T, opt_state_T), losses)``: ``losses[t]`` is ``meta_loss(θ_{t+1})``, ``[steps]``
      (None without ``meta_loss``).
    """
    opt_state = opt.init(theta) if opt_state is None else opt_state

    def step(carry, _):
        theta, state = carry
        grads = jax.lax.stop_gradient(jax.grad(grad_loss)(theta))
        updates, state = opt.update(grads, state, theta)
        theta = optax.apply_updates(theta, updates)
        return (theta, state), None if meta_loss is None else meta_loss(theta)

    return jax.lax.scan(step, (theta, opt_state), None, length=steps)


# ------------------------------------------------------------------ The learner ----


def lstm_opt(
    apply_fn,
    objective: Objective,
    *,
    horizon: int,
    unroll: int,
    hidden: int = 20,
    layers: int = 2,
    scale: float = 0.1,
    preprocess_name: str = "log_sign",
    p: float = 10.0,
    start: Callable[[Array], Params] | None = None,
) -> MetaLearner:
    """The learned optimizer as a meta-learner; its meta-parameters are ``{"lstm": φ}``, and
    ``"init"`` (the optimizee's fixed start) unless ``start`` is given.

    Args:
      apply_fn: ``(θ, x) -> predictions``: the optimizee.
      objective: the dataset's; ``objective.loss`` on the support set is what θ descends.
      horizon: optimizee steps T, in training and at test.
      unroll: steps per truncated-BPTT segment; ``horizon`` must be a multiple.
      hidden, layers, scale, preprocess_name, p: m and ρ (:func:`lstm_optimizer`).
      start: ``support_x -> θ_0`` for optimizees whose start comes with the task (an
        ``objective.optimizee``); None: the model's parameters at initialisation, kept fixed.
    """
    if horizon % unroll:
        raise ValueError(f"horizon={horizon} is not a multiple of unroll={unroll}")
    inputs = 2 if preprocess_name == "log_sign" else 1

    def optimizer(meta_params) -> optax.GradientTransformation:
        return lstm_optimizer(
            meta_params["lstm"], scale=scale, preprocess_name=preprocess_name, p=p
        )

    def first(meta_params, support_x) -> Params:
        return meta_params["init"] if start is None else start(support_x)

    def loss_on(x, y) -> Callable[[Params], Array]:
        return lambda theta: objective.loss(apply_fn(theta, x), y)

    def init(params, key, episode):
        del episode
        weights = init_lstm(key, inputs, hidden, layers)
        return {"lstm": weights} if start is not None else {"lstm": weights, "init": params}

    def adapt(meta_params, support_x, support_y, num_steps=0, ways=0):
        del num_steps, ways  # algo.horizon steps; the head has data.ways outputs
        theta = first(meta_params, support_x)
        (theta, _), _ = trajectory(
            optimizer(meta_params), loss_on(support_x, support_y), theta, horizon
        )
        return theta

    def predict(meta_params, theta, query_x, support_x=None):
        del support_x  # model.bn_mode=transductive only (bn_modes)
        del meta_params
        return apply_fn(theta, query_x)

    def segment_loss(weights, meta_params, carry, episodes):
        """1/T Σ of the query losses of one segment, mean over tasks; and where it ends."""
        opt = optimizer({**meta_params, "lstm": weights})

        def one(carry, e):
            theta, opt_state = carry
            return trajectory(
                opt,
                loss_on(e.support_x, e.support_y),
                theta,
                unroll,
                opt_state,
                meta_loss=loss_on(e.query_x, e.query_y),
            )

        ends, losses = jax.vmap(one)(carry, episodes)  # losses: [tasks, unroll]
        return jnp.sum(jnp.mean(losses, axis=0)) / horizon, ends

    def outer_grad(meta_params, episodes, num_steps, step):
        del num_steps, step
        opt = optimizer(meta_params)
        thetas = jax.vmap(lambda x: first(meta_params, x))(episodes.support_x)
        starts = (thetas, jax.vmap(opt.init)(thetas))
        zero = jax.tree.map(jnp.zeros_like, meta_params["lstm"])
        value_and_grad = jax.value_and_grad(segment_loss, has_aux=True)

        def segment(carry, _):
            starts, total, grads = carry
            # The segment starts from values, not from the previous segment's graph: no
            # gradient crosses the cut (the truncation).
            (loss, ends), g = value_and_grad(meta_params["lstm"], meta_params, starts, episodes)
            return (ends, total + loss, jax.tree.map(jnp.add, grads, g)), None

        carry = (starts, jnp.zeros(()), zero)
        (ends, meta_loss, grads), _ = jax.lax.scan(segment, carry, None, length=horizon // unroll)
        final = jax.vmap(lambda theta, e: objective.metrics(apply_fn(theta, e.query_x), e.query_y))(
            ends[0], episodes
        )
        metrics = {k: jnp.mean(v) for k, v in final.items() if k != "loss"}
        metrics.update(loss=meta_loss, final_loss=jnp.mean(final["loss"]))
        meta_grads = {"lstm": grads}
        if "init" in meta_params:  # the optimizee's start is fixed
            meta_grads["init"] = jax.tree.map(jnp.zeros_like, meta_params["init"])
        return meta_grads, metrics

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        outer_grad=outer_grad,
        encoder_key="init" if start is None else None,
    )


# Episodic tasks of every kind: it optimises a model on each support set, or a function itself.
@algos.register("lstm_opt", tasks=("regression", "classification", "minimisation"))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    rule = dict(scale=cfg.scale, preprocess_name=cfg.preprocess, p=cfg.p)
    sizes = dict(horizon=cfg.horizon, unroll=cfg.unroll, hidden=cfg.hidden, layers=cfg.layers)
    f = objective.optimizee
    if f is None:
        return lstm_opt(net.apply, objective, **sizes, **rule)
    learner = lstm_opt(f.apply, objective, start=f.start, **sizes, **rule)
    return learner._replace(bf16=False)  # no network: the function in float32
