"""metarun's TFDS builders are TFDS builders: ``tfds.builder(name)`` finds them after
``import metarun``, in a fresh process, whichever of the two is imported first."""

import subprocess
import sys

import pytest

NAMES = ["metarun_omniglot/small1", "metarun_mini_imagenet"]


@pytest.mark.parametrize("first", ["metarun", "tensorflow_datasets"])
def test_tfds_builder_finds_them_after_import_metarun(first, tmp_path):
    imports = ["import metarun", "import tensorflow_datasets as tfds"]
    if first == "tensorflow_datasets":
        imports.reverse()
    code = "; ".join(imports) + "\n"
    code += "\n".join(  # no download: constructing a builder reads nothing but its code
        f"print(tfds.builder({name!r}, data_dir={str(tmp_path)!r}).info.full_name)"
        for name in NAMES
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == ["metarun_omniglot/small1/1.0.0", "metarun_mini_imagenet/1.0.0"]


def test_import_metarun_does_not_import_tfds():
    """The registration waits for TFDS's import: a cached load never pays for TFDS."""
    code = "import sys, metarun; assert 'tensorflow_datasets' not in sys.modules, 'TFDS imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
