"""Multi-process runs: one JAX process per host (or per GPU), joined before any computation.

Every process runs the same program. :func:`metarun.step.task_mesh` then spans the devices
of all processes, so each process samples and adapts its share of every meta-batch and
XLA averages the meta-gradient across them; the meta-parameters are replicated everywhere.
Process 0 writes the run dir's files (metrics, result, plots); the checkpoint is written
by all processes together (orbax coordinates them).

``trainer.distributed``: ``auto`` joins when SLURM started several tasks (``srun``, or the
submitit launcher) and JAX reads the rest from SLURM; ``on`` always joins, with
``trainer.coordinator``, ``trainer.num_processes`` and ``trainer.process_id`` when given
(any other cluster, or several processes on one machine); ``off`` never joins.
"""

from __future__ import annotations

import os

import jax


def wanted(mode: str) -> bool:
    if mode == "auto":
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return mode == "on"


def initialize(trainer) -> None:
    """Join the other processes of this run, if ``trainer.distributed`` asks for it."""
    if not wanted(trainer.distributed):
        return
    # CPU processes exchange their collectives over TCP with gloo (GPUs use NCCL anyway).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    explicit = {}
    if trainer.coordinator:
        explicit = {
            "coordinator_address": trainer.coordinator,
            "num_processes": trainer.num_processes,
            "process_id": trainer.process_id,
        }
    jax.distributed.initialize(**explicit)


def is_lead() -> bool:
    """Whether this process writes the run dir's files (process 0)."""
    return jax.process_index() == 0
