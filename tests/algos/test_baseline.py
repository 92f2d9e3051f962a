"""Baseline and Baseline++ (algos/baseline.py): the training batches, the test-time head fit
against a hand loop in float64, the pre-training gradient, and the regression fine-tune."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.base import gradient_descent
from metarun.algos.baseline import baseline_classifier, baseline_regressor, cosine_scale
from metarun.algos.protonet import class_means, cosine_similarities
from metarun.config import ConfigError
from metarun.data.episodes import make_batch_sampler
from metarun.experiment import build
from metarun.step import init_state
from metarun.types import CLASSIFICATION, REGRESSION, Episode, cross_entropy


def embed(params, x, context=None):
    """A tiny encoder: one dense layer and a ReLU."""
    del context
    return jax.nn.relu(x @ params["w"] + params["b"])


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _support(key, n=6, d_in=5, ways=3):
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (n, d_in), jnp.float64)
    y = jnp.arange(n) % ways
    params = {
        "w": jax.random.normal(k2, (d_in, 4), jnp.float64),
        "b": jnp.full(4, 0.1, jnp.float64),
    }
    return params, x, y


def test_batches_draw_labelled_examples_of_the_whole_split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 20, 6, 6, 1), dtype=np.uint8)
    sample = make_batch_sampler(images, support=5, query=11, rotations=True)
    batch = sample(jax.random.PRNGKey(3))
    assert batch.ways == 28  # 7 classes × 4 rotations
    assert batch.support_x.shape == (5, 6, 6, 1) and batch.query_y.shape == (11,)
    drawn = jax.random.randint(jax.random.PRNGKey(3), (16,), 0, 28 * 20)
    label, sample_index = np.divmod(np.asarray(drawn), 20)
    x = np.concatenate([batch.support_x, batch.query_x])
    y = np.concatenate([batch.support_y, batch.query_y])
    np.testing.assert_array_equal(y, label)
    for i in range(16):  # virtual class 4c + k: character c turned k quarter turns
        turned = np.rot90(images[label[i] // 4, sample_index[i]], k=label[i] % 4)
        np.testing.assert_array_equal(x[i], turned.astype(np.float32) * np.float32(1 / 255))


def test_the_linear_head_fit_is_pytorchs_sgd(x64):
    """adapt = 30 steps of PyTorch's SGD (g + λw; the first step's buffer is g, then
    μ b + (1 − τ) g) from a zero head on the frozen support features, against a hand loop."""
    params, x, y = _support(jax.random.PRNGKey(0))
    learner = baseline_classifier(
        embed, CLASSIFICATION, lr=0.5, momentum=0.9, dampening=0.3, weight_decay=0.01
    )
    fitted = learner.adapt({"encoder": params, "classifier": None}, x, y, 30, 3)

    f = np.asarray(embed(params, x))
    onehot = np.eye(3)[np.asarray(y)]
    w, b = np.zeros((4, 3)), np.zeros(3)
    vw, vb = None, None
    for _ in range(30):
        logits = f @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        gw = f.T @ (p - onehot) / len(f) + 0.01 * w
        gb = (p - onehot).mean(0) + 0.01 * b
        if vw is None:  # torch.optim.SGD: the first step's momentum buffer is the gradient
            vw, vb = gw, gb
        else:
            vw, vb = 0.9 * vw + 0.7 * gw, 0.9 * vb + 0.7 * gb
        w, b = w - 0.5 * vw, b - 0.5 * vb
    np.testing.assert_allclose(fitted["head"]["w"], w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fitted["head"]["b"], b, rtol=1e-10, atol=1e-12)
    # The encoder is frozen: the fit does not touch it.
    assert fitted["encoder"] is params
    query = jax.random.normal(jax.random.PRNGKey(5), (4, 5), jnp.float64)
    np.testing.assert_allclose(
        learner.predict(None, fitted, query), np.asarray(embed(params, query)) @ w + b, rtol=1e-10
    )


def test_the_cosine_head_starts_at_the_class_means(x64):
    """Baseline++: with no step the new head is each class's mean support feature with gain 1,
    and the logits are the scaled cosines to them (2 for a head of at most 200 classes); the
    fit moves the directions and the per-class gains (the authors' WeightNorm)."""
    params, x, y = _support(jax.random.PRNGKey(1))
    learner = baseline_classifier(embed, CLASSIFICATION, cosine=True)
    fitted = learner.adapt({"encoder": params, "classifier": None}, x, y, 0, 3)
    features = embed(params, x)
    expected = 2.0 * cosine_similarities(features, class_means(features, y, 3))
    np.testing.assert_allclose(learner.predict(None, fitted, x), expected, rtol=1e-12)
    assert cosine_scale(200) == 2.0 and cosine_scale(201) == 10.0
    moved = learner.adapt({"encoder": params, "classifier": None}, x, y, 5, 3)["head"]
    assert not np.allclose(moved["w"], fitted["head"]["w"])
    assert not np.allclose(moved["g"], 1.0)


def test_finetune_fits_the_encoder_too(x64):
    params, x, y = _support(jax.random.PRNGKey(2))
    frozen = baseline_classifier(embed, CLASSIFICATION, lr=0.1)
    tuned = baseline_classifier(embed, CLASSIFICATION, lr=0.1, finetune=True)
    meta = {"encoder": params, "classifier": None}
    assert frozen.adapt(meta, x, y, 10, 3)["encoder"] is params
    moved = tuned.adapt(meta, x, y, 10, 3)["encoder"]
    assert not np.allclose(moved["w"], params["w"])

    def loss(fitted):
        return cross_entropy(tuned.predict(None, fitted, x), y)

    assert loss(tuned.adapt(meta, x, y, 10, 3)) < loss(frozen.adapt(meta, x, y, 10, 3))


def test_pre_training_is_the_gradient_of_the_mean_batch_cross_entropy(x64):
    """outer_grad: each batch (support and query together) is classified over the training
    classes by the encoder and the classifier; the gradient is that of the mean loss."""
    learner = baseline_classifier(embed, CLASSIFICATION)
    key = jax.random.PRNGKey(4)
    x = jax.random.normal(key, (3, 8, 5), jnp.float64)  # 3 batches of 8 examples
    y = jax.random.randint(key, (3, 8), 0, 7)
    batches = Episode(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:], ways=7)
    params, *_ = _support(key)
    example = Episode(x[0, :3], y[0, :3], x[0, 3:], y[0, 3:], ways=7)
    meta = learner.init({**params, "head": None}, key, example)
    assert meta["classifier"]["w"].shape == (4, 7) and meta["classifier"]["b"].shape == (7,)
    assert "head" not in meta["encoder"]

    def direct(mp):
        losses = [
            cross_entropy(
                embed(mp["encoder"], x[t]) @ mp["classifier"]["w"] + mp["classifier"]["b"], y[t]
            )
            for t in range(3)
        ]
        return jnp.mean(jnp.stack(losses))

    grads, metrics = learner.outer_grad(meta, batches, 0, 0)
    np.testing.assert_allclose(metrics["loss"], direct(meta), rtol=1e-12)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14),
        grads,
        jax.grad(direct)(meta),
    )


