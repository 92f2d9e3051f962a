"""``metarun.load(run_dir).predict``: raw inputs in, the evaluation's own predictions out."""

import json

import jax
import numpy as np
import pytest

import metarun
from metarun import data
from metarun.evaluate import episode_keys, make_evaluator
from metarun.train import train
from tests.data import fixtures
from tests.helpers import NARROW

LETTERS = np.array(list("vwxyz"))


@pytest.fixture(scope="module")
def omniglot_run(tmp_path_factory):
    """A few meta-steps on the real minimal1 split: enough to predict better than chance."""
    if not fixtures.OMNIGLOT_DIR.is_dir():
        pytest.skip(f"real Omniglot archives not found at {fixtures.OMNIGLOT_DIR}")
    from metarun.config import compose, validate
    from tests.conftest import FAST

    tmp = tmp_path_factory.mktemp("omniglot")
    config = validate(
        compose(
            [
                *FAST,
                "data=omniglot",
                f"data.root={fixtures.OMNIGLOT_DIR}",
                f"data.cache_dir={tmp / 'cache'}",
                "data.split=minimal1",
                "data.train_queries=2",
                "trainer.meta_batch=4",
                "model.filters=16",  # a quarter of the compute of 64; predicts above chance
            ]
        )
    )
    run_dir = tmp / "run"
    train(config, run_dir)
    return run_dir


def raw_omniglot(x: np.ndarray) -> np.ndarray:
    """Episode images back to the archives' form: uint8 [n, H, W], dark strokes on white."""
    return 255 - np.round(x * 255).astype(np.uint8)[..., 0]


def predicted_and_reported(learner, inner_steps: int) -> tuple[list[float], np.ndarray]:
    """Accuracy of ``learner.predict`` on each of the run's meta-test episodes, and the
    evaluator's: predict must reproduce result.json, episode by episode."""
    source = data.make(learner.config.data)
    keys = episode_keys(learner.config.eval.seed, "test", learner.config.eval.episodes)
    evaluator = make_evaluator(learner._learner, source.objective, inner_steps=inner_steps, batch=3)
    reported = np.asarray(evaluator(learner.meta_params, source.samplers["test"], keys)["accuracy"])
    ours = []
    for key in keys:
        episode = jax.device_get(source.samplers["test"](key))
        # Labels of the user's choice (letters), images in the archives' raw form.
        predicted = learner.predict(
            raw_omniglot(episode.support_x),
            LETTERS[episode.support_y],
            raw_omniglot(episode.query_x),
        )
        assert predicted.dtype == LETTERS.dtype
        ours.append(np.mean(predicted == LETTERS[episode.query_y]))
    return ours, reported


def test_predict_on_raw_images_reproduces_the_evaluation(omniglot_run):
    learner = metarun.load(omniglot_run)
    ours, reported = predicted_and_reported(learner, learner.config.eval.inner_steps)
    np.testing.assert_allclose(ours, reported, atol=1e-6)
    result = json.loads((omniglot_run / "result.json").read_text())
    assert np.mean(ours) == pytest.approx(result["mean"], abs=1e-6)
    assert np.mean(ours) > 0.3  # chance is 0.2: the loaded parameters are the trained ones


def test_predict_refuses_a_support_set_with_the_wrong_number_of_classes(omniglot_run):
    learner = metarun.load(omniglot_run)
    images = np.zeros((3, 105, 105), np.uint8)
    with pytest.raises(
        ValueError, match="the support set has 3 classes; this learner was trained 5-way"
    ):
        learner.predict(images, [0, 1, 2], images)


def test_sinusoid_run_predicts_regression_targets(make_config, tmp_path):
    train(make_config(), tmp_path)
    learner = metarun.load(tmp_path)
    x, y = np.linspace(-4, 4, 10), np.sin(np.linspace(-4, 4, 10))
    predicted = learner.predict(x, y, [0.0, 1.0])
    assert predicted.shape == (2, 1) and np.all(np.isfinite(predicted))
    # More adaptation on the same support set changes the prediction: adapt() is really used.
    assert not np.allclose(learner.predict(x, y, [0.0, 1.0], inner_steps=0), predicted)


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="config.yaml not found: is .* a finished metarun run"
    ):
        metarun.load(tmp_path)


