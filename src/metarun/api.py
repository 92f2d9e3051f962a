"""The public adaptation API: a finished run as a few-shot learner for the user's own data.

    import metarun
    learner = metarun.load("outputs/2026-11-22/10-00-00")
    labels = learner.predict(support_images, support_labels, query_images)

``load`` rebuilds the model and algorithm from the run's saved config (``config.yaml``)
and restores the meta-parameters the meta-test used (``checkpoints/best``) without loading the
training data. ``predict`` applies the dataset's preprocessing to raw inputs, adapts on the
support set with the algorithm's own ``adapt`` and predicts the query set in one batch, as the
evaluation does (Conv-4's BatchNorm normalises with the statistics of the batch it is given).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from metarun import algos, data, models
from metarun.algos.base import adapt_and_predict
from metarun.config import Config, ConfigError, register_configs
from metarun.types import DataSpec, Episode


class Learner:
    """A meta-trained learner: ``predict(support_x, support_y, query_x) -> query predictions``."""

    def __init__(self, config: Config, spec: DataSpec, model, learner, meta_params):
        self.config, self.spec, self.model, self.meta_params = config, spec, model, meta_params
        self._learner = learner
        self._run = jax.jit(partial(adapt_and_predict, learner), static_argnums=(4, 5))

    def predict(
        self, support_x, support_y, query_x, inner_steps: int | None = None, *, raw: bool = True
    ) -> np.ndarray:
        """Adapt to the support set, then predict every query; numpy in, numpy out.

        Args:
          support_x, query_x: inputs as the dataset's files hold them (images: uint8 ``[n, H, W]``
            or ``[n, H, W, C]``, any size, grey or RGB); ``raw=False`` takes model inputs as is.
          support_y: one label per support example, any hashable values; classification needs
            exactly ``data.ways`` distinct labels, the number of outputs the model was trained
            with, except for learners without a head (protonet, matchingnet, ...): any number.
          inner_steps: adaptation steps of a gradient-based learner; default ``eval.inner_steps``
            of the run (metric-based learners adapt in one pass and ignore it).

        Returns:
          Classification: the predicted label of each query, from ``support_y``'s values.
          Regression: the predicted targets ``[n_query, ...]``.
        """
        steps = algos.eval_steps(self.config) if inner_steps is None else inner_steps
        prepare = self.spec.preprocess if raw else np.asarray
        support_x, query_x = prepare(support_x), prepare(query_x)
        classify = self.spec.objective.metric == "accuracy"
        if classify:
            classes, support_y = np.unique(np.asarray(support_y), return_inverse=True)
            if len(classes) != self.spec.output_dim and not self._learner.any_ways:
                raise ValueError(
                    f"the support set has {len(classes)} classes; this learner was trained "
                    f"{self.spec.output_dim}-way (data.ways={self.spec.output_dim})"
                )
            support_y = support_y.astype(np.int32)
        else:
            support_y = np.asarray(support_y, np.float32).reshape(len(support_x), -1)
        ways = len(classes) if classify else 0
        out = self._run(self.meta_params, support_x, support_y, query_x, steps, ways)
        if classify:
            return classes[np.asarray(jnp.argmax(out, axis=-1))]
        return np.asarray(out)


def load(run_dir: str | os.PathLike) -> Learner:
    """The learner a finished ``metarun`` run saved in ``run_dir``."""
    from metarun.train import BEST_PARAMS, CONFIG

    run_dir = Path(run_dir)
    for path in (run_dir / CONFIG, run_dir / BEST_PARAMS):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a finished metarun run dir?")
    config = _config(run_dir / CONFIG)
    spec = data.spec(config.data)
    model = models.make(config.model, spec.output_dim)
    from metarun.train import make_learners

    learner = make_learners(config, model, spec.objective)[1]  # the evaluation one
    like = _meta_params_like(model, learner, spec)
    return Learner(config, spec, model, learner, _restore(run_dir / BEST_PARAMS, like))


def _meta_params_like(model, learner, spec: DataSpec):
    """Shapes and dtypes of the meta-parameters, from an example episode; nothing computed."""
    ways = spec.output_dim if spec.objective.metric == "accuracy" else 0
    x = jax.ShapeDtypeStruct((max(ways, 1), *spec.input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct(
        (max(ways, 1),) + (() if ways else (spec.output_dim,)), jnp.int32 if ways else jnp.float32
    )
    example = Episode(x, y, x, y, ways=ways)
    key = jax.random.PRNGKey(0)

    def init(episode):
        params = model.init(key, episode.support_x)["params"]
        return learner.init(params, key, episode)

    return jax.eval_shape(init, example)


def _config(path: Path) -> Config:
    """The run's saved config, merged into the schemas so that a wrong one fails here."""
    saved = OmegaConf.load(path)
    register_configs()
    typed = {
        "algo": _schema(f"algo/{saved.algo.name}"),
        "data": _schema(f"data/{saved.data.name}"),
        "model": _schema(f"model/{saved.model.name}"),
    }
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config(**typed)), saved))


def _schema(path: str):
    from hydra.core.config_store import ConfigStore

    try:
        return ConfigStore.instance().load(f"schema/{path}.yaml").node
    except Exception:
        choice = path.replace("/", "=")
        raise ConfigError(f"the run's {choice} is unknown to this metarun") from None


def _restore(path: Path, like):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path.absolute(), like)
