"""Meta-learning algorithms, selected by ``algo.name``.

Each module is a few pure functions returning a :class:`~metarun.algos.base.MetaLearner`
and registers ``from_config(cfg, net, objective)`` under its yaml's name (``net``: the model
as a :class:`~metarun.models.Network`). Adding an algorithm = one module here + one yaml in
``conf/algo/`` (+ its schema in ``config.py`` if it has keys of its own) + tests.
"""

from metarun.registry import Registry

algos = Registry("algo")

from metarun.algos import (  # noqa: E402,F401  (register)
    anil,
    lstm_opt,
    maml,
    mann,
    matchingnet,
    meta_lstm,
    metasgd,
    protonet,
    relationnet,
    reptile,
    siamese,
    snail,
)
from metarun.algos.base import MetaLearner, outer_grad, outer_loss  # noqa: E402
from metarun.data import quadratic  # noqa: E402


def make(cfg, net, objective) -> MetaLearner:
    quadratic.require_optimizer(cfg.name, objective)  # data=quadratic: learned optimizers only
    return algos.get(cfg.name)(cfg, net, objective)


def inner_steps(learner: MetaLearner, cfg) -> int:
    """``algo.inner_steps`` (``cfg``: the algo config) for a learner with an inner loop, else 0:
    the others adapt in one forward pass."""
    return cfg.inner_steps if learner.inner_loop else 0


def eval_steps(learner: MetaLearner, config) -> int:
    """``eval.inner_steps`` for a learner with an inner loop, else 0."""
    return config.eval.inner_steps if learner.inner_loop else 0


__all__ = [
    "MetaLearner",
    "algos",
    "eval_steps",
    "inner_steps",
    "make",
    "outer_grad",
    "outer_loss",
]
