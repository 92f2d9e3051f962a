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
CONV_IMPLS = ("auto", "xla", "im2col", "direct")
# Their BatchNorm modes (models/conv4.py: BatchStatNorm).
BN_MODES = ("transductive", "support", "task_norm", "running")


@dataclass
class Conv4Config:
    """Conv-4 (Vinyals et al. 2016): four 3×3 conv + BatchNorm + ReLU + 2×2 max-pool blocks."""

    name: str = "conv4"
    filters: int = 64  # 64 on Omniglot, 32 on mini-ImageNet (MAML)
    strided: bool = False  # MAML's Omniglot variant: stride-2 convolutions, no max-pool
    # auto: im2col on CPU/GPU, XLA's convolution on TPU (same numbers); direct: XLA's
    # convolution for weights a meta-batch's tasks share (metric-based learners), level with
    # im2col on this project's CPU (models/conv4.py)
    conv: str = "auto"
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
    # auto: im2col on CPU/GPU, XLA's convolution on TPU (same numbers); direct: XLA's
    # convolution for weights a meta-batch's tasks share (metric-based learners), level with
    # im2col on this project's CPU (models/conv4.py)
    conv: str = "auto"
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


# The operations of a DARTS search cell (models/darts.py), DARTS's names and order.
PRIMITIVES = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


# The architecture weights' key among a DARTS search model's parameters.
ARCH = "arch"


def cell_edges(nodes: int) -> list[tuple[int, int]]:
    """The edges ``(node, input)`` of a DARTS cell of ``nodes`` nodes: node i (1-based) sums
    one operation of each earlier state, the cell's input (state 0) and nodes 1 .. i − 1."""
    return [(i, j) for i in range(1, nodes + 1) for j in range(i)]


@dataclass
class DartsConfig:
    """A DARTS search space (Liu et al. 2019): a stem block, then ``cells`` cells of one
    architecture, each followed by a 2×2 max-pool; the mixture of every operation (search) or
    the ``genotype``'s one operation per edge (a derived or random architecture)."""

    name: str = "darts"
    channels: int = 16  # every cell's width (the stem's output)
    cells: int = 3  # after the stem's pool, each halves the maps: 14 -> 7 -> 3 -> 1 on Omniglot
    # Intermediate nodes per cell, nodes (nodes + 1) / 2 edges (DARTS: 4; 2 keeps a search
    # affordable on a CPU, scripts/reproduce.py cpu-darts).
    nodes: int = 2
    # One operation of PRIMITIVES per edge, in cell_edges order ("none": no edge); empty: search
    # the mixture. scripts/darts_genotype.py RUN prints a search run's derived genotype.
    genotype: list[str] = field(default_factory=list)
    # How BatchNorm normalises a query set, as Conv-4's (models/conv4.py).
    bn_mode: str = "transductive"

    def __post_init__(self) -> None:
        _check(self.channels >= 1, "model.channels", self.channels, "must be >= 1")
        _check(self.cells >= 1, "model.cells", self.cells, "must be >= 1")
        _check(self.nodes >= 1, "model.nodes", self.nodes, "must be >= 1")
        _check_choice("model.bn_mode", self.bn_mode, BN_MODES)
        if not self.genotype:
            return
        edges = cell_edges(self.nodes)
        _check(
            len(self.genotype) == len(edges),
            "model.genotype",
            list(self.genotype),
            f"needs one operation per edge: {len(edges)} for model.nodes={self.nodes}",
        )
        for op in self.genotype:
            _check_choice("model.genotype", op, PRIMITIVES)
        for node in range(1, self.nodes + 1):
            inputs = [op for (i, _), op in zip(edges, self.genotype, strict=True) if i == node]
            _check(
                any(op != "none" for op in inputs),
                "model.genotype",
                list(self.genotype),
                f"node {node} has no input (every one of its edges is none)",
            )


# The schema of each conf/model/<name>.yaml.
SCHEMAS = {
    "mlp": MLPConfig,
    "conv4": Conv4Config,
    "resnet12": ResNet12Config,
    "darts": DartsConfig,
}
