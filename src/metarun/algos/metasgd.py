"""Meta-SGD: MAML with a learned step size for every parameter.

    θ' = θ − α ⊙ ∇θ L_support(θ),   meta-parameters (θ, α), α initialised to ``inner_lr``.

Reference: Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning". 2017. https://arxiv.org/abs/1707.09835
"""

from __future__ import annotations

from functools import partial

from metarun.algos import algos
from metarun.algos.base import MetaLearner
from metarun.algos.maml import maml
from metarun.types import Objective

# ``meta_params = {"params": θ, "inner_lr": α}`` with α shaped like θ.
metasgd = partial(maml, learned_lr=True)


@algos.register("metasgd")
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return metasgd(
        net.apply,
        objective.loss,
        inner_lr=cfg.inner_lr,
        first_order=cfg.first_order,
        remat=cfg.remat,
    )
