"""Prepared image datasets as compact host arrays: a checksummed ``.npz`` cache and resizing.

A dataset is prepared once, through its TFDS builder, into ``uint8 [classes, samples, H, W, C]``
plus per-class names. Decoding thousands of records takes seconds to minutes, so the result is
kept as one uncompressed ``.npz`` that loads in well under a second. The file carries a SHA-256
of its own contents: a truncated or bit-flipped cache is reported and rebuilt, never used.

Both the ``.npz`` and the TFDS-prepared records are keyed by the source files (a
:func:`fingerprint` each loader computes from ``data.root`` before looking at any cache): a
replaced or corrected archive is prepared again, and a ``data.root`` that does not hold the
files is refused even where a cache of an earlier run exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from metarun.config import ConfigError, DataError

log = logging.getLogger(__name__)

# Bump when the preparation of any cached array changes, so old caches are not reused.
CACHE_FORMAT = 1
_CHECKSUM_KEY = "__sha256__"
_SOURCE_KEY = "__source__"  # the fingerprint of the files the arrays were prepared from
SOURCE_FILE = "metarun_source.txt"  # the same, beside a TFDS-prepared dataset's records


# uint8 -> [0, 1] is a multiply by this float32, here and in the on-device sampler, so that a
# user's images reach the model bit for bit as the evaluation's did (XLA compiles x / 255 as a
# multiply by the reciprocal, which differs from numpy's division in the last bit; the sequence
# learners order a support set by the exact bits of its images, algos/mann.py set_order).
PIXEL_SCALE = np.float32(1 / 255)


def default_cache_dir() -> Path:
    """TFDS's data dir (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Resolved by hand, the way TFDS does, because a cached load must not import TFDS.
    """
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def source_dir(
    root: str | os.PathLike, data_dir: Path, instructions: str, required: bool = True
) -> Path:
    """The folder ``data.root`` names (TFDS's manual dir; "" is TFDS's default,
    ``<data_dir>/downloads/manual``), checked to exist unless not ``required``.

    Raises:
      DataError: naming ``data.root`` and the path, when the folder does not exist.
    """
    folder = Path(root).expanduser() if root else data_dir / "downloads" / "manual"
    if required and not folder.is_dir():
        where = f"data.root={root}" if root else f"data.root is unset and {folder}"
        raise DataError(
            f"{where} is not a folder ({folder.absolute()} does not exist): set data.root to the "
            f"folder that holds the files.\n{instructions}"
        )
    return folder


def file_digest(path: Path) -> str:
    """``"<name> <size> sha256:<hex>"``: what a file holds, whatever its name or date."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"{path.name} {path.stat().st_size} sha256:{digest.hexdigest()}"


def file_stamp(path: Path) -> str:
    """``"<name> <size> <mtime in ns>"``: a file's identity without reading it (a replaced or
    re-copied file has a new modification time, unless the copy kept the old one)."""
    stat = path.stat()
    return f"{path.name} {stat.st_size} {stat.st_mtime_ns}"


