"""mini-ImageNet with Ravi & Larochelle's class split (64 / 16 / 20 classes), as host arrays.

Either standard distribution in ``root`` (TFDS's manual dir) -> the TFDS builder
``metarun_mini_imagenet`` writes array_record files into the TFDS data dir (no TensorFlow
needed) -> :func:`load_mini_imagenet` stacks one split into ``uint8 [classes, 600, 84, 84, 3]``,
cached as a checksummed ``.npz`` (:mod:`metarun.data.arrays`) keyed by the source files' sizes
and modification times (:func:`_source`).

The pickle distribution is read with :func:`load_pickle`, which builds only numpy arrays and
plain containers: a pickle from the internet is otherwise a program that runs on load.

Reference: S. Ravi, H. Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017;
the images are those of O. Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS
2016. The pickles are those of M. Ren et al., "Meta-Learning for Semi-Supervised Few-Shot
Classification", ICLR 2018.
"""

from __future__ import annotations

import csv
import functools
import os
import pickle
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from metarun.config import DataError
from metarun.data import arrays

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84

INSTRUCTIONS = """\
Put one of the two standard mini-ImageNet distributions (Ravi & Larochelle's split) in the
manual directory (metarun's data.root; for plain TFDS, <data_dir>/downloads/manual):
  1. train.csv, val.csv, test.csv (header filename,label) and images/ holding the JPEGs they
     name, e.g. images/n0153282900000005.jpg; or
  2. mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl, mini-imagenet-cache-test.pkl.
Where both are present for a split, the pickle is used."""

