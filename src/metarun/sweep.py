"""Hyper-parameter sweeps (``conf/sweep/``): what they need beyond Hydra's Optuna plugin.

A sweep config picks ``hydra/sweeper=optuna``, a search space and a direction; every trial is
an ordinary run whose return value Optuna optimises: the validation metric of the
meta-parameters the run tested (``val_mean`` in ``result.json``). The test split is left for
reporting, so the chosen trial's test figure is not tuned on. Two guards:

- :class:`SweepDir` creates the sweep dir when a multirun starts, so that a study kept in
  ``sqlite:///${hydra.sweep.dir}/optuna.db`` can open its file (the launchers create the
  folder only when the first trial starts, after the study is opened).
- :func:`check_direction` stops a trial whose direction does not fit the metric: minimizing
  accuracy would search for the worst hyper-parameters, quietly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig

from metarun import data
from metarun.config import Config, ConfigError


class SweepDir(Callback):
    """Hydra callback: ``mkdir -p hydra.sweep.dir`` before the sweeper opens its storage."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)


def check_direction(config: Config, sweeper: DictConfig) -> None:
    """Raise :class:`ConfigError` unless ``hydra.sweeper.direction`` improves the data's metric.

    Args:
      config: the validated run config; ``data`` decides the metric (mse or accuracy).
      sweeper: ``hydra.sweeper``; sweepers without a single ``direction`` are not checked.
    """
    direction = sweeper.get("direction")
    if direction is None or isinstance(direction, ListConfig | list):  # multi-objective
        return
    direction = getattr(direction, "name", str(direction))  # the plugin's default is an Enum
    objective = data.spec(config.data).objective
    wanted = "maximize" if objective.maximize else "minimize"
    if direction != wanted:
        raise ConfigError(
            f"hydra.sweeper.direction={direction!r} is invalid: data={config.data.name} reports "
            f"{objective.metric}, which the sweep must {wanted}"
        )
