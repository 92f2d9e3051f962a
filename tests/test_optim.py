"""The outer optimizer's options against their closed forms (one or two steps by hand)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from metarun import optim
from metarun.config import OptimConfig

PARAMS = {"w": jnp.array([1.0, -2.0]), "inner_lr": {"w": jnp.array([0.5, 0.5])}}
G1 = {"w": jnp.array([0.3, -0.1]), "inner_lr": {"w": jnp.array([0.2, -0.4])}}
G2 = {"w": jnp.array([-0.5, 0.2]), "inner_lr": {"w": jnp.array([0.1, 0.1])}}


def steps(cfg: OptimConfig, total: int = 10, grads=(G1, G2)):
    opt = optim.make(cfg, total)
    state, out = opt.init(PARAMS), []
    for g in grads:
        update, state = opt.update(g, state, PARAMS)
        out.append(update)
    return out


def test_sgd_with_momentum():
    u1, u2 = steps(OptimConfig(name="sgd", lr=0.1, momentum=0.9))
    np.testing.assert_allclose(u1["w"], -0.1 * G1["w"], rtol=1e-6)
    np.testing.assert_allclose(u2["w"], -0.1 * (G2["w"] + 0.9 * G1["w"]), rtol=1e-6)


def test_adamw_decays_weights_and_nothing_else():
    (u1,) = steps(OptimConfig(name="adamw", lr=0.01, weight_decay=0.1), grads=(G1,))
    adam = G1["w"] / (jnp.abs(G1["w"]) + 1e-8)  # the first bias-corrected Adam step
    np.testing.assert_allclose(u1["w"], -0.01 * (adam + 0.1 * PARAMS["w"]), rtol=1e-5)
    rate = G1["inner_lr"]["w"] / (jnp.abs(G1["inner_lr"]["w"]) + 1e-8)
    np.testing.assert_allclose(u1["inner_lr"]["w"], -0.01 * rate, rtol=1e-5)


@pytest.mark.parametrize("step", [0, 4, 9])
def test_cosine_schedule_decays_from_lr_to_min_lr(step):
    cfg = OptimConfig(name="sgd", lr=0.1, schedule="cosine", min_lr=0.001)
    updates = steps(cfg, total=10, grads=[G1] * (step + 1))
    lr = 0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * step / 10))
    np.testing.assert_allclose(updates[step]["w"], -lr * G1["w"], rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_arch_lr_scale_scales_the_architecture_weights_step_only(name):
    # Meta-SGD's learned step sizes are shaped like the parameters, "arch" among them: not
    # architecture weights.
    inner = {"w": jnp.array([0.5, 0.5]), "arch": jnp.array([0.1, 0.1])}
    params = {"arch": jnp.array([0.0, 0.0]), "w": PARAMS["w"], "inner_lr": inner}
    grads = {"arch": jnp.array([0.3, -0.2]), "w": G1["w"], "inner_lr": inner}
    scaled = optim.make(OptimConfig(name=name, lr=0.1, arch_lr_scale=10), 10)
    plain = optim.make(OptimConfig(name=name, lr=0.1), 10)
    (u, _), (v, _) = (o.update(grads, o.init(params), params) for o in (scaled, plain))
    np.testing.assert_allclose(u["arch"], 10 * v["arch"], rtol=1e-6)
    np.testing.assert_allclose(u["w"], v["w"], rtol=1e-6)
    np.testing.assert_allclose(u["inner_lr"]["w"], v["inner_lr"]["w"], rtol=1e-6)
    np.testing.assert_allclose(u["inner_lr"]["arch"], v["inner_lr"]["arch"], rtol=1e-6)
