"""Conv-4: sizes of the paper settings, per-batch BatchNorm, second-order gradients."""

from functools import partial
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.base import gradient_descent
from metarun.models import conv4, models
from metarun.types import cross_entropy


def conv4_config(filters: int, strided: bool = False, conv: str = "auto"):
    return SimpleNamespace(
        name="conv4", filters=filters, strided=strided, conv=conv, bn_mode="transductive"
    )


# Data and checks are numpy, the model is jitted: eager jax compiles every new op shape,
# which costs seconds per test on CPU.
def images(seed: int, batch: int, shape=(16, 16, 1), dtype=np.float32):
    return np.random.default_rng(seed).uniform(size=(batch, *shape)).astype(dtype)


def init_params(model, x):
    return jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]


def jitted_apply(model, method=None):
    return jax.jit(lambda params, x: model.apply({"params": params}, x, method=method))


def count(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


# By hand, 5-way. Convolutions have no bias; each BatchNorm has a scale and an offset
# (2 × filters); the head is features × 5 + 5.
#   Omniglot, 64 filters:   conv 3·3·1·64 = 576, then 3 × 3·3·64·64 = 110 592;
#     BN 4 × 128 = 512; head 64·5 + 5 = 325; total 576 + 110 592 + 512 + 325 = 112 005.
#     Features: max-pool 28 → 14 → 7 → 3 → 1, so 64·1·1 = 64; strided 28 → 14 → 7 → 4 → 2
#     then the spatial mean, so 64 as well: both variants have the same count.
#   mini-ImageNet, 32 filters: conv 3·3·3·32 = 864, then 3 × 3·3·32·32 = 27 648;
#     BN 4 × 64 = 256; features 84 → 42 → 21 → 10 → 5, 32·5·5 = 800; head 800·5 + 5 = 4 005;
#     total 864 + 27 648 + 256 + 4 005 = 32 773.
PAPER_SETTINGS = [
    pytest.param(64, False, (28, 28, 1), 64, 112_005, id="omniglot-maxpool"),
    pytest.param(64, True, (28, 28, 1), 64, 112_005, id="omniglot-strided"),
    pytest.param(32, False, (84, 84, 3), 800, 32_773, id="mini-imagenet"),
]


@pytest.mark.parametrize("filters, strided, shape, feature_dim, num_params", PAPER_SETTINGS)
def test_paper_settings_have_the_hand_computed_sizes(
    filters, strided, shape, feature_dim, num_params
):
    model = models.get("conv4")(conv4_config(filters, strided), 5)
    # Shapes only (eval_shape): the numerics are exercised by the tests below.
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)
    params = variables["params"]

    assert list(variables) == ["params"]  # no batch_stats: apply needs no mutable state
    assert sorted(params) == ["blocks_0", "blocks_1", "blocks_2", "blocks_3", "head"]
    assert params["head"]["kernel"].shape == (feature_dim, 5)
    assert count(params) == num_params
    assert jax.eval_shape(model.apply, variables, x).shape == (3, 5)
    assert jax.eval_shape(partial(model.apply, method="embed"), variables, x).shape == (
        3,
        feature_dim,
    )


