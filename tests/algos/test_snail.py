"""SNAIL: causal blocks, the query's label withheld, independent queries, the paper's wiring."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.base import adapt_and_predict
from metarun.algos.snail import (
    AttentionBlock,
    DenseBlock,
    SNAILNetwork,
    snail,
    tc_depth,
)
from metarun.config import ConfigError
from metarun.experiment import build
from metarun.types import Episode
from tests.helpers import feature_episode, tanh_embed

RNG = np.random.default_rng(0)
LENGTH = 9
X = jnp.asarray(RNG.normal(size=(LENGTH, 5)), jnp.float32)
SMALL = dict(ways=3, attention=((4, 3), (6, 2)), tc_filters=(5,), depth=3)


def random_init(init, *args):
    """``init``'s parameters drawn from N(0, 0.5²) by numpy: ``init`` is only traced (flax's
    initialisers take seconds to compile, for tests that need no particular values)."""
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), *args)
    return jax.tree.map(lambda s: jnp.asarray(0.5 * RNG.normal(size=s.shape), s.dtype), shapes)


@pytest.mark.parametrize(
    "block",
    [
        DenseBlock(4, 2, LENGTH),
        AttentionBlock(4, 3, LENGTH),
        SNAILNetwork(**SMALL, context=LENGTH),  # its TC block included
    ],
    ids=["dense", "attention", "network"],
)
def test_a_step_never_sees_a_later_one(block):
    params = random_init(block.init, X)
    steps = (2, 5, LENGTH - 1)
    inputs = jnp.stack([X] + [X.at[t].add(1.0) for t in steps])
    before, *afters = jax.jit(jax.vmap(lambda x: block.apply(params, x)))(inputs)
    for t, after in zip(steps, afters, strict=True):
        np.testing.assert_array_equal(after[:t], before[:t])
        # Position t is seen where the block looks: by itself at the attention block and at the
        # convolution's current tap, later through the dilated tap (dense block: t + 2).
        seen = t + 2 if isinstance(block, DenseBlock) and t + 2 < LENGTH else t
        assert not np.allclose(after[seen], before[seen])


def test_the_dense_block_is_a_gated_causal_dilated_convolution():
    dilation, filters = 2, 4
    block = DenseBlock(filters, dilation, LENGTH)
    params = random_init(block.init, X)["params"]
    conv = nn.Conv(2 * filters, kernel_size=(2,), kernel_dilation=(dilation,), padding=[(2, 0)])
    kernel = params["conv"]["kernel"].reshape(2, X.shape[1], 2 * filters)  # taps t − d, t
    both = conv.apply({"params": {"kernel": kernel, "bias": params["conv"]["bias"]}}, X[None])[0]
    f, g = both[:, :filters], both[:, filters:]
    expected = jnp.concatenate([X, jnp.tanh(f) * jax.nn.sigmoid(g)], axis=-1)
    np.testing.assert_allclose(block.apply({"params": params}, X), expected, rtol=1e-5, atol=1e-6)


def test_packed_queries_are_each_the_last_step_of_their_own_sequence():
    context = 6  # positions 6, 7, 8 are three queries after the same six-step sequence
    params = random_init(SNAILNetwork(**SMALL, context=LENGTH).init, X)
    packed = jax.jit(SNAILNetwork(**SMALL, context=context).apply)(params, X)
    alone = SNAILNetwork(**SMALL, context=context + 1)
    singles = jnp.stack([jnp.concatenate([X[:context], X[q : q + 1]]) for q in range(6, 9)])
    singles = jax.jit(jax.vmap(lambda x: alone.apply(params, x)))(singles)
    np.testing.assert_allclose(packed[context:], singles[:, -1], rtol=1e-5, atol=1e-6)
    for single in singles:
        np.testing.assert_allclose(packed[:context], single[:context], rtol=1e-5, atol=1e-6)


WAYS, SHOTS, QUERIES, FEATURES = 3, 2, 2, 5
W = RNG.normal(size=(4, FEATURES))


def episode() -> Episode:
    return feature_episode(RNG, WAYS, SHOTS, QUERIES)


def test_the_query_label_is_withheld_and_the_support_order_does_not_matter():
    learner = snail(tanh_embed, attention=((4, 3), (6, 2)), tc_filters=(5,))
    e = episode()
    meta = random_init(lambda key, e: learner.init({"w": jnp.asarray(W)}, key, e), e)

    net = SNAILNetwork(WAYS, ((4, 3), (6, 2)), (5,), tc_depth(WAYS * SHOTS + 1), WAYS * SHOTS + 1)

    @jax.jit
    def predict(support_x, support_y):
        """The learner's logits, and by hand: the support pairs in the learner's order, then
        each query with a zero label, or with its true label (the label input is live)."""
        logits = adapt_and_predict(learner, meta, support_x, support_y, e.query_x, 0, WAYS)
        support, onehot = learner.adapt(meta, support_x, support_y, 0, WAYS)
        pairs = jnp.concatenate([support, onehot], axis=-1)

        def last_step(query, label):
            sequence = jnp.concatenate([pairs, jnp.concatenate([query, label])[None]])
            return net.apply({"params": meta["snail"]}, sequence)[-1]

        queries = tanh_embed(meta["encoder"], e.query_x)
        withheld = jax.vmap(last_step)(queries, jnp.zeros((WAYS * QUERIES, WAYS)))
        told = jax.vmap(last_step)(queries, jax.nn.one_hot(e.query_y, WAYS))
        return logits, withheld, told

    logits, withheld, told = predict(e.support_x, e.support_y)
    assert logits.shape == (WAYS * QUERIES, WAYS)
    np.testing.assert_allclose(withheld, logits, rtol=1e-5, atol=1e-6)
    assert not np.allclose(told, logits, atol=1e-4)
    order = RNG.permutation(WAYS * SHOTS)
    shuffled, _, _ = predict(e.support_x[order], e.support_y[order])
    np.testing.assert_allclose(shuffled, logits, rtol=1e-5, atol=1e-6)
    swapped, _, _ = predict(e.support_x, e.support_y[::-1])
    assert not np.allclose(swapped, logits, atol=1e-4)  # the support labels are really read


def test_the_default_network_is_the_papers_omniglot_wiring():
    # 5-way 1-shot, 64 features: T = 6, three dense blocks per TC block; each block appends
    # its output to its input.
    learner = snail(lambda p, x: x @ p["w"])
    e = Episode(jnp.zeros((5, 64)), jnp.arange(5), jnp.zeros((5, 64)), jnp.arange(5), ways=5)
    meta = jax.eval_shape(learner.init, {"w": jnp.eye(64)}, jax.random.PRNGKey(0), e)["snail"]
    widths = {name: p["kernel"].shape for name, p in meta.items() if "kernel" in p}
    widths.update({name: p["value"]["kernel"].shape for name, p in meta.items() if "value" in p})
    dense = {
        name: [d["conv"]["kernel"].shape for d in meta[name].values()] for name in ("tc0", "tc1")
    }
    channels = 64 + 5
    assert widths["attention0"] == (channels, 32) and meta["attention0"]["key"]["kernel"].shape == (
        channels,
        64,
    )
    channels += 32
    assert dense["tc0"] == [(2 * (channels + 128 * i), 256) for i in range(3)]
    channels += 3 * 128
    assert widths["attention1"] == (channels, 128)
    channels += 128
    assert dense["tc1"] == [(2 * (channels + 128 * i), 256) for i in range(3)]
    channels += 3 * 128
    assert widths["attention2"] == (channels, 256)
    assert widths["output"] == (channels + 256, 5)
    assert [tc_depth(t) for t in (2, 6, 21, 26, 101)] == [1, 3, 5, 5, 7]


def test_regression_data_is_refused(make_config):
    with pytest.raises(ConfigError, match="algo=snail is invalid with this data: it classifies"):
        build(make_config("algo=snail"))


def test_block_sizes_must_alternate(make_config):
    with pytest.raises(ConfigError, match="algo.tc_filters=.* is invalid"):
        make_config("algo=snail", "algo.tc_filters=[128,128,128,128]")
    with pytest.raises(ConfigError, match="algo.attention_values=.* is invalid"):
        make_config("algo=snail", "algo.attention_values=[32]")
