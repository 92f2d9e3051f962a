"""ResNet-12: the hand-computed size of the MetaOptNet setting, both convolutions agree."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.models import models, resnet12
from metarun.types import cross_entropy


def count(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def test_metaoptnet_setting_has_the_hand_computed_size():
    # Per block from c to w channels: three 3×3 convolutions 9·c·w + 2 · 9·w·w, a 1×1
    # shortcut c·w, four BatchNorms 4 · 2w (no convolution biases).
    #   3 → 64:     1 728 +    73 728 +   192 +   512 =    76 160
    #   64 → 160:  92 160 +   460 800 + 10 240 + 1 280 =   564 480
    #   160 → 320: 460 800 + 1 843 200 + 51 200 + 2 560 = 2 357 760
    #   320 → 640: 1 843 200 + 7 372 800 + 204 800 + 5 120 = 9 425 920
    # Encoder 12 424 320 (MetaOptNet reports 12.4M), head 640·5 + 5 = 3 205.
    model = models.get("resnet12")(
        SimpleNamespace(channels=[64, 160, 320, 640], conv="auto", bn_mode="transductive"),
        output_dim=5,
    )
    x = jax.ShapeDtypeStruct((2, 84, 84, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    assert count(params) == 12_424_320 + 3_205
    assert jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x).shape == (2, 5)
    embed = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="embed"), params, x)
    assert embed.shape == (2, 640)


@pytest.mark.extended  # 30 s of ResNet-12 compiles; Conv-4's im2col = XLA tests run in make test
def test_im2col_and_xla_give_the_same_per_task_meta_gradient():
    # One inner SGD step per task under vmap (per-task weights), then the query loss, float64.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(2, 6, 16, 16, 3))  # 2 tasks of 6 images
        y = np.tile(np.arange(3).repeat(2), (2, 1))
        nets = {
            c: resnet12.ResNet12(output_dim=3, channels=(4, 6), conv=c) for c in ("xla", "im2col")
        }
        params = nets["xla"].init(jax.random.PRNGKey(0), x[0])["params"]
        params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)

        def meta_loss(net):
            def loss(p, x, y):
                return cross_entropy(net.apply({"params": p}, x), y)

            def task(p, x, y):
                g = jax.grad(loss)(p, x[:3], y[:3])
                adapted = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
                return loss(adapted, x[3:], y[3:])

            return jax.jit(
                jax.value_and_grad(lambda p: jax.vmap(task, (None, 0, 0))(p, x, y).mean())
            )

        (value_x, grad_x), (value_i, grad_i) = (
            meta_loss(nets[c])(params) for c in ("xla", "im2col")
        )
        np.testing.assert_allclose(value_i, value_x, rtol=1e-10)
        for a, b in zip(jax.tree.leaves(grad_i), jax.tree.leaves(grad_x), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
