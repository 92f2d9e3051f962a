"""What a config builds: the task source, the model, the meta-learners and the optimizer.

Training (:func:`build`), the CLI's preflight (:func:`check`) and :func:`metarun.load` build the
learners with the same function, :func:`make_learners`, from the dataset's spec (its shapes and
objective, known without loading it), and derive the meta-parameters' structure with the same
:func:`init_meta_params`.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from metarun import algos, data, models, optim
from metarun.algos.base import MetaLearner
from metarun.config import Config, ConfigError
from metarun.types import FIXED_CLASSES, DataSpec, Episode, PRNGKey, TaskSource


class Learners(NamedTuple):
    """The model and its meta-learners. ``eval_learner`` is the learner of validation, the
    meta-test and ``metarun.load``: the same as ``learner`` except with ``model.bn_mode=running``
    (BatchNorm normalises with the running averages there, with the batch's statistics in
    meta-training)."""

    model: nn.Module
    learner: MetaLearner
    eval_learner: MetaLearner


class Experiment(NamedTuple):
    """Everything a training run needs, built from its config by :func:`build`."""

    config: Config
    source: TaskSource
    model: nn.Module
    learner: MetaLearner
    optimizer: optax.GradientTransformation
    prepare_sec: float  # loading the data and putting it on the device
    eval_learner: MetaLearner


def build(config: Config) -> Experiment:
    start = time.perf_counter()
    source = jax.block_until_ready(data.make(config.data))
    prepare_sec = time.perf_counter() - start
    model, learner, eval_learner = make_learners(config, data.spec(config.data))
    if learner.trains_on == "batches":
        # A pre-training learner's training tasks are the train split's mini-batches: the same
        # loop samples them, vmaps the learner over them and updates, as it does episodes.
        source = source._replace(samplers={**source.samplers, "train": source.batches})
    optimizer = optim.make(config.optim, config.trainer.steps)
    return Experiment(config, source, model, learner, optimizer, prepare_sec, eval_learner)


def check(config: Config) -> None:
    """Raise the :class:`ConfigError` that :func:`build`, the learner's ``init`` or the device
    mesh would, without loading any data or computing anything (the dataset's spec gives the
    shapes), and that ``trainer.init_from`` would from the other run's metadata: the CLI calls
    it before Hydra writes the run dir."""
    spec = data.spec(config.data)
    model, learner, _ = make_learners(config, spec)
    like = meta_params_like(model, learner, spec)
    if config.optim.arch_lr_scale != 1 and not any(jax.tree.leaves(optim.architecture(like))):
        raise ConfigError(
            f"optim.arch_lr_scale={config.optim.arch_lr_scale} is invalid with "
            f"model={config.model.name}: only a DARTS search (model=darts without model.genotype) "
            "has architecture weights"
        )
    task_mesh(config.trainer.devices, config.trainer.meta_batch, config.trainer.task_chunk)
    if config.trainer.init_from:
        from metarun import warmstart  # it builds the other run's learner with make_learners

        warmstart.check(config, like, learner)


def make_learners(config: Config, spec: DataSpec) -> Learners:
    """The model and the meta-training and evaluation learners of ``config``, refusing training
    ways other than the head's for a learner with a head, data the algorithm does not learn from
    (``algos.check_data``), and a ``model.bn_mode`` or ``trainer.precision`` that it cannot
    honour."""
    model = models.make(config.model, spec.output_dim)
    objective = spec.objective
    algos.check_data(config.algo.name, config.data.name, objective)
    learner = algos.make(config.algo, models.network(model, config.trainer.precision), objective)
    train_ways, ways = getattr(config.data, "train_ways", None), model.output_dim
    if train_ways not in (None, ways) and not learner.any_ways:
        raise ConfigError(
            f"data.train_ways={train_ways} is invalid with algo={config.algo.name}: its model "
            f"has a head of data.ways={ways} outputs; train with data.ways classes, or use a "
            "metric-based learner (protonet, matchingnet, relationnet, siamese)"
        )
    if config.trainer.task_chunk and learner.outer_grad is not None:
        raise ConfigError(
            f"trainer.task_chunk={config.trainer.task_chunk} is invalid with "
            f"algo={config.algo.name}: it computes its own meta-update rather than the shared "
            "query loss that task_chunk splits; use trainer.task_chunk=0"
        )
    if config.trainer.precision == "bf16" and not learner.bf16:
        raise ConfigError(
            f"trainer.precision=bf16 is invalid with algo={config.algo.name} and "
            f"data={config.data.name}: its computation runs in float32 whatever the precision; "
            "use trainer.precision=fp32"
        )
    mode = models.bn_mode(model)
    if mode not in learner.bn_modes:
        raise ConfigError(
            f"model.bn_mode={mode} is invalid with algo={config.algo.name}"
            f"{' and algo.per_step_bn=true' if getattr(config.algo, 'per_step_bn', False) else ''}"
            f": it honours {', '.join(learner.bn_modes)}; every mode works with maml, fomaml, "
            "metasgd, anil, reptile, protonet, matchingnet and siamese"
        )
    if mode != "running":
        return Learners(model, learner, learner)
    evaluation = models.network(model, config.trainer.precision, training=False)
    return Learners(model, learner, algos.make(config.algo, evaluation, objective))


def init_meta_params(
    model: nn.Module, learner: MetaLearner, model_key: PRNGKey, learner_key: PRNGKey, episode
) -> Any:
    """The initial meta-parameters: the model's parameters at the shapes of an example
    ``episode``, wrapped by the learner with whatever else it meta-learns."""
    params = model.init(model_key, episode.support_x)["params"]
    return learner.init(params, learner_key, episode)


def meta_params_like(model: nn.Module, learner: MetaLearner, spec: DataSpec) -> Any:
    """The shapes and dtypes of the meta-parameters (:func:`init_meta_params` traced on
    :func:`example_episode`): nothing computed, and the learner's ``init`` refusals raised."""
    key = jax.random.PRNGKey(0)
    return jax.eval_shape(
        partial(init_meta_params, model, learner, key, key), example_episode(spec)
    )


