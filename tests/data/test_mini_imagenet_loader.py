"""mini-ImageNet loader: both distributions, resizing, the restricted unpickler, failures."""

import os
import pickle
import re

import numpy as np
import pytest

from metarun.config import DataError
from metarun.data import arrays, mini_imagenet_tfds
from metarun.data.mini_imagenet_tfds import load_mini_imagenet, load_pickle

from . import fixtures

# Classes per split in the fixtures (the real split has 64 / 16 / 20, 600 images each).
CLASSES = {"train": 4, "val": 2, "test": 3}
PER_CLASS = 5


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    fixtures.block_network(monkeypatch)


def _labels(split):
    offset = {"train": 0, "val": 100, "test": 200}[split]
    # Listed out of order, so the loader's sort is visible.
    return [fixtures.wnid(offset + i) for i in reversed(range(CLASSES[split]))]


def _csv_root(root, size=(84, 84)):
    return {
        split: fixtures.mini_imagenet_csv(root, split, _labels(split), PER_CLASS, size, seed=i)
        for i, split in enumerate(CLASSES)
    }


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory):
    """The CSV distribution and the images as Pillow decodes its JPEGs."""
    root = tmp_path_factory.mktemp("mini_csv")
    return root, _csv_root(root)


def test_csv_distribution(csv_dataset, tmp_path):
    root, decoded = csv_dataset
    for split, count in CLASSES.items():
        out = load_mini_imagenet(root, split, cache_dir=tmp_path)
        assert out["images"].shape == (count, PER_CLASS, 84, 84, 3)
        assert out["images"].dtype == np.uint8
        assert out["classes"] == sorted(_labels(split))
        expected = np.stack([decoded[split][label] for label in out["classes"]])
        np.testing.assert_array_equal(out["images"], expected)


def test_pickle_distribution_equals_csv_for_the_same_images(csv_dataset, tmp_path):
    root, decoded = csv_dataset
    for split, images in decoded.items():
        fixtures.mini_imagenet_pickle(tmp_path / "pkl", split, images, seed=len(images))
    for split in CLASSES:
        from_pickle = load_mini_imagenet(tmp_path / "pkl", split, cache_dir=tmp_path / "a")
        from_csv = load_mini_imagenet(root, split, cache_dir=tmp_path / "b")
        assert from_pickle["classes"] == from_csv["classes"]
        np.testing.assert_array_equal(from_pickle["images"], from_csv["images"])


def test_larger_jpegs_are_resized_to_84(tmp_path):
    decoded = _csv_root(tmp_path / "big", size=(120, 100))
    out = load_mini_imagenet(tmp_path / "big", "val", cache_dir=tmp_path)
    assert out["images"].shape == (CLASSES["val"], PER_CLASS, 84, 84, 3)
    first = decoded["val"][out["classes"][0]][0]
    assert first.shape == (100, 120, 3)
    np.testing.assert_array_equal(out["images"][0, 0], arrays.resize(first, 84))


def test_second_load_reads_only_the_cache(csv_dataset, tmp_path, monkeypatch):
    root, _ = csv_dataset
    first = load_mini_imagenet(root, "test", cache_dir=tmp_path)
    monkeypatch.setattr(mini_imagenet_tfds, "_prepare", None)  # called, it would fail
    second = load_mini_imagenet(root, "test", cache_dir=tmp_path)
    np.testing.assert_array_equal(first["images"], second["images"])
    gone = tmp_path / "gone"  # the cache is never a reason to accept a wrong data.root
    with pytest.raises(DataError, match=rf"^data\.root={re.escape(str(gone))} is not a folder"):
        load_mini_imagenet(gone, "test", cache_dir=tmp_path)


