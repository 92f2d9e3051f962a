"""Experiment trackers, selected in any combination by ``logger=[jsonl,wandb,tensorboard,mlflow]``.

A record is a flat dict with ``"step"``; trackers are called from the host every
``trainer.log_every`` steps, never inside the jitted step, and only on process 0.
:func:`metarun.train.train` drives each tracker through four calls:

- ``make(cfg.logger, run_dir, config, start_step)``: start, with the full config as
  hyper-parameters. Whatever a tracker writes goes under ``run_dir`` unless its config points
  elsewhere. ``start_step`` is the step training continues after (0 for a fresh run; a resumed
  run's checkpoint step): a tracker that keeps records in the run dir drops the ones after it,
  which the resumed run logs again.
- ``log(record)``: every ``trainer.log_every`` steps.
- ``close()``: training is over (called in a ``finally``); buffered records reach the disk.
- ``summary(result)``: after the meta-test and the plots: the final result (what
  ``result.json`` holds) and ``run_dir/*.png``; this ends the tracker's run. A run that
  never gets its summary (training or the meta-test raised) ends as failed at exit.

Adding a tracker = a module here registering ``factory(cfg, run_dir, config, start_step)`` under its
yaml's name + a schema in :mod:`metarun.config` + ``conf/logger/<name>.yaml`` + tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from metarun.registry import Registry

loggers = Registry("logger")


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...

    def summary(self, result: dict[str, Any]) -> None: ...


class MultiLogger:
    """Fans each call out to the configured trackers."""

    def __init__(self, targets: list[Logger]):
        self.targets = targets

    def log(self, record: dict[str, Any]) -> None:
        for target in self.targets:
            target.log(record)

    def close(self) -> None:
        for target in self.targets:
            target.close()

    def summary(self, result: dict[str, Any]) -> None:
        for target in self.targets:
            target.summary(result)


def make(
    cfg: dict[str, Any], run_dir: Path, config: dict[str, Any] | None = None, start_step: int = 0
) -> MultiLogger:
    """The trackers named in ``cfg`` (``config.logger``); ``config``: the full config, as a dict."""
    config = config or {}
    return MultiLogger(
        [loggers.get(name)(sub, run_dir, config, start_step) for name, sub in cfg.items()]
    )


def numbers(result: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a result (``mean``, ``ci95``, ...), for trackers of scalars only."""
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def plots(run_dir: Path) -> list[Path]:
    """The figures a run leaves in its run dir (learning curves, adaptation)."""
    return sorted(run_dir.glob("*.png"))


from metarun.logger import mlflow, tensorboard, wandb  # noqa: E402,F401  (register)
from metarun.logger.jsonl import JsonlLogger  # noqa: E402

__all__ = ["JsonlLogger", "Logger", "MultiLogger", "loggers", "make"]
