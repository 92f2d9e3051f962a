"""The Omniglot splits metarun meta-trains, validates and tests on, as markdown tables.

For each ``data.split`` whose archives are in the data root (``minimal1`` and ``minimal2``
need ``images_background_small1.zip`` and ``..._small2.zip``; ``characters`` and
``alphabets`` need ``images_background.zip`` and ``images_evaluation.zip``), one table of the
train, validation and test alphabets (with their numbers of characters), their characters
and their classes, computed by the ``split_characters`` that ``metarun`` runs, on the
composed ``data=omniglot`` config:

    python scripts/omniglot_splits.py                           # ../shared/data/omniglot
    python scripts/omniglot_splits.py --root /data/omniglot data.split_seed=1

Further arguments are ``data.*`` overrides, as on the ``metarun`` command line; the archives
are prepared and cached as ``metarun`` does (``data.cache_dir``).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from metarun.config import compose, validate
from metarun.data import omniglot
from metarun.data.omniglot_tfds import ARCHIVES, load_omniglot

# The archives each split reads (``characters`` and ``alphabets``: data.archives' default).
NEEDS = {
    "minimal1": ("small1", "small2"),
    "minimal2": ("small1", "small2"),
    "characters": ("background", "evaluation"),
    "alphabets": ("background", "evaluation"),
}
TITLES = {"train": "meta-train", "val": "validation", "test": "meta-test"}


def available(root: Path) -> list[str]:
    """The splits whose archives are all in ``root``."""
    present = {name for name, a in ARCHIVES.items() if (root / a.filename).is_file()}
    return [split for split, needs in NEEDS.items() if present >= set(needs)]


def table(loaded: dict, data) -> str:
    """The markdown table of one split: alphabets, characters and classes per part."""
    splits = omniglot.split_characters(loaded, data)
    rotations = 4 if data.rotations else 1
    classes = "classes (× 4 rotations)" if data.rotations else "classes"
    lines = [f"| part | alphabets: characters | characters | {classes} |", "|---|---|---|---|"]
    for part, rows in splits.items():
        per_alphabet = Counter(loaded["alphabets"][i] for i in rows)
        names = ", ".join(f"{a.replace('_', ' ')}: {n}" for a, n in sorted(per_alphabet.items()))
        lines.append(f"| {TITLES[part]} | {names} | {len(rows):,} | {rotations * len(rows):,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.split_seed=1")
    args = parser.parse_args(argv)
    splits = available(args.root)
    if not splits:
        raise SystemExit(f"no Omniglot archives in {args.root} (see docs/data.md)")
    for split in splits:
        overrides = ["data=omniglot", f"data.root={args.root}", f"data.split={split}"]
        data = validate(compose([*overrides, *args.overrides])).data
        loaded = load_omniglot(
            args.root, omniglot.archives_of(data), data.image_size, data.cache_dir or None
        )
        seed = f"data.split_seed={data.split_seed}, data.val_fraction={data.val_fraction}"
        print(f"`data.split={split}` ({seed})\n\n{table(loaded, data)}\n")


if __name__ == "__main__":
    main()
