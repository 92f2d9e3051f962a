"""DARTS's search space: sizes by hand, operations against references, the search network at
one-hot weights = the discrete one, the architecture's meta-gradient against finite
differences, derivation and random draws, config refusals, and the CLI from search to retrain."""

import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.base import outer_loss, task_metrics
from metarun.algos.maml import maml
from metarun.config import ARCH, PRIMITIVES, ConfigError, DartsConfig, cell_edges
from metarun.models import darts
from metarun.types import CLASSIFICATION, Episode, cross_entropy
from tests.helpers import task

REPO = Path(__file__).parents[2]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def count(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def init(model, x):
    return model.init(jax.random.PRNGKey(0), x)["params"]


def shapes(model, x):
    return jax.eval_shape(lambda x: init(model, x), x)


def test_search_and_discrete_networks_have_the_hand_computed_size():
    # C = 4 channels, 2 cells of 2 nodes (3 edges), 5 outputs, one input channel.
    # Stem: 3·3·1·C + BatchNorm 2C = 44. Head: 5C + 5 = 25.
    # Search edge: pools' BatchNorms 2 · 2C; sep 3×3, sep 5×5, dil 3×3, dil 5×5: depthwise
    # (9 + 25 + 9 + 25) C, pointwise 4 C², BatchNorms 4 · 2C: 4C² + 80C = 384.
    x = jnp.ones((2, 16, 16, 1))
    search = shapes(darts.Darts(output_dim=5, channels=4, cells=2, nodes=2), x)
    assert count(search) == 44 + 2 * 3 * 384 + 3 * len(PRIMITIVES) + 25
    assert search[ARCH].shape == (3, 8)
    # sep_conv_3x3: 9C + C² + 2C = 60; skip: 0; max_pool_3x3: 2C = 8.
    genotype = ("sep_conv_3x3", "skip_connect", "max_pool_3x3")
    discrete = shapes(darts.Darts(output_dim=5, channels=4, cells=2, genotype=genotype), x)
    assert count(discrete) == 44 + 2 * 68 + 25 and ARCH not in discrete
    assert sorted(discrete["cell_0"]) == ["edge1_0_sep_conv_3x3", "edge2_1_max_pool_3x3"]


def test_operations_match_their_references(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 3))
    for size, dilation in ((3, 1), (5, 1), (3, 2), (5, 2)):
        kernel = rng.normal(size=(size, size, 3))
        grouped = jax.lax.conv_general_dilated(  # XLA's depthwise convolution
            x,
            kernel[:, :, None, :],
            (1, 1),
            "SAME",
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=3,
        )
        np.testing.assert_allclose(darts.depthwise(x, kernel, dilation), grouped, atol=1e-12)
    same = {"window_shape": (3, 3), "strides": (1, 1), "padding": "SAME"}
    np.testing.assert_allclose(darts.max_pool3x3(x), nn.max_pool(x, **same), atol=1e-12)
    np.testing.assert_allclose(
        darts.avg_pool3x3(x), nn.avg_pool(x, **same, count_include_pad=False), atol=1e-12
    )


def test_search_network_at_one_hot_weights_is_the_discrete_network(x64):
    genotype = ("dil_conv_5x5", "none", "avg_pool_3x3", "sep_conv_5x5", "skip_connect", "none")
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 16, 16, 1)))
    search = darts.Darts(output_dim=3, channels=3, cells=2, nodes=3)
    params = jax.tree.map(np.float64, init(search, x))
    one_hot = np.array([[op == chosen for op in PRIMITIVES] for chosen in genotype], float)
    params[ARCH] = jnp.asarray(1e4 * one_hot)  # softmax: exactly one-hot in float64
    discrete = darts.Darts(output_dim=3, channels=3, cells=2, nodes=3, genotype=genotype)
    # The discrete network's parameters are the search network's of its chosen operations.
    own = init(discrete, x)
    subset = {
        name: {op: params[name][op] for op in own[name]}
        if name.startswith("cell")
        else params[name]
        for name in own
    }
    np.testing.assert_allclose(
        search.apply({"params": params}, x), discrete.apply({"params": subset}, x), atol=1e-9
    )


