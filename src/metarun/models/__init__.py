"""Models, selected by ``model.name``. Each factory: ``(cfg, output_dim) -> flax Module``.

Contract: the module's last layer is named ``head`` (ANIL adapts only that layer), and
``embed(x)`` returns the features that reach it (metric-based learners compare those);
convolutional models also have ``feature_maps(x)``, the maps before they are flattened.
Algorithms see a model as a :class:`Network` of pure functions of its parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from metarun.registry import Registry

models = Registry("model")

from metarun.models import conv4, darts, mlp, resnet12  # noqa: E402,F401  (register their factories)


def make(cfg, output_dim: int):
    return models.get(cfg.name)(cfg, output_dim)


class Network(NamedTuple):
    """A flax model as the pure functions an algorithm needs.

    Attributes:
      init: ``(key, x) -> params``, every parameter, ``head`` included.
      apply: ``(params, x, context=None) -> [n, output_dim]``, through the head.
      embed: ``(params, x, context=None) -> [n, d]`` features before the head (needs no
        ``head`` params).
      feature_maps: ``(params, x, context=None) -> [n, h, w, c]``, None for models without
        maps (MLP).
      module: the flax module itself.

    ``context``: the support set of the task ``x`` belongs to, which learners pass to their
    query passes; with ``model.bn_mode=support`` or ``task_norm`` BatchNorm takes its
    statistics from it (``x`` and ``context`` go through the network stacked, the statistics
    over the context's rows), and the other modes ignore it.
    """

    init: Callable
    apply: Callable
    embed: Callable
    feature_maps: Callable | None
    module: object


# BatchNorm modes that normalise a query pass with the support set's statistics.
CONTEXT_MODES = ("support", "task_norm")


def bn_mode(model) -> str:
    """A model's ``model.bn_mode``; ``transductive`` for models without BatchNorm (MLP)."""
    return getattr(model, "bn_mode", "transductive")


def network(model, precision: str = "fp32", training: bool = True) -> Network:
    """The :class:`Network` of a flax ``model`` at ``trainer.precision``.

    ``training=False``: the evaluation network, which differs only with
    ``model.bn_mode=running``: BatchNorm normalises with the running averages.
    """
    if bn_mode(model) == "running":
        model = model.clone(bn_training=training)
    has_maps = hasattr(model, "feature_maps")
    return Network(
        init=lambda key, x: model.init(key, x)["params"],
        apply=make_apply(model, precision),
        embed=make_apply(model, precision, "embed"),
        feature_maps=make_apply(model, precision, "feature_maps") if has_maps else None,
        module=model,
    )


def make_apply(model, precision: str = "fp32", method: str | None = None):
    """``(params, x, context=None) -> outputs`` of a flax ``model`` (or of its ``method``).

    ``bf16``: mixed precision. The parameters stay float32 (the optimizer and the inner loop
    update float32 "master" weights); each forward pass casts them and the inputs to
    bfloat16 and returns float32 outputs, so losses and their reductions stay float32.
    BatchNorm computes its statistics in float32 (see ``conv4.BatchStatNorm``).
    """

    def run(module, params, x):
        if precision == "fp32":
            return module.apply({"params": params}, x, method=method)
        half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
        out = module.apply({"params": half}, x.astype(jnp.bfloat16), method=method)
        return out.astype(jnp.float32)

    def apply(params, x, context=None):
        if context is None or bn_mode(model) not in CONTEXT_MODES:
            return run(model, params, x)
        return in_context(lambda module, xs: run(module, params, xs), model, x, context)

    return apply


def in_context(run, module, x, context):
    """``run(module, rows)`` on ``context`` stacked before ``x``, with the statistics of the
    context's rows (``module.context_rows``); the outputs of ``x``'s rows."""
    rows = context.shape[0]
    stacked = jnp.concatenate([context.astype(x.dtype), x])
    return run(module.clone(context_rows=rows), stacked)[rows:]


def update_running_stats(model, params, images, momentum: float, into=None, map_tasks=jax.vmap):
    """``into`` (default ``params``) with BatchNorm's running averages moved from those of
    ``params`` towards the statistics of ``images`` under ``params``.

    ``model.bn_mode=running``: the meta-step calls this with the meta-parameters it
    differentiated and the images of its meta-batch, ``[tasks, n, H, W, C]``. Each task's
    images are one batch, as the training passes normalise them; the per-task means and
    variances are averaged over the tasks, then x̄ ← (1 − momentum) x̄ + momentum x. No
    gradient flows here: the averages change in meta-training only, never in evaluation.
    ``map_tasks(f)`` maps a function of one task's images over the tasks (the meta-step's
    passes it in chunks of tasks, as its gradient's).
    """
    from flax import traverse_util

    from metarun.models.conv4 import RUNNING_STATS

    def task_stats(x):
        _, sown = model.clone(bn_training=True).apply(
            {"params": params}, x, method="embed", mutable=["norm_stats"]
        )
        return sown["norm_stats"]

    stats = jax.lax.stop_gradient(map_tasks(task_stats)(images))
    flat = traverse_util.flatten_dict(stats)  # {(..., "norm", "mean_var"): ((mean, var),)}
    averaged = {}
    for path, ((mean, var),) in flat.items():
        for name, value in zip(RUNNING_STATS, (mean, var), strict=True):
            averaged[(*path[:-1], name)] = jnp.mean(value, axis=0)
    old = traverse_util.flatten_dict(params)
    new = traverse_util.flatten_dict(params if into is None else into)
    for path, value in averaged.items():
        new[path] = (1 - momentum) * old[path] + momentum * value.astype(old[path].dtype)
    return traverse_util.unflatten_dict(new)