def test_embed_is_the_encoder_without_a_head():
    model = conv4.Conv4(filters=4, output_dim=5)
    x = images(0, 4)
    params = init_params(model, x)
    encoder = {name: p for name, p in params.items() if name != "head"}

    assert (
        jax.eval_shape(partial(model.init, method="embed"), jax.random.PRNGKey(1), x)[
            "params"
        ].keys()
        == encoder.keys()
    )
    features = np.asarray(jitted_apply(model, "embed")(encoder, x))
    head = jax.tree.map(np.asarray, params["head"])
    np.testing.assert_allclose(
        features @ head["kernel"] + head["bias"],
        jitted_apply(model)(params, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_images_without_a_channel_axis_are_refused():
    with pytest.raises(ValueError, match=r"\[batch, H, W, C\]"):
        conv4.Conv4(filters=4, output_dim=5).init(jax.random.PRNGKey(0), np.zeros((2, 28, 28)))


def test_images_too_small_to_pool_four_times_are_refused():
    # 15×15 would pool to 0×0 and leave the head no features: constant logits, no learning.
    with pytest.raises(ValueError, match="at least 16×16 .* use model.strided=true"):
        conv4.Conv4(filters=4, output_dim=5).init(jax.random.PRNGKey(0), np.zeros((2, 15, 15, 1)))


def test_each_task_is_normalised_with_its_own_batch():
    model = conv4.Conv4(filters=8, output_dim=5)
    tasks = images(0, 3 * 5).reshape(3, 5, 16, 16, 1)
    params = init_params(model, tasks[0])

    apply = jitted_apply(model)

    vmapped = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(params, tasks)
    for t in range(3):
        np.testing.assert_allclose(vmapped[t], apply(params, tasks[t]), rtol=1e-5, atol=1e-5)
    # Statistics come from the batch: task 0 alongside task 1 in one batch is another output.
    together = apply(params, np.concatenate([tasks[0], tasks[1]]))[:5]
    assert not np.allclose(together, vmapped[0], atol=1e-3)


@pytest.mark.parametrize("strided", [False, True])
def test_normalised_activations_have_zero_mean_and_unit_variance(strided):
    model = conv4.Conv4(filters=8, output_dim=5, strided=strided)
    x = images(0, 10)
    params = init_params(model, x)
    # Scale and offset away from their init, so that the check sees them applied.
    scale, offset = 2.0, 0.5
    for block in params:
        if block != "head":
            norm = params[block]["norm"]
            norm["scale"] = np.full(norm["scale"].shape, scale, np.float32)
            norm["bias"] = np.full(norm["bias"].shape, offset, np.float32)

    capture = partial(model.apply, capture_intermediates=lambda m, _: m.name in ("conv", "norm"))
    _, state = jax.jit(capture)({"params": params}, x)
    for i in range(4):
        block = jax.tree.map(np.asarray, state["intermediates"][f"blocks_{i}"])
        conv_out = block["conv"]["__call__"][0]
        normed = (block["norm"]["__call__"][0] - offset) / scale
        np.testing.assert_allclose(normed.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
        # Unit variance up to ε = 1e-3, which weighs on the small activations of the first
        # blocks: var = v / (v + ε), v the variance of the batch before normalising.
        v = conv_out.var(axis=(0, 1, 2))
        np.testing.assert_allclose(normed.var(axis=(0, 1, 2)), v / (v + 1e-3), rtol=1e-3)


def maml_query_loss(model, params, support, query, inner_lr, num_steps):
    """Cross-entropy on the query set after ``num_steps`` of SGD on the support set."""

    def loss(p, batch):
        x, y = batch
        return cross_entropy(model.apply({"params": p}, x), y)

    adapted = gradient_descent(lambda p: loss(p, support), params, inner_lr, num_steps)
    return loss(adapted, query)


def tiny_task(shape, dtype, ways: int = 3, shots: int = 2):
    labels = np.repeat(np.arange(ways), shots)
    return (images(0, ways * shots, shape, dtype), labels), (
        images(1, ways * shots, shape, dtype),
        labels,
    )


@pytest.mark.parametrize("conv", ["xla", "im2col", "direct"])
@pytest.mark.parametrize("strided, shape", [(False, (16, 16, 1)), (True, (8, 8, 1))])
def test_meta_gradient_through_two_sgd_steps_matches_finite_differences(strided, shape, conv):
    # Second order through BatchNorm: the query loss after two inner steps, in float64.
    # 16×16 for max-pooling: four halvings of 8×8 would leave no pixel.
    with jax.enable_x64(True):
        model = conv4.Conv4(filters=4, output_dim=3, strided=strided, conv=conv)
        support, query = tiny_task(shape, np.float64)
        params = jax.tree.map(lambda p: np.asarray(p, np.float64), init_params(model, support[0]))
        rng = np.random.default_rng(2)
        direction = jax.tree.map(lambda p: rng.normal(size=p.shape), params)

        # One compiled function for both sides of the check (the gradient at ±h is unused).
        loss_and_grad = jax.jit(
            jax.value_and_grad(lambda p: maml_query_loss(model, p, support, query, 0.4, 2))
        )
        grads = jax.tree.map(np.asarray, loss_and_grad(params)[1])
        h = 1e-6
        plus, minus = (
            jax.tree.map(lambda p, d, s=s: p + s * h * d, params, direction) for s in (1, -1)
        )
        numeric = (float(loss_and_grad(plus)[0]) - float(loss_and_grad(minus)[0])) / (2 * h)

        leaves = jax.tree.leaves(grads)
        assert all(np.all(np.isfinite(g)) for g in leaves)
        # Every layer, the first convolution included, gets a meta-gradient.
        assert all(np.linalg.norm(g) > 0 for g in leaves)
        analytic = sum(
            np.vdot(g, d) for g, d in zip(leaves, jax.tree.leaves(direction), strict=True)
        )
        assert abs(analytic - numeric) < 1e-4 * abs(numeric)


def test_registered_factory_reads_filters_strided_and_conv():
    model = models.get("conv4")(conv4_config(32, strided=True, conv="xla"), 7)
    assert model == conv4.Conv4(filters=32, output_dim=7, strided=True, conv="xla")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8])  # odd sizes pad asymmetrically under SAME
def test_im2col_equals_xla_convolution_with_per_task_kernels(stride, size):
    # The case that matters: vmap over tasks, each with its own kernel, values and gradients.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(3, 4, size, size, 2))  # [tasks, batch, H, W, C]
        kernels = rng.normal(size=(3, 3, 3, 2, 5))  # [tasks, 3, 3, C, filters]

        def xla(x, k):
            return jax.lax.conv_general_dilated(
                x, k, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        def im2col(x, k):
            return conv4.im2col_conv3x3(x, k, stride)

        for f in (xla, im2col):
            assert jax.vmap(f)(x, kernels).shape == (
                3,
                4,
                -(-size // stride),
                -(-size // stride),
                5,
            )
        np.testing.assert_allclose(
            jax.vmap(im2col)(x, kernels), jax.vmap(xla)(x, kernels), atol=1e-12
        )

        def loss(f):
            return jax.grad(lambda x, k: jnp.sum(jnp.sin(jax.vmap(f)(x, k))), argnums=(0, 1))

        for got, want in zip(loss(im2col)(x, kernels), loss(xla)(x, kernels), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-12)


def second_order(f, shared: bool = False):
    """The gradient, with respect to input and kernel, of a function of ``f``'s gradient
    (second-order MAML's case), vmapped over tasks with their own kernels, or one kernel
    ``shared`` by them (the first inner step's support pass, every ProtoNet pass)."""

    def of_gradient(x, k):
        gx, gk = jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), argnums=(0, 1))(x, k)
        return jnp.sum(gx**3) + jnp.sum(jnp.cos(gk))

    in_axes = (0, None if shared else 0)
    return jax.grad(lambda x, k: jnp.sum(jax.vmap(of_gradient, in_axes)(x, k)), argnums=(0, 1))


def xla_conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


# (channels, filters, images per task, images whose patches fit the block): an image's
# channels (the custom VJP; with 8 filters its input gradient is a deep layer's, in chunks),
# then deeper maps in chunks of 2 of 6, of 1 of 5 (5 is prime: the largest divisor that
# fits), and all 6 at once.
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize(
    "channels, filters, batch, fits",
    [(2, 4, 4, 1), (1, 8, 4, 1), (8, 4, 6, 2), (8, 4, 5, 2), (8, 4, 6, 6)],
)
def test_cpu_im2col_equals_xla_to_second_order(channels, filters, batch, fits, shared):
    # im2col's CPU layouts (block_bytes): values, gradients and second-order gradients under
    # jit, against XLA's convolution differentiated by JAX, with per-task or shared kernels.
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(3, batch, 7, 6, channels))
        shape = (3, 3, channels, filters)
        kernels = rng.normal(size=shape if shared else (3, *shape))
        in_axes = (0, None if shared else 0)
        block = fits * 7 * 6 * 9 * channels * 8  # bytes of `fits` images' float64 patches

        def cpu(x, k):
            return conv4.im2col_conv3x3(x, k, 1, block)

        kernel = kernels if shared else kernels[0]
        program = str(jax.make_jaxpr(cpu)(x[0], kernel))  # the path each case takes
        assert ("custom_vjp" in program) == (channels < 8)
        assert ("scan" in program) == (channels >= 8 and fits < batch)
        np.testing.assert_allclose(
            jax.jit(jax.vmap(cpu, in_axes))(x, kernels),
            jax.vmap(xla_conv, in_axes)(x, kernels),
            atol=1e-12,
        )
        got = jax.jit(second_order(cpu, shared))(x, kernels)
        for a, b in zip(got, second_order(xla_conv, shared)(x, kernels), strict=True):
            assert np.linalg.norm(b) > 0
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("height, width", [(7, 7), (8, 5)])
def test_direct_convolution_equals_xla_to_second_order_with_per_task_kernels(height, width):
    # conv=direct's custom VJPs against XLA's convolution differentiated by JAX: values, the
    # gradient and the gradient of a function of the gradient, with respect to the input and
    # the kernel, vmapped over tasks with their own kernels.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(3, 4, height, width, 2))  # [tasks, batch, H, W, C]
        kernels = rng.normal(size=(3, 3, 3, 2, 5))

        def direct(x, k):
            return conv4.direct_conv3x3(x, k, 1)

        np.testing.assert_allclose(
            jax.vmap(direct)(x, kernels), jax.vmap(xla_conv)(x, kernels), atol=1e-12
        )
        got, want = second_order(direct)(x, kernels), second_order(xla_conv)(x, kernels)
        for a, b in zip(got, want, strict=True):
            assert np.linalg.norm(b) > 0
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)