# What a mini-ImageNet pickle needs beyond dicts, lists, str and int: numpy's array and scalar
# reconstructors under their numpy 1 and numpy 2 module names, and ``_codecs.encode``, through
# which protocol 2 writes bytes (it only re-encodes a string).
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _Refused(pickle.UnpicklingError):
    """The pickle names a global outside ``_SAFE_GLOBALS``; told apart from a damaged file."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise _Refused(
                f"refusing to load {module}.{name}: a mini-ImageNet pickle holds only numpy "
                "arrays, dicts, lists, str and int, so this file is not one (or is malicious)"
            )
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> dict:
    """A ``mini-imagenet-cache-<split>.pkl``, checked: ``image_data`` and ``class_dict``.

    Raises:
      DataError: the file names anything but the numpy functions above (nothing it names is
        called), is truncated or corrupt, or holds something other than the expected dict.
    """
    with open(path, "rb") as f:
        try:
            # latin1: how numpy arrays pickled by Python 2 decode (numpy's own advice).
            data = _ArrayUnpickler(f, encoding="latin1").load()
        except _Refused as e:
            raise DataError(
                f"{path}: {e}. Delete it, and use the official pickles or the CSV "
                "distribution.\n" + INSTRUCTIONS
            ) from None
        # A damaged pickle can fail in almost any way: EOFError when truncated, and, as the
        # pickle docs warn, UnpicklingError, AttributeError, IndexError and others.
        except Exception as e:
            raise DataError(
                f"{path} is truncated or corrupt ({type(e).__name__}: {e}); replace it with a "
                "fresh, complete download.\n" + INSTRUCTIONS
            ) from e
    images = data.get("image_data") if isinstance(data, dict) else None
    classes = data.get("class_dict") if isinstance(data, dict) else None
    if not (
        isinstance(images, np.ndarray)
        and images.dtype == np.uint8
        and images.ndim == 4
        and images.shape[-1] == 3
        and isinstance(classes, dict)
        and all(isinstance(rows, list) for rows in classes.values())
    ):
        raise DataError(
            f"{path} is not a mini-ImageNet pickle: expected a dict with image_data "
            "(uint8 [N, 84, 84, 3]) and class_dict ({wnid: [row, ...]}); replace it with the "
            "official file.\n" + INSTRUCTIONS
        )
    return data


def _check_class_sizes(path: Path, sizes: dict[str, int]) -> None:
    """Every class must hold as many images as the largest one (600 in the official files).

    Checked while TFDS prepares, not after: a prepared dataset is kept, so a damaged file found
    later would stay in use even once replaced.
    """
    most = max(sizes.values(), default=0)
    short = sorted((n, label) for label, n in sizes.items() if n < most)
    if short:
        count, label = short[0]
        raise DataError(
            f"{path}: class {label} has {count} images but the largest class has {most}; every "
            "class must have as many (600 in the official files), so the file is damaged or not "
            "Ravi & Larochelle's split: replace it with a fresh download.\n" + INSTRUCTIONS
        )


def _pickle_examples(path: Path):
    data = load_pickle(path)
    _check_class_sizes(path, {label: len(rows) for label, rows in data["class_dict"].items()})
    for label, rows in data["class_dict"].items():
        for index, row in enumerate(rows):
            image = arrays.resize(data["image_data"][int(row)], IMAGE_SIZE)
            yield f"{label}/{index}", {"image": image, "label": label, "index": index}


def _csv_examples(path: Path, image_dir: Path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["filename", "label"]:
        raise DataError(
            f"{path}: expected the header 'filename,label', got {rows[:1]}; replace it with "
            "the official file.\n" + INSTRUCTIONS
        )
    _check_class_sizes(path, Counter(label for _, label in rows[1:]))
    counts = defaultdict(int)
    for filename, label in rows[1:]:
        index = counts[label]
        counts[label] += 1
        try:
            with Image.open(image_dir / filename) as image:
                rgb = np.asarray(image.convert("RGB"))
        except OSError as e:  # missing, or not an image (PIL.UnidentifiedImageError)
            raise DataError(
                f"{image_dir / filename}, listed in {path}, is missing or unreadable ({e}); "
                "replace the images/ folder with a fresh, complete copy.\n" + INSTRUCTIONS
            ) from e
        yield (
            f"{label}/{index}",
            {"image": arrays.resize(rgb, IMAGE_SIZE), "label": label, "index": index},
        )


def _split_file(manual_dir: Path, split: str) -> Path:
    """The file a split is read from: its pickle where there is one, else its CSV."""
    pickled = manual_dir / f"mini-imagenet-cache-{split}.pkl"
    listed = manual_dir / f"{split}.csv"
    if pickled.exists():
        return pickled
    if listed.exists():
        return listed
    raise DataError(
        f"mini-ImageNet {split} split: neither {pickled.name} nor {listed.name} is in "
        f"{manual_dir} (data.root).\n{INSTRUCTIONS}"
    )


def _split_examples(manual_dir: Path, split: str):
    path = _split_file(manual_dir, split)
    if path.suffix == ".pkl":
        return _pickle_examples(path)
    return _csv_examples(path, manual_dir / "images")


def _source(manual_dir: Path) -> str:
    """What the splits are prepared from, the key of their caches: every file read, each by
    name, size and modification time (:func:`arrays.file_stamp`).

    Not by content, unlike Omniglot's archives: the pickles are 1.3 GB together and the CSV
    distribution 60,000 JPEGs, seconds to hash on every load that the cache exists to make
    take well under one. A replaced or corrected file has a new modification time, unless it
    was copied keeping the old one (``cp -p``, ``rsync -t``) and has the same size.

    Raises:
      DataError: a split has neither its pickle nor its CSV in ``data.root``.
    """
    files = [_split_file(manual_dir, split) for split in SPLITS]
    images = manual_dir / "images"  # the JPEGs the CSVs name
    if any(path.suffix == ".csv" for path in files) and images.is_dir():
        with os.scandir(images) as entries:
            files += sorted(Path(entry.path) for entry in entries)
    return arrays.fingerprint([arrays.file_stamp(path) for path in files])


def builder_class():
    """The TFDS builder ``metarun_mini_imagenet``: splits ``train``, ``val``, ``test``."""
    # Imported before the class is defined: TFDS's first import in a process defines and
    # registers it (metarun.data.register_tfds_builders), which must not happen twice.
    import tensorflow_datasets  # noqa: F401

    return _builder_class()


@functools.cache  # one class per process: TFDS registers builders by name
def _builder_class():
    import tensorflow_datasets as tfds

    class MetarunMiniImagenet(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="mini-ImageNet, Ravi & Larochelle's split, 84x84 RGB.",
                features=tfds.features.FeaturesDict(
                    {
                        # One raw byte string per image. PNG would need TensorFlow to encode
                        # and barely shrinks photos; the default Tensor encoding stores uint8 as
                        # varints, 1.5x larger and 50x slower. Size matters beyond disk: TFDS's
                        # writer needs TensorFlow once a split exceeds 1 GB in memory, and the
                        # train split is 0.82 GB this way (1.2 GB as varints).
                        "image": tfds.features.Tensor(
                            shape=(84, 84, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                        ),
                        "label": tfds.features.Text(),  # WordNet id, e.g. "n01532829"
                        "index": tfds.features.Scalar(np.int32),  # order within its class
                    }
                ),
                homepage="https://github.com/twitter/meta-learning-lstm",
            )

        def _split_generators(self, dl_manager):
            try:
                manual_dir = dl_manager.manual_dir
            except AssertionError as e:  # how TFDS reports a missing or empty manual dir
                raise DataError(f"mini-ImageNet files are missing: {e}") from None
            # Every split's files are found before any is read, so a missing one fails at once.
            examples = {split: _split_examples(manual_dir, split) for split in SPLITS}
            return {split: self._generate_examples(gen) for split, gen in examples.items()}

        def _generate_examples(self, examples):
            yield from examples

    return MetarunMiniImagenet


def _prepare(manual_dir: Path, split: str, data_dir: Path, source: str) -> dict[str, np.ndarray]:
    builder = builder_class()(data_dir=os.fspath(data_dir), file_format="array_record")
    arrays.prepare_builder(
        builder,
        source,
        manual_dir=os.fspath(manual_dir),
        try_download_gcs=False,  # TFDS would otherwise probe its GCS bucket first
    )
    by_class = defaultdict(dict)  # wnid -> {index within class: image}
    for example in builder.as_data_source(split=split):  # TFDS returns Text as bytes
        by_class[example["label"].decode()][int(example["index"])] = example["image"]
    classes = sorted(by_class)  # all of one size: the example generators checked them
    images = np.stack([[by_class[c][i] for i in sorted(by_class[c])] for c in classes])
    return {"images": images, "classes": np.array(classes)}


def load_mini_imagenet(
    root: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None
) -> dict:
    """One split of mini-ImageNet, as one array for episode sampling.

    All three splits are prepared once through the TFDS builder; each split is then cached as
    ``.npz`` under ``<cache_dir>/metarun_arrays``, and later calls read only that, as long as
    the files in ``root`` are the same (:func:`_source`); other files are prepared again.

    Args:
      root: folder with either distribution (TFDS's manual dir); see ``INSTRUCTIONS``.
      split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
      cache_dir: TFDS data dir for the prepared records and the ``.npz`` cache; default
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.

    Returns:
      dict with ``images``: ``uint8 [classes, 600, 84, 84, 3]``, RGB in 0..255 (images of
      another size resized with Lanczos); ``classes``: the WordNet ids, sorted, one per row.
      Within a class, images keep their order in the CSV or in the pickle's ``class_dict``.

    Raises:
      DataError: ``root`` is not a folder, or a file is missing, truncated, corrupt or
        refused (a pickle that names other globals), or one class (an empty one included) has
        fewer images than the others; the message names the file, the class and the fix.
      ValueError: an unknown split.
      ConfigError: ``cache_dir`` cannot be written, when a split must be prepared.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown mini-ImageNet split {split!r}; known: {list(SPLITS)}")
    data_dir = arrays.default_cache_dir() if cache_dir is None else Path(cache_dir)
    # The files are found before any cache is read: none is used for a data.root without them.
    manual_dir = arrays.source_dir(root, data_dir, INSTRUCTIONS)
    source = _source(manual_dir)
    path = arrays.cache_path(data_dir, f"mini_imagenet-{split}")
    loaded = arrays.load_cached(path, source)
    if loaded is None:
        arrays.ensure_writable(data_dir)
        loaded = _prepare(manual_dir, split, data_dir, source)
        arrays.save_cached(path, loaded, source)
    return {"images": loaded["images"], "classes": loaded["classes"].tolist()}
