"""Omniglot few-shot classification (``data=omniglot``): the splits of the literature.

The characters of the chosen archives (:func:`metarun.data.omniglot_tfds.load_omniglot`) are
divided into train, val and test classes, each split is put on the device once as ``uint8
[classes, 20, S, S, 1]``, and episodes are sampled inside the jitted step
(:mod:`metarun.data.episodes`). Splits (``data.split``):

* ``minimal1`` / ``minimal2``: meta-train on one official minimal background split
  (``images_background_small1.zip`` or ``..._small2.zip``); meta-test on the alphabets of the
  other one that it lacks (minimal1: Japanese (katakana), Sanskrit, Tagalog; minimal2:
  Balinese, Early Aramaic, Korean).
* ``characters``: the protocol of Vinyals et al. (2016), MAML and Prototypical Networks: all
  characters of ``data.archives`` shuffled (seed ``data.split_seed``), 423 of every 1,623 for
  test as in the ProtoNet split (1,200 train + val, 423 test on full data), the rest train;
  alphabets are shared between the splits. The exact Vinyals character lists are not
  distributed with the data; this is their proportion.
* ``alphabets``: alphabet-disjoint, as Lake et al.'s background/evaluation division: test is
  ``data.test_alphabets`` (empty: every alphabet of ``images_evaluation.zip``), the rest train.

Validation is ``data.val_alphabets`` when given, else a seeded ``data.val_fraction`` of the
training characters (of the training alphabets for ``alphabets``): on full data with
``characters``, 1,020 train and 180 val characters (ProtoNet: 1,028 and 172). With
``data.rotations`` every split's characters also appear turned by 90°, 180° and 270° as new
classes (Santoro et al. 2016), the augmentation of MAML and ProtoNet: 4 × 1,020 training
classes on full data.
"""

from __future__ import annotations

import numpy as np

from metarun.config import ConfigError
from metarun.data import sources, specs
from metarun.data.episodes import image_spec, image_task_source
from metarun.data.omniglot_tfds import load_omniglot
from metarun.types import DataSpec

# Prototypical Networks' split of the 1,623 characters: 1,200 train + val, 423 test.
TEST_SHARE = 423 / 1623


def _archives(cfg) -> tuple[str, ...]:
    if cfg.split == "minimal1":
        return ("small1", "small2")
    if cfg.split == "minimal2":
        return ("small2", "small1")
    return tuple(cfg.archives)


def _held_out(units: list[str], fraction: float, seed: int, key: str) -> set[str]:
    """A seeded ``fraction`` of ``units`` (at least one, never all); ``key`` names the cause."""
    count = max(1, round(fraction * len(units)))
    if count >= len(units):
        raise ConfigError(
            f"{key} is invalid: holding out {fraction:.0%} of {len(units)} leaves none to "
            "train on; use more archives or a smaller fraction"
        )
    order = np.random.default_rng(seed).permutation(len(units))
    return {units[i] for i in order[:count]}


def split_characters(loaded: dict, cfg) -> dict[str, list[int]]:
    """Row indices of ``loaded["images"]`` for the train, val and test splits."""
    characters, alphabets = loaded["characters"], loaded["alphabets"]
    alphabet_of = dict(zip(characters, alphabets, strict=True))
    known = sorted(set(alphabets))

    if cfg.split in ("minimal1", "minimal2"):
        own = _archives(cfg)[0]
        test = {c for c, a in zip(characters, loaded["archives"], strict=True) if a != own}
    elif cfg.split == "characters":
        test = _held_out(characters, TEST_SHARE, cfg.split_seed, "data.archives")
    else:  # alphabets
        origin = zip(alphabets, loaded["archives"], strict=True)
        test_alphabets = set(cfg.test_alphabets) or {a for a, o in origin if o == "evaluation"}
        if not test_alphabets:
            raise ConfigError(
                "data.test_alphabets=[] is invalid: data.split=alphabets without "
                "images_evaluation in data.archives needs the test alphabets listed; "
                f"loaded alphabets: {', '.join(known)}"
            )
        test = {c for c in characters if alphabet_of[c] in test_alphabets}

    if cfg.test_alphabets and cfg.split != "alphabets":
        raise ConfigError(
            f"data.test_alphabets={list(cfg.test_alphabets)} is invalid: it is read by "
            f"data.split=alphabets only (data.split={cfg.split})"
        )
    for key in ("data.test_alphabets", "data.val_alphabets"):
        unknown = set(getattr(cfg, key.split(".")[1])) - set(known)
        if unknown:
            raise ConfigError(
                f"{key}={sorted(unknown)} is invalid: not among the loaded alphabets "
                f"({', '.join(known)})"
            )

    rest = [c for c in characters if c not in test]
    fraction = f"data.val_fraction={cfg.val_fraction}"
    if cfg.val_alphabets:
        val = {c for c in rest if alphabet_of[c] in set(cfg.val_alphabets)}
    elif cfg.split == "alphabets":
        rest_alphabets = sorted({alphabet_of[c] for c in rest})
        held = _held_out(rest_alphabets, cfg.val_fraction, cfg.split_seed, fraction)
        val = {c for c in rest if alphabet_of[c] in held}
    else:
        val = _held_out(rest, cfg.val_fraction, cfg.split_seed + 1, fraction)
    index = {c: i for i, c in enumerate(characters)}
    return {
        "train": [index[c] for c in rest if c not in val],
        "val": [index[c] for c in rest if c in val],
        "test": [index[c] for c in characters if c in test],
    }


@specs.register("omniglot")
def spec(cfg) -> DataSpec:
    """Raw Omniglot drawings (dark strokes on light paper, any size) -> ink = 1, 28×28×1."""
    return image_spec(cfg.ways, cfg.image_size, channels=1, invert=True)


@sources.register("omniglot")
def make(cfg):
    loaded = load_omniglot(
        cfg.root,
        archives=_archives(cfg),
        image_size=cfg.image_size,
        cache_dir=cfg.cache_dir or None,
        download=cfg.download,
    )
    splits = split_characters(loaded, cfg)
    images = {split: loaded["images"][rows] for split, rows in splits.items()}
    return image_task_source(images, cfg)
