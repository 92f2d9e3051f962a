"""The outer (meta) optimizer from ``conf/optim``, built from optax."""

from __future__ import annotations

import optax

from metarun.config import OptimConfig


def make(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    if cfg.schedule == "cosine":
        lr = optax.cosine_decay_schedule(
            cfg.lr, decay_steps=max(total_steps, 1), alpha=cfg.min_lr / cfg.lr
        )
    else:
        lr = cfg.lr
    if cfg.name == "adam":
        opt = optax.adam(lr)
    elif cfg.name == "adamw":
        opt = optax.adamw(lr, weight_decay=cfg.weight_decay)
    else:
        opt = optax.sgd(lr, momentum=cfg.momentum or None)
    if cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt
