"""Meta-learning algorithms, selected by ``algo.name``.

Each module is a few pure functions returning a :class:`~metarun.algos.base.MetaLearner`
and registers ``from_config(cfg, net, objective)`` under its yaml's name (``net``: the model
as a :class:`~metarun.models.Network`), with the kinds of task it learns from (``tasks``, of
:data:`~metarun.types.TASKS`). Adding an algorithm = one module here + one yaml in
``conf/algo/`` (+ its schema in ``config/algo.py`` if it has keys of its own) + tests.

Algorithms know no dataset: what a dataset's tasks are comes in its
:class:`~metarun.types.Objective`, and :func:`check_data` is the one place where the two meet.
"""

from metarun.config import ConfigError
from metarun.registry import Registry
from metarun.types import FIXED_CLASSES, Objective

# The tasks a learner takes unless it says otherwise: it fits a model to data, whatever the
# targets.
FITS = ("regression", "classification")


class _Algos(Registry):
    """The ``algo`` registry; each entry also declares the tasks it learns from."""

    def __init__(self):
        super().__init__("algo")
        self.tasks: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, tasks: tuple[str, ...] = FITS):
        self.tasks[name] = tasks
        return super().register(name)


algos = _Algos()

from metarun.algos import (  # noqa: E402,F401  (register)
    anil,
    baseline,
    erm,
    l2rw,
    lstm_opt,
    maml,
    mann,
    matchingnet,
    meta_lstm,
    metasgd,
    mldg,
    protonet,
    relationnet,
    reptile,
    siamese,
    snail,
)
from metarun.algos.base import MetaLearner, outer_grad, outer_loss  # noqa: E402


def make(cfg, net, objective) -> MetaLearner:
    return algos.get(cfg.name)(cfg, net, objective)


def check_data(name: str, data: str, objective: Objective) -> None:
    """Refuse a dataset (``data``, scored by ``objective``) whose tasks the algorithm ``name``
    does not learn from; ``experiment.make_learners`` calls it before building any learner."""
    algos.get(name)  # an unknown name fails with the known ones
    task = objective.task
    if task in algos.tasks[name]:
        return
    if task == "minimisation":
        allowed = [other for other in algos.names() if task in algos.tasks[other]]
        raise ConfigError(
            f"algo={name} is invalid with data={data}: a task is a function to minimise, "
            "with no model to fit or support set to generalise from; allowed algorithms: "
            f"{', '.join(allowed)}"
        )
    if task in FIXED_CLASSES:
        allowed = [other for other in algos.names() if task in algos.tasks[other]]
        own = [t for t in algos.tasks[name] if t in FIXED_CLASSES]
        reason = (
            f"it trains on data.protocol={'|'.join(own)}"
            if own
            else "this protocol trains one classifier over fixed classes, which this learner "
            "does not"
        )
        raise ConfigError(
            f"algo={name} is invalid with data.protocol={task}: {reason}; allowed algorithms: "
            f"{', '.join(allowed)}"
        )
    protocols = [t for t in algos.tasks[name] if t in FIXED_CLASSES]
    if protocols and len(protocols) == len(algos.tasks[name]):
        raise ConfigError(
            f"algo={name} is invalid with this data: it trains one classifier over fixed "
            f"classes; use data=omniglot data.protocol={'|'.join(protocols)}"
        )
    # Otherwise a learner that declares classification only (the metric-based and black-box
    # ones, which compare classes) on regression data.
    raise ConfigError(
        f"algo={name} is invalid with this data: it classifies, and the dataset is scored by "
        f"{objective.metric}; use a classification dataset (data=omniglot, data=mini_imagenet) "
        "or a gradient-based algorithm (maml, fomaml, anil, metasgd, reptile)"
    )


def inner_steps(learner: MetaLearner, cfg) -> int:
    """``algo.inner_steps`` (``cfg``: the algo config) for a learner that adapts by an inner loop
    in meta-training, else 0: the others adapt in one forward pass, or pre-train and adapt at
    evaluation only (``trains_on="batches"``)."""
    return cfg.inner_steps if learner.inner_loop and learner.trains_on == "episodes" else 0


def eval_steps(learner: MetaLearner, config) -> int:
    """``eval.inner_steps`` for a learner with an inner loop, else 0."""
    return config.eval.inner_steps if learner.inner_loop else 0


__all__ = [
    "FITS",
    "MetaLearner",
    "algos",
    "check_data",
    "eval_steps",
    "inner_steps",
    "make",
    "outer_grad",
    "outer_loss",
]
