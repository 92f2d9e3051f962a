"""The meta-step: one jitted pure function from a training state to the next.

It samples a meta-batch on the device, vmaps the algorithm's adaptation over its tasks (split
over the devices of a mesh), and applies one optax update. :mod:`metarun.train` loops over it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metarun import algos, models, warmstart
from metarun.algos.base import map_chunks, model_params, outer_grad
from metarun.experiment import Experiment, init_meta_params
from metarun.models.conv4 import RUNNING_MOMENTUM
from metarun.types import PRNGKey


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: outer updates done
    meta_params: Any
    opt_state: optax.OptState


def init_state(exp: Experiment, key: PRNGKey, warm_start: bool = True) -> TrainState:
    """The state before the first step: initial meta-parameters (with ``trainer.init_from``
    and ``warm_start``, the other run's encoder in them) and the optimizer's state for them.
    A resumed run passes ``warm_start=False``: its checkpoint replaces the state."""

    def init(key: PRNGKey) -> TrainState:
        model_key, episode_key, learner_key = jax.random.split(key, 3)
        example = exp.source.samplers["train"](episode_key)
        meta_params = init_meta_params(exp.model, exp.learner, model_key, learner_key, example)
        return TrainState(jnp.zeros((), jnp.int32), meta_params, exp.optimizer.init(meta_params))

    # One program: run op by op, the initialisers compile dozens of tiny programs (seconds).
    state = jax.jit(init)(key)
    if not (exp.config.trainer.init_from and warm_start):
        return state
    meta_params = warmstart.init_from(
        Path(exp.config.trainer.init_from), state.meta_params, exp.learner
    )
    return TrainState(state.step, meta_params, exp.optimizer.init(meta_params))


def replicate(tree, mesh: Mesh):
    """``tree`` copied onto every device of ``mesh`` (parameters, optimizer state, datasets)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def make_meta_step(exp: Experiment, mesh: Mesh | None = None):
    """``meta_step(state, train_key, sample) -> (state, metrics)``, pure; jit it at the call site.

    ``sample`` is the train split's sampler (``exp.source.samplers["train"]``), an argument so
    that the split's arrays are inputs of the compiled program rather than constants in it.
    With a ``mesh`` the tasks of the meta-batch are split over its devices, each sampling and
    adapting its share; XLA averages the meta-gradient across them (an all-reduce).
    With ``trainer.nan_policy=skip`` an update with a non-finite loss or gradient is dropped
    on the device and ``metrics["skipped"]`` says so.
    """
    meta_batch = exp.config.trainer.meta_batch
    inner_steps = algos.inner_steps(exp.learner, exp.config.algo)
    skip_nan = exp.config.trainer.nan_policy == "skip"
    running = models.bn_mode(exp.model) == "running"
    # trainer.task_chunk is per device: each device runs its share of every chunk.
    task_chunk = exp.config.trainer.task_chunk * (mesh.size if mesh is not None else 1)

    def meta_step(state: TrainState, train_key: PRNGKey, sample):
        key = jax.random.fold_in(train_key, state.step)
        keys = jax.random.split(key, meta_batch)
        if mesh is not None and mesh.size > 1:
            keys = jax.lax.with_sharding_constraint(keys, NamedSharding(mesh, P("tasks")))
        episodes = jax.vmap(sample)(keys)
        grads, metrics = outer_grad(
            exp.learner,
            exp.source.objective,
            state.meta_params,
            episodes,
            inner_steps,
            state.step,
            task_chunk,
        )
        updates, opt_state = exp.optimizer.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        if running:  # BatchNorm's averages: this meta-batch's statistics, never a gradient
            meta_params = _update_running_stats(
                exp, state.meta_params, meta_params, episodes, task_chunk
            )
        metrics["grad_norm"] = optax.tree.norm(grads)
        if skip_nan:
            # A select, not a branch on the host: no device->host sync. The step still counts,
            # so the next one samples other tasks.
            ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            meta_params, opt_state = jax.tree.map(
                lambda new, old: jnp.where(ok, new, old),
                (meta_params, opt_state),
                (state.meta_params, state.opt_state),
            )
            metrics["skipped"] = ~ok
        return TrainState(state.step + 1, meta_params, opt_state), metrics

    return meta_step


def _update_running_stats(exp: Experiment, before, after, episodes, task_chunk: int):
    """``after`` (the updated meta-parameters) with BatchNorm's running averages moved towards
    the statistics of the meta-batch's images under ``before`` (the ones differentiated), the
    tasks' forward passes in chunks of ``task_chunk`` as the gradient's (a whole meta-batch's
    at once: ProtoNet's max-pool step 1.1 GiB of intermediates, chunks of one task 0.1)."""
    key = exp.learner.encoder_key
    images = jnp.concatenate([episodes.support_x, episodes.query_x], axis=1)
    old, new = model_params(before, exp.learner), model_params(after, exp.learner)

    def map_tasks(fn):
        return lambda tasks: map_chunks(jax.vmap(fn), tasks, task_chunk)

    updated = models.update_running_stats(
        exp.model, old, images, RUNNING_MOMENTUM, into=new, map_tasks=map_tasks
    )
    return updated if key is None else {**after, key: updated}


def compile_meta_step(
    exp: Experiment, state: TrainState, train_key: PRNGKey, sample=None, mesh: Mesh | None = None
):
    """Ahead-of-time compile with the state donated; returns (compiled step, seconds).

    Call it as ``step(state, train_key, sample)``; ``sample`` defaults to
    ``exp.source.samplers["train"]``. With a ``mesh``, pass ``state`` and ``sample`` through
    :func:`replicate` first.

    A compiled executable cannot silently recompile: a changed shape or dtype
    raises instead, so every step after the first runs the same program.
    """
    start = time.perf_counter()
    sample = exp.source.samplers["train"] if sample is None else sample
    step = jax.jit(make_meta_step(exp, mesh), donate_argnums=0)
    compiled = step.lower(state, train_key, sample)
    compiled = compiled.compile()
    return compiled, time.perf_counter() - start
