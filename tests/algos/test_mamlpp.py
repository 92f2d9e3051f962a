"""MAML++ (algos/mamlpp.py): each switch against plain MAML or a direct computation, float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from metarun.algos.base import outer_grad
from metarun.algos.maml import fomaml, maml
from metarun.algos.mamlpp import mamlpp, msl_weights
from metarun.config import ConfigError
from metarun.types import mse
from tests.helpers import OBJECTIVE, flat, task, tiny_episodes, tiny_mlp_apply, tiny_mlp_params

STEPS = 3
EPS = 1e-6  # central differences in float64


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def normed_params(key):
    """The tiny MLP with an affine layer named like BatchNorm's (per_step_bn copies it)."""
    params = tiny_mlp_params(key, jnp.float64)
    k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
    params["norm"] = {
        "scale": 1 + 0.2 * jax.random.normal(k1, (4,), jnp.float64),
        "bias": 0.1 * jax.random.normal(k2, (4,), jnp.float64),
    }
    return params


def normed_apply(params, x, context=None):
    h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    h = h * params["norm"]["scale"] + params["norm"]["bias"]
    return h @ params["head"]["kernel"] + params["head"]["bias"]


def learner(**switches):
    return mamlpp(normed_apply, OBJECTIVE, inner_lr=0.1, inner_steps=STEPS, **switches)


def grads(learner, params, episodes, step=0, steps=STEPS):
    meta = learner.init(params)
    return jax.jit(lambda m: outer_grad(learner, OBJECTIVE, m, episodes, steps, step))(meta)[0]


@pytest.fixture
def setting():
    return normed_params(jax.random.PRNGKey(0)), tiny_episodes(jax.random.PRNGKey(1), tasks=3)


def test_msl_weights_follow_the_papers_schedule():
    """N = 5: uniform at first, v_N = 1/N + t (N − 1)/N and the others 1/N − t/N at
    progress t, floored at 0.03/N; only the last step once annealed."""
    w = lambda step: np.asarray(msl_weights(step, 5, 1000))  # noqa: E731
    np.testing.assert_allclose(w(0), [0.2] * 5)
    np.testing.assert_allclose(w(500), [0.1] * 4 + [0.6])
    np.testing.assert_allclose(w(990), [0.006] * 4 + [0.976], rtol=1e-6)
    np.testing.assert_allclose(w(1000), [0, 0, 0, 0, 1])
    for step in (0, 250, 500, 990):
        assert w(step).sum() == pytest.approx(1.0, rel=1e-6)


def test_msl_with_all_weight_on_the_last_step_equals_maml(setting):
    params, episodes = setting
    plain = maml(normed_apply, mse, inner_lr=0.1)
    expected = jax.jit(lambda p: outer_grad(plain, OBJECTIVE, p, episodes, STEPS))(params)[0]
    annealed = grads(learner(msl=True, msl_anneal_steps=100), params, episodes, step=100)
    np.testing.assert_allclose(flat(annealed["params"]), flat(expected), rtol=1e-10)


def test_msl_at_the_start_is_the_mean_query_loss_over_the_steps(setting):
    params, episodes = setting
    got = grads(learner(msl=True, msl_anneal_steps=100), params, episodes, step=0)

    def direct(p):  # a Python inner loop: query loss after each of the steps, averaged
        total = 0.0
        for t in range(3):
            e, adapted = task(episodes, t), p
            for _ in range(STEPS):
                g = jax.grad(lambda q, e=e: mse(normed_apply(q, e.support_x), e.support_y))(adapted)
                adapted = jax.tree.map(lambda w, g: w - 0.1 * g, adapted, g)
                total += mse(normed_apply(adapted, e.query_x), e.query_y) / STEPS
        return total / 3

    np.testing.assert_allclose(
        flat(got["params"]), flat(jax.jit(jax.grad(direct))(params)), rtol=1e-10
    )


def test_learned_rates_at_their_initial_value_adapt_like_maml(setting):
    params, episodes = setting
    e = task(episodes, 0)
    expected = maml(normed_apply, mse, inner_lr=0.1).adapt(params, e.support_x, e.support_y, 3)
    plus = learner(lslr=True)
    adapted = plus.adapt(plus.init(params), e.support_x, e.support_y, 3)
    np.testing.assert_allclose(flat(adapted), flat(expected), rtol=1e-12)


def test_per_step_bn_meta_learns_batchnorm_without_adapting_it(setting):
    """The copies start equal to the model's, and the inner loop leaves them alone (the paper's
    Omniglot setting): MAML on every other parameter."""
    params, episodes = setting
    e = task(episodes, 0)
    frozen = {k: v for k, v in params.items() if k != "norm"}
    expected = maml(
        lambda p, x, context=None: normed_apply({**p, "norm": params["norm"]}, x), mse, inner_lr=0.1
    ).adapt(frozen, e.support_x, e.support_y, 3)
    plus = learner(per_step_bn=True)
    adapted = plus.adapt(plus.init(params), e.support_x, e.support_y, 3)
    np.testing.assert_allclose(
        flat(adapted), flat({**expected, "norm": params["norm"]}), rtol=1e-12
    )


