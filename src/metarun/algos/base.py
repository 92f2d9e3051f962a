"""The contract every algorithm implements, and the outer objective they share.

A meta-learner is a tuple of pure functions (in the spirit of optax's
``GradientTransformation``):

* ``init(params, key, episode) -> meta_params``: wrap the model's initial parameters
  with whatever else is meta-learned (Meta-SGD's learning rates, a relation module's
  weights initialised from ``key`` at the shapes of an example ``episode``, ...);
* ``adapt(meta_params, support_x, support_y, num_steps, ways) -> task_params``:
  learn from one task's support set (``num_steps`` and ``ways``, the number of
  classes or 0 for regression, are static: a scan length, a shape);
* ``predict(meta_params, task_params, query_x, support_x) -> predictions``: ``support_x``
  is the task's support set, the context of the query passes (``model.bn_mode``);
* ``outer_grad(meta_params, episodes, num_steps, step)`` (optional): the meta-gradient of
  a meta-batch, for algorithms whose update is not the gradient of the query loss (Reptile)
  or changes during training (``step``: the outer updates done, an int32 scalar).

The shared outer objective adapts on each support set, scores on the query set,
and averages over the tasks of a meta-batch with ``jax.vmap`` (``trainer.task_chunk``: a
chunk of tasks at a time, the chunks' gradients summed, :func:`outer_grad`):

    L(θ) = 1/T Σ_t L_query_t(adapt(θ, support_t)).

Gradient-based learners adapt by an inner loop; metric-based and black-box
learners "adapt" in one forward pass (prototypes, an attention memory, a
sequence model's context) and ignore ``num_steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metarun.models.conv4 import RUNNING_STATS
from metarun.types import Array, Episode, Objective, Params, PRNGKey

MetaParams = Any
TaskParams = Any


class MetaLearner(NamedTuple):
    """The functions above, and:

    * ``loss`` (optional): ``(predictions, query_y) -> scalar``, the learner's own query loss
      in place of the dataset's (Relation Networks regress scores on one-hot labels);
    * ``any_ways``: whether training episodes may have another number of classes than the
      evaluation ones (``data.train_ways``): true when there is no ``ways``-wide head;
    * ``bn_modes``: the ``model.bn_mode`` values it honours; a learner honours ``support``
      and ``task_norm`` by giving the network the support set as the context of its query
      passes (``net.apply(params, query_x, support_x)``), and ``running`` by letting the
      meta-step update the running averages of its model parameters (``encoder_key``);
    * ``encoder_key``: where its model's parameters are, ``meta_params[encoder_key]`` (the
      whole ``meta_params`` when None); ``trainer.init_from`` writes another run's there;
    * ``bf16``: whether ``trainer.precision=bf16`` reaches its computation;
    * ``inner_loop``: whether it adapts by an inner loop of ``num_steps`` steps
      (``algo.inner_steps`` in meta-training, ``eval.inner_steps`` at evaluation); the others
      adapt in one pass and are given ``num_steps=0``;
    * ``trains_on``: ``"episodes"``, or ``"batches"`` for a learner that pre-trains on ordinary
      mini-batches of the train split (``TaskSource.batches``) and adapts only at evaluation
      (Baseline): its ``outer_grad`` is its training update.
    """

    init: Callable[[Params, PRNGKey, Episode], MetaParams]
    adapt: Callable[[MetaParams, Array, Array, int, int], TaskParams]
    predict: Callable[[MetaParams, TaskParams, Array, Array], Array]
    outer_grad: Callable[[MetaParams, Episode, int, Array], tuple[MetaParams, dict]] | None = None
    loss: Callable[[Array, Array], Array] | None = None
    any_ways: bool = False
    bn_modes: tuple[str, ...] = ("transductive",)
    # Whether trainer.precision=bf16 reaches its computation: False for the learners whose
    # own networks (a controller, a learned optimizer) run in float32 around the model.
    bf16: bool = True
    encoder_key: str | None = None
    inner_loop: bool = False
    trains_on: str = "episodes"


def model_params(meta_params: MetaParams, learner: MetaLearner) -> Params:
    """The model's parameters within ``meta_params`` (``learner.encoder_key``)."""
    return meta_params if learner.encoder_key is None else meta_params[learner.encoder_key]


def drop_head(params: Params, key: PRNGKey = None, episode: Episode | None = None) -> Params:
    """``init`` for learners that use the model's features only (``Network.embed``)."""
    del key, episode
    return {name: p for name, p in params.items() if name != "head"}


