"""Omniglot loader: the real minimal archives, synthetic full ones, failures, the cache."""

import errno
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metarun.config import ConfigError, DataError
from metarun.data import arrays
from metarun.data.omniglot_tfds import load_omniglot

from . import fixtures

SMALL1 = ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
SMALL2 = ["Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    fixtures.block_network(monkeypatch)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    if not fixtures.OMNIGLOT_DIR.is_dir():
        pytest.skip(f"real Omniglot archives not found at {fixtures.OMNIGLOT_DIR}")
    return tmp_path_factory.mktemp("omniglot_cache")


@pytest.fixture
def full_root(tmp_path):
    """Synthetic official archives: 3 alphabets x 2 characters x 20 drawers each."""
    root = tmp_path / "omniglot"
    root.mkdir()
    fixtures.omniglot_zip(root, "images_background", ["Bravo", "Alpha", "Charlie"], seed=1)
    fixtures.omniglot_zip(root, "images_evaluation", ["Delta", "Echo", "Foxtrot"], seed=2)
    return root


@pytest.mark.parametrize(
    "archive, alphabets, characters", [("small1", SMALL1, 136), ("small2", SMALL2, 156)]
)
def test_real_minimal_archives(real_cache, archive, alphabets, characters):
    out = load_omniglot(fixtures.OMNIGLOT_DIR, (archive,), cache_dir=real_cache)
    images = out["images"]
    assert images.shape == (characters, 20, 28, 28, 1) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    # Ink is bright: most pixels are background (0); strokes cover a few percent.
    assert 0.02 < images.mean() / 255 < 0.2
    assert np.median(images) == 0
    assert sorted(set(out["alphabets"])) == alphabets
    assert out["characters"] == sorted(out["characters"])
    assert out["characters"][0] == f"{alphabets[0]}/character01"
    assert out["archives"] == [archive] * characters


def test_real_archives_merge_shared_characters_once(real_cache):
    out = load_omniglot(fixtures.OMNIGLOT_DIR, ("small1", "small2"), cache_dir=real_cache)
    # Greek (24 characters) and Latin (26) are in both archives.
    assert out["images"].shape == (136 + 156 - 24 - 26, 20, 28, 28, 1)
    assert len(set(out["characters"])) == len(out["characters"])
    archive_of = dict(zip(out["characters"], out["archives"], strict=True))
    assert archive_of["Greek/character01"] == "small1"
    assert archive_of["Tagalog/character01"] == "small2"


def test_full_archives_counts_order_and_pixels(full_root, tmp_path):
    out = load_omniglot(full_root, ("evaluation", "background"), 105, cache_dir=tmp_path / "c")
    assert out["images"].shape == (12, 20, 105, 105, 1)
    assert out["alphabets"] == sorted(["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot"] * 2)
    assert out["characters"][:3] == ["Alpha/character01", "Alpha/character02", "Bravo/character01"]
    assert out["archives"] == ["background"] * 6 + ["evaluation"] * 6
    # At full size the pixels are the archive's, inverted: drawer 3 of Bravo/character02.
    with zipfile.ZipFile(full_root / "images_background.zip") as z:
        png = z.read("images_background/Bravo/character02/0002_03.png")
    original = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    np.testing.assert_array_equal(out["images"][3, 2, :, :, 0], 255 - original)


def test_resized_images_keep_grey_stroke_edges(full_root, tmp_path):
    images = load_omniglot(full_root, ("background",), 28, cache_dir=tmp_path)["images"]
    assert images.shape == (6, 20, 28, 28, 1)
    assert ((images > 0) & (images < 255)).any()


@pytest.mark.parametrize("make_root", ["empty", "missing", "other_archive"])
def test_missing_archive_names_it_and_never_downloads(full_root, tmp_path, monkeypatch, make_root):
    import tensorflow_datasets as tfds

    def download(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    root = {
        "empty": tmp_path / "empty",
        "missing": tmp_path / "nowhere",
        "other_archive": full_root,
    }
    root["empty"].mkdir()
    with pytest.raises(DataError, match=r"images_background_small1\.zip") as error:
        load_omniglot(root[make_root], ("small1",), cache_dir=tmp_path / "cache")
    assert "download=True" in str(error.value) and "manual directory" in str(error.value)
    assert f"data.root={root[make_root]}" in str(error.value)


def test_a_wrong_root_is_refused_though_a_cache_exists(full_root, tmp_path):
    """The caches of an earlier run are never a reason to accept a data.root without the files."""
    load_omniglot(full_root, ("background",), cache_dir=tmp_path)
    nowhere = tmp_path / "nonexistent" / "omniglot"
    with pytest.raises(DataError, match=rf"^data\.root={re.escape(str(nowhere))} is not a folder"):
        load_omniglot(nowhere, ("background",), cache_dir=tmp_path)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    with pytest.raises(
        DataError,
        match=rf"^data\.root={re.escape(str(elsewhere))}: the Omniglot archive "
        r"images_background\.zip is not there",
    ):
        load_omniglot(elsewhere, ("background",), cache_dir=tmp_path)


def test_a_replaced_archive_is_prepared_again(full_root, tmp_path, caplog):
    """Same name, other drawings: the .npz and TFDS's records are both made again."""
    before = load_omniglot(full_root, ("background",), cache_dir=tmp_path)["images"]
    fixtures.omniglot_zip(full_root, "images_background", ["Bravo", "Alpha", "Charlie"], seed=7)
    with caplog.at_level(logging.WARNING):
        after = load_omniglot(full_root, ("background",), cache_dir=tmp_path)["images"]
    assert "was prepared from other files than data.root's; rebuilding it" in caplog.text
    assert after.shape == before.shape and not np.array_equal(after, before)
    fresh = load_omniglot(full_root, ("background",), cache_dir=tmp_path / "fresh")["images"]
    np.testing.assert_array_equal(after, fresh)


def test_download_only_when_asked_fetches_the_official_url(full_root, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    urls = []

    def download(self, url):  # stands in for the network: serves a synthetic archive
        urls.append(url)
        return full_root / "images_background.zip"

    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    out = load_omniglot(tmp_path / "empty", ("background",), cache_dir=tmp_path, download=True)
    assert out["images"].shape == (6, 20, 28, 28, 1)
    assert urls == [
        "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip"
    ]


def test_truncated_archive_is_named(full_root, tmp_path):
    path = full_root / "images_background.zip"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="images_background.zip is not a readable"):
        load_omniglot(full_root, ("background",), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"images_background/Alpha/character02/0102_20.png": None},
            "character Alpha/character02 has 19 drawings, but every Omniglot character has 20",
        ),
        (  # a folder entry with no drawings, as the official archives list every folder
            {"images_background/Alpha/character03/": b""},
            "character Alpha/character03 has 0 drawings",
        ),
        (
            {
                "images_background/Alpha/character01/0101_01.png": fixtures.png(
                    np.ones((50, 50)) > 0
                )
            },
            "images_background/Alpha/character01/0101_01.png is 50x50 pixels, but every "
            "Omniglot drawing is 105x105",
        ),
    ],
    ids=["missing_drawing", "empty_character", "small_drawing"],
)
def test_damaged_archive_names_the_member_and_the_fix(full_root, tmp_path, change, message):
    path = full_root / "images_background.zip"
    fixtures.edit_zip(path, change)
    with pytest.raises(DataError, match=message) as error:
        load_omniglot(full_root, ("background",), cache_dir=tmp_path)
    assert f"{path}: " in str(error.value) and "replace it with a fresh copy" in str(error.value)
    # Nothing of the damaged archive was kept: a fresh copy is read, not the old records.
    fixtures.omniglot_zip(full_root, "images_background", ["Bravo", "Alpha", "Charlie"], seed=1)
    assert load_omniglot(full_root, ("background",), cache_dir=tmp_path)["images"].shape[0] == 6