def example_episode(spec: DataSpec) -> Episode:
    """An episode of ``spec``'s shapes and dtypes, one example per class: enough for
    :func:`jax.eval_shape` of :func:`init_meta_params` (no data, nothing computed)."""
    classes = ("classification", *FIXED_CLASSES)
    ways = spec.output_dim if spec.objective.task in classes else 0
    n = max(ways, 1)
    x = jax.ShapeDtypeStruct((n, *spec.input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct(
        (n,) + (() if ways else (spec.output_dim,)), jnp.int32 if ways else jnp.float32
    )
    return Episode(x, y, x, y, ways=ways)


def task_mesh(devices: str, meta_batch: int, task_chunk: int = 0) -> Mesh:
    """A 1-D mesh over ``trainer.devices`` devices (of every process of a multi-process run);
    the meta-batch is split along it, each device's share in chunks of ``trainer.task_chunk``."""
    local = jax.devices()
    n = len(local) if devices == "all" else int(devices)
    if n > len(local):
        raise ConfigError(
            f"trainer.devices={devices} is invalid: this run has {len(local)} "
            f"{jax.default_backend()} device(s)"
        )
    if meta_batch % n:
        raise ConfigError(
            f"trainer.meta_batch={meta_batch} is invalid: it must be a multiple of the "
            f"{n} devices of trainer.devices={devices}"
        )
    if task_chunk and (meta_batch // n) % task_chunk:
        raise ConfigError(
            f"trainer.task_chunk={task_chunk} is invalid: it must divide each device's "
            f"{meta_batch // n} tasks (trainer.meta_batch={meta_batch} over {n} device(s))"
        )
    # Auto axes: XLA propagates the split from the keys to everything computed from them.
    auto = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((n,), ("tasks",), devices=local[:n], axis_types=auto)


def rng_streams(seed: int) -> tuple[PRNGKey, PRNGKey]:
    """(init key, training key); step ``s`` samples its meta-batch from fold_in(train, s)."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, train_key
