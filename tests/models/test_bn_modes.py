"""BatchNorm modes (``model.bn_mode``): what each normalises with, through the learners and the
meta-step, and that the default (``transductive``) computes what it did before the modes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from metarun import algos, models
from metarun.algos.base import adapt_and_predict
from metarun.config import ConfigError, compose, validate
from metarun.experiment import build, rng_streams
from metarun.models.conv4 import RUNNING_MOMENTUM, Conv4
from metarun.models.resnet12 import ResNet12
from metarun.step import compile_meta_step, init_state
from metarun.train import train
from metarun.types import CLASSIFICATION, Episode

KEY = jax.random.PRNGKey(0)
SUPPORT = jax.random.normal(jax.random.PRNGKey(1), (5, 28, 28, 1))
QUERIES = jax.random.normal(jax.random.PRNGKey(2), (6, 28, 28, 1))
OTHERS = jax.random.normal(jax.random.PRNGKey(3), (6, 28, 28, 1))


def conv4(mode: str, **kw) -> Conv4:
    return Conv4(filters=8, output_dim=5, strided=True, bn_mode=mode, **kw)


def params_of(model, x=SUPPORT):
    return model.init(KEY, x)["params"]


@pytest.mark.parametrize(
    "model",
    [
        conv4("support"),
        pytest.param(  # the same in_context as Conv-4's; 18 s of compiles: make test-all
            ResNet12(output_dim=5, channels=(4, 8), bn_mode="support"),
            marks=pytest.mark.extended,
        ),
    ],
    ids=["conv4", "resnet12"],
)
def test_support_mode_predicts_each_query_on_its_own(model):
    net = models.network(model)
    params = params_of(model)
    together = net.apply(params, QUERIES, SUPPORT)
    changed = net.apply(params, QUERIES.at[1:].set(OTHERS[1:]), SUPPORT)
    alone = net.apply(params, QUERIES[:1], SUPPORT)
    np.testing.assert_allclose(changed[0], together[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-5, atol=1e-6)
    # The statistics are the support set's: the support pass is an ordinary batch pass.
    np.testing.assert_allclose(
        net.apply(params, SUPPORT, SUPPORT), net.apply(params, SUPPORT), rtol=1e-5, atol=1e-6
    )
    # Transductive, the same query's prediction moves with the others.
    plain = models.network(model.clone(bn_mode="transductive"))
    moved = plain.apply(params, QUERIES.at[1:].set(OTHERS[1:]))[0] - plain.apply(params, QUERIES)[0]
    assert np.abs(moved).max() > 1e-3


@pytest.mark.parametrize("algo", ["maml", "protonet", "matchingnet", "relationnet", "siamese"])
def test_every_learner_with_the_modes_predicts_each_query_on_its_own(algo, omniglot):
    model = conv4("support")
    cfg = validate(compose([*omniglot, f"algo={algo}", "model.filters=8"])).algo
    learner = algos.make(cfg, models.network(model), CLASSIFICATION)
    labels = jnp.arange(5)
    example = Episode(SUPPORT, labels, QUERIES, jnp.zeros(6, jnp.int32), ways=5)
    meta_params = learner.init(params_of(model), KEY, example)

    def predict(queries):
        return adapt_and_predict(learner, meta_params, SUPPORT, labels, queries, 1, 5)

    together = predict(QUERIES)
    np.testing.assert_allclose(
        predict(QUERIES.at[1:].set(OTHERS[1:]))[0], together[0], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(predict(QUERIES[:1])[0], together[0], rtol=1e-4, atol=1e-5)


def test_task_norm_blends_support_and_instance_statistics():
    """α = sigmoid(a·n + b): α → 1 is the support mode, α → 0 instance normalisation."""
    model = conv4("task_norm")
    params = params_of(model)
    flat = traverse_util.flatten_dict(params)
    offsets = [p for p in flat if p[-1] == "alpha_offset"]
    assert len(offsets) == 4 and all(flat[p] == 0 for p in offsets)  # α starts at 0.5

    def with_offset(value):
        return traverse_util.unflatten_dict({**flat, **{p: jnp.asarray(value) for p in offsets}})

    support = models.network(conv4("support")).apply
    task_norm = models.network(model).apply
    np.testing.assert_allclose(
        task_norm(with_offset(50.0), QUERIES, SUPPORT),
        support(params, QUERIES, SUPPORT),
        rtol=1e-4,
        atol=1e-5,
    )
    # α → 0: each example normalised with its own statistics alone, whatever the support set.
    np.testing.assert_allclose(
        task_norm(with_offset(-50.0), QUERIES, SUPPORT),
        task_norm(with_offset(-50.0), QUERIES, OTHERS),
        rtol=1e-4,
        atol=1e-5,
    )
    # The blend is learned: the meta-gradient reaches a and b.
    grads = jax.grad(lambda p: jnp.sum(task_norm(p, QUERIES, SUPPORT) ** 2))(params)
    assert all(
        np.abs(g) > 0
        for p, g in traverse_util.flatten_dict(grads).items()
        if p[-1] == "alpha_scale"
    )


def running_experiment(omniglot, *overrides):
    config = validate(
        compose(
            [
                *omniglot,
                "algo=protonet",
                "model.bn_mode=running",
                "model.filters=8",
                "data.train_ways=5",
                "trainer.meta_batch=2",
                *overrides,
            ]
        )
    )
    return build(config)


def test_running_averages_move_in_meta_training_only_and_serve_evaluation(omniglot):
    exp = running_experiment(omniglot)
    init_key, train_key = rng_streams(0)
    state = init_state(exp, init_key)
    before = traverse_util.flatten_dict(state.meta_params)
    means = [p for p in before if p[-1] == "running_mean"]
    assert len(means) == 4 and all(np.all(before[p] == 0) for p in means)

    # One meta-step, and by hand: the mean over tasks of each task's batch statistics.
    step, _ = compile_meta_step(exp, state, train_key)
    key = jax.random.fold_in(train_key, 0)
    episodes = jax.vmap(exp.source.samplers["train"])(jax.random.split(key, 2))
    images = jnp.concatenate([episodes.support_x, episodes.query_x], axis=1)

    def sown(x):
        out = exp.model.apply(
            {"params": state.meta_params}, x, method="embed", mutable=["norm_stats"]
        )
        return out[1]["norm_stats"]

    stats = traverse_util.flatten_dict(jax.vmap(sown)(images))
    new, _ = step(state, train_key, exp.source.samplers["train"])
    after = {p: np.asarray(v) for p, v in traverse_util.flatten_dict(new.meta_params).items()}
    for path in means:
        ((mean, var),) = stats[(*path[:-1], "mean_var")]
        np.testing.assert_allclose(after[path], RUNNING_MOMENTUM * mean.mean(0), rtol=1e-5)
        expected_var = (1 - RUNNING_MOMENTUM) + RUNNING_MOMENTUM * var.mean(0)
        np.testing.assert_allclose(after[(*path[:-1], "running_var")], expected_var, rtol=1e-5)

    # Evaluation reads the averages and changes nothing; training passes ignore them.
    episode = exp.source.samplers["val"](KEY)

    def evaluate(learner, meta_params, queries):
        return adapt_and_predict(
            learner, meta_params, episode.support_x, episode.support_y, queries, 0, 5
        )

    moved = traverse_util.unflatten_dict(
        {p: (v + 1.0 if p[-1] == "running_mean" else v) for p, v in after.items()}
    )
    queries = episode.query_x
    assert not np.allclose(
        evaluate(exp.eval_learner, moved, queries),
        evaluate(exp.eval_learner, new.meta_params, queries),
    )
    np.testing.assert_array_equal(
        evaluate(exp.learner, moved, queries), evaluate(exp.learner, new.meta_params, queries)
    )
    alone = evaluate(exp.eval_learner, new.meta_params, queries[:1])
    np.testing.assert_allclose(
        alone[0], evaluate(exp.eval_learner, new.meta_params, queries)[0], rtol=1e-4, atol=1e-5
    )
    for path, value in traverse_util.flatten_dict(new.meta_params).items():
        np.testing.assert_array_equal(value, after[path])  # evaluating changed nothing


def test_an_inner_loop_never_steps_the_running_averages(omniglot):
    """The evaluation network normalises with the running averages, so the support loss has a
    gradient with respect to them; adapting must leave them as they are (they are statistics,
    not parameters), while the weights move. (MAML's inner loop, algos.base.gradient_descent,
    is Meta-SGD's, ANIL's and Reptile's too.)"""
    exp = running_experiment(omniglot, "algo=maml", "algo.inner_lr=0.4")
    moved = init_state(exp, jax.random.PRNGKey(0)).meta_params
    episode = exp.source.samplers["val"](KEY)
    adapted = exp.eval_learner.adapt(moved, episode.support_x, episode.support_y, 3, 5)
    before, after = traverse_util.flatten_dict(moved), traverse_util.flatten_dict(adapted)
    running = [p for p in before if p[-1] in ("running_mean", "running_var")]
    assert len(running) == 8
    grad = jax.grad(
        lambda p: exp.source.objective.loss(
            exp.eval_learner.predict(p, p, episode.support_x, episode.support_x),
            episode.support_y,
        )
    )(moved)
    assert any(np.abs(traverse_util.flatten_dict(grad)[p]).max() > 0 for p in running)
    for path in before:
        if path in running:
            np.testing.assert_array_equal(after[path], before[path])
    kernel = ("blocks_0", "conv", "kernel")
    assert not np.allclose(after[kernel], before[kernel])


@pytest.mark.extended  # 90 s of Conv-4 compiles; the modes' own tests run in make test
def test_result_records_the_mode_and_transductive_numbers_are_unchanged(omniglot, tmp_path):
    """The numbers of this short run before the modes existed (commit 5d0706b), same seed:
    the default mode computes what metarun always computed."""
    before = {  # test mean, before adaptation, validation mean, the two logged losses
        "maml": [
            0.2546666726469994,
            0.19600000381469726,
            0.2666666768491268,
            1.64106297,
            1.70105290,
        ],
        "protonet": [0.42800000458955767, None, 0.2666666731238365, 4.12967109, 3.99584436],
    }
    for algo, (mean, pre, val, *losses) in before.items():
        config = validate(
            compose(
                [
                    *omniglot,
                    f"algo={algo}",
                    "model.bn_mode=transductive",  # ProtoNet's preset is running now
                    "model.filters=8",
                    "trainer.steps=4",
                    "trainer.log_every=2",
                    "trainer.val_every=2",
                    "trainer.meta_batch=2",
                    "trainer.progress=false",
                    "eval.episodes=10",
                    "eval.val_episodes=4",
                    "eval.batch=10",
                ]
            )
        )
        run_dir = tmp_path / algo
        result = train(config, run_dir)
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert result["bn_mode"] == "transductive"
        assert result["mean"] == pytest.approx(mean, rel=1e-6)
        assert result.get("pre_adaptation_mean") == (None if pre is None else pytest.approx(pre))
        assert result["val_mean"] == pytest.approx(val, rel=1e-6)
        assert [r["loss"] for r in records] == pytest.approx(losses, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["algo=mann", "model.bn_mode=support"], "model.bn_mode=support is invalid with algo=mann"),
        (
            ["algo=maml", "algo.per_step_bn=true", "model.bn_mode=running"],
            "model.bn_mode=running is invalid with algo=maml and algo.per_step_bn=true",
        ),
    ],
)
def test_a_mode_the_learner_cannot_honour_is_refused(omniglot, overrides, named):
    with pytest.raises(ConfigError, match=named):
        build(validate(compose([*omniglot, "model.filters=8", *overrides])))


def test_an_unknown_mode_names_the_choices(omniglot):
    with pytest.raises(ConfigError, match="model.bn_mode='batch' is invalid: allowed values are"):
        validate(compose([*omniglot, "model.bn_mode=batch"]))
