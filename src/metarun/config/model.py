"""Schemas of ``conf/model/<name>.yaml``, one per network (``metarun.models``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from metarun.config.errors import _check, _check_choice


@dataclass
class MLPConfig:
    """Multilayer perceptron: hidden layers, then the "head", the last layer (what ANIL adapts)."""

    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [40, 40])  # widths (MAML §5.1: 40, 40)
    activation: str = "relu"  # relu, tanh or gelu

    def __post_init__(self) -> None:
        _check(
            all(h >= 1 for h in self.hidden),
            "model.hidden",
            self.hidden,
            "every layer width must be >= 1",
        )
        _check_choice("model.activation", self.activation, ("relu", "tanh", "gelu"))


# How Conv-4 and ResNet-12 compute their convolutions (models/conv4.py: resolve_conv).
CONV_IMPLS = ("auto", "xla", "im2col")
# Their BatchNorm modes (models/conv4.py: BatchStatNorm).
BN_MODES = ("transductive", "support", "task_norm", "running")


@dataclass
class Conv4Config:
    """Conv-4 (Vinyals et al. 2016): four 3×3 conv + BatchNorm + ReLU + 2×2 max-pool blocks."""

    name: str = "conv4"
    filters: int = 64  # 64 on Omniglot, 32 on mini-ImageNet (MAML)
    strided: bool = False  # MAML's Omniglot variant: stride-2 convolutions, no max-pool
    conv: str = "auto"  # auto: im2col on CPU/GPU, XLA's convolution on TPU (same numbers)
    # How BatchNorm normalises a query set: transductive (its own statistics), support (the
    # support set's, MetaBN), task_norm (TaskNorm-I) or running (averages kept in
    # meta-training); models/conv4.py.
    bn_mode: str = "transductive"

    def __post_init__(self) -> None:
        _check(self.filters >= 1, "model.filters", self.filters, "must be >= 1")
        _check_choice("model.conv", self.conv, CONV_IMPLS)
        _check_choice("model.bn_mode", self.bn_mode, BN_MODES)


@dataclass
class ResNet12Config:
    """ResNet-12 (TADAM, MetaOptNet): four residual blocks, per-task BatchNorm, mean-pooled."""

    name: str = "resnet12"
    channels: list[int] = field(default_factory=lambda: [64, 160, 320, 640])  # MetaOptNet
    conv: str = "auto"  # auto: im2col on CPU/GPU, XLA's convolution on TPU (same numbers)
    # How BatchNorm normalises a query set: transductive (its own statistics), support (the
    # support set's, MetaBN), task_norm (TaskNorm-I) or running (averages kept in
    # meta-training); models/conv4.py.
    bn_mode: str = "transductive"

    def __post_init__(self) -> None:
        _check(
            len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
            "model.channels",
            self.channels,
            "must be a non-empty list of widths >= 1",
        )
        _check_choice("model.conv", self.conv, CONV_IMPLS)
        _check_choice("model.bn_mode", self.bn_mode, BN_MODES)


# The schema of each conf/model/<name>.yaml.
SCHEMAS = {"mlp": MLPConfig, "conv4": Conv4Config, "resnet12": ResNet12Config}
