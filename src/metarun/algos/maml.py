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

import jax

from metarun.algos import algos
from metarun.algos.base import MetaLearner, gradient_descent, predict_with_adapted
from metarun.algos.mamlpp import mamlpp
from metarun.config import BN_MODES
from metarun.types import Objective


def maml(
    apply_fn,
    loss_fn,
    *,
    inner_lr: float,
    first_order: bool = False,
    remat: bool = False,
    adapt_only: str | None = None,
    learned_lr: bool = False,
) -> MetaLearner:
    """MAML, and the variants that differ only in what the inner loop adapts and how fast.

    ``fomaml``, ``anil`` (``algos/anil.py``) and ``metasgd`` (``algos/metasgd.py``) are
    partials of this function; Reptile (``algos/reptile.py``) is first-order MAML with an
    outer update of its own.

    Args:
      apply_fn: ``(params, x, context=None) -> predictions``.
      loss_fn: ``(predictions, targets) -> scalar`` inner loss.
      inner_lr: the inner step size α (Meta-SGD: the initial value of every learned one).
      first_order: drop the second-order terms of the meta-gradient.
      remat: recompute each inner step on the backward pass (``gradient_descent``).
      adapt_only: adapt only this top-level entry of the parameters (ANIL: ``"head"``); the
        rest is meta-learned by the outer loop alone.
      learned_lr: meta-learn one step size per parameter (Meta-SGD); the meta-parameters are
        then ``{"params": θ, "inner_lr": α}`` with α shaped like θ.
    """

    def init(params, key=None, episode=None):
        del key, episode
        if adapt_only is not None and adapt_only not in params:
            raise ValueError(
                f"the inner loop adapts the layer named {adapt_only!r}; the model has "
                f"{list(params)}"
            )
        if learned_lr:
            return {"params": params, "inner_lr": jax.tree.map(lambda p: p * 0 + inner_lr, params)}
        return params

    def adapt(meta_params, support_x, support_y, num_steps, ways=0):
        del ways  # the head has data.ways outputs
        params, lr = (
            (meta_params["params"], meta_params["inner_lr"])
            if learned_lr
            else (meta_params, inner_lr)
        )

        def support_loss(p):
            return loss_fn(apply_fn(p, support_x), support_y)

        if adapt_only is None:
            return gradient_descent(support_loss, params, lr, num_steps, first_order, remat)

        def part_loss(part):
            return support_loss({**params, adapt_only: part})

        part_lr = lr[adapt_only] if learned_lr else lr
        part = gradient_descent(
            part_loss, params[adapt_only], part_lr, num_steps, first_order, remat
        )
        return {**params, adapt_only: part}

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict_with_adapted(apply_fn),
        bn_modes=BN_MODES,
        encoder_key="params" if learned_lr else None,
        inner_loop=True,
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
