"""Meta-SGD: MAML with a learned step size for every parameter.

    θ' = θ − α ⊙ ∇θ L_support(θ),   meta-parameters (θ, α), α initialised to ``inner_lr``.

Reference: Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning". 2017. https://arxiv.org/abs/1707.09835
"""

from __future__ import annotations

import jax

from metarun.algos import algos
from metarun.algos.base import MetaLearner, gradient_descent, predict_with_adapted
from metarun.config import BN_MODES
from metarun.types import Objective


def metasgd(
    apply_fn, loss_fn, *, inner_lr: float, first_order: bool = False, remat: bool = False
) -> MetaLearner:
    """Meta-SGD; ``meta_params = {"params": θ, "inner_lr": α}`` with α shaped like θ."""

    def init(params, key=None, episode=None):
        del key, episode
        return {"params": params, "inner_lr": jax.tree.map(lambda p: p * 0 + inner_lr, params)}

    def adapt(meta_params, support_x, support_y, num_steps, ways=0):
        del ways  # the head has data.ways outputs

        def support_loss(p):
            return loss_fn(apply_fn(p, support_x), support_y)

        return gradient_descent(
            support_loss,
            meta_params["params"],
            meta_params["inner_lr"],
            num_steps,
            first_order,
            remat,
        )

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict_with_adapted(apply_fn),
        bn_modes=BN_MODES,
        encoder_key="params",
    )


@algos.register("metasgd")
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return metasgd(
        net.apply,
        objective.loss,
        inner_lr=cfg.inner_lr,
        first_order=cfg.first_order,
        remat=cfg.remat,
    )
