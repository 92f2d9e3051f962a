"""``data.protocol=supervised``: the division of each class's drawings, fixed label noise, and
the refusals of what the protocol cannot serve."""

import jax
import numpy as np
import pytest

from metarun.config import ConfigError, compose, validate
from metarun.data import supervised
from metarun.experiment import check

CLEAN = ["data.label_noise=0", "data.rotations=false"]  # what the domains protocol allows


def data_config(*overrides):
    return validate(
        compose(["data=omniglot", "data.root=unused", "data.protocol=supervised", *overrides])
    ).data


def coded_split(characters: int = 30, drawings: int = 20):
    """``uint8 [characters, drawings, 28, 28, 1]`` whose pixel (0, 0) is the character and
    pixel (0, 1) the drawing."""
    images = np.zeros((characters, drawings, 28, 28, 1), np.uint8)
    images[:, :, 0, 0, 0] = np.arange(characters)[:, None]
    images[:, :, 0, 1, 0] = np.arange(drawings)[None, :]
    return images


def decode(x):
    """(character, drawing) of each image of a batch."""
    pixels = np.rint(np.asarray(x)[:, 0, :2, 0] * 255).astype(int)
    return pixels[:, 0], pixels[:, 1]


def draws(sampler, n: int = 40):
    return jax.vmap(sampler)(jax.random.split(jax.random.PRNGKey(0), n))


def test_each_class_drawings_are_divided_and_only_training_labels_are_noisy():
    cfg = data_config(
        "data.rotations=false", "data.ways=12", "data.clean_per_class=2", "data.label_noise=0.5"
    )
    source = supervised.task_source(coded_split(), cfg)
    assert source.output_dim == 12 and source.objective.task == "supervised"
    train = draws(source.samplers["train"])
    label_of = {}  # character -> its label, the same in every set
    val, test = draws(source.samplers["val"]), draws(source.samplers["test"])
    for batch, drawings in ((train, range(9, 11)), (val, range(11, 15)), (test, range(15, 20))):
        character, drawing = decode(batch.query_x.reshape(-1, 28, 28, 1))
        assert set(drawing) == set(drawings)  # the clean set, validation, test
        for c, label in zip(character, np.asarray(batch.query_y).ravel(), strict=True):
            assert label_of.setdefault(c, label) == label
    assert sorted(label_of.values()) == list(range(12))
    character, drawing = decode(train.support_x.reshape(-1, 28, 28, 1))
    assert set(drawing) == set(range(9))
    noisy = np.asarray(train.support_y).ravel()
    seen = {}  # a mislabelled drawing stays mislabelled
    for key, label in zip(zip(character, drawing, strict=True), noisy, strict=True):
        assert seen.setdefault(key, label) == label
    wrong = np.mean([label != label_of[c] for (c, _), label in seen.items()])
    assert 0.35 < wrong < 0.65, wrong  # 0.5 of the 12 × 9 drawings, up to sampling
    assert test.support_x.shape[1] == 0  # nothing to adapt on


def test_label_noise_flips_its_share_to_the_other_classes_uniformly():
    true = np.repeat(np.arange(10), 20_000).astype(np.int32)
    noisy = supervised.noisy_labels(true, 0.4, 10, seed=0)
    flipped = noisy != true
    assert flipped.mean() == pytest.approx(0.4, abs=0.005)
    shift = (noisy[flipped] - true[flipped]) % 10  # 1..9, each a ninth of the flips
    shares = np.bincount(shift, minlength=10)[1:] / flipped.sum()
    np.testing.assert_allclose(shares, 1 / 9, atol=0.005)
    np.testing.assert_array_equal(noisy, supervised.noisy_labels(true, 0.4, 10, seed=0))


def test_more_classes_than_the_train_split_has_are_refused():
    cfg = data_config("data.rotations=false", "data.ways=31")
    with pytest.raises(ConfigError, match="data.ways=31 is invalid with data.protocol=supervised"):
        supervised.task_source(coded_split(), cfg)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["data.protocol=supervised", "data.label_noise=1.0"], "data.label_noise=1.0 is invalid"),
        (["data.label_noise=0.4"], "labels of data.protocol=supervised, not few_shot"),
        (["data.protocol=supervised", "data.clean_per_class=11"], "data.clean_per_class=11"),
        (["data.protocol=transfer"], "allowed values are few_shot, supervised, domains"),
        (["data.protocol=supervised", "data.batch_size=1"], "data.batch_size=1 is invalid"),
        (["data.protocol=domains"], "data.rotations=True is invalid: turns characters by 90°"),
    ],
)
def test_bad_values_name_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named):
        validate(compose(["data=omniglot", "data.root=unused", *overrides]))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (
            ["data=omniglot", "data.root=x", "algo=maml", "data.protocol=supervised"],
            "algo=maml is invalid with data.protocol=supervised: .*algorithms: erm, l2rw",
        ),
        (["data=sinusoid", "algo=l2rw"], "algo=l2rw is invalid with this data: .*=supervised"),
        (
            ["data=omniglot", "data.root=x", "algo=l2rw", "data.protocol=domains", *CLEAN],
            "algo=l2rw is invalid with data.protocol=domains: it trains on data.protocol="
            "supervised; allowed algorithms: erm, mldg",
        ),
        (
            ["data=omniglot", "data.root=x", "algo=erm", "model.bn_mode=support"],
            "model.bn_mode=support is invalid with algo=erm",
        ),
    ],
)
def test_learners_and_protocols_that_do_not_meet_are_refused(overrides, named):
    with pytest.raises(ConfigError, match=named):
        check(validate(compose(overrides)))
