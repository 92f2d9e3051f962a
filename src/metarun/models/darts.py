"""DARTS: a differentiable search space of cells, whose architecture a meta-learner learns.

Conv-4 with its last blocks searched: a stem (3×3 convolution, BatchNorm, Conv-4's 2×2
max-pool), then ``cells`` cells of one architecture, each followed by the max-pool (28 → 14 →
7 → 3 → 1 on Omniglot with 3 cells), the spatial mean of the last maps through a ReLU, and the
``head``. A cell of ``nodes`` nodes (DARTS, §2.1):

    s_0 = the cell's input,    s_i = Σ_{j<i} o_(i,j)(s_j),    output = Σ_{i≥1} s_i

with one operation per edge (i, j) (:func:`metarun.config.cell_edges`). **Search**
(``model.genotype`` empty): each edge is the mixture of every operation of
:data:`~metarun.config.PRIMITIVES`, ō(x) = Σ_o softmax(α_(i,j))_o o(x), and the architecture
weights α, one row per edge shared by every cell (DARTS shares them across its normal cells),
are the parameter ``arch``. They are parameters like the others: the outer loop meta-learns
them beside the weights, and the inner loop adapts them to each task, as MetaNAS (Elsken et
al. 2020) does, so every inner-loop learner (MAML, first-order MAML, Reptile, ...) searches
with no code of its own; first-order MAML and Reptile give a first-order architecture
gradient, MAML the exact one through the inner loop. **A discrete architecture**
(``model.genotype``): one operation per edge, ``none`` for no edge; :func:`derive` reads it
off a search's α (DARTS, §2.4: each node keeps its two strongest inputs, each edge its
strongest operation other than ``none``), :func:`random_genotype` draws one of the same
sparsity, DARTS's random baseline.

The operations, in DARTS's order ReLU → convolution → BatchNorm: ``sep_conv_k×k`` is a
depthwise k×k then a pointwise 1×1 convolution, ``dil_conv_k×k`` the same with dilation 2;
``max_pool_3x3`` and ``avg_pool_3x3`` (stride 1, padding not counted in the average) are
followed by BatchNorm, as in DARTS's search. Where we differ from DARTS: the separable
convolution is applied once (DARTS stacks it twice; once halves its cost on a CPU); the
cell's output is the sum of its nodes rather than their concatenation, so every cell keeps
``channels`` maps without the 1×1 preprocessing convolutions; reduction is the fixed
max-pool between cells rather than searched reduction cells; α starts at 0 (DARTS: 1e-3 ×
a normal draw), a uniform mixture.

Convolutions are written as sums of shifted slices times per-channel weights and one matrix
product (the pointwise 1×1), not ``lax.conv``: under ``vmap`` over tasks, per-task kernels
become grouped convolutions that XLA:CPU runs slowly (see :mod:`metarun.models.conv4`),
while these stay elementwise products and batched matrix products.

References:
  Liu, Simonyan, Yang. "DARTS: Differentiable Architecture Search". ICLR 2019.
  https://arxiv.org/abs/1806.09055
  Elsken, Staffler, Metzen, Hutter. "Meta-Learning of Neural Architectures for Few-Shot
  Learning". CVPR 2020. https://arxiv.org/abs/1911.11090
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metarun.config import ARCH, PRIMITIVES, cell_edges
from metarun.models import models
from metarun.models.conv4 import (
    _INIT,
    BatchStatNorm,
    Conv3x3,
    max_pool2x2,
    norm_settings,
    resolve_conv,
)

# Each node keeps this many inputs in a derived or random architecture (DARTS, §2.4).
INPUTS_KEPT = 2
# The depthwise kernels' init: uniform with variance 1 / fan-in (the k² taps of a channel).
_DEPTHWISE_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=(0, 1))


def _shifted(x: jax.Array, size: int, dilation: int, fill: float) -> list[jax.Array]:
    """The ``size²`` views of ``x`` [N, H, W, C] under the taps of a size×size window (SAME
    padding with ``fill``, stride 1), in row-major tap order."""
    height, width = x.shape[1:3]
    pad = dilation * (size // 2)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    return [
        padded[:, i * dilation : i * dilation + height, j * dilation : j * dilation + width]
        for i in range(size)
        for j in range(size)
    ]


def depthwise(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """Depthwise convolution, SAME, stride 1: channel c by its own ``kernel[:, :, c]``."""
    size = kernel.shape[0]
    weights = kernel.reshape(size * size, -1)  # one row per tap, row-major as _shifted's
    taps = _shifted(x, size, dilation, 0.0)
    return reduce(jnp.add, [t * w for t, w in zip(taps, weights, strict=True)])


def max_pool3x3(x: jax.Array) -> jax.Array:
    """3×3 max-pool, stride 1, SAME (padding never wins)."""
    return reduce(jnp.maximum, _shifted(x, 3, 1, -jnp.inf))


def avg_pool3x3(x: jax.Array) -> jax.Array:
    """3×3 average pool, stride 1, SAME, over the window's pixels inside the image."""
    height, width = x.shape[1:3]
    inside = np.pad(np.ones((height, width)), 1)
    counts = sum(inside[i : i + height, j : j + width] for i in range(3) for j in range(3))
    return reduce(jnp.add, _shifted(x, 3, 1, 0.0)) / counts[None, :, :, None].astype(x.dtype)


