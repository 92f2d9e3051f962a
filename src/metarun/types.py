"""The data that flows between task sources, algorithms and the train loop.

An :class:`Episode` is one few-shot task: a support set to adapt on and a query
set to score the adapted learner on. Every field is a fixed-shape array, so a
meta-batch is just ``jax.vmap`` of a task source over keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any  # a pytree of arrays
PRNGKey = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Episode:
    """One task. ``*_x``: ``[n, *input_shape]``; ``*_y``: ``[n]`` labels or ``[n, d]`` targets.

    ``ways`` is the number of classes, 0 for regression. It is static (pytree metadata, not an
    array): metric-based learners need it as a shape (one prototype per class), and one
    program may see episodes of two sizes (``data.train_ways`` for training, ``data.ways``
    for evaluation).
    """

    support_x: Array
    support_y: Array
    query_x: Array
    query_y: Array
    ways: int = dataclasses.field(default=0, metadata=dict(static=True))


# What a dataset's tasks are (``Objective.task``), and what an algorithm declares it learns
# from (``algos.register(name, tasks=...)``); ``algos.check_data`` compares the two.
# "supervised" and "domains": one classification problem over fixed classes, its "tasks"
# mini-batches, no adaptation at test (``data.protocol``, data/supervised.py); "domains": drawn
# from several domains, the batches split into meta-train and meta-test domains.
TASKS = ("regression", "classification", "minimisation", "supervised", "domains")
# The tasks of one classifier over fixed classes, each the name of its data.protocol.
FIXED_CLASSES = ("supervised", "domains")


class Optimizee(NamedTuple):
    """The "model" of tasks that are functions to minimise rather than data to fit: each
    episode is a function f(θ) = loss(apply(θ, support_x), support_y), started at
    θ_0 = start(support_x). Learned optimizers descend f itself (algos/lstm_opt.py), which
    reaches them this way, without the dataset's module.

    Attributes:
      apply: ``(θ, x) -> predictions``.
      start: ``support_x -> θ_0``, where every optimizer starts on the episode's function.
    """

    apply: Callable[[Params, Array], Array]
    start: Callable[[Array], Params]


class Objective(NamedTuple):
    """How predictions are scored; a property of the data, shared by every algorithm.

    Attributes:
      loss: ``(predictions, targets) -> scalar``, mean over the set; the inner and outer loss.
      metrics: ``(predictions, targets) -> dict`` of scalars, always with ``"loss"``.
      metric: name of the headline metric in ``metrics`` (reported in ``result.json``).
      maximize: whether a larger ``metric`` is better (selects the best validation step).
      task: what the tasks are, one of :data:`TASKS`.
      optimizee: for ``task="minimisation"``, the function each episode packs; else None.
    """

    loss: Callable[[Array, Array], Array]
    metrics: Callable[[Array, Array], dict[str, Array]]
    metric: str
    maximize: bool
    task: str
    optimizee: Optimizee | None = None


def mse(predictions: Array, targets: Array) -> Array:
    return jnp.mean(jnp.square(predictions - targets))


def _regression_metrics(predictions: Array, targets: Array) -> dict[str, Array]:
    loss = mse(predictions, targets)
    return {"loss": loss, "mse": loss}


def cross_entropy(logits: Array, labels: Array) -> Array:
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def _classification_metrics(logits: Array, labels: Array) -> dict[str, Array]:
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return {"loss": cross_entropy(logits, labels), "accuracy": accuracy}


REGRESSION = Objective(mse, _regression_metrics, "mse", maximize=False, task="regression")
CLASSIFICATION = Objective(
    cross_entropy, _classification_metrics, "accuracy", maximize=True, task="classification"
)
SUPERVISED = CLASSIFICATION._replace(task="supervised")
DOMAINS = CLASSIFICATION._replace(task="domains")


class DataSpec(NamedTuple):
    """What a model trained on a dataset needs to know about it, without loading the data.

    Attributes:
      objective: how predictions are scored.
      output_dim: size of the model's output (1 for regression, ``ways`` for classification).
      input_shape: shape of one model input, e.g. ``(28, 28, 1)``.
      preprocess: raw user inputs (numpy, as the dataset's files hold them) -> model inputs,
        the transformation the training data went through.
    """

    objective: Objective
    output_dim: int
    input_shape: tuple[int, ...]
    preprocess: Callable[[Any], Any]


class TaskSource(NamedTuple):
    """A dataset seen as a distribution over episodes, one sampler per split.

    Attributes:
      samplers: split name -> pure, jittable ``key -> Episode``, as a ``jax.tree_util.Partial``
        whose leaves are the split's device arrays: jitted functions take the sampler as an
        argument, so a dataset reaches them as a buffer, never as a compiled-in constant.
      objective: how the episodes are scored.
      output_dim: size of the model's output (1 for regression, ``ways`` for classification).
      batches: the train split as ordinary mini-batches, the training tasks of a learner that
        pre-trains (``MetaLearner.trains_on="batches"``, Baseline): ``key -> Episode`` whose
        two sets are examples drawn from the whole split, labelled by their class in the split
        (``ways``: its number of classes); regression: its tasks' points, as the episodes.
        None where the data has no such batches.
    """

    samplers: dict[str, Callable[[PRNGKey], Episode]]
    objective: Objective
    output_dim: int
    batches: Callable[[PRNGKey], Episode] | None = None
