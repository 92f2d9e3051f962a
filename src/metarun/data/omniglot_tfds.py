"""Omniglot (Lake et al., 2015) from its official zip archives, as host arrays.

Path of the data: the archives in ``root`` (TFDS's manual dir) -> the TFDS builder
``metarun_omniglot/<archive>`` writes array_record files into the TFDS data dir (no TensorFlow
needed) -> :func:`load_omniglot` decodes them into ``uint8 [characters, drawers, S, S, 1]``,
cached as a checksummed ``.npz`` (:mod:`metarun.data.arrays`) keyed by the archive's SHA-256.
The second load hashes the archive, reads the ``.npz`` and never imports TFDS.

Reference: B. M. Lake, R. Salakhutdinov, J. B. Tenenbaum, "Human-level concept learning through
probabilistic program induction", Science 2015. https://github.com/brendenlake/omniglot
"""

from __future__ import annotations

import functools
import io
import os
import zipfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from metarun.config import DataError
from metarun.data import arrays


class Archive(NamedTuple):
    filename: str
    size: int  # bytes
    sha256: str


URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
# Sizes and SHA-256 as TFDS records them for its own omniglot builder (url_checksums/omniglot.txt).
ARCHIVES = {
    "background": Archive(
        "images_background.zip",
        9464212,
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    ),
    "evaluation": Archive(
        "images_evaluation.zip",
        6462886,
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
    ),
    "small1": Archive(
        "images_background_small1.zip",
        1319022,
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    ),
    "small2": Archive(
        "images_background_small2.zip",
        1580917,
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    ),
}

INSTRUCTIONS = f"""\
Put the official Omniglot archives, unchanged, in the manual directory (metarun's data.root;
for plain TFDS, <data_dir>/downloads/manual): images_background.zip (30 alphabets, 964
characters) and images_evaluation.zip (20 alphabets, 659 characters), or the minimal
images_background_small1.zip and images_background_small2.zip, all from {URL}
Or pass download=True to fetch them from there, checksums verified."""


# What every drawing in the official archives is: a different size or count means a damaged
# archive or another dataset, refused rather than resized or silently dropped.
DRAWING_SIZE = 105
DRAWINGS_PER_CHARACTER = 20


def _damaged(path: os.PathLike, fault: str) -> DataError:
    return DataError(
        f"{path}: {fault}; the archive is damaged or not an official one: replace it with a "
        "fresh copy.\n" + INSTRUCTIONS
    )


def _check_drawing_counts(path: os.PathLike, members: list[str]) -> None:
    """Every character folder, empty ones included, must hold 20 PNGs."""
    drawings = Counter()
    for member in members:
        parts = member.split("/")
        if len(parts) == 4:  # <top>/<Alphabet>/<characterNN>/<file>, or "" for the folder entry
            drawings["/".join(parts[1:3])] += parts[3].endswith(".png")
    wrong = sorted((c, n) for c, n in drawings.items() if n != DRAWINGS_PER_CHARACTER)
    if wrong:
        character, count = wrong[0]
        more = f" ({len(wrong) - 1} other characters too)" if len(wrong) > 1 else ""
        raise _damaged(
            path,
            f"character {character} has {count} drawings{more}, but every Omniglot character "
            f"has {DRAWINGS_PER_CHARACTER}",
        )