def refuse_writes_under(folder, monkeypatch):
    """Files created under ``folder`` fail as in a read-only folder (EACCES), whatever the uid:
    permissions do not stop root, and CI runs as root."""

    def refusing(create):
        def create_or_refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return create(*args, dir=dir, **kwargs)

        return create_or_refuse

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refusing(getattr(tempfile, name)))


@pytest.mark.parametrize("place", ["under_a_file", "read_only"])
def test_unwritable_cache_dir_names_it_and_the_fix(full_root, tmp_path, place, monkeypatch):
    if place == "under_a_file":  # the path goes through a regular file: fails for any uid
        (tmp_path / "file").write_text("")
        cache = tmp_path / "file" / "cache"
    else:
        cache = tmp_path / "cache"
        cache.mkdir()
        cache.chmod(0o500)  # read-only; for root, whom it does not stop, refused as the OS would
        refuse_writes_under(cache, monkeypatch)
    expected = rf"cannot write to {re.escape(str(cache))}\b.*set data\.cache_dir to a writable"
    with pytest.raises(ConfigError, match=expected):
        load_omniglot(full_root, ("background",), cache_dir=cache)
    with pytest.raises(ConfigError, match="set data.cache_dir to a writable folder"):
        arrays.save_cached(arrays.cache_path(cache, "any"), {"x": np.zeros(1)})


def test_unknown_archive_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="small2"):
        load_omniglot(tmp_path, ("small3",), cache_dir=tmp_path)


@pytest.mark.parametrize("damage", ["flip_pixels", "truncate"])
def test_corrupt_cache_is_detected_and_rebuilt(full_root, tmp_path, caplog, damage):
    first = load_omniglot(full_root, ("background",), 14, cache_dir=tmp_path)
    path = arrays.cache_path(tmp_path, "omniglot-background-14px")
    if damage == "flip_pixels":  # a well-formed file whose content no longer matches its hash
        with np.load(path) as npz:
            content = dict(npz)
        content["images"] = content["images"] ^ 1
        np.savez(path, **content)
    else:
        path.write_bytes(path.read_bytes()[:-1000])
    with caplog.at_level(logging.WARNING):
        second = load_omniglot(full_root, ("background",), 14, cache_dir=tmp_path)
    assert f"cache {path}" in caplog.text
    np.testing.assert_array_equal(second["images"], first["images"])
    np.testing.assert_array_equal(arrays.load_cached(path)["images"], first["images"])


def test_cached_load_needs_no_tfds(full_root, tmp_path):
    load_omniglot(full_root, ("background",), cache_dir=tmp_path)
    code = (
        "import sys; from metarun.data.omniglot_tfds import load_omniglot; "
        f"out = load_omniglot({str(full_root)!r}, ('background',), "
        f"cache_dir={str(tmp_path)!r}); "
        "assert out['images'].shape == (6, 20, 28, 28, 1); "
        "assert 'tensorflow_datasets' not in sys.modules, 'TFDS imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
