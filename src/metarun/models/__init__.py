"""Models, selected by ``model.name``. Each factory: ``(cfg, output_dim) -> flax Module``.

Contract: the module's last layer is named ``head`` (ANIL adapts only that layer).
"""

import jax
import jax.numpy as jnp

from metarun.registry import Registry

models = Registry("model")

from metarun.models import conv4, mlp, resnet12  # noqa: E402,F401  (register their factories)


def make(cfg, output_dim: int):
    return models.get(cfg.name)(cfg, output_dim)


def make_apply(model, precision: str = "fp32"):
    """``(params, x) -> outputs`` of a flax ``model``, the function every algorithm adapts.

    ``bf16``: mixed precision. The parameters stay float32 (the optimizer and the inner loop
    update float32 "master" weights); each forward pass casts them and the inputs to
    bfloat16 and returns float32 outputs, so losses and their reductions stay float32.
    BatchNorm computes its statistics in float32 (see ``conv4.BatchStatNorm``).
    """
    if precision == "fp32":
        return lambda params, x: model.apply({"params": params}, x)

    def apply_bf16(params, x):
        half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
        return model.apply({"params": half}, x.astype(jnp.bfloat16)).astype(jnp.float32)

    return apply_bf16
