"""The ``metarun`` command: Hydra composes ``conf/``, then :func:`metarun.train.train` runs.

The Hydra wrapper stays thin so that ``train(config, run_dir)`` is testable; it returns
the validation metric of the tested meta-parameters, which sweepers optimise. The test split
is for reporting only: a sweep that selected on it would report a tuned, optimistic figure.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from metarun.config import (
    Config,
    ConfigError,
    DataError,
    TrainerConfig,
    conf_dir,
    register_configs,
    validate,
)
from metarun.rundir import STATE_DIR

log = logging.getLogger(__name__)


def quiet_orbax() -> None:
    """orbax logs each step of every checkpoint read and write at INFO (through absl)."""
    logging.getLogger("absl").setLevel(logging.WARNING)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> float:
    from metarun import distributed
    from metarun.experiment import build
    from metarun.sweep import check_direction
    from metarun.train import train

    quiet_orbax()  # here, not in main(): submitit's jobs call this function without main()
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        config = validate(cfg)
        require_budget(config)
        check_direction(config, HydraConfig.get().sweeper)  # an optuna sweep's, mse vs accuracy
        distributed.initialize(config.trainer)  # before any computation
        exp = build(config)  # factories check what the schema cannot (e.g. Reptile is first-order)
        # trainer.resume=auto may refuse a checkpoint of another config: a ConfigError too.
        result = train(config, Path(HydraConfig.get().runtime.output_dir), exp)
    except Exception as err:
        if sweep:
            # Into this job's log, where metarun-report finds it; Hydra's launcher records the
            # exception and goes on with the other jobs, then exits non-zero.
            log.error("%s: %s", type(err).__name__, err)
            raise
        refuse(err)
    finally:
        release()
    # Validation, never the test figure (result["mean"]): Optuna selects on what this returns.
    return result["val_mean"]


def require_budget(config: Config) -> None:
    """Refuse a combination that no preset gives a training budget, unless the command sets one:
    ``conf/trainer/default.yaml``'s (70,000 meta-steps of 25 tasks) is MAML's sinusoid budget,
    which would otherwise reach, say, Reptile on mini-ImageNet unnoticed."""
    algo, data, trainer = config.algo.name, config.data.name, config.trainer
    preset = conf_dir() / "preset" / f"{algo}_{data}.yaml"
    default = TrainerConfig()
    unset = trainer.steps == default.steps and trainer.meta_batch == default.meta_batch
    if data != "sinusoid" and unset and not preset.exists():
        raise ConfigError(
            f"trainer.steps and trainer.meta_batch are unset for algo={algo} data={data}: no "
            f"preset holds its budget (conf/preset/{algo}_{data}.yaml), and the default "
            f"({default.steps} meta-steps of {default.meta_batch} tasks) is MAML's sinusoid "
            "budget; set them, e.g. trainer.steps=60000 trainer.meta_batch=4"
        )


def refuse(err: Exception) -> None:
    """Exit with one line for the errors a user fixes (a config, a path, a diverging run);
    anything else is a bug, raised with its traceback."""
    from metarun.rundir import CheckpointWriteError  # imports orbax: not at startup

    if isinstance(err, ConfigError):
        print(f"metarun: invalid config: {err}", file=sys.stderr)
        sys.exit(2)
    if isinstance(err, DataError):  # a damaged, missing or foreign dataset file
        print(f"metarun: bad data: {err}", file=sys.stderr)
        sys.exit(2)
    if isinstance(err, FileNotFoundError):  # a dataset that is not where data.root says
        print(f"metarun: missing data: {err}", file=sys.stderr)
        sys.exit(2)
    if isinstance(err, FloatingPointError | CheckpointWriteError):  # a diverged run, a full disk
        print(f"metarun: training stopped: {err}", file=sys.stderr)
        sys.exit(1)
    raise err


class Preflight(Callback):
    """Hydra callback: validate a single run before Hydra writes into its run dir.

    Hydra saves ``.hydra/`` (the config and overrides) into the run dir before it calls the
    task function, so a config refused there would already have overwritten an existing run's
    saved config. ``on_run_start`` comes first: the schema's checks and a refused resume
    (``trainer.resume=auto`` on a checkpoint of another config) stop the run here, leaving
    the run dir untouched; so do the algorithm's refusals of a model or setting
    (:func:`metarun.experiment.check`), found without loading the data. Sweep jobs get fresh dirs
    and are checked in the task function, where one refused job does not stop the others.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        quiet_orbax()  # it reads checkpoints here (a resume's, trainer.init_from's)
        try:
            checked = validate(_task(config))
            require_budget(checked)
            from metarun import distributed

            if not distributed.wanted(checked.trainer.distributed):  # JAX must wait for it
                from metarun.experiment import check

                check(checked)  # what build() refuses (algorithm vs model, ...), no data loaded
            run_dir = Path(str(config.hydra.run.dir))
            if checked.trainer.resume == "auto" and (run_dir / STATE_DIR).is_dir():
                from metarun.resume import resume_point

                resume_point(run_dir, checked)  # raises if the checkpoint's config differs
        except ConfigError as err:
            refuse(err)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """A sweep's own settings are checked once, before any job: a wrong direction would
        make every trial fail (Optuna goes on through all of them)."""
        from metarun.sweep import check_direction

        try:
            checked = validate(_task(config))
        except ConfigError:  # the base config; each job checks its own values
            return
        try:
            check_direction(checked, config.hydra.sweeper)
        except ConfigError as err:
            refuse(err)