def predict_with_adapted(apply_fn: Callable[..., Array]):
    """``predict`` for learners whose task parameters are the adapted model parameters;
    ``apply_fn(params, x, context)``."""

    def predict(
        meta_params: MetaParams, adapted: Params, query_x: Array, support_x: Array | None = None
    ) -> Array:
        del meta_params
        return apply_fn(adapted, query_x, support_x)

    return predict


def is_running_stat(path) -> bool:
    """Whether the leaf at ``path`` (a key path) is one of BatchNorm's running averages."""
    return any(getattr(k, "key", None) in RUNNING_STATS for k in path)


def descend(params: Params, grads: Params, lrs: Params) -> Params:
    """θ − α ∇L leaf by leaf, BatchNorm's running averages kept as they are: they are
    statistics of the data, not parameters. Where the network normalises with them (the
    evaluation network of ``model.bn_mode=running``) the loss has a gradient with respect to
    them, which an inner step must not follow."""

    def step(path, p, g, a):
        return p if is_running_stat(path) else p - a * g

    return jax.tree_util.tree_map_with_path(step, params, grads, lrs)


def gradient_descent(
    loss: Callable[[Params], Array],
    params: Params,
    lr: float | Params,
    num_steps: int,
    first_order: bool = False,
    remat: bool = False,
) -> Params:
    """``num_steps`` of θ ← θ − α ∇L(θ), as a ``lax.scan`` (BatchNorm's running averages kept:
    :func:`descend`).

    Args:
      loss: the inner loss as a function of the adapted parameters.
      params: the starting point θ.
      lr: the step size α, a scalar or a pytree shaped like ``params`` (Meta-SGD).
      num_steps: number of steps (0 returns ``params``).
      first_order: treat each inner gradient as a constant, so that the derivative of
        the result with respect to ``params`` is the identity (first-order MAML).
      remat: wrap each step in ``jax.checkpoint``. Differentiating through the scan then
        keeps only each step's parameters and recomputes the step's activations and inner
        gradient on the backward pass: memory that no longer grows with the activations
        times ``num_steps``, for one extra forward and backward pass per step.

    Returns:
      The adapted parameters. Differentiating through them gives the full
      second-order meta-gradient unless ``first_order``.
    """
    per_parameter = jax.tree.structure(lr) == jax.tree.structure(params)
    lrs = lr if per_parameter else jax.tree.map(lambda _: lr, params)

    def step(p, _):
        grads = jax.grad(loss)(p)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        return descend(p, grads, lrs), None

    adapted, _ = jax.lax.scan(jax.checkpoint(step) if remat else step, params, None, num_steps)
    return adapted


def adapt_and_predict(
    learner: MetaLearner,
    meta_params: MetaParams,
    support_x: Array,
    support_y: Array,
    query_x: Array,
    num_steps: int,
    ways: int,
) -> Array:
    """Adapt on a support set for ``num_steps``, then predict the whole query set at once."""
    task_params = learner.adapt(meta_params, support_x, support_y, num_steps, ways)
    return learner.predict(meta_params, task_params, query_x, support_x)


def task_metrics(
    learner: MetaLearner,
    objective: Objective,
    meta_params: MetaParams,
    episode: Episode,
    num_steps: int,
) -> dict[str, Array]:
    """Adapt on one episode's support set; metrics of the adapted learner on its query set
    (``loss`` is the learner's own when it has one)."""
    predictions = adapt_and_predict(
        learner,
        meta_params,
        episode.support_x,
        episode.support_y,
        episode.query_x,
        num_steps,
        episode.ways,
    )
    metrics = objective.metrics(predictions, episode.query_y)
    if learner.loss is not None:
        metrics["loss"] = learner.loss(predictions, episode.query_y)
    return metrics


def per_task_metrics(
    learner: MetaLearner,
    objective: Objective,
    meta_params: MetaParams,
    episodes: Episode,
    num_steps: int,
) -> dict[str, Array]:
    """Each task's :func:`task_metrics` for a batch of episodes (leading axis), ``[tasks]``
    arrays: the tasks vmapped, all at once."""
    return jax.vmap(lambda e: task_metrics(learner, objective, meta_params, e, num_steps))(episodes)


def outer_loss(
    learner: MetaLearner,
    objective: Objective,
    meta_params: MetaParams,
    episodes: Episode,
    num_steps: int,
) -> tuple[Array, dict[str, Array]]:
    """Mean post-adaptation query loss over a meta-batch (leading axis of ``episodes``) and the
    mean of each metric, all the tasks at once (:func:`outer_grad` takes them in chunks)."""
    metrics = per_task_metrics(learner, objective, meta_params, episodes, num_steps)
    metrics = jax.tree.map(jnp.mean, metrics)
    return metrics["loss"], metrics


