"""Stopping on a signal, and whether a run may continue from its newest checkpoint.

The checkpoints themselves (names, orbax, what they hold) are :mod:`metarun.rundir`'s.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any, NoReturn

import jax
import numpy as np

from metarun.config import Config, ConfigError, flatten, to_dict
from metarun.rundir import Checkpoints

log = logging.getLogger(__name__)

# Keys (and groups) that may differ between a checkpoint's config and the run resuming from
# it: they change how a run is shown, logged, stored or joined, not what it computes.
RESUME_SAFE = (
    "trainer.progress",
    "trainer.resume",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.coordinator",  # where the processes meet, and which one this is
    "trainer.process_id",
    "data.root",  # where the same files are
    "data.cache_dir",
    "data.download",
    "logger",  # every tracker and its settings
)


def resume_point(run_dir: Path, config: Config) -> tuple[int, dict[str, Any]] | None:
    """Where training starts, by ``trainer.resume``: ``(step, loop item)`` of the run dir's
    newest checkpoint, or None to start from scratch (``never`` deletes the checkpoints)."""
    resume = config.trainer.resume
    with Checkpoints(run_dir, config.trainer.keep_checkpoints) as checkpoints:
        if resume == "never":
            checkpoints.clear()
        step = checkpoints.latest()
        if step is None:
            return None
        loop = checkpoints.loop(step)
        if resume == "auto":
            check_resumable(loop["config"], config, step, checkpoints.directory)
        return step, loop


def check_resumable(saved: dict[str, Any], config: Config, step: int, directory: Path) -> None:
    """``trainer.resume=auto``: refuse a checkpoint made by a config that computes otherwise.

    Every key outside :data:`RESUME_SAFE` must match, except ``trainer.steps``: it may change
    (not below the checkpoint's step) under ``optim.schedule=constant``, which makes the run
    the one an uninterrupted run of the new length gives; the cosine schedule depends on it.
    """
    old, new = flatten(saved), flatten(to_dict(config))
    differ = [
        key
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
        and not any(key == safe or key.startswith(f"{safe}.") for safe in RESUME_SAFE)
    ]
    if "trainer.steps" in differ and config.optim.schedule == "constant":
        differ.remove("trainer.steps")
        if config.trainer.steps < step:
            raise ConfigError(
                f"trainer.steps={config.trainer.steps} is invalid: the checkpoint in "
                f"{directory} is at step {step}; trainer.resume=never starts over"
            )
    if differ:
        changes = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        raise ConfigError(
            f"trainer.resume=auto is invalid: the checkpoint at step {step} in {directory} was "
            f"made with another config ({changes}); trainer.resume=force continues from it "
            "anyway, trainer.resume=never starts over"
        )


# Steps between two agreements of a multi-process run on whether to stop: a signal stops it
# within this many steps (plus those in flight), not at the next logging step (minutes away
# with log_every=500), for one small all-gather per this many steps.
AGREE_EVERY = 10


class StopSignals:
    """Within ``with``: SIGTERM, SIGINT and submitit's SIGUSR2 ask the loop to stop.

    The loop finishes its step, writes a checkpoint, then calls :meth:`forward`, which hands
    the signal to the handler there was before: submitit's SIGUSR2 handler (SLURM's warning
    before the time limit, or of preemption) requeues the job and exits, Python's SIGINT
    handler raises KeyboardInterrupt. With no handler, or one that returns (submitit only
    logs SIGTERM), the process exits with 128 + the signal's number, as if killed by it.

    Only a SIGINT during the stop acts at once (a person pressing Ctrl-C twice): it goes to
    its handler there and then, so the checkpoint under way may be lost. Another SIGTERM or
    SIGUSR2 is only logged, since one is often sent twice: a ``timeout`` or ``srun`` wrapper
    forwards the signal the process group got too, and SLURM signals every process of a job.
    Signals that were ignored stay ignored; the handlers are put back on leaving.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __enter__(self) -> StopSignals:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # else Python can't handle
            for signum in self.SIGNALS:
                previous = signal.getsignal(signum)
                if previous not in (signal.SIG_IGN, None):  # None: installed outside Python
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            log.warning("%s: stopping after this step", name)
        elif signum == signal.SIGINT:
            self._call_previous(signum, frame)
        else:
            log.warning(
                "%s again: still stopping after this step, with a checkpoint (Ctrl-C stops "
                "at once, without one)",
                name,
            )

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step``. The processes of a multi-process run must stop at the
        same step (they save together), so they agree every :data:`AGREE_EVERY` steps: a flag
        gathered from each, a few bytes, where every process calls it at the same steps."""
        if jax.process_count() == 1:
            return self.received is not None
        if step % AGREE_EVERY:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.received is not None))
        return bool(np.any(flags))

    def forward(self) -> NoReturn:
        # Another process of the run may have been the one signalled: act as for SIGTERM.
        signum = self.received or signal.SIGTERM
        self._call_previous(signum, None)

    def _call_previous(self, signum: int, frame) -> NoReturn:
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.restore()
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)