def test_a_replaced_pickle_is_prepared_again(csv_dataset, tmp_path):
    """Same name and size, other pixels: every split's .npz and TFDS's records are made again."""
    _, decoded = csv_dataset
    for split, images in decoded.items():
        path = fixtures.mini_imagenet_pickle(tmp_path / "pkl", split, images)
    before = {
        s: load_mini_imagenet(tmp_path / "pkl", s, cache_dir=tmp_path)["images"] for s in CLASSES
    }
    stat = path.stat()  # the test split's pickle, replaced by one of inverted images
    fixtures.mini_imagenet_pickle(
        tmp_path / "pkl", "test", {k: 255 - v for k, v in decoded["test"].items()}
    )
    assert path.stat().st_size == stat.st_size
    # A copy made a second later: file systems with coarse timestamps could give this test's
    # two writes the same one.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    for split in CLASSES:
        after = load_mini_imagenet(tmp_path / "pkl", split, cache_dir=tmp_path)["images"]
        want = 255 - before[split] if split == "test" else before[split]
        np.testing.assert_array_equal(after, want)


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = fixtures.malicious_pickle(tmp_path / "evil.pkl", marker)
    with pytest.raises(DataError, match=r"refusing to load (posix|os|nt)\.system"):
        load_pickle(path)
    root = tmp_path / "root"
    root.mkdir()
    fixtures.malicious_pickle(root / "mini-imagenet-cache-train.pkl", marker)
    for split in ("val", "test"):
        fixtures.mini_imagenet_pickle(
            root, split, {fixtures.wnid(0): np.zeros((1, 84, 84, 3), np.uint8)}
        )
    with pytest.raises(DataError, match="mini-imagenet-cache-train.pkl"):
        load_mini_imagenet(root, "train", cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_pickle_of_the_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"image_data": np.zeros((2, 84, 84), np.uint8)}))
    with pytest.raises(DataError, match="odd.pkl is not a mini-ImageNet pickle"):
        load_pickle(path)


def _pickle_root(root, sizes=None):
    """The pickle distribution of black images, ``PER_CLASS`` per class but as ``sizes`` says."""
    sizes = sizes or {}
    for split in CLASSES:
        images = {
            label: np.zeros((sizes.get(label, PER_CLASS), 84, 84, 3), np.uint8)
            for label in _labels(split)
        }
        fixtures.mini_imagenet_pickle(root, split, images)
    return root


def test_truncated_pickle_names_the_file_and_the_fix(tmp_path):
    path = _pickle_root(tmp_path / "root") / "mini-imagenet-cache-train.pkl"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="mini-imagenet-cache-train.pkl is truncated or corrupt"):
        load_pickle(path)
    with pytest.raises(DataError, match="replace it with a fresh, complete download") as error:
        load_mini_imagenet(tmp_path / "root", "train", cache_dir=tmp_path / "cache")
    assert str(path) in str(error.value)


@pytest.mark.parametrize("count", [0, PER_CLASS - 1], ids=["empty", "short"])
def test_pickle_class_with_too_few_images_is_named(tmp_path, count):
    label = _labels("val")[0]
    root = _pickle_root(tmp_path / "root", {label: count})
    with pytest.raises(
        DataError,
        match=rf"mini-imagenet-cache-val.pkl: class {label} has {count} images but the largest "
        rf"class has {PER_CLASS}; every class must have as many \(600 in the official files\)",
    ):
        load_mini_imagenet(root, "val", cache_dir=tmp_path / "cache")


def test_csv_class_with_too_few_images_is_named(tmp_path):
    _csv_root(tmp_path)
    listed = tmp_path / "test.csv"
    rows = listed.read_text().splitlines()
    label = rows[-1].split(",")[1]  # rows cycle through the classes: this one loses an image
    listed.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match=rf"test.csv: class {label} has {PER_CLASS - 1} images"):
        load_mini_imagenet(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_missing_jpeg_is_named(tmp_path):
    _csv_root(tmp_path)
    missing = tmp_path / "images" / (tmp_path / "val.csv").read_text().splitlines()[1].split(",")[0]
    missing.unlink()
    with pytest.raises(DataError, match=rf"{missing}, listed in .*val.csv, is missing or unread"):
        load_mini_imagenet(tmp_path, "val", cache_dir=tmp_path / "cache")


def test_missing_split_names_the_files(tmp_path):
    root = tmp_path / "root"
    fixtures.mini_imagenet_csv(root, "train", [fixtures.wnid(0)], 1)
    with pytest.raises(DataError, match="mini-imagenet-cache-val.pkl nor val.csv"):
        load_mini_imagenet(root, "train", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="mini-imagenet-cache-train.pkl"):
        load_mini_imagenet(tmp_path / "nowhere", "train", cache_dir=tmp_path / "cache")


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="'train', 'val', 'test'"):
        load_mini_imagenet(tmp_path, "validation", cache_dir=tmp_path)
