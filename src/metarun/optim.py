"""The outer (meta) optimizer from ``conf/optim``, built from optax."""

from __future__ import annotations

import jax
import optax

from metarun.config import ARCH, OptimConfig

# Meta-parameters that are not weights, which ``optim=adamw`` leaves undecayed: learned
# inner learning rates (Meta-SGD, MAML++'s LSLR), lstm_opt's fixed starting point and
# BatchNorm's running averages (model.bn_mode=running).
NOT_WEIGHTS = ("inner_lr", "init", "running_mean", "running_var")


def decayed(params):
    """The ``optim.weight_decay`` mask: True for the leaves that are weights."""

    def is_weight(path, _) -> bool:
        return not any(getattr(k, "key", None) in NOT_WEIGHTS for k in path)

    return jax.tree_util.tree_map_with_path(is_weight, params)


def architecture(params):
    """The ``optim.arch_lr_scale`` mask: True for a DARTS search's architecture weights, not
    for learned inner step sizes shaped like them (Meta-SGD's ``inner_lr``)."""

    def is_arch(path, _) -> bool:
        keys = [getattr(k, "key", None) for k in path]
        return keys[-1:] == [ARCH] and "inner_lr" not in keys

    return jax.tree_util.tree_map_with_path(is_arch, params)


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
        opt = optax.adamw(lr, weight_decay=cfg.weight_decay, mask=decayed)
    else:
        opt = optax.sgd(lr, momentum=cfg.momentum or None)
    if cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    if cfg.arch_lr_scale != 1:
        opt = optax.chain(opt, optax.masked(optax.scale(cfg.arch_lr_scale), architecture))
    return opt
