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

from metarun.models import conv4, mlp, resnet12  # noqa: E402,F401  (register their factories)


def make(cfg, output_dim: int):
    return models.get(cfg.name)(cfg, output_dim)


class Network(NamedTuple):
    """A flax model as the pure functions an algorithm needs.

    Attributes:
      init: ``(key, x) -> params``, every parameter, ``head`` included.
      apply: ``(params, x) -> [n, output_dim]``, through the head.
      embed: ``(params, x) -> [n, d]`` features before the head (needs no ``head`` params).
      feature_maps: ``(params, x) -> [n, h, w, c]``, None for models without maps (MLP).
      module: the flax module itself.
    """

    init: Callable
    apply: Callable
    embed: Callable
    feature_maps: Callable | None
    module: object


def network(model, precision: str = "fp32") -> Network:
    """The :class:`Network` of a flax ``model`` at ``trainer.precision``."""
    has_maps = hasattr(model, "feature_maps")
    return Network(
        init=lambda key, x: model.init(key, x)["params"],
        apply=make_apply(model, precision),
        embed=make_apply(model, precision, "embed"),
        feature_maps=make_apply(model, precision, "feature_maps") if has_maps else None,
        module=model,
    )


def make_apply(model, precision: str = "fp32", method: str | None = None):
    """``(params, x) -> outputs`` of a flax ``model`` (or of its ``method``).

    ``bf16``: mixed precision. The parameters stay float32 (the optimizer and the inner loop
    update float32 "master" weights); each forward pass casts them and the inputs to
    bfloat16 and returns float32 outputs, so losses and their reductions stay float32.
    BatchNorm computes its statistics in float32 (see ``conv4.BatchStatNorm``).
    """
    if precision == "fp32":
        return lambda params, x: model.apply({"params": params}, x, method=method)

    def apply_bf16(params, x):
        half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
        out = model.apply({"params": half}, x.astype(jnp.bfloat16), method=method)
        return out.astype(jnp.float32)

    return apply_bf16
