"""MAML and first-order MAML.

    θ' = θ − α ∇θ L_support(θ)      (``inner_steps`` times)
    meta-gradient: ∇θ L_query(θ')   (through the inner loop: second order)

First-order MAML (Finn et al. 2017, §5.2) is the same function with each inner
gradient treated as a constant, so the meta-gradient becomes ∇θ' L_query(θ').
The MAML++ switches (``algo.msl``, ``algo.lslr``, ``algo.per_step_bn``,
``algo.first_order_steps``) build the learner of ``algos/mamlpp.py`` instead.

Reference: Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks". ICML 2017. https://arxiv.org/abs/1703.03400
"""

from __future__ import annotations

from functools import partial

from metarun.algos import algos
from metarun.algos.base import (
    MetaLearner,
    gradient_descent,
    init_params,
    predict_with_adapted,
)
from metarun.algos.mamlpp import mamlpp
from metarun.config import BN_MODES
from metarun.types import Objective


def maml(
    apply_fn, loss_fn, *, inner_lr: float, first_order: bool = False, remat: bool = False
) -> MetaLearner:
    """MAML: the meta-parameters are the model's initial parameters θ.

    Args:
      apply_fn: ``(params, x) -> predictions``.
      loss_fn: ``(predictions, targets) -> scalar`` inner loss.
      inner_lr: the inner step size α.
      first_order: drop the second-order terms of the meta-gradient.
      remat: recompute each inner step on the backward pass (``gradient_descent``).
    """

    def adapt(params, support_x, support_y, num_steps, ways=0):
        del ways  # the head has data.ways outputs

        def support_loss(p):
            return loss_fn(apply_fn(p, support_x), support_y)

        return gradient_descent(support_loss, params, inner_lr, num_steps, first_order, remat)

    return MetaLearner(
        init=init_params, adapt=adapt, predict=predict_with_adapted(apply_fn), bn_modes=BN_MODES
    )


fomaml = partial(maml, first_order=True)


@algos.register("maml")
@algos.register("fomaml")
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    if cfg.msl or cfg.lslr or cfg.per_step_bn or cfg.first_order_steps:
        return mamlpp(
            net.apply,
            objective,
            inner_lr=cfg.inner_lr,
            inner_steps=cfg.inner_steps,
            first_order=cfg.first_order,
            remat=cfg.remat,
            msl=cfg.msl,
            msl_anneal_steps=cfg.msl_anneal_steps,
            lslr=cfg.lslr,
            per_step_bn=cfg.per_step_bn,
            first_order_steps=cfg.first_order_steps,
        )
    return maml(
        net.apply,
        objective.loss,
        inner_lr=cfg.inner_lr,
        first_order=cfg.first_order,
        remat=cfg.remat,
    )