class Operation(nn.Module):
    """One of :data:`PRIMITIVES` but ``none``; as many maps out as in."""

    op: str
    norm: dict  # BatchStatNorm's attributes

    @nn.compact
    def __call__(self, x):
        if self.op == "skip_connect":
            return x
        if self.op in ("max_pool_3x3", "avg_pool_3x3"):
            pooled = max_pool3x3(x) if self.op == "max_pool_3x3" else avg_pool3x3(x)
            return BatchStatNorm(**self.norm, name="norm")(pooled)
        size = int(self.op[-1])  # sep_conv_5x5 -> 5
        dilation = 2 if self.op.startswith("dil") else 1
        kernel = self.param("depthwise", _DEPTHWISE_INIT, (size, size, x.shape[-1]))
        x = depthwise(nn.relu(x), kernel.astype(x.dtype), dilation)
        x = nn.Dense(x.shape[-1], use_bias=False, kernel_init=_INIT, name="pointwise")(x)
        return BatchStatNorm(**self.norm, name="norm")(x)


class Cell(nn.Module):
    """``nodes`` nodes over the edges of :func:`cell_edges`; ``genotype`` empty: the mixtures,
    weighted by ``weights`` [edges, len(PRIMITIVES)]; else its operation on each edge."""

    nodes: int
    genotype: Sequence[str]
    norm: dict

    @nn.compact
    def __call__(self, x, weights=None):
        states = [x]
        edges = cell_edges(self.nodes)
        for node in range(1, self.nodes + 1):
            terms = []
            for e, (i, j) in enumerate(edges):
                if i != node:
                    continue
                ops = (self.genotype[e],) if self.genotype else PRIMITIVES
                for k, op in enumerate(ops):
                    if op == "none":  # zero: contributes nothing (its weight still counts)
                        continue
                    out = Operation(op, self.norm, name=f"edge{i}_{j}_{op}")(states[j])
                    terms.append(out if self.genotype else weights[e, k] * out)
            states.append(reduce(jnp.add, terms))
        return reduce(jnp.add, states[1:])


