"""Omniglot few-shot classification (``data=omniglot``): the splits of the literature.

The characters of the chosen archives (:func:`metarun.data.omniglot_tfds.load_omniglot`) are
divided into train, val and test classes, each split is put on the device once as ``uint8
[classes, 20, S, S, 1]``, and episodes are sampled inside the jitted step
(:mod:`metarun.data.episodes`). Splits (``data.split``):

* ``minimal1`` / ``minimal2``: meta-train on one official minimal background split
  (``images_background_small1.zip`` or ``..._small2.zip``); meta-test on the alphabets of the
  other one that it lacks (minimal1: Japanese (katakana), Sanskrit, Tagalog; minimal2:
  Balinese, Early Aramaic, Korean). Greek and Latin, in both archives, are training
  alphabets of both splits, never tested on.
* ``characters``: the protocol of Vinyals et al. (2016), MAML and Prototypical Networks: all
  characters of ``data.archives`` shuffled (seed ``data.split_seed``), 423 of every 1,623 for
  test as in the ProtoNet split (1,200 train + val, 423 test on full data), the rest train;
  alphabets are shared between the splits. The exact Vinyals character lists are not
  distributed with the data; this is their proportion.
* ``alphabets``: alphabet-disjoint, as Lake et al.'s background/evaluation division: test is
  ``data.test_alphabets`` (empty: every alphabet of ``images_evaluation.zip``), the rest train.

Validation is drawn as the test is. The alphabet-disjoint splits (``minimal*``,
``alphabets``) validate on whole alphabets held out of training: ``data.val_alphabets`` when
given (never a test alphabet), else a seeded ``data.val_fraction`` of the training alphabets,
at least one (minimal1 with seed 0: Greek, 24 characters; minimal2: Latin, 26), so validation
measures what the test measures, adaptation to unseen alphabets. ``characters`` validates on a
seeded ``data.val_fraction`` of the training characters (or the training characters of
``data.val_alphabets``): on full data 1,020 train and 180 val characters (ProtoNet: 1,028 and
172). With ``data.rotations`` every split's characters also appear turned by 90°, 180° and
270° as new classes (Santoro et al. 2016), the augmentation of MAML and ProtoNet: 4 × 1,020
training classes on full data. A validation split with fewer classes than ``data.ways`` is
refused, naming the key that chose it; ``scripts/omniglot_splits.py`` prints every split's
alphabets and class counts.
"""

from __future__ import annotations

import numpy as np

from metarun.config import ConfigError
from metarun.data import sources, specs, supervised
from metarun.data.episodes import image_spec, image_task_source
from metarun.data.omniglot_tfds import load_omniglot
from metarun.types import DataSpec

# Prototypical Networks' split of the 1,623 characters: 1,200 train + val, 423 test.
TEST_SHARE = 423 / 1623


def archives_of(cfg) -> tuple[str, ...]:
    """The archives ``data.split`` reads, the training one first for ``minimal*``."""
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


def _test_alphabets(loaded: dict, cfg, known: list[str]) -> set[str]:
    """The alphabets tested on by the alphabet-disjoint splits (``minimal*``, ``alphabets``)."""
    origin = list(zip(loaded["alphabets"], loaded["archives"], strict=True))
    if cfg.split in ("minimal1", "minimal2"):
        # Every alphabet with a character in the training archive trains (Greek and Latin are
        # in both minimal archives); only the other archive's own alphabets are tested on.
        own = archives_of(cfg)[0]
        return set(known) - {a for a, o in origin if o == own}
    test_alphabets = set(cfg.test_alphabets) or {a for a, o in origin if o == "evaluation"}
    if not test_alphabets:
        raise ConfigError(
            "data.test_alphabets=[] is invalid: data.split=alphabets without "
            "images_evaluation in data.archives needs the test alphabets listed; "
            f"loaded alphabets: {', '.join(known)}"
        )
    return test_alphabets