def _read_examples(path: os.PathLike):
    """``(key, example)`` for every ``<top>/<Alphabet>/<characterNN>/<id>_<drawer>.png``.

    The PNGs are one-bit with dark strokes; they are kept that way (0 = stroke, 255 =
    background) so the prepared dataset is the archive, and polarity is the loader's choice.
    They go to TFDS as 8-bit Pillow images: TFDS encodes those with Pillow (arrays would need
    TensorFlow), and 8-bit decodes to 0/255 with either of its decoders (Pillow reads a
    one-bit PNG as 0/1, OpenCV as 0/255).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = sorted(archive.namelist())
            # Checked while TFDS prepares, not after: a prepared dataset is kept, so a damaged
            # archive found later would stay in use even once replaced.
            _check_drawing_counts(path, members)
            for member in members:
                parts = member.split("/")
                if len(parts) != 4 or not parts[3].endswith(".png"):
                    continue  # folder entries
                _, alphabet, character, filename = parts
                image = Image.open(io.BytesIO(archive.read(member)))
                if image.size != (DRAWING_SIZE, DRAWING_SIZE):
                    raise _damaged(
                        path,
                        f"{member} is {image.width}x{image.height} pixels, but every Omniglot "
                        f"drawing is {DRAWING_SIZE}x{DRAWING_SIZE}",
                    )
                yield (
                    member,
                    {
                        "image": image.convert("L"),
                        "alphabet": alphabet,
                        "character": character,
                        "drawer": int(filename[: -len(".png")].split("_")[1]),
                    },
                )
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(
            f"{path} is not a readable Omniglot archive ({e}); it is probably truncated or "
            "corrupt: replace it with a fresh copy.\n" + INSTRUCTIONS
        ) from e


def _archive_path(dl_manager, archive: Archive, download: bool):
    try:
        path = dl_manager.manual_dir / archive.filename
    except AssertionError as e:  # how TFDS reports a missing or empty manual dir
        path, where = None, str(e)
    else:
        where = f"not in the manual directory {dl_manager.manual_dir}.\n{INSTRUCTIONS}"
    if path is not None and path.exists():
        return path
    if download:
        return dl_manager.download(URL + archive.filename)
    raise DataError(f"Omniglot archive {archive.filename} is missing: {where}")


def builder_class():
    """The TFDS builder ``metarun_omniglot``, one config per archive, one ``train`` split.

    Its constructor takes TFDS's arguments plus ``download`` (default False): whether a missing
    archive may be fetched from the official URL instead of failing.
    """
    # Imported before the class is defined: TFDS's first import in a process defines and
    # registers it (metarun.data.register_tfds_builders), which must not happen twice.
    import tensorflow_datasets  # noqa: F401

    return _builder_class()


@functools.cache  # one class per process: TFDS registers builders by name
def _builder_class():
    import tensorflow_datasets as tfds

    class MetarunOmniglot(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [
            tfds.core.BuilderConfig(name=name, description=archive.filename)
            for name, archive in ARCHIVES.items()
        ]
        MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
        # Shadows TFDS's lookup of a checksums file beside the module: the download manager
        # verifies every fetched archive against these sizes and hashes.
        url_infos = {
            URL + a.filename: tfds.download.checksums.UrlInfo(a.size, a.sha256, a.filename)
            for a in ARCHIVES.values()
        }

        def __init__(self, *, download: bool = False, **kwargs):
            super().__init__(**kwargs)
            self._download = download

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Omniglot handwritten characters; image: 0 = stroke, 255 = paper.",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(DRAWING_SIZE, DRAWING_SIZE, 1)),
                        "alphabet": tfds.features.Text(),
                        "character": tfds.features.Text(),  # "character01", within its alphabet
                        "drawer": tfds.features.Scalar(np.int32),  # 1..20
                    }
                ),
                homepage="https://github.com/brendenlake/omniglot",
            )

        def _split_generators(self, dl_manager):
            archive = ARCHIVES[self.builder_config.name]
            path = _archive_path(dl_manager, archive, self._download)
            return {"train": self._generate_examples(path)}

        def _generate_examples(self, path):
            yield from _read_examples(path)

    return MetarunOmniglot


def _source(folder: Path, root, archive: Archive, download: bool) -> str:
    """What the archive holds (:func:`arrays.file_digest`), the key of its caches.

    Its SHA-256, read in full on every load: the archives are at most 9.5 MB, a few
    milliseconds. An archive still to be downloaded is keyed by the official checksum, which
    TFDS verifies the download against (``force_checksums_validation``).

    Raises:
      DataError: the archive is not in ``data.root`` and may not be downloaded.
    """
    path = folder / archive.filename
    if path.is_file():
        return arrays.fingerprint([arrays.file_digest(path)])
    if download:
        return arrays.fingerprint([f"{archive.filename} {archive.size} sha256:{archive.sha256}"])
    where = f"data.root={root}" if root else f"data.root is unset, and {folder}"
    raise DataError(
        f"{where}: the Omniglot archive {archive.filename} is not there ({path} does not exist); "
        f"put it there, or set data.download=true to fetch it.\n{INSTRUCTIONS}"
    )


def _prepare(folder: Path, name: str, image_size: int, data_dir: Path, download: bool, source: str):
    builder = builder_class()(
        config=name, data_dir=os.fspath(data_dir), file_format="array_record", download=download
    )
    arrays.prepare_builder(
        builder,
        source,
        manual_dir=os.fspath(folder),
        try_download_gcs=False,  # TFDS would otherwise probe its GCS bucket first
        force_checksums_validation=True,
    )
    drawings = defaultdict(dict)  # "Alphabet/characterNN" -> {drawer: image}
    for example in builder.as_data_source(split="train"):  # TFDS returns Text as bytes
        character = f"{example['alphabet'].decode()}/{example['character'].decode()}"
        drawings[character][int(example["drawer"])] = example["image"]
    characters = sorted(drawings)  # each with 20 drawings: _read_examples checked them
    # Ink is 255: strokes (0 in the archive) become the bright pixels a network sees as 1.
    images = np.stack(
        [
            [arrays.resize(255 - drawings[c][d], image_size) for d in sorted(drawings[c])]
            for c in characters
        ]
    )
    return {"images": images, "characters": np.array(characters)}


def load_omniglot(
    root: str | os.PathLike,
    archives: tuple[str, ...] = ("small1",),
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> dict:
    """Omniglot characters from the given archives, as one array for episode sampling.

    Each archive is prepared once through the TFDS builder and cached as ``.npz`` under
    ``<cache_dir>/metarun_arrays``, keyed by archive name, image size and the archive's content
    (SHA-256); later calls hash the archive and read only that. A replaced archive is prepared
    again, records included.

    Args:
      root: folder with the archives (TFDS's manual dir), e.g. ``images_background_small1.zip``.
      archives: names from ``ARCHIVES``: ``background``, ``evaluation``, ``small1``, ``small2``
        (one name alone also works).
      image_size: side of the square output; 105 keeps the original drawings.
      cache_dir: TFDS data dir for the prepared records and the ``.npz`` cache; default
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      download: fetch a missing archive from the official URL. Off by default: without it a
        missing archive fails at once with instructions, and the network is never touched.

    Returns:
      dict with ``images``: ``uint8 [characters, 20, image_size, image_size, 1]``, ink = 255 and
      paper = 0, grey on stroke edges from Lanczos resizing (no threshold, as in Finn et al.'s
      MAML preprocessing); divide by 255 for strokes = 1, background = 0. ``characters``:
      ``"Alphabet/characterNN"`` per row, sorted; ``alphabets``: the alphabet of each row;
      ``archives``: the first archive in ``archives`` that holds it. Drawers are in order 1..20.
      A character in several archives (Greek and Latin are in both minimal ones) appears once.

    Raises:
      DataError: ``root`` is not a folder (unless ``download``); an archive is missing,
        unreadable or damaged (a character without 20 drawings, a drawing not 105x105); the
        message names ``data.root``, the archive, the member and the fix.
      ValueError: an unknown archive name or image size.
      ConfigError: ``cache_dir`` cannot be written, when an archive must be prepared.
    """
    archives = (archives,) if isinstance(archives, str) else tuple(archives)
    unknown = set(archives) - set(ARCHIVES)
    if unknown or not archives:
        raise ValueError(f"unknown Omniglot archives {sorted(unknown)}; known: {list(ARCHIVES)}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    data_dir = arrays.default_cache_dir() if cache_dir is None else Path(cache_dir)
    # Every archive is found before any is read, and before any cache: a cache is never used
    # for a data.root that does not hold its archive.
    folder = arrays.source_dir(root, data_dir, INSTRUCTIONS, required=not download)
    sources = {name: _source(folder, root, ARCHIVES[name], download) for name in archives}
    drawings, source = {}, {}
    for name in archives:
        path = arrays.cache_path(data_dir, f"omniglot-{name}-{image_size}px")
        loaded = arrays.load_cached(path, sources[name])
        if loaded is None:
            arrays.ensure_writable(data_dir)
            loaded = _prepare(folder, name, image_size, data_dir, download, sources[name])
            arrays.save_cached(path, loaded, sources[name])
        for character, images in zip(loaded["characters"].tolist(), loaded["images"], strict=True):
            if character in drawings and not np.array_equal(drawings[character], images):
                raise DataError(
                    f"{character} differs between archives {source[character]} and {name}: "
                    "one of them is damaged or not an official one; replace both with fresh "
                    "copies"
                )
            drawings.setdefault(character, images)
            source.setdefault(character, name)
    characters = sorted(drawings)
    return {
        "images": np.stack([drawings[c] for c in characters]),
        "alphabets": [c.split("/")[0] for c in characters],
        "characters": characters,
        "archives": [source[c] for c in characters],
    }
