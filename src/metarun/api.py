"""The public adaptation API: a finished run as a few-shot learner for the user's own data.

    import metarun
    learner = metarun.load("outputs/2026-11-22/10-00-00")
    labels = learner.predict(support_images, support_labels, query_images)

``load`` rebuilds the model and algorithm from the run's saved config (``config.yaml``), with
the function training builds them with, and restores the meta-parameters the meta-test used
(``checkpoints/best``, :mod:`metarun.rundir`) without loading the training data. ``predict``
applies the dataset's preprocessing to raw inputs, adapts on the support set with the
algorithm's own ``adapt`` and predicts the query set in one batch, as the evaluation does
(Conv-4's BatchNorm normalises with the statistics of the batch it is given).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metarun import algos, data
from metarun.algos.base import adapt_and_predict, model_params
from metarun.config import ARCH, Config
from metarun.types import FIXED_CLASSES, DataSpec


class Learner:
    """A meta-trained learner: ``predict(support_x, support_y, query_x) -> query predictions``."""

    def __init__(self, config: Config, spec: DataSpec, model, learner, meta_params):
        self.config, self.spec, self.model, self.meta_params = config, spec, model, meta_params
        self._learner = learner
        self._run = jax.jit(partial(adapt_and_predict, learner), static_argnums=(4, 5))
        # a learner of fixed classes (algos/erm.py) adapts to nothing: its classifier alone
        self._classify = jax.jit(lambda mp, x: learner.predict(mp, mp, x, None))

    @property
    def model_params(self):
        """The model's parameters among the meta-parameters."""
        return model_params(self.meta_params, self._learner)

    def genotype(self) -> list[str]:
        """A DARTS search run's architecture (``model=darts`` without ``model.genotype``): one
        operation per edge, derived from the meta-learned architecture weights
        (:func:`metarun.models.darts.derive`); ``model.genotype=[...]`` retrains it."""
        from metarun.models.darts import derive

        model = self.config.model
        if model.name != "darts" or model.genotype:
            raise ValueError(
                f"not a DARTS search run: model={model.name}"
                + (f", model.genotype={list(model.genotype)}" if model.name == "darts" else "")
            )
        return derive(np.asarray(self.model_params[ARCH]), model.nodes)

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
          One classifier over fixed classes (``data.protocol=supervised|domains``): the class
          index of each query, 0 .. data.ways − 1, whatever the support set (it may be empty).
          Regression: the predicted targets ``[n_query, ...]``.
        """
        steps = algos.eval_steps(self._learner, self.config) if inner_steps is None else inner_steps
        prepare = self.spec.preprocess if raw else np.asarray
        query_x = prepare(query_x)
        if self.spec.objective.task in FIXED_CLASSES:  # nothing to adapt: the classes it knows
            return np.asarray(jnp.argmax(self._classify(self.meta_params, query_x), axis=-1))
        support_x = prepare(support_x)
        classify = self.spec.objective.task == "classification"
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
    from metarun import rundir  # imports orbax: not on ``import metarun``
    from metarun.experiment import make_learners, meta_params_like

    run_dir = Path(run_dir)
    rundir.require_finished(run_dir)
    config = rundir.load_config(run_dir)
    spec = data.spec(config.data)
    model, _, learner = make_learners(config, spec)  # the evaluation learner
    # Restored as saved: a shape may depend on the training data rather than the config (a
    # pre-training classifier has one output per class of the train split); the structure and
    # the model's own shapes must be the config's.
    saved = rundir.saved_params_like(run_dir)
    like = meta_params_like(model, learner, spec)
    expected, found = (jax.tree.map(lambda a: a.shape, p) for p in (like, saved))
    same_model = jax.tree.structure(saved) == jax.tree.structure(like) and (
        model_params(expected, learner) == model_params(found, learner)
    )
    if not same_model:
        raise ValueError(
            f"the parameters in {run_dir / rundir.BEST_PARAMS} are not those of the run's "
            f"config (algo={config.algo.name}, model={config.model.name}): expected {expected}, "
            f"found {found}"
        )
    return Learner(config, spec, model, learner, rundir.load_params(run_dir, saved))
