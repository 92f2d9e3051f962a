"""trainer.precision=bf16: bfloat16 forward passes around float32 master weights."""

import jax
import jax.numpy as jnp
import numpy as np

from metarun import models
from metarun.experiment import build, rng_streams
from metarun.models import conv4
from metarun.step import compile_meta_step, init_state


def test_bf16_forward_is_close_to_fp32_and_returns_fp32():
    model = conv4.Conv4(filters=8, output_dim=5, strided=True)
    x = np.random.default_rng(0).uniform(size=(10, 28, 28, 1)).astype(np.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    full = jax.jit(models.make_apply(model, "fp32"))(params, x)
    half = jax.jit(models.make_apply(model, "bf16"))(params, x)
    assert half.dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa: about 2-3 significant digits survive four layers.
    np.testing.assert_allclose(half, full, rtol=0.05, atol=0.05)
    assert not np.array_equal(half, full)  # it really ran in bfloat16


def test_bf16_meta_steps_keep_float32_master_weights(make_config):
    exp = build(make_config("trainer.precision=bf16"))
    init_key, train_key = rng_streams(0)
    state = init_state(exp, init_key)
    step, _ = compile_meta_step(exp, state, train_key)
    losses = []
    for _ in range(300):
        state, metrics = step(state, train_key, exp.source.samplers["train"])
        losses.append(float(metrics["loss"]))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.meta_params))
    assert np.all(np.isfinite(losses)) and np.mean(losses[-50:]) < 0.7 * np.mean(losses[:50])


def test_bf16_runs_through_the_direct_convolution_and_its_gradients():
    # model.conv=direct's custom VJPs in bfloat16: kernel, input and output gradient share the
    # dtype; the gradient reaching the float32 parameters is close to the float32 one.
    model = conv4.Conv4(filters=8, output_dim=5, conv="direct")
    x = np.random.default_rng(0).uniform(size=(10, 28, 28, 1)).astype(np.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]

    def grad(precision):
        apply = models.make_apply(model, precision)
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(apply(p, x)))))(params)

    full, half = grad("fp32"), grad("bf16")
    for a, b in zip(jax.tree.leaves(half), jax.tree.leaves(full), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=0.1, atol=0.1 * np.abs(b).max())
