"""Models, selected by ``model.name``. Each factory: ``(cfg, output_dim) -> flax Module``.

Contract: the module's last layer is named ``head`` (ANIL adapts only that layer).
"""

from metarun.registry import Registry

models = Registry("model")

from metarun.models import conv4, mlp, resnet12  # noqa: E402,F401  (register their factories)


def make(cfg, output_dim: int):
    return models.get(cfg.name)(cfg, output_dim)