def test_the_regressor_fine_tunes_by_plain_gradient_steps(x64):
    """MAML's pre-trained comparison: with momentum and weight decay 0 the fine-tune is MAML's
    inner loop from the pre-trained weights; without finetune only the head moves."""

    def apply(params, x, context=None):
        return jnp.tanh(x @ params["hidden"]) @ params["head"]

    key = jax.random.PRNGKey(6)
    params = {
        "hidden": jax.random.normal(key, (1, 8), jnp.float64),
        "head": jax.random.normal(jax.random.PRNGKey(7), (8, 1), jnp.float64),
    }
    x = jnp.linspace(-5, 5, 10, dtype=jnp.float64)[:, None]
    y = 2 * jnp.sin(x)
    sgd = {"lr": 0.01, "momentum": 0.0, "dampening": 0.9, "weight_decay": 0.0}  # τ: no effect
    tuned = baseline_regressor(apply, REGRESSION, finetune=True, **sgd).adapt(params, x, y, 10)

    def loss(p):
        return REGRESSION.loss(apply(p, x), y)

    expected = gradient_descent(loss, params, 0.01, 10)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), tuned, expected)
    head_only = baseline_regressor(apply, REGRESSION, **sgd).adapt(params, x, y, 10)
    assert head_only["hidden"] is params["hidden"]
    assert loss(head_only) < loss(params)