def test_architecture_meta_gradient_matches_finite_differences(x64):
    """Second-order MAML through one inner step that adapts weights and α alike, the
    meta-gradient with respect to α at every entry against central differences (and the
    vmapped meta-batch against its tasks one by one)."""
    rng = np.random.default_rng(2)
    model = darts.Darts(output_dim=2, channels=2, cells=1, nodes=1)  # one edge: every op
    episodes = Episode(
        support_x=jnp.asarray(rng.uniform(size=(2, 4, 4, 4, 1))),
        support_y=jnp.asarray(np.tile([0, 1, 0, 1], (2, 1))),
        query_x=jnp.asarray(rng.uniform(size=(2, 4, 4, 4, 1))),
        query_y=jnp.asarray(np.tile([1, 0, 0, 1], (2, 1))),
        ways=2,
    )
    params = jax.tree.map(np.float64, init(model, episodes.support_x[0]))  # flax inits float32
    params[ARCH] = rng.normal(size=params[ARCH].shape)
    learner = maml(lambda p, x, c=None: model.apply({"params": p}, x), cross_entropy, inner_lr=0.3)

    @jax.jit
    def loss(arch):
        return outer_loss(learner, CLASSIFICATION, {**params, ARCH: arch}, episodes, 1)[0]

    adapted = learner.adapt(params, episodes.support_x[0], episodes.support_y[0], 1, 2)
    assert not np.allclose(adapted[ARCH], params[ARCH])  # the inner loop adapts α too
    # The meta-batch's loss, tasks vmapped, is the mean of the tasks' one by one.
    looped = [task_metrics(learner, CLASSIFICATION, params, task(episodes, t), 1) for t in (0, 1)]
    np.testing.assert_allclose(loss(params[ARCH]), np.mean([m["loss"] for m in looped]), 1e-12)
    grad = jax.grad(loss)(params[ARCH])
    eps = 1e-6
    numeric = np.zeros(grad.shape)
    for index in np.ndindex(grad.shape):
        step = np.zeros(grad.shape)
        step[index] = eps
        numeric[index] = (loss(params[ARCH] + step) - loss(params[ARCH] - step)) / (2 * eps)
    assert np.abs(numeric).max() > 1e-4  # the architecture matters to the loss
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_derive_keeps_each_nodes_strongest_inputs_and_never_none():
    # 3 nodes: edges (1,0), (2,0), (2,1), (3,0), (3,1), (3,2).
    arch = np.zeros((6, len(PRIMITIVES)))
    index = {op: k for k, op in enumerate(PRIMITIVES)}
    arch[0, index["none"]], arch[0, index["sep_conv_5x5"]] = 9.0, 1.0  # none never wins
    arch[1, index["max_pool_3x3"]] = 2.0
    arch[2, index["skip_connect"]] = 0.5
    # Node 3's inputs ranked by softmax weight, not by logit: (3,0)'s dil_conv_3x3 has the
    # largest logit (3), but "none" (5) takes most of its mass, e^3 / (e^5 + e^3 + 6) = 0.12;
    # (3,1)'s avg_pool_3x3: e^2 / (e^2 + 7) = 0.51; (3,2)'s sep_conv_3x3: e^1.5 / (e^1.5 + 7)
    # = 0.39. (3,0) is dropped.
    arch[3, index["none"]], arch[3, index["dil_conv_3x3"]] = 5.0, 3.0
    arch[4, index["avg_pool_3x3"]] = 2.0
    arch[5, index["sep_conv_3x3"]] = 1.5
    assert darts.derive(arch, 3) == [
        "sep_conv_5x5",
        "max_pool_3x3",
        "skip_connect",
        "none",
        "avg_pool_3x3",
        "sep_conv_3x3",
    ]


def test_random_genotypes_have_the_derived_sparsity_and_follow_the_seed():
    edges = cell_edges(4)
    draws = [darts.random_genotype(4, seed) for seed in range(20)]
    for genotype in draws:
        for node in range(1, 5):
            ops = [op for (i, _), op in zip(edges, genotype, strict=True) if i == node]
            assert sum(op != "none" for op in ops) == min(2, node)
        DartsConfig(nodes=4, genotype=genotype)  # valid
    assert darts.random_genotype(4, 3) == draws[3]
    assert len({tuple(g) for g in draws}) > 15


@pytest.mark.parametrize(
    ("genotype", "message"),
    [
        (["sep_conv_3x3"], "needs one operation per edge: 3 for model.nodes=2"),
        (["sep_conv_3x3", "conv_7x7", "none"], "allowed values are none, skip_connect"),
        (["none", "skip_connect", "skip_connect"], "node 1 has no input"),
    ],
)
def test_a_bad_genotype_is_refused_with_the_key(genotype, message):
    with pytest.raises(ConfigError, match="model.genotype") as error:
        DartsConfig(genotype=genotype)
    assert message in str(error.value)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="images of at least 16×16, got 8×8"):
        init(darts.Darts(output_dim=2, cells=3), jnp.ones((2, 8, 8, 1)))


@pytest.mark.extended  # 60–90 s of compiles; make test refuses a bad genotype via the CLI
def test_the_cli_searches_then_retrains_the_derived_architecture(omniglot, tmp_path):
    """`metarun algo=fomaml model=darts` (search), `scripts/darts_genotype.py` on its run, then
    `metarun model=darts model.genotype=[...]` on the line it printed: the real entry points,
    shrunk to one-node cells."""
    import json

    import metarun
    from tests.conftest import FAST
    from tests.test_cli import run

    small = [
        "model=darts",
        "model.nodes=1",
        "model.cells=1",
        "model.channels=4",
        "trainer.meta_batch=2",
        "eval.inner_steps=1",
    ]
    search = "optim.arch_lr_scale=100"  # the retrained network has no architecture weights
    fast = [*FAST, "trainer.steps=4", "trainer.val_every=2", "trainer.log_every=2"]
    proc = run(
        "algo=fomaml", *omniglot, *small, search, *fast, f"hydra.run.dir={tmp_path}/s", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    searched = metarun.load(tmp_path / "s")
    weights = np.asarray(jax.nn.softmax(searched.model_params[ARCH], axis=-1))
    assert not np.allclose(weights, 1 / len(PRIMITIVES), atol=1e-3)  # α was meta-learned
    script = [sys.executable, str(REPO / "scripts/darts_genotype.py"), str(tmp_path / "s")]
    printed = subprocess.run(script, capture_output=True, text=True, check=True).stdout
    override = printed.strip().splitlines()[-1]
    assert override == f"model.genotype=[{','.join(searched.genotype())}]"
    proc = run(
        "algo=maml", *omniglot, *small, override, *fast, f"hydra.run.dir={tmp_path}/r", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "r/result.json").read_text())
    assert 0 <= result["mean"] <= 1
    assert metarun.load(tmp_path / "r").config.model.genotype == searched.genotype()
