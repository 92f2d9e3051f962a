"""Task sources, selected by ``data.name``.

Each dataset registers two factories: ``sources`` (``cfg -> TaskSource``, loads the data) and
``specs`` (``cfg -> DataSpec``, cheap: what a trained model needs, used by ``metarun.load``).
"""

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
