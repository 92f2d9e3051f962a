"""Schema of ``conf/optim/<name>.yaml``: the outer optimizer (``metarun.optim``)."""

from __future__ import annotations

from dataclasses import dataclass

from metarun.config.errors import _check, _check_choice

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass
class OptimConfig:
    """The outer (meta) optimizer, built with optax."""

    name: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"  # cosine: decay lr to min_lr over trainer.steps
    min_lr: float = 0.0  # schedule=cosine: the learning rate at the last step
    weight_decay: float = 0.0  # adamw only
    momentum: float = 0.0  # sgd only
    clip_norm: float = 0.0  # clip the meta-gradient's global norm; 0 = off
    # The architecture weights' step (model=darts: "arch") as a multiple of the others': DARTS
    # gives them their own optimizer; scaling the update of Adam or SGD scales its rate.
    arch_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.name, OPTIMIZERS)
        _check_choice("optim.schedule", self.schedule, SCHEDULES)
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0, e.g. 0.001")
        _check(
            0 <= self.min_lr <= self.lr,
            "optim.min_lr",
            self.min_lr,
            f"must be in [0, optim.lr={self.lr}]",
        )
        _check(
            self.min_lr == 0 or self.schedule == "cosine",
            "optim.min_lr",
            self.min_lr,
            "is only used by optim.schedule=cosine",
        )
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(
            self.weight_decay == 0 or self.name == "adamw",
            "optim.weight_decay",
            self.weight_decay,
            "is only used by optim=adamw",
        )
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "must be in [0, 1)")
        _check(
            self.momentum == 0 or self.name == "sgd",
            "optim.momentum",
            self.momentum,
            "is only used by optim=sgd",
        )
        _check(self.arch_lr_scale > 0, "optim.arch_lr_scale", self.arch_lr_scale, "must be > 0")
        _check(self.clip_norm >= 0, "optim.clip_norm", self.clip_norm, "must be >= 0 (0 = off)")