def test_max_pool_equals_flax_max_pool_on_odd_sizes():
    x = images(3, 2, (7, 9, 3))
    np.testing.assert_array_equal(
        conv4.max_pool2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    )


def sliced_max_pool(x):
    """The pool's maxima of strided slices, differentiated by JAX (no custom VJP)."""
    x = x[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2]
    rows = jnp.maximum(x[:, 0::2], x[:, 1::2])
    return jnp.maximum(rows[:, :, 0::2], rows[:, :, 1::2])


@pytest.mark.parametrize("shape", [(3, 7, 9, 4), (2, 8, 8, 3)])
def test_max_pool_gradient_is_jaxs_own_at_ties_to_second_order(shape):
    # The custom VJP against JAX's derivative of the same maxima, bit for bit: ties (four
    # equal values, two in a column, ReLU's zeros) split the gradient as lax.max does.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=shape)
        x = np.maximum(x, 0.0)
        x[0, :2, :2, 0] = 1.5  # a window of four equal values
        x[1, 2:4, 2:4, 1] = [[0.7, 0.1], [0.7, 0.1]]  # a tie between rows
        x[1, 4:6, 4:6, 2] = [[0.9, 0.9], [0.2, 0.2]]  # a tie between columns
        g = rng.normal(size=sliced_max_pool(x).shape)

        def grad(pool):
            return jax.jit(jax.grad(lambda x: jnp.sum(pool(x) * g)))(x)

        def of_gradient(pool):  # a function of the input gradient, differentiated again
            return jax.grad(
                lambda s: jnp.sum(jnp.sin(jax.grad(lambda x: jnp.sum(jnp.tanh(pool(s * x))))(x)))
            )(1.3)

        np.testing.assert_array_equal(conv4.max_pool2x2(x), sliced_max_pool(x))
        np.testing.assert_array_equal(grad(conv4.max_pool2x2), grad(sliced_max_pool))
        # Each tied value gets its share of the window's gradient.
        dx = grad(conv4.max_pool2x2)
        np.testing.assert_array_equal(dx[0, :2, :2, 0], g[0, 0, 0, 0] / 4)
        np.testing.assert_array_equal(dx[1, 2:4, 2:4, 1], [[g[1, 1, 1, 1] / 2, 0]] * 2)
        np.testing.assert_array_equal(dx[1, 4:6, 4:6, 2], [[g[1, 2, 2, 2] / 2] * 2, [0, 0]])
        # A NaN: no gradient to any value of its window, as lax.max gives.
        x[0, 2, 2, 0] = np.nan
        np.testing.assert_array_equal(grad(conv4.max_pool2x2), grad(sliced_max_pool))
        x[0, 2, 2, 0] = 0.0
        np.testing.assert_allclose(
            of_gradient(conv4.max_pool2x2), of_gradient(sliced_max_pool), rtol=1e-12
        )