def _task(config: DictConfig) -> DictConfig:
    """The run's config without Hydra's node, still typed by the schema (masked_copy is not)."""
    task = config.copy()
    with open_dict(task):
        del task["hydra"]
    return task


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


# Groups of conf/ that `metarun --help` leaves out: the schemas, the presets that the algo, data
# and model choices select by themselves, and Hydra's own (but hydra/launcher, listed apart).
INTERNAL_GROUPS = ("schema", "preset", "preset_model", "data_model", "hydra")


def help_groups(which: str) -> str:
    """The ``group: option, ...`` lines of ``metarun --help`` (conf/hydra/help/metarun.yaml),
    read from Hydra's config search path when the help prints, so that none goes missing.

    ``which`` is ``composed`` (the groups of the root config's defaults list, ``*`` on the
    default), ``added`` (the other groups, chosen with ``+group=option``) or one group's path.
    """
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    defaults = {}  # "optional preset: ..." -> {"preset": ...}; lists (logger) as they are
    for entry in OmegaConf.to_container(OmegaConf.load(conf_dir() / "config.yaml").defaults):
        if isinstance(entry, dict):  # not the schema's name nor _self_
            defaults.update((key.split()[-1], value) for key, value in entry.items())
    if which in ("composed", "added"):
        groups = [
            group
            for group in sorted(loader.list_groups(""))
            if group not in INTERNAL_GROUPS and (group in defaults) == (which == "composed")
        ]
    else:
        groups = [which]
    lines = []
    for group in groups:
        default = defaults.get(group, [])
        marked = [default] if isinstance(default, str) else default
        options = [f"{o}*" if o in marked else o for o in sorted(loader.get_group_options(group))]
        lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def main() -> None:
    # JAX logs at INFO that it found no TPU; Hydra's job logging would print it on every run.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    register_configs()
    OmegaConf.register_new_resolver("metarun_help_groups", help_groups, replace=True)
    try:
        _run()
    except SystemExit as stop:
        if stop.code == 1:  # Hydra could not compose the config, perhaps for a misspelt key
            suggest_keys(sys.argv[1:])
        raise


def suggest_keys(args: list[str]) -> None:
    """After Hydra's "Key 'inner_lrr' is not in struct": the closest key that exists.

    Hydra names the unknown key but not the one meant; the keys are those of the config
    composed with the command line's group choices (``algo=protonet`` has other keys).
    """
    from difflib import get_close_matches

    from omegaconf import OmegaConf

    from metarun.config import compose, flatten

    overrides = [a.split("=", 1) for a in args if "=" in a and a[0] not in "-+~"]
    choices = [f"{k}={v}" for k, v in overrides if "." not in k and k != "hydra"]
    try:
        known = list(flatten(OmegaConf.to_container(compose(choices))))
    except Exception:  # the choices themselves are wrong: Hydra's message has said so
        return
    for key, _ in overrides:
        if "." in key and not key.startswith("hydra.") and key not in known:
            close = get_close_matches(key, known, n=1)
            group = key.split(".")[0]
            if close:
                print(f"metarun: unknown key {key}; did you mean {close[0]}?", file=sys.stderr)
            elif any(k.startswith(f"{group}.") for k in known):  # none close: the group's keys
                keys = ", ".join(k for k in known if k.startswith(f"{group}."))
                print(f"metarun: unknown key {key}; {group} has {keys}", file=sys.stderr)


if __name__ == "__main__":
    main()
