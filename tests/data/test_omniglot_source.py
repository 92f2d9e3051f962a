"""``data=omniglot``: the splits of the literature, config errors, and the preprocessing."""

import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from metarun.config import ConfigError, compose, validate
from metarun.data import omniglot
from metarun.data.arrays import PIXEL_SCALE
from metarun.data.omniglot_tfds import load_omniglot

from . import fixtures

SMALL1_ONLY = {"Balinese", "Early_Aramaic", "Korean"}
SMALL2_ONLY = {"Japanese_(katakana)", "Sanskrit", "Tagalog"}


def data_config(**overrides):
    return validate(compose(["data=omniglot", "data.root=unused", *_dotlist(overrides)])).data


def _dotlist(overrides: dict) -> list[str]:
    return [f"data.{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def minimal(tmp_path_factory):
    """The real minimal archives, both, as ``load_omniglot`` merges them."""
    if not fixtures.OMNIGLOT_DIR.is_dir():
        pytest.skip(f"real Omniglot archives not found at {fixtures.OMNIGLOT_DIR}")
    cache = tmp_path_factory.mktemp("omniglot_cache")
    return {
        order: load_omniglot(fixtures.OMNIGLOT_DIR, order, cache_dir=cache)
        for order in (("small1", "small2"), ("small2", "small1"))
    }


def alphabets_of(loaded, rows) -> set[str]:
    return {loaded["alphabets"][i] for i in rows}


@pytest.mark.parametrize(
    "split, order, own, held_out, counts",
    [
        # small1: 136 characters, 20 of them (15%) for validation; test: the 106 characters of
        # small2's own alphabets (Japanese 47, Sanskrit 42, Tagalog 17).
        (
            "minimal1",
            ("small1", "small2"),
            SMALL1_ONLY | {"Greek", "Latin"},
            SMALL2_ONLY,
            (116, 20, 106),
        ),
        # small2: 156 characters, 23 for validation; test: Balinese 24, Early Aramaic 22, Korean 40.
        (
            "minimal2",
            ("small2", "small1"),
            SMALL2_ONLY | {"Greek", "Latin"},
            SMALL1_ONLY,
            (133, 23, 86),
        ),
    ],
)
def test_minimal_splits_test_on_the_alphabets_the_training_split_lacks(
    minimal, split, order, own, held_out, counts
):
    loaded = minimal[order]
    splits = omniglot.split_characters(loaded, data_config(split=split))
    assert tuple(len(splits[s]) for s in ("train", "val", "test")) == counts
    assert alphabets_of(loaded, splits["test"]) == held_out
    assert alphabets_of(loaded, splits["train"]) | alphabets_of(loaded, splits["val"]) == own
    rows = [set(splits[s]) for s in ("train", "val", "test")]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])


def synthetic(alphabets_per_archive: dict[str, list[str]], per_alphabet: int = 10) -> dict:
    """What ``load_omniglot`` returns, without images (the splits only read the names)."""
    characters, archives = [], []
    for archive, alphabets in alphabets_per_archive.items():
        for a in alphabets:
            characters += [f"{a}/character{i:02d}" for i in range(1, per_alphabet + 1)]
            archives += [archive] * per_alphabet
    return {
        "characters": characters,
        "alphabets": [c.split("/")[0] for c in characters],
        "archives": archives,
    }


FULL = synthetic(
    {"background": [f"B{i}" for i in range(30)], "evaluation": [f"E{i}" for i in range(20)]}
)


def test_character_split_has_the_protonet_proportions_and_depends_on_its_seed_only():
    cfg = data_config(split="characters")
    splits = omniglot.split_characters(FULL, cfg)
    n = len(FULL["characters"])  # 500
    assert len(splits["test"]) == round(n * 423 / 1623)
    assert len(splits["val"]) == round(0.15 * (n - len(splits["test"])))
    assert sorted(sum(splits.values(), [])) == list(range(n))  # a partition
    assert omniglot.split_characters(FULL, cfg) == splits
    other = omniglot.split_characters(FULL, data_config(split="characters", split_seed=1))
    assert other["test"] != splits["test"]