class Darts(nn.Module):
    """Input ``[batch, H, W, C]``, output ``[batch, output_dim]``; ``embed`` gives the features."""

    output_dim: int
    channels: int = 16
    cells: int = 3
    nodes: int = 2
    genotype: Sequence[str] = ()  # empty: search
    bn_mode: str = "transductive"  # BatchStatNorm's mode, training and context_rows
    bn_training: bool = True
    context_rows: int = 0

    def setup(self):
        norm = norm_settings(self)
        self.stem = Conv3x3(self.channels, 1, resolve_conv("auto"))
        self.stem_norm = BatchStatNorm(**norm)
        self.cell = [Cell(self.nodes, tuple(self.genotype), norm) for _ in range(self.cells)]
        if not self.genotype:
            shape = (len(cell_edges(self.nodes)), len(PRIMITIVES))
            self.arch = self.param(ARCH, nn.initializers.zeros, shape)
        self.head = nn.Dense(self.output_dim, kernel_init=_INIT)

    def feature_maps(self, x):
        """The last cell's maps after its pool and a ReLU, ``[batch, h, w, channels]``."""
        if x.ndim != 4:
            raise ValueError(f"Darts expects images [batch, H, W, C]; got shape {x.shape}")
        side = 2 ** (self.cells + 1)  # the stem and every cell halve the maps
        if min(x.shape[1:3]) < side:
            raise ValueError(
                f"model.cells={self.cells} halves the maps {self.cells + 1} times with the stem: "
                f"images of at least {side}×{side}, got {x.shape[1]}×{x.shape[2]}"
            )
        weights = None if self.genotype else jax.nn.softmax(self.arch, axis=-1).astype(x.dtype)
        # No ReLU here: each operation starts with its own (DARTS's stem is conv and BN).
        x = max_pool2x2(self.stem_norm(self.stem(x)))
        for cell in self.cell:
            x = max_pool2x2(cell(x, weights))
        return nn.relu(x)

    def embed(self, x):
        """The features before the head: the last maps averaged over space."""
        return jnp.mean(self.feature_maps(x), axis=(1, 2))

    def __call__(self, x):
        return self.head(self.embed(x))


def derive(arch: np.ndarray, nodes: int) -> list[str]:
    """The discrete architecture of architecture weights ``arch`` [edges, len(PRIMITIVES)]
    (DARTS, §2.4): each edge's strongest operation other than ``none``, and of each node's
    incoming edges the :data:`INPUTS_KEPT` with the strongest such operation."""
    weights = np.asarray(jax.nn.softmax(jnp.asarray(arch, jnp.float32), axis=-1))
    real = [k for k, op in enumerate(PRIMITIVES) if op != "none"]
    best = [real[int(np.argmax(w[real]))] for w in weights]
    strength = [w[k] for w, k in zip(weights, best, strict=True)]
    edges = cell_edges(nodes)
    genotype = ["none"] * len(edges)
    for node in range(1, nodes + 1):
        incoming = [e for e, (i, _) in enumerate(edges) if i == node]
        for e in sorted(incoming, key=lambda e: -strength[e])[:INPUTS_KEPT]:
            genotype[e] = PRIMITIVES[best[e]]
    return genotype


def random_genotype(nodes: int, seed: int) -> list[str]:
    """A discrete architecture drawn uniformly with a derived one's sparsity: each node's
    :data:`INPUTS_KEPT` inputs (all of them where it has fewer) and each kept edge's operation
    other than ``none`` (DARTS, §3.3's random baseline)."""
    rng = np.random.default_rng(seed)
    edges = cell_edges(nodes)
    real = [op for op in PRIMITIVES if op != "none"]
    genotype = ["none"] * len(edges)
    for node in range(1, nodes + 1):
        incoming = [e for e, (i, _) in enumerate(edges) if i == node]
        for e in rng.choice(incoming, size=min(INPUTS_KEPT, len(incoming)), replace=False):
            genotype[int(e)] = str(rng.choice(real))
    return genotype


@models.register("darts")
def make(cfg, output_dim: int) -> Darts:
    return Darts(
        output_dim=output_dim,
        channels=cfg.channels,
        cells=cfg.cells,
        nodes=cfg.nodes,
        genotype=tuple(cfg.genotype),
        bn_mode=cfg.bn_mode,
    )