def fingerprint(lines: list[str]) -> str:
    """One short key for the source files, from a line per file (:func:`file_digest`,
    :func:`file_stamp`)."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike | None, name: str) -> Path:
    """Where the arrays called ``name`` are cached: ``<cache_dir>/metarun_arrays/<name>-vN.npz``."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return root / "metarun_arrays" / f"{name}-v{CACHE_FORMAT}.npz"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def ensure_writable(folder: Path) -> None:
    """Creates ``folder`` if needed and checks that a file can be written in it.

    Loaders call this before preparing a dataset, so an unusable ``data.cache_dir`` fails at
    once with the fix, not minutes later with a ``PermissionError`` from inside TFDS.

    Raises:
      ConfigError: the folder cannot be created (say, a path under a regular file) or is not
        writable (read-only folder or file system).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(
            f"data.cache_dir is invalid: cannot write to {folder} ({e}); "
            "set data.cache_dir to a writable folder"
        ) from None


def save_cached(path: Path, arrays: dict[str, np.ndarray], source: str = "") -> None:
    """Writes ``arrays``, their checksum and the ``source`` they were prepared from (a
    :func:`fingerprint`); atomically, so a crash leaves no half file."""
    ensure_writable(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            extra = {_CHECKSUM_KEY: np.array(_checksum(arrays)), _SOURCE_KEY: np.array(source)}
            np.savez(f, **arrays, **extra)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_cached(path: Path, source: str | None = None) -> dict[str, np.ndarray] | None:
    """The arrays saved at ``path``, or None if there are none, they fail their checksum or
    were prepared from other files than ``source`` says (not checked when None)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        expected = str(arrays.pop(_CHECKSUM_KEY))
        made_from = str(arrays.pop(_SOURCE_KEY, ""))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("cache %s is unreadable (%s); rebuilding it", path, e)
        return None
    if _checksum(arrays) != expected:
        log.warning("cache %s fails its checksum; rebuilding it", path)
        return None
    if source is not None and made_from != source:
        log.warning("cache %s was prepared from other files than data.root's; rebuilding it", path)
        return None
    return arrays


def prepare_builder(builder, source: str, **download_config) -> None:
    """``builder.download_and_prepare``, generating the records again if they were prepared
    from other files than ``source`` says.

    TFDS reuses a prepared dataset whatever files it came from, so ``source`` is kept beside
    the records (:data:`SOURCE_FILE`); records without it, or with another, are generated
    again (TFDS's ``REUSE_CACHE_IF_EXISTS``: a downloaded archive is not fetched again).
    """
    import tensorflow_datasets as tfds

    marker = Path(builder.data_dir) / SOURCE_FILE
    try:
        same = marker.read_text() == source
    except OSError:
        same = False
    if not same:
        download_config["download_mode"] = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**download_config))
    marker.write_text(source)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [H, W, C]`` (C = 1 or 3) to ``[size, size, C]`` with Lanczos filtering.

    Lanczos is what the reference preprocessing used: Finn et al.'s MAML Omniglot script and
    Ravi & Larochelle's mini-ImageNet script both call Pillow's ``resize(..., LANCZOS)``.
    """
    if image.shape[:2] == (size, size):
        return image
    squeezed = image[..., 0] if image.shape[-1] == 1 else image
    out = np.asarray(Image.fromarray(squeezed).resize((size, size), Image.Resampling.LANCZOS))
    return out.reshape(size, size, image.shape[-1])


def prepare_images(images, size: int, channels: int, invert: bool) -> np.ndarray:
    """Raw images as a user has them -> ``float32 [n, size, size, channels]`` in [0, 1].

    The same steps as the dataset's preparation: to ``channels`` (RGB to grey with Pillow's
    ``convert("L")`` weights, grey to RGB by repetition), ``255 - x`` when ``invert``
    (Omniglot: dark strokes become ink = 1), Lanczos :func:`resize`, ``/ 255``.

    Args:
      images: ``uint8`` ``[n, H, W]`` or ``[n, H, W, 1 | 3]``, any ``H × W``; floats in
        [0, 1] are taken as ``uint8 / 255``. Booleans (Omniglot's 1-bit PNGs) as 0 / 255.
    """
    x = np.asarray(images)
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    elif x.dtype != np.uint8:
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"float images must lie in [0, 1] (uint8 / 255), got [{x.min()}, {x.max()}]"
            )
        x = np.round(x * 255).astype(np.uint8)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [n, H, W] or [n, H, W, 1 or 3], got shape {x.shape}")
    if x.shape[-1] != channels:
        if channels == 3:
            x = np.repeat(x, 3, axis=-1)
        else:  # ITU-R 601-2 luma, as Pillow's convert("L")
            x = np.round(x @ np.array([0.299, 0.587, 0.114])[:, None]).astype(np.uint8)
    if invert:
        x = 255 - x
    return np.stack([resize(image, size) for image in x]).astype(np.float32) * PIXEL_SCALE
