"""The ``metarun`` command: Hydra composes ``conf/``, then :func:`metarun.train.train` runs.

The Hydra wrapper stays thin so that ``train(config, run_dir)`` is testable; it
returns the final test metric so sweepers can optimise it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metarun.config import ConfigError, conf_dir, register_configs, validate


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> float:
    from metarun import distributed
    from metarun.sweep import check_direction
    from metarun.train import build, train

    # orbax logs each step of every checkpoint write at INFO (through absl). Here, not in
    # main(): submitit's jobs call this function without main().
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        config = validate(cfg)
        check_direction(config, HydraConfig.get().sweeper)  # an optuna sweep's, mse vs accuracy
        distributed.initialize(config.trainer)  # before any computation
        exp = build(config)  # factories check what the schema cannot (e.g. Reptile is first-order)
    except ConfigError as err:
        print(f"metarun: invalid config: {err}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as err:  # a dataset that is not where data.root says
        print(f"metarun: missing data: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        result = train(config, Path(HydraConfig.get().runtime.output_dir), exp)
    except ConfigError as err:  # trainer.resume=auto refusing a checkpoint of another config
        print(f"metarun: invalid config: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        release()
    return result["mean"]


def release() -> None:
    """Free a finished job's compiled programs before the next job of a sweep.

    Hydra's basic launcher runs a sweep's jobs one after another in this process, and JAX's
    caches keep every program a job compiled (evaluators, plots) alive after ``train``
    returns; the next job compiles its own, so nothing is lost by dropping them. Collecting
    first frees what only reference cycles of the job still hold (device buffers included).
    """
    import gc

    import jax

    gc.collect()
    jax.clear_caches()


def main() -> None:
    # JAX logs at INFO that it found no TPU; Hydra's job logging would print it on every run.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    register_configs()
    _run()


if __name__ == "__main__":
    main()
