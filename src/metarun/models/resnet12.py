"""ResNet-12: the deeper few-shot backbone of TADAM and MetaOptNet.

Four residual blocks of widths 64, 160, 320, 640 (MetaOptNet; TADAM used 64-128-256-512:
``model.channels``). Each block is three 3×3 convolutions with BatchNorm, LeakyReLU(0.1)
after the first two, a 1×1 convolution + BatchNorm on the shortcut, the sum through a
LeakyReLU, then a 2×2 max-pool: 84 → 42 → 21 → 10 → 5. The features are the spatial mean of
the last maps (``channels[-1]`` of them), followed by the ``head``.

Shared with Conv-4 (:mod:`metarun.models.conv4`): BatchNorm and its modes (``bn_mode``),
no convolution biases, the CPU/GPU choice of convolution (``conv``).
Not included: DropBlock, which these papers add as a regulariser for long training runs.

References:
  Oreshkin, Rodríguez López, Lacoste. "TADAM: Task dependent adaptive metric for improved
  few-shot learning". NeurIPS 2018. https://arxiv.org/abs/1805.10123
  Lee, Maji, Ravichandran, Soatto. "Meta-Learning with Differentiable Convex Optimization".
  CVPR 2019. https://arxiv.org/abs/1904.03758
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from metarun.models import models
from metarun.models.conv4 import (
    _INIT,
    BatchStatNorm,
    Conv3x3,
    max_pool2x2,
    norm_settings,
    resolve_conv,
)


def _leaky(x):
    return nn.leaky_relu(x, negative_slope=0.1)


class _ResidualBlock(nn.Module):
    width: int
    conv: str
    norm: dict  # BatchStatNorm's attributes

    @nn.compact
    def __call__(self, x):
        shortcut = nn.Dense(self.width, use_bias=False, kernel_init=_INIT, name="shortcut")(x)
        shortcut = BatchStatNorm(**self.norm, name="shortcut_norm")(shortcut)  # the 1×1's BN
        for i in range(3):
            x = Conv3x3(self.width, 1, self.conv, name=f"conv{i}")(x)
            x = BatchStatNorm(**self.norm, name=f"norm{i}")(x)
            if i < 2:
                x = _leaky(x)
        return max_pool2x2(_leaky(x + shortcut))


class ResNet12(nn.Module):
    """Input ``[batch, H, W, C]``, output ``[batch, output_dim]``; ``embed`` gives the features."""

    output_dim: int
    channels: Sequence[int] = (64, 160, 320, 640)
    conv: str = "auto"
    bn_mode: str = "transductive"  # BatchStatNorm's mode, training and context_rows
    bn_training: bool = True
    context_rows: int = 0

    def setup(self):
        conv = resolve_conv(self.conv)
        norm = norm_settings(self)
        self.blocks = [_ResidualBlock(width, conv, norm) for width in self.channels]
        self.head = nn.Dense(self.output_dim, kernel_init=_INIT)

    def feature_maps(self, x):
        """The last block's maps ``[batch, h, w, channels[-1]]``."""
        if x.ndim != 4:
            raise ValueError(f"ResNet12 expects images [batch, H, W, C]; got shape {x.shape}")
        for block in self.blocks:
            x = block(x)
        return x

    def embed(self, x):
        """The features before the head: the last maps averaged over space."""
        return jnp.mean(self.feature_maps(x), axis=(1, 2))

    def __call__(self, x):
        return self.head(self.embed(x))


@models.register("resnet12")
def make(cfg, output_dim: int) -> ResNet12:
    return ResNet12(
        output_dim=output_dim, channels=tuple(cfg.channels), conv=cfg.conv, bn_mode=cfg.bn_mode
    )