def jax_batch_norm(x, scale, bias, epsilon):  # BatchNorm as JAX differentiates it
    axes = tuple(range(x.ndim - 1))
    mean, var = jnp.mean(x, axes), jnp.var(x, axes)
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias


def test_batch_norm_gradient_is_jaxs_own_to_second_order():
    # The custom VJP's textbook gradient against JAX's derivative of the same forward pass,
    # for the input, the scale and the bias, and again for a function of those gradients
    # (second-order MAML differentiates the inner step's gradient).
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(5, 6, 7, 3)) * 2 + 1
        scale, bias, w = rng.normal(size=3), rng.normal(size=3), rng.normal(size=x.shape)

        def loss(norm):
            return lambda x, s, b: jnp.sum(jnp.sin(norm(x, s, b, 1e-3)) * w)

        def of_gradients(norm):
            def f(x, s, b):
                dx, ds, db = jax.grad(loss(norm), (0, 1, 2))(x, s, b)
                return jnp.sum(jnp.cos(dx)) + jnp.sum(ds**2) + jnp.sum(db * s)

            return jax.jit(jax.grad(f, (0, 1, 2)))(x, scale, bias)

        np.testing.assert_array_equal(
            conv4.batch_norm(x, scale, bias, 1e-3), jax_batch_norm(x, scale, bias, 1e-3)
        )
        first = [jax.jit(jax.grad(loss(n), (0, 1, 2)))(x, scale, bias) for n in
                 (conv4.batch_norm, jax_batch_norm)]  # fmt: skip
        second = [of_gradients(n) for n in (conv4.batch_norm, jax_batch_norm)]
        for ours, jaxs in (first, second):
            for a, b in zip(ours, jaxs, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_auto_conv_is_im2col_on_cpu_and_unknown_names_are_refused():
    expected = "im2col" if jax.default_backend() in ("cpu", "gpu") else "xla"
    assert conv4.resolve_conv("auto") == expected
    with pytest.raises(ValueError, match="conv must be one of"):
        conv4.resolve_conv("winograd")


@pytest.mark.parametrize("conv", ["xla", "im2col", "direct"])
def test_max_pool_gradient_under_vmap_and_jit(conv):
    # Regression: a reshape-and-max pool gave jit(grad(vmap(loss))) gradients off by 40-160%
    # on XLA:CPU while eager mode and finite differences agreed. Compare against a loop.
    with jax.enable_x64(True):
        model = conv4.Conv4(filters=4, output_dim=3, conv=conv)
        x = images(0, 12, dtype=np.float64).reshape(2, 6, 16, 16, 1)
        y = np.tile(np.arange(3).repeat(2), (2, 1))
        params = jax.tree.map(lambda p: np.asarray(p, np.float64), init_params(model, x[0]))

        def loss(p, x, y):
            return cross_entropy(model.apply({"params": p}, x), y)

        vmapped = jax.jit(jax.grad(lambda p: jax.vmap(loss, (None, 0, 0))(p, x, y).mean()))
        looped = jax.jit(jax.grad(lambda p: (loss(p, x[0], y[0]) + loss(p, x[1], y[1])) / 2))
        for a, b in zip(
            jax.tree.leaves(vmapped(params)), jax.tree.leaves(looped(params)), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
