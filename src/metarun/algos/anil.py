"""ANIL (Almost No Inner Loop): MAML that adapts only the head in the inner loop.

    h' = h − α ∇h L_support(b, h),   meta-gradient ∇(b, h) L_query(b, h')

where ``h`` is the model's last layer (named ``head``) and ``b`` the body. The body
is still meta-learned by the outer loop, through the head's adaptation.

Reference: Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML". ICLR 2020.
https://arxiv.org/abs/1909.09157
"""

from __future__ import annotations

from metarun.algos import algos
from metarun.algos.base import MetaLearner, gradient_descent, predict_with_adapted
from metarun.config import BN_MODES
from metarun.types import Objective

HEAD = "head"


def anil(
    apply_fn, loss_fn, *, inner_lr: float, first_order: bool = False, remat: bool = False
) -> MetaLearner:
    """ANIL on a model whose parameters hold a top-level ``head`` entry."""

    def init(params, key=None, episode=None):
        del key, episode
        if HEAD not in params:
            raise ValueError(f"ANIL adapts the layer named {HEAD!r}; the model has {list(params)}")
        return params

    def adapt(params, support_x, support_y, num_steps, ways=0):
        del ways  # the head has data.ways outputs

        def support_loss(head):
            return loss_fn(apply_fn({**params, HEAD: head}, support_x), support_y)

        head = gradient_descent(support_loss, params[HEAD], inner_lr, num_steps, first_order, remat)
        return {**params, HEAD: head}

    return MetaLearner(
        init=init, adapt=adapt, predict=predict_with_adapted(apply_fn), bn_modes=BN_MODES
    )


@algos.register("anil")
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return anil(
        net.apply,
        objective.loss,
        inner_lr=cfg.inner_lr,
        first_order=cfg.first_order,
        remat=cfg.remat,
    )