def test_alphabet_split_tests_on_the_evaluation_archive_and_validates_on_whole_alphabets():
    splits = omniglot.split_characters(FULL, data_config(split="alphabets"))
    test, val, train = (alphabets_of(FULL, splits[s]) for s in ("test", "val", "train"))
    assert test == {f"E{i}" for i in range(20)}
    assert (
        len(val) == round(0.15 * 30)
        and not val & train
        and val | train == {f"B{i}" for i in range(30)}
    )


def test_listed_alphabets_are_used_and_unknown_ones_are_named():
    cfg = data_config(split="alphabets", test_alphabets="[B0,E3]", val_alphabets="[B1]")
    splits = omniglot.split_characters(FULL, cfg)
    assert alphabets_of(FULL, splits["test"]) == {"B0", "E3"}
    assert alphabets_of(FULL, splits["val"]) == {"B1"}
    with pytest.raises(
        ConfigError,
        match=r"test_alphabets=\['B0'\] is invalid: it is read by data.split=alphabets only",
    ):
        omniglot.split_characters(FULL, data_config(split="characters", test_alphabets="[B0]"))
    with pytest.raises(ConfigError, match=r"data.val_alphabets=\['Klingon'\] is invalid"):
        omniglot.split_characters(FULL, data_config(val_alphabets="[Klingon]"))


def test_alphabet_split_without_the_evaluation_archive_asks_for_the_test_alphabets():
    small = synthetic({"small1": ["A", "B"]})
    with pytest.raises(ConfigError, match="data.test_alphabets=.*needs the test alphabets listed"):
        omniglot.split_characters(small, data_config(split="alphabets"))


def test_the_schema_names_what_is_wrong():
    with pytest.raises(ConfigError, match="data.root='' is invalid: is required"):
        validate(compose(["data=omniglot"]))
    with pytest.raises(ConfigError, match="data.split='vinyals' is invalid: allowed values"):
        data_config(split="vinyals")
    with pytest.raises(ConfigError, match="data.ways=1 is invalid"):
        data_config(ways=1)


def test_episodes_the_split_cannot_serve_fail_when_the_source_is_built(minimal, tmp_path):
    root = str(fixtures.OMNIGLOT_DIR)
    with pytest.raises(
        ConfigError,
        match=r"data.ways=100 is invalid: the val split .* has 80 classes \(20 × 4 rotations\)",
    ):
        omniglot.make(data_config(split="minimal1", root=root, ways=100, cache_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"data.train_shots \+ data.train_queries = 5 \+ 16"):
        omniglot.make(
            data_config(
                split="minimal1", root=root, train_shots=5, train_queries=16, cache_dir=tmp_path
            )
        )


def test_the_spec_preprocesses_a_raw_drawing_exactly_as_the_training_data(minimal):
    loaded = minimal[("small1", "small2")]
    row = loaded["characters"].index("Korean/character01")
    with zipfile.ZipFile(fixtures.OMNIGLOT_DIR / "images_background_small1.zip") as archive:
        names = sorted(
            n for n in archive.namelist() if "/Korean/character01/" in n and n.endswith(".png")
        )
        # 1-bit PNGs: Pillow reads them as booleans, as a user would have them.
        raw = np.stack([np.asarray(Image.open(archive.open(n))) for n in names[:3]])
    spec = omniglot.spec(data_config())
    assert spec.input_shape == (28, 28, 1) and spec.output_dim == 5
    # Bit for bit what the on-device sampler makes of the cached images (data/episodes.py).
    np.testing.assert_array_equal(spec.preprocess(raw), loaded["images"][row, :3] * PIXEL_SCALE)


def test_the_spec_accepts_rgb_and_float_images():
    prepare = omniglot.spec(SimpleNamespace(image_size=8, ways=5)).preprocess
    grey = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    expected = prepare(grey)
    np.testing.assert_array_equal(prepare(np.repeat(grey[..., None], 3, axis=-1)), expected)
    np.testing.assert_array_equal(prepare(grey / 255.0), expected)
    with pytest.raises(ValueError, match=r"images must be \[n, H, W\]"):
        prepare(grey[0, 0])
