"""Start a run from another run's trained encoder: ``trainer.init_from=RUN_DIR``.

Pre-train, then meta-train (Chen et al. 2021, "Meta-Baseline"): a finished run (say
``algo=baseline``) is the starting point of another (``algo=protonet``, ``algo=maml``). Every
layer of the model except its ``head`` takes the other run's trained values (the meta-parameters
it saved for its meta-test, ``checkpoints/best``); the head, and whatever else the new learner
meta-learns (a relation module, Meta-SGD's step sizes, a hallucinator), start as usual.

The two models must have the same layers and shapes outside the head; the exception is a
BatchNorm mode's own parameters (``models.conv4.BN_MODE_PARAMS``: running averages, TaskNorm's
blend), which a layer has in some modes only: one the other run lacks starts at its initial
value, one this run lacks is dropped. Anything else refuses, naming the layer, before any data
is loaded (:func:`check`, from the CLI's preflight).

A resumed run continues from its own checkpoint and reads the other run no more (the CLI's
preflight still checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from metarun import data, rundir
from metarun.algos.base import MetaLearner, model_params
from metarun.config import Config, ConfigError
from metarun.experiment import make_learners
from metarun.models.conv4 import BN_MODE_PARAMS

HEAD = "head"


def _source(run_dir: Path):
    """The other run's model parameters, as shapes (:func:`rundir.saved_params_like`)."""
    try:
        rundir.require_finished(run_dir)
        config = rundir.load_config(run_dir)
    except (FileNotFoundError, ConfigError) as err:
        raise ConfigError(f"trainer.init_from={run_dir} is invalid: {err}") from None
    _, learner, _ = make_learners(config, data.spec(config.data))
    saved = rundir.saved_params_like(run_dir)
    return model_params(saved, learner), learner


def _leaves(params) -> dict[str, Any]:
    """``"blocks_0/conv/kernel" -> leaf``, the encoder's leaves (outside the head) by path."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat if path[0].key != HEAD}


def _shared(target, source, run_dir: Path) -> set[str]:
    """The paths of the leaves taken from the source, refusing what does not fit."""
    mine, theirs = _leaves(target), _leaves(source)
    bn_only = lambda path: path.rsplit("/", 1)[-1] in BN_MODE_PARAMS  # noqa: E731
    missing = sorted(p for p in mine if p not in theirs and not bn_only(p))
    extra = sorted(p for p in theirs if p not in mine and not bn_only(p))
    if missing or extra:
        differ = "; ".join(
            f"{what}: {', '.join(paths[:4])}{' ...' if len(paths) > 4 else ''}"
            for what, paths in (("only this run's model has", missing), ("only its has", extra))
            if paths
        )
        raise ConfigError(
            f"trainer.init_from={run_dir} is invalid: its model has other layers than this "
            f"run's ({differ}); start from a run of the same model (model=..., its filters)"
        )
    shared = mine.keys() & theirs.keys()
    for path in sorted(shared):
        if mine[path].shape != theirs[path].shape:
            raise ConfigError(
                f"trainer.init_from={run_dir} is invalid: its layer {path} has shape "
                f"{tuple(theirs[path].shape)}, this run's {tuple(mine[path].shape)}; start "
                "from a run of the same model and input size"
            )
    return shared


def check(config: Config, like, learner: MetaLearner) -> None:
    """Raise the :class:`ConfigError` that :func:`init_from` would, from shapes alone (``like``:
    this run's meta-parameters as shapes, :func:`metarun.experiment.meta_params_like`)."""
    run_dir = Path(config.trainer.init_from)
    if data.spec(config.data).objective.task == "minimisation":
        raise ConfigError(
            f"trainer.init_from={run_dir} is invalid with data={config.data.name}: its tasks are "
            "functions to minimise, with no model whose encoder a run could start from"
        )
    source, _ = _source(run_dir)
    _shared(model_params(like, learner), source, run_dir)


def init_from(run_dir: Path, meta_params, learner: MetaLearner):
    """``meta_params`` with the encoder of the finished run in ``run_dir``."""
    source_like, source_learner = _source(run_dir)
    shared = _shared(model_params(meta_params, learner), source_like, run_dir)
    saved = _leaves(model_params(rundir.load_params(run_dir), source_learner))

    def take(path, leaf):
        name = "/".join(str(k.key) for k in path)
        return saved[name].astype(leaf.dtype) if name in shared else leaf

    model = jax.tree_util.tree_map_with_path(take, model_params(meta_params, learner))
    if learner.encoder_key is None:
        return model
    return {**meta_params, learner.encoder_key: model}
