"""Random quadratics f(θ) = ‖Wθ − y‖² (Andrychowicz et al. 2016, §3.1), generated on the device.

A task is a matrix W ∈ R^{d×d} and a vector y ∈ R^d with i.i.d. N(0, 1) entries, and a start
θ_0 ~ N(0, σ² I) (d = ``data.dimension``, the paper's 10; σ = ``data.init_std``, 0.01 as in the
authors' code). There is no model to fit, only a function to minimise: the objective's task is
``minimisation``, which only learned optimizers declare they take (``algos.check_data`` refuses
the others), and its ``optimizee`` (:func:`predict`, :func:`start`) is how they reach f.

How a quadratic is packed into an :class:`~metarun.types.Episode`: the start is folded into the
targets. With δ = θ − θ_0 and b = y − Wθ_0,

    f(θ) = ‖Wθ − y‖² = ‖Wδ − b‖²,   δ_0 = 0,

and an optimizer that reads only gradients (the LSTM, SGD, Adam, RMSProp) takes the same steps
in δ from 0 as in θ from θ_0, through the same values of f. So an episode is a bias-free linear
regression of d "points" started at zero and scored by the sum of squared errors:

    support_x = query_x = W          [d, d]   (row i: the inputs of point i)
    support_y = query_y = b[:, None] [d, 1]
    prediction = Wδ                  [d, 1]   (:func:`predict`, δ a ``[d, 1]`` column)

and the objective's ``loss`` (the headline metric, minimised) is ‖prediction − target‖², the
quadratic's value. The query set is the support set: the function optimised is the one scored.
The splits are the same distribution seen through different keys, as for sinusoids.

Difference from the authors' code (deepmind/learning-to-learn, ``problems.quadratic``): it draws
W and y from U[0, 1); the paper says Gaussian, which is used here.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metarun.data import sources, specs
from metarun.types import Array, DataSpec, Episode, Objective, Optimizee, PRNGKey, TaskSource


def sum_of_squares(predictions: Array, targets: Array) -> Array:
    """‖predictions − targets‖²: the quadratic's value (a sum, not a mean, as in the paper)."""
    return jnp.sum(jnp.square(predictions - targets))


def _metrics(predictions: Array, targets: Array) -> dict[str, Array]:
    return {"loss": sum_of_squares(predictions, targets)}


class Quadratic(NamedTuple):
    w: Array  # [d, d]
    y: Array  # [d]
    theta0: Array  # [d], the start

    def __call__(self, theta: Array) -> Array:
        """f(θ) for θ ``[d]``."""
        return jnp.sum(jnp.square(self.w @ theta - self.y))


def sample_task(key: PRNGKey, cfg) -> Quadratic:
    d = cfg.dimension
    # One draw cut in three: each random.normal call is a threefry program of its own, and on
    # the CPU three of them compile several times slower (the meta-step, evaluators, report).
    z = jax.random.normal(key, (d * d + 2 * d,))
    w, y, theta0 = z[: d * d].reshape(d, d), z[d * d : d * d + d], z[d * d + d :]
    return Quadratic(w=w, y=y, theta0=cfg.init_std * theta0)


def as_episode(task: Quadratic) -> Episode:
    """The packing above: δ = θ − θ_0 starts at 0, targets b = y − Wθ_0."""
    b = (task.y - task.w @ task.theta0)[:, None]
    return Episode(task.w, b, task.w, b)


def episode(key: PRNGKey, cfg) -> Episode:
    return as_episode(sample_task(key, cfg))


def predict(delta: Array, x: Array) -> Array:
    """Wδ: the "model" of a quadratic episode, δ ``[d, 1]``, x = W ``[n, d]``."""
    return x @ delta


def start(support_x: Array) -> Array:
    """δ_0 = 0, ``[d, 1]``: where every optimizer starts on a packed quadratic."""
    return jnp.zeros((support_x.shape[-1], 1), support_x.dtype)


QUADRATIC = Objective(
    sum_of_squares,
    _metrics,
    "loss",
    maximize=False,
    task="minimisation",
    optimizee=Optimizee(predict, start),
)


@specs.register("quadratic")
def spec(cfg) -> DataSpec:
    return DataSpec(
        QUADRATIC,
        output_dim=1,
        input_shape=(cfg.dimension,),
        preprocess=partial(_as_rows, dimension=cfg.dimension),
    )


def _as_rows(x, dimension: int) -> np.ndarray:
    """W as ``float32 [n, d]`` (a flat list of n·d numbers is accepted)."""
    return np.asarray(x, np.float32).reshape(-1, dimension)


@sources.register("quadratic")
def make(cfg) -> TaskSource:
    sampler = jax.tree_util.Partial(partial(episode, cfg=cfg))  # no arrays: generated on the fly
    return TaskSource(
        samplers={"train": sampler, "val": sampler, "test": sampler},
        objective=QUADRATIC,
        output_dim=1,
    )