def test_every_switch_on_matches_finite_differences(setting):
    params, episodes = setting
    plus = learner(msl=True, msl_anneal_steps=100, lslr=True, per_step_bn=True)
    meta = plus.init(params)
    # Distinct per-step copies, so that a wrong index would change the value.
    meta = jax.tree.map(lambda a: a * (1 + 0.1 * jnp.arange(a.size).reshape(a.shape)), meta)
    step = 30
    grad_fn = jax.jit(lambda m: outer_grad(plus, OBJECTIVE, m, episodes, STEPS, step))
    g, metrics = grad_fn(meta)
    assert set(g) == {"params", "norm", "inner_lr"}
    assert g["inner_lr"]["head"]["kernel"].shape == (STEPS,)
    assert g["norm"]["norm"]["scale"].shape == (STEPS, 4)

    def value(m):
        return float(grad_fn(m)[1]["msl_loss"])

    leaves, treedef = jax.tree.flatten(meta)
    for seed in range(3):
        keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
        direction = jax.tree.unflatten(
            treedef,
            [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
        )
        shifted = [
            jax.tree.map(lambda a, d, s=s: a + s * EPS * d, meta, direction) for s in (1, -1)
        ]
        fd = (value(shifted[0]) - value(shifted[1])) / (2 * EPS)
        analytic = float(jnp.dot(flat(g), flat(direction)))
        assert analytic == pytest.approx(fd, rel=1e-6), (seed, analytic, fd)
    assert metrics["msl_loss"] != metrics["loss"]  # weighted over the steps, not the last only


def test_per_step_bn_step_i_uses_copy_i(setting):
    params, episodes = setting
    e = task(episodes, 0)
    plus = learner(per_step_bn=True)
    meta = plus.init(params)

    def changed(copy):
        return {**meta, "norm": jax.tree.map(lambda a: a.at[copy].multiply(3.0), meta["norm"])}

    def adapted(m, steps):  # the adapted weights, without the BatchNorm copy handed back
        result = plus.adapt(m, e.support_x, e.support_y, steps)
        return flat({k: v for k, v in result.items() if k != "norm"})

    # One step uses copy 0 only; two steps use copy 1 for the second step and the prediction.
    np.testing.assert_array_equal(adapted(changed(1), 1), adapted(meta, 1))
    assert not np.allclose(adapted(changed(1), 2), adapted(meta, 2))
    # Evaluating longer than training (N = 3) reuses the last copy for steps 4 and 5.
    np.testing.assert_array_equal(adapted(changed(2), 2), adapted(meta, 2))
    assert not np.allclose(adapted(changed(2), 5), adapted(meta, 5))


def test_step_i_uses_learning_rates_i_and_batchnorm_copy_i(setting):
    """The multi-step loss with distinct per-step rates and BatchNorm copies, against a Python
    loop that indexes them by hand."""
    params, episodes = setting
    plus = learner(msl=True, msl_anneal_steps=100, lslr=True, per_step_bn=True)
    meta = plus.init(params)
    meta["inner_lr"] = jax.tree.map(lambda a: a * jnp.array([1.0, 0.3, 2.0]), meta["inner_lr"])
    meta["norm"] = jax.tree.map(lambda a: a * jnp.array([1.0, -0.5, 3.0])[:, None], meta["norm"])
    step = 40
    _, metrics = jax.jit(lambda m: outer_grad(plus, OBJECTIVE, m, episodes, STEPS, step))(meta)

    @jax.jit
    def direct(meta):
        weights, total = msl_weights(step, STEPS, 100), 0.0
        for t in range(3):
            e, fast = task(episodes, t), meta["params"]
            for i in range(STEPS):
                norm = jax.tree.map(lambda a, i=i: a[i], meta["norm"])
                lrs = jax.tree.map(lambda a, i=i: a[i], meta["inner_lr"])

                def support(f, e=e, norm=norm):
                    return mse(normed_apply({**f, **norm}, e.support_x), e.support_y)

                grads = jax.grad(support)(fast)
                fast = jax.tree.map(lambda w, g, a: w - a * g, fast, grads, lrs)
                query = mse(normed_apply({**fast, **norm}, e.query_x), e.query_y)
                total += weights[i] * query / 3
        return total

    np.testing.assert_allclose(metrics["msl_loss"], direct(meta), rtol=1e-12)


def test_per_step_bn_copies_every_batchnorm_of_resnet12():
    """ResNet-12's BatchNorms include the shortcut's (``shortcut_norm``)."""
    from metarun.models.resnet12 import ResNet12

    net = ResNet12(output_dim=3, channels=(4, 6), conv="im2col")
    plus = mamlpp(net.apply, OBJECTIVE, inner_lr=0.1, inner_steps=2, per_step_bn=True)
    # Shapes only (jax.eval_shape): nothing is initialised or compiled.
    params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3))))
    meta = jax.eval_shape(plus.init, params["params"])
    params = params["params"]
    copied = traverse_util.flatten_dict(meta["norm"])
    assert any("shortcut_norm" in path for path in copied)
    assert all(v.shape[0] == 2 for v in copied.values())
    adapted = traverse_util.flatten_dict(meta["params"])
    assert not any("norm" in name for path in adapted for name in path)
    assert len(copied) + len(adapted) == len(traverse_util.flatten_dict(params))


def test_derivative_order_annealing_switches_from_first_to_second_order(setting):
    params, episodes = setting
    annealed = learner(first_order_steps=10)
    first, second = (
        jax.jit(lambda p, m=m: outer_grad(m, OBJECTIVE, p, episodes, 3))(params)
        for m in (fomaml(normed_apply, mse, inner_lr=0.1), maml(normed_apply, mse, inner_lr=0.1))
    )
    np.testing.assert_allclose(
        flat(grads(annealed, params, episodes, 9)), flat(first[0]), rtol=1e-10
    )
    np.testing.assert_allclose(
        flat(grads(annealed, params, episodes, 10)), flat(second[0]), rtol=1e-10
    )


def test_per_step_bn_on_a_model_without_batchnorm_is_refused():
    plus = mamlpp(tiny_mlp_apply, OBJECTIVE, inner_lr=0.1, inner_steps=2, per_step_bn=True)
    with pytest.raises(ConfigError, match="algo.per_step_bn=True is invalid with this model"):
        plus.init(tiny_mlp_params(jax.random.PRNGKey(0)))