# make test loads one metric-based and one black-box learner; make test-all every one
# (each is 25 s of Conv-4 compiles).
CLASSIFIERS = [
    "protonet",
    "mann",
    *(pytest.param(name, marks=pytest.mark.extended) for name in ("matchingnet", "relationnet")),
    *(pytest.param(name, marks=pytest.mark.extended) for name in ("siamese", "snail")),
]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_loads_and_reproduces_its_evaluation(
    make_config, omniglot, name, tmp_path
):
    """No training needed: the saved initial meta-parameters must predict as the evaluator did."""
    config = make_config(
        f"algo={name}",
        *omniglot,
        "data.train_ways=null",
        "data.queries=3",
        "model.filters=8",
        "trainer.steps=0",
        "trainer.val_every=0",
        "eval.episodes=3",
        "eval.batch=3",
        *NARROW.get(name, []),
    )
    train(config, tmp_path)
    learner = metarun.load(tmp_path)
    ours, reported = predicted_and_reported(learner, inner_steps=0)
    np.testing.assert_allclose(ours, reported, atol=1e-6)


@pytest.mark.slow  # 40 s here, as the classifiers above: data, two Conv-4 compiles
def test_a_hallucinating_protonet_trains_loads_and_reproduces_its_evaluation(
    make_config, omniglot, tmp_path
):
    """algo.hallucinate: G in the checkpoint, running-average BatchNorm (the Omniglot preset)
    moved by a few steps, and predict imagining from raw images the examples the evaluator
    imagined (the noise is keyed by the support set's bits)."""
    config = make_config(
        "algo=protonet",
        "algo.hallucinate=2",
        *omniglot,
        "data.train_ways=null",
        "data.queries=3",
        "model.filters=8",
        "trainer.steps=3",
        "trainer.val_every=0",
        "eval.episodes=3",
        "eval.batch=3",
    )
    train(config, tmp_path)
    learner = metarun.load(tmp_path)
    assert set(learner.meta_params) == {"encoder", "hallucinator"}
    ours, reported = predicted_and_reported(learner, inner_steps=0)
    np.testing.assert_allclose(ours, reported, atol=1e-6)


@pytest.mark.slow
@pytest.mark.extended  # 30 s of Conv-4 compiles; CI runs the switches on sinusoid
def test_maml_plus_plus_trains_loads_and_reproduces_its_evaluation(make_config, omniglot, tmp_path):
    """``algo=maml`` with the MAML++ switches that change the meta-parameters (per-step
    BatchNorm on the real Conv-4, learned rates) and the multi-step loss trains, and the loaded
    run predicts as its evaluation did, with more inner steps than training. (Derivative-order
    annealing and the cosine schedule: tests/algos/test_mamlpp.py, tests/test_algorithms.py.)"""
    config = make_config(
        "algo=maml",
        *omniglot,
        "algo.inner_steps=2",
        "algo.msl=true",
        "algo.msl_anneal_steps=2",
        "algo.lslr=true",
        "algo.per_step_bn=true",
        "eval.inner_steps=3",
        "data.train_queries=2",
        "data.queries=3",
        "model.filters=8",
        "trainer.meta_batch=2",
        "trainer.steps=4",
        "trainer.log_every=2",
        "trainer.val_every=0",
        "eval.episodes=3",
        "eval.batch=3",
    )
    result = train(config, tmp_path)
    assert np.isfinite(result["mean"])
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("msl_loss" in row for row in logged)
    learner = metarun.load(tmp_path)
    ours, reported = predicted_and_reported(learner, inner_steps=3)
    np.testing.assert_allclose(ours, reported, atol=1e-6)
