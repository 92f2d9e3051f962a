"""``data=mini_imagenet`` end to end on a fixture of the CSV distribution: train, test, load."""

import jax
import numpy as np
import pytest

import metarun
from metarun import data
from metarun.config import ConfigError
from metarun.evaluate import episode_keys, make_evaluator
from metarun.train import train

from . import fixtures

# Few classes and images, so 2-way 1-shot with 2 queries: val has 2 classes of 4 images.
CLASSES = {"train": 4, "val": 2, "test": 3}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    fixtures.block_network(monkeypatch)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_imagenet")
    for i, (split, count) in enumerate(CLASSES.items()):
        labels = [fixtures.wnid(100 * i + c) for c in range(count)]
        fixtures.mini_imagenet_csv(root, split, labels, per_class=4, seed=i)
    return root


def overrides(root, tmp_path) -> list[str]:
    return [
        "data=mini_imagenet",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.ways=2",
        "data.queries=2",
        "trainer.meta_batch=2",
        "trainer.steps=4",
        "trainer.log_every=2",
        "trainer.val_every=2",
        "eval.inner_steps=1",
        "eval.episodes=4",
        "eval.val_episodes=2",
        "eval.batch=2",
        "algo.inner_steps=1",
    ]


def test_defaults_are_maml_on_a_32_filter_conv4(make_config, root, tmp_path):
    config = make_config(*overrides(root, tmp_path)[:2])
    assert (config.model.name, config.model.filters, config.model.strided) == ("conv4", 32, False)
    assert (config.data.ways, config.data.shots, config.data.queries) == (5, 1, 15)
    assert not config.data.rotations


def test_trains_tests_and_predicts_raw_rgb_images(make_config, root, tmp_path):
    config = make_config(*overrides(root, tmp_path), fast=False)
    result = train(config, tmp_path / "run")
    assert result["episodes"] == 4 and 0 <= result["mean"] <= 1

    learner = metarun.load(tmp_path / "run")
    source = data.make(learner.config.data)
    episode = jax.device_get(source.samplers["test"](episode_keys(0, "test", 1)[0]))
    assert episode.support_x.shape == (2, 84, 84, 3)

    def raw(x):
        return np.round(x * 255).astype(np.uint8)

    predicted = learner.predict(raw(episode.support_x), episode.support_y, raw(episode.query_x))
    evaluator = make_evaluator(learner._learner, source.objective, inner_steps=1, batch=1)
    reported = evaluator(learner.meta_params, source.samplers["test"], episode_keys(0, "test", 1))
    np.testing.assert_allclose(np.mean(predicted == episode.query_y), reported["accuracy"][0])


def test_more_ways_than_the_split_has_classes_is_named(make_config, root, tmp_path):
    config = make_config(*overrides(root, tmp_path), "data.ways=3")
    with pytest.raises(ConfigError, match="data.ways=3 is invalid: the val split .* has 2 classes"):
        data.make(config.data)