def split_characters(loaded: dict, cfg) -> dict[str, list[int]]:
    """Row indices of ``loaded["images"]`` for the train, val and test splits.

    Raises:
      ConfigError: naming the key, for an alphabet that is not loaded, a validation alphabet
        that is tested on, a fraction that leaves nothing to train on, or validation classes
        too few for ``data.ways``-way episodes.
    """
    characters, alphabets = loaded["characters"], loaded["alphabets"]
    alphabet_of = dict(zip(characters, alphabets, strict=True))
    known = sorted(set(alphabets))

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

    if cfg.split == "characters":
        test = _held_out(characters, TEST_SHARE, cfg.split_seed, "data.archives")
        test_alphabets = set()  # alphabets are shared between the splits
    else:
        test_alphabets = _test_alphabets(loaded, cfg, known)
        test = {c for c in characters if alphabet_of[c] in test_alphabets}

    rest = [c for c in characters if c not in test]
    rest_alphabets = sorted({alphabet_of[c] for c in rest})
    fraction = f"data.val_fraction={cfg.val_fraction}"
    if cfg.val_alphabets:
        key = f"data.val_alphabets={list(cfg.val_alphabets)}"
        tested = set(cfg.val_alphabets) & test_alphabets
        if tested:
            raise ConfigError(
                f"{key} is invalid: {', '.join(sorted(tested))} tested on in "
                f"data.split={cfg.split}; validate on training alphabets only "
                f"({', '.join(rest_alphabets)})"
            )
        if cfg.split != "characters" and set(rest_alphabets) <= set(cfg.val_alphabets):
            raise ConfigError(f"{key} is invalid: it leaves no alphabet to train on")
        val = {c for c in rest if alphabet_of[c] in set(cfg.val_alphabets)}
    elif cfg.split == "characters":
        key = fraction
        val = _held_out(rest, cfg.val_fraction, cfg.split_seed + 1, fraction)
    else:  # alphabet-disjoint: validate on whole alphabets held out of training, as the test
        key = fraction
        held = _held_out(rest_alphabets, cfg.val_fraction, cfg.split_seed, fraction)
        val = {c for c in rest if alphabet_of[c] in held}

    classes = len(val) * (4 if cfg.rotations else 1)
    # data.protocol=supervised|domains classifies classes of the train split only
    if classes < cfg.ways and cfg.protocol == "few_shot":
        whole = cfg.val_alphabets or cfg.split != "characters"
        held = ", ".join(sorted({alphabet_of[c] for c in val})) if whole else ""
        rotated = f" ({len(val)} characters × 4 rotations)" if cfg.rotations else ""
        raise ConfigError(
            f"{key} is invalid: the validation split{f' ({held})' if held else ''} has "
            f"{classes} classes{rotated}, fewer than data.ways={cfg.ways}; hold out more "
            "with data.val_fraction or data.val_alphabets, or ask for fewer ways"
        )
    index = {c: i for i, c in enumerate(characters)}
    return {
        "train": [index[c] for c in rest if c not in val],
        "val": [index[c] for c in rest if c in val],
        "test": [index[c] for c in characters if c in test],
    }


@specs.register("omniglot")
def spec(cfg) -> DataSpec:
    """Raw Omniglot drawings (dark strokes on light paper, any size) -> ink = 1, 28×28×1."""
    if cfg.protocol != "few_shot":
        return supervised.spec(cfg.protocol, cfg.ways, cfg.image_size, channels=1, invert=True)
    return image_spec(cfg.ways, cfg.image_size, channels=1, invert=True)


@sources.register("omniglot")
def make(cfg):
    loaded = load_omniglot(
        cfg.root,
        archives=archives_of(cfg),
        image_size=cfg.image_size,
        cache_dir=cfg.cache_dir or None,
        download=cfg.download,
    )
    splits = split_characters(loaded, cfg)
    images = {split: loaded["images"][rows] for split, rows in splits.items()}
    if cfg.protocol != "few_shot":
        return supervised.task_source(images["train"], cfg)
    return image_task_source(images, cfg)
