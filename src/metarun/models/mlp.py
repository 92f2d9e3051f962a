"""Fully connected network: MAML's 1-40-40-1 sinusoid regressor."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from metarun.models import models

_ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "gelu": nn.gelu}


class MLP(nn.Module):
    """Dense layers with an activation between them; the last one is ``head``."""

    hidden: Sequence[int]
    output_dim: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = _ACTIVATIONS[self.activation](nn.Dense(width)(x))
        return nn.Dense(self.output_dim, name="head")(x)


@models.register("mlp")
def make(cfg, output_dim: int) -> MLP:
    return MLP(hidden=tuple(cfg.hidden), output_dim=output_dim, activation=cfg.activation)