def test_baseline_trains_on_the_batches_of_the_train_split(make_config, omniglot):
    """build() hands the learner the train split's batches as its training tasks (the preset's:
    as many images as a 60-way training episode with 5 queries), and its classifier has one
    output per training class (minimal1: 4 × the train characters)."""
    exp = build(make_config("algo=baseline", *omniglot, "model.filters=8"))
    batch = exp.source.samplers["train"](jax.random.PRNGKey(0))
    assert exp.source.samplers["train"] is exp.source.batches
    assert batch.support_x.shape[0] == 60 * 1 and batch.query_x.shape[0] == 60 * 5
    state = init_state(exp, jax.random.PRNGKey(0))
    classes = batch.ways
    assert classes > 200 and classes % 4 == 0
    assert state.meta_params["classifier"]["w"].shape == (8, classes)


def test_the_batches_move_the_running_averages_and_the_fit_leaves_them(make_config, omniglot):
    """model.bn_mode=running: pre-training steps update BatchNorm's averages with the batches'
    statistics; the test-time fit, even of the whole network, never changes them."""
    from metarun.step import make_meta_step

    config = make_config(
        "algo=baseline", *omniglot, "model.filters=8", "model.bn_mode=running", "algo.finetune=true"
    )
    exp = build(config)
    state = init_state(exp, jax.random.PRNGKey(0))
    before = state.meta_params["encoder"]["blocks_0"]["norm"]["running_mean"]
    np.testing.assert_array_equal(before, 0.0)
    state, _ = jax.jit(make_meta_step(exp))(
        state, jax.random.PRNGKey(1), exp.source.samplers["train"]
    )
    encoder = state.meta_params["encoder"]
    assert np.all(np.abs(encoder["blocks_0"]["norm"]["running_mean"]) > 0)
    episode = exp.source.samplers["val"](jax.random.PRNGKey(2))
    fitted = exp.eval_learner.adapt(
        state.meta_params, episode.support_x, episode.support_y, 3, episode.ways
    )["encoder"]
    for block in ("blocks_0", "blocks_3"):
        for name in ("running_mean", "running_var"):
            np.testing.assert_array_equal(fitted[block]["norm"][name], encoder[block]["norm"][name])
    assert not np.allclose(
        fitted["blocks_0"]["conv"]["kernel"], encoder["blocks_0"]["conv"]["kernel"]
    )


def test_baseline_pp_refuses_regression(make_config):
    with pytest.raises(
        ConfigError, match="algo=baseline_pp is invalid with this data: it classifies"
    ):
        build(make_config("algo=baseline_pp", "data=sinusoid"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.momentum=1.0", r"algo.momentum=1.0 is invalid: must be in \[0, 1\)"),
        ("algo.dampening=2", r"algo.dampening=2.0 is invalid: must be in \[0, 1\]"),
        ("algo.fit_lr=0", "algo.fit_lr=0.0 is invalid: must be > 0"),
        ("algo.weight_decay=-1", "algo.weight_decay=-1.0 is invalid: must be >= 0"),
    ],
)
def test_bad_fit_settings_name_the_key(make_config, override, message):
    with pytest.raises(ConfigError, match=message):
        make_config("algo=baseline", override)