def _split(tasks, chunk: int):
    """``[size, ...]`` leaves -> ``[n, chunk, ...]``, chunk ``i`` = tasks ``i, i + n, ...``
    (``n = size / chunk``): where the task axis is split over devices in contiguous blocks,
    each device keeps its share of every chunk."""
    size = jax.tree.leaves(tasks)[0].shape[0]
    if size % chunk:
        raise ValueError(f"a chunk of {chunk} tasks does not divide the {size} tasks")
    n = size // chunk
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(chunk, n, *x.shape[1:]), 0, 1), tasks)


def _join(chunks):
    """The inverse of :func:`_split`: ``[n, chunk, ...]`` -> ``[size, ...]`` in task order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), chunks)


def map_chunks(fn: Callable, tasks, chunk: int):
    """``fn(tasks)`` for a ``fn`` vmapped over the leading (task) axis, run ``chunk`` tasks at a
    time in a loop (``lax.map``), for forward passes (BatchNorm's running averages); the
    outputs come back in task order. 0 (or the whole batch) = all at once."""
    size = jax.tree.leaves(tasks)[0].shape[0]
    if not chunk or chunk >= size:
        return fn(tasks)
    return _join(jax.lax.map(fn, _split(tasks, chunk)))


def batch_mean_grad(metrics_fn: Callable, params: Params, batches) -> tuple[Params, dict]:
    """The gradient of the mean ``loss`` of ``metrics_fn(params, batch) -> dict`` over
    ``batches`` (a pytree with a leading batch axis) and the mean metrics: the ``outer_grad``
    of learners that descend a plain loss of ordinary batches. Each batch is its own forward
    pass, so BatchNorm normalises each with its own statistics, as each task of an episode."""

    def loss(p):
        metrics = jax.tree.map(jnp.mean, jax.vmap(lambda b: metrics_fn(p, b))(batches))
        return metrics["loss"], metrics

    return jax.grad(loss, has_aux=True)(params)


def outer_grad(
    learner: MetaLearner,
    objective: Objective,
    meta_params: MetaParams,
    episodes: Episode,
    num_steps: int,
    step: Array | int = 0,
    task_chunk: int = 0,
) -> tuple[MetaParams, dict[str, Array]]:
    """The meta-gradient of a meta-batch (the gradient of :func:`outer_loss`) and its metrics,
    or the learner's own; ``step`` is the number of outer updates done.

    ``task_chunk`` (``trainer.task_chunk`` times the devices): the tasks ``task_chunk`` at a
    time in a loop (chunk ``i`` = tasks ``i, i + n, ...``, :func:`_split`), each
    chunk's gradient computed and added before the next chunk starts, so that only one
    chunk's activations are alive: second-order MAML keeps every activation of every task for
    its backward pass, and on a CPU a whole meta-batch's (5 GiB for max-pool Conv-4 at 32
    tasks) streams through memory several times while one chunk's stays in cache. 0 = all
    the tasks at once. The same gradient up to float summation order.
    """
    if learner.outer_grad is not None:
        if task_chunk:
            raise ValueError("task_chunk is for learners without their own outer_grad")
        return learner.outer_grad(meta_params, episodes, num_steps, step)
    size = jax.tree.leaves(episodes)[0].shape[0]

    def loss(mp, tasks):  # these tasks' share of the mean loss
        metrics = per_task_metrics(learner, objective, mp, tasks, num_steps)
        return jnp.sum(metrics["loss"]) / size, metrics

    grad_fn = jax.grad(loss, has_aux=True)
    if not task_chunk or task_chunk >= size:
        grads, metrics = grad_fn(meta_params, episodes)
    else:
        # Gradient accumulation. Differentiating a loop over the chunks instead (jax.grad of
        # a lax.map) keeps every chunk's activations for the backward loop, or with each
        # chunk under jax.checkpoint (metarun before commit 419fe4f) computes every forward
        # pass twice: max-pool MAML's step 1,854 -> 1,477 ms on this project's 2-core CPU
        # (docs/speed.md).
        def accumulate(total, tasks):
            grads, metrics = grad_fn(meta_params, tasks)
            return jax.tree.map(jnp.add, total, grads), metrics

        zeros = jax.tree.map(jnp.zeros_like, meta_params)
        grads, metrics = jax.lax.scan(accumulate, zeros, _split(episodes, task_chunk))
        metrics = _join(metrics)
    return grads, jax.tree.map(jnp.mean, metrics)
