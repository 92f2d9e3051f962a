"""Task sources, selected by ``data.name``. Each factory: ``cfg -> TaskSource``."""

from metarun.registry import Registry

sources = Registry("data")

from metarun.data import sinusoid  # noqa: E402,F401  (registers its factory)


def make(cfg):
    return sources.get(cfg.name)(cfg)
