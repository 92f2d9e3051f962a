"""mini-ImageNet few-shot classification (``data=mini_imagenet``), Ravi & Larochelle's split.

The 64 / 16 / 20 classes of the train / val / test files
(:func:`metarun.data.mini_imagenet_tfds.load_mini_imagenet`) each go to the device once as
``uint8 [classes, 600, 84, 84, 3]`` (train: 0.8 GB) and episodes are sampled inside the
jitted step (:mod:`metarun.data.episodes`). No rotations: they are an Omniglot augmentation.
"""

from __future__ import annotations

from metarun.data import sources, specs
from metarun.data.episodes import image_spec, image_task_source
from metarun.data.mini_imagenet_tfds import IMAGE_SIZE, SPLITS, load_mini_imagenet
from metarun.types import DataSpec


@specs.register("mini_imagenet")
def spec(cfg) -> DataSpec:
    """Raw photographs (any size, RGB; grey is repeated) -> 84×84×3 in [0, 1]."""
    return image_spec(cfg.ways, IMAGE_SIZE, channels=3, invert=False)


@sources.register("mini_imagenet")
def make(cfg):
    images = {
        split: load_mini_imagenet(cfg.root, split, cache_dir=cfg.cache_dir or None)["images"]
        for split in SPLITS
    }
    return image_task_source(images, cfg)
