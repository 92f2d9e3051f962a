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

    def setup(self):
        # Named as nn.compact would name them, so that saved parameters keep their keys.
        self.layers = [nn.Dense(width, name=f"Dense_{i}") for i, width in enumerate(self.hidden)]
        self.head = nn.Dense(self.output_dim)

    def embed(self, x):
        """The last hidden layer's activations (the input, flattened, without hidden layers)."""
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = _ACTIVATIONS[self.activation](layer(x))
        return x

    def __call__(self, x):
        return self.head(self.embed(x))


@models.register("mlp")
def make(cfg, output_dim: int) -> MLP:
    return MLP(hidden=tuple(cfg.hidden), output_dim=output_dim, activation=cfg.activation)
