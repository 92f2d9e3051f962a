"""Meta-learning algorithms, selected by ``algo.name``.

Each module is a few pure functions returning a :class:`~metarun.algos.base.MetaLearner`
and registers ``from_config(cfg, apply_fn, objective)`` under its yaml's name.
Adding an algorithm = one module here + one yaml in ``conf/algo/`` + tests.
"""

from metarun.registry import Registry

algos = Registry("algo")

from metarun.algos import anil, maml, metasgd, reptile  # noqa: E402,F401  (register)
from metarun.algos.base import MetaLearner, outer_grad, outer_loss  # noqa: E402


def make(cfg, apply_fn, objective) -> MetaLearner:
    return algos.get(cfg.name)(cfg, apply_fn, objective)


__all__ = ["MetaLearner", "algos", "make", "outer_grad", "outer_loss"]
