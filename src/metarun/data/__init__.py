"""Task sources, selected by ``data.name``.

Each dataset registers two factories: ``sources`` (``cfg -> TaskSource``, loads the data) and
``specs`` (``cfg -> DataSpec``, cheap: what a trained model needs, used by ``metarun.load``).

Importing this package also makes metarun's TFDS builders (``metarun_omniglot/<archive>``,
``metarun_mini_imagenet``) known to ``tfds.builder``, without importing TFDS: they are
registered when TFDS is imported (at once if it already is), so a cached load stays free of it.
"""

import importlib.abc
import importlib.util
import sys

from metarun.registry import Registry

sources = Registry("data")
specs = Registry("data")

from metarun.data import (  # noqa: E402,F401  (register their factories)
    mini_imagenet,
    omniglot,
    quadratic,
    sinusoid,
)


def make(cfg):
    return sources.get(cfg.name)(cfg)


def spec(cfg):
    return specs.get(cfg.name)(cfg)


def register_tfds_builders():
    """Defines metarun's TFDS builder classes, which registers them with TFDS by name."""
    from metarun.data import mini_imagenet_tfds, omniglot_tfds

    omniglot_tfds.builder_class()
    mini_imagenet_tfds.builder_class()


class _OnTfdsImport(importlib.abc.MetaPathFinder):
    """Calls :func:`register_tfds_builders` right after ``tensorflow_datasets`` is executed.

    Finds nothing itself: it leaves the import system's usual spec for ``tensorflow_datasets``
    unchanged but for a wrapped ``exec_module``, then takes itself off ``sys.meta_path``.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow_datasets":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_register(module):
                exec_module(module)
                register_tfds_builders()

            spec.loader.exec_module = exec_and_register
        return spec


if "tensorflow_datasets" in sys.modules:
    register_tfds_builders()
elif not any(isinstance(finder, _OnTfdsImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _OnTfdsImport())
