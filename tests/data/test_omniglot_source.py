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
    "split, order, parts, counts",
    [
        # small1's 5 alphabets train; 15% of them rounds to one, Greek (24 characters, seed 0),
        # held out whole for validation; test: small2's own alphabets (Japanese 47, Sanskrit 42,
        # Tagalog 17 characters). Greek and Latin are also in small2 but train here.
        (
            "minimal1",
            ("small1", "small2"),
            {"train": SMALL1_ONLY | {"Latin"}, "val": {"Greek"}, "test": SMALL2_ONLY},
            (112, 24, 106),
        ),
        # small2: validation on Latin (26); test: Balinese 24, Early Aramaic 22, Korean 40.
        (
            "minimal2",
            ("small2", "small1"),
            {"train": SMALL2_ONLY | {"Greek"}, "val": {"Latin"}, "test": SMALL1_ONLY},
            (130, 26, 86),
        ),
    ],
)
def test_minimal_splits_validate_and_test_on_alphabets_held_out_of_training(
    minimal, split, order, parts, counts
):
    loaded = minimal[order]
    splits = omniglot.split_characters(loaded, data_config(split=split))
    assert {s: alphabets_of(loaded, rows) for s, rows in splits.items()} == parts
    assert tuple(len(splits[s]) for s in ("train", "val", "test")) == counts
    rows = [set(splits[s]) for s in ("train", "val", "test")]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert sum(counts) == len(loaded["characters"])
    for seed in range(6):  # whichever alphabet a seed holds out, no alphabet crosses a part
        other = omniglot.split_characters(loaded, data_config(split=split, split_seed=seed))
        train, val, test = (alphabets_of(loaded, other[s]) for s in ("train", "val", "test"))
        assert len(val) == 1 and not (train & val or train & test or val & test), seed
        assert {"Greek", "Latin"} <= train | val


def test_minimal_validation_serves_20_ways_and_names_the_key_when_it_cannot(minimal):
    loaded = minimal[("small2", "small1")]
    # Seed 1 holds out Tagalog, minimal2's smallest training alphabet: 17 characters.
    tagalog = data_config(split="minimal2", split_seed=1, ways=20)
    splits = omniglot.split_characters(loaded, tagalog)
    assert alphabets_of(loaded, splits["val"]) == {"Tagalog"} and len(splits["val"]) == 17
    with pytest.raises(
        ConfigError,
        match=r"data.val_fraction=0.15 is invalid: the validation split \(Tagalog\) has 17 "
        r"classes, fewer than data.ways=20; hold out more with data.val_fraction or "
        r"data.val_alphabets",
    ):
        omniglot.split_characters(
            loaded, data_config(split="minimal2", split_seed=1, ways=20, rotations=False)
        )
    with pytest.raises(ConfigError, match=r"data.val_alphabets=\['Tagalog'\] is invalid: .* 17"):
        omniglot.split_characters(
            loaded,
            data_config(split="minimal2", val_alphabets="[Tagalog]", ways=20, rotations=False),
        )


def test_listed_validation_alphabets_win_but_never_a_test_alphabet(minimal):
    loaded = minimal[("small1", "small2")]
    cfg = data_config(split="minimal1", val_alphabets="[Korean,Latin]")
    splits = omniglot.split_characters(loaded, cfg)
    assert alphabets_of(loaded, splits["val"]) == {"Korean", "Latin"}
    assert alphabets_of(loaded, splits["train"]) == {"Balinese", "Early_Aramaic", "Greek"}
    with pytest.raises(
        ConfigError, match=r"data.val_alphabets=\['Sanskrit'\] is invalid: Sanskrit tested on"
    ):
        omniglot.split_characters(loaded, data_config(split="minimal1", val_alphabets="[Sanskrit]"))
    every = "[Balinese,Early_Aramaic,Greek,Korean,Latin]"
    with pytest.raises(ConfigError, match="leaves no alphabet to train on"):
        omniglot.split_characters(loaded, data_config(split="minimal1", val_alphabets=every))


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


def test_character_split_validates_on_characters_of_the_training_alphabets():
    """Unchanged by the alphabet-held-out validation of the other splits: the seeded shuffles
    of all characters (test) and of the rest (validation), by hand."""
    splits = omniglot.split_characters(FULL, data_config(split="characters", split_seed=3))
    characters = FULL["characters"]
    test_order = np.random.default_rng(3).permutation(len(characters))
    test = {characters[i] for i in test_order[: round(423 / 1623 * len(characters))]}
    rest = [c for c in characters if c not in test]
    val_order = np.random.default_rng(4).permutation(len(rest))
    val = {rest[i] for i in val_order[: round(0.15 * len(rest))]}
    index = {c: i for i, c in enumerate(characters)}
    assert splits == {
        "train": [index[c] for c in rest if c not in val],
        "val": [index[c] for c in rest if c in val],
        "test": [index[c] for c in characters if c in test],
    }
    train, val_alphabets = (alphabets_of(FULL, splits[s]) for s in ("train", "val"))
    assert len(val_alphabets) > 1 and val_alphabets <= train  # per character, not per alphabet


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
        match=r"data.train_ways=500 is invalid: the train split .* has 448 classes "
        r"\(112 × 4 rotations\)",
    ):
        omniglot.make(
            data_config(split="minimal1", root=root, ways=5, train_ways=500, cache_dir=tmp_path)
        )
    with pytest.raises(
        ConfigError,
        match=r"data.val_fraction=0.15 is invalid: the validation split \(Greek\) has 96 "
        r"classes \(24 characters × 4 rotations\), fewer than data.ways=100",
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
    prepare = omniglot.spec(SimpleNamespace(image_size=8, ways=5, protocol="few_shot")).preprocess
    grey = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    expected = prepare(grey)
    np.testing.assert_array_equal(prepare(np.repeat(grey[..., None], 3, axis=-1)), expected)
    np.testing.assert_array_equal(prepare(grey / 255.0), expected)
    with pytest.raises(ValueError, match=r"images must be \[n, H, W\]"):
        prepare(grey[0, 0])
