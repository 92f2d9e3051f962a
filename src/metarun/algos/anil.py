"""ANIL (Almost No Inner Loop): MAML that adapts only the head in the inner loop.

    h' = h − α ∇h L_support(b, h),   meta-gradient ∇(b, h) L_query(b, h')

where ``h`` is the model's last layer (named ``head``) and ``b`` the body. The body
is still meta-learned by the outer loop, through the head's adaptation.

Reference: Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML". ICLR 2020.
https://arxiv.org/abs/1909.09157
"""

from __future__ import annotations

from functools import partial

from metarun.algos import algos
from metarun.algos.base import MetaLearner
from metarun.algos.maml import maml
from metarun.types import Objective

HEAD = "head"

# ANIL on a model whose parameters hold a top-level ``head`` entry.
anil = partial(maml, adapt_only=HEAD)


@algos.register("anil")
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return anil(
        net.apply,
        objective.loss,
        inner_lr=cfg.inner_lr,
        first_order=cfg.first_order,
        remat=cfg.remat,
    )
