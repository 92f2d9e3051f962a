"""The run dir: what a run writes there, under which names, and how it is read back.

    <run_dir>/
      config.yaml            the validated config (metarun.load rebuilds the learner from it)
      result.json            the meta-test's result, once the run has finished
      checkpoints/best/      the meta-parameters the meta-test used (orbax)
      checkpoints/state/N/   the training state at step N (orbax CheckpointManager)
      metrics.jsonl, *.png   the trackers' and the figures' files (logger/, plots.py)

A state checkpoint holds three items: ``state`` (the :class:`~metarun.step.TrainState`),
``best`` (the best-on-validation meta-parameters, once validation has run) and ``loop`` (JSON:
the rest of the loop, :class:`~metarun.train.LoopState`, and the config that made it). orbax
writes each into ``<step>.orbax-checkpoint-tmp-*`` and renames it when complete, so a write cut
short is never restored, and the next run removes it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import jax
from omegaconf import OmegaConf

from metarun.config import Config, ConfigError, register_configs

# orbax takes a second to import: the names and config readers here serve `metarun-report` and
# the CLI's preflight without it, and each function that writes or reads arrays imports it.

CONFIG = "config.yaml"
RESULT = "result.json"
BEST_PARAMS = "checkpoints/best"
STATE_DIR = "checkpoints/state"


def save_config(run_dir: Path, config: Config) -> None:
    (run_dir / CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))


def load_config(run_dir: Path) -> Config:
    """The run's saved config, merged into the schemas so that a wrong one fails here."""
    from hydra.core.config_store import ConfigStore

    saved = OmegaConf.load(run_dir / CONFIG)
    register_configs()
    schemas = {}
    for group in ("algo", "data", "model"):
        name = saved[group].name
        try:
            schemas[group] = ConfigStore.instance().load(f"schema/{group}/{name}.yaml").node
        except Exception:
            raise ConfigError(f"the run's {group}={name} is unknown to this metarun") from None
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config(**schemas)), saved))


def save_result(run_dir: Path, result: dict[str, Any]) -> None:
    (run_dir / RESULT).write_text(json.dumps(result, indent=2) + "\n")


def save_params(run_dir: Path, meta_params) -> None:
    """The meta-parameters the meta-test used, as an orbax checkpoint."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((run_dir / BEST_PARAMS).absolute(), meta_params, force=True)


def saved_params_like(run_dir: Path):
    """The shapes and dtypes of what :func:`save_params` wrote (``jax.ShapeDtypeStruct``s in
    its tree of dicts), read from the checkpoint's metadata: no array is read."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.metadata((run_dir / BEST_PARAMS).absolute()).item_metadata.tree
    # Onto this process's first device, whatever devices the run that saved them had.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), saved)


def load_params(run_dir: Path, like=None):
    """What :func:`save_params` wrote, restored into the shapes and dtypes of ``like``
    (default: as saved, :func:`saved_params_like`)."""
    import orbax.checkpoint as ocp

    like = saved_params_like(run_dir) if like is None else like
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore((run_dir / BEST_PARAMS).absolute(), like)


def require_finished(run_dir: Path) -> None:
    """Raise FileNotFoundError unless ``run_dir`` holds what :func:`metarun.load` reads."""
    for path in (run_dir / CONFIG, run_dir / BEST_PARAMS):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a finished metarun run dir?")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a lost mount); earlier ones are intact."""


class Checkpoints:
    """The run dir's state checkpoints (an orbax ``CheckpointManager``); close it when done."""

    def __init__(self, run_dir: Path, keep: int):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.directory = (run_dir / STATE_DIR).absolute()
        self.writing: int | None = None  # the step of the last save, perhaps still being written
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(keep),
                cleanup_tmp_directories=True,  # writes a killed process left unfinished
            ),
        )

    def latest(self) -> int | None:
        """The step of the newest complete checkpoint, if any."""
        return self.manager.latest_step()

    def clear(self) -> None:
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def save(self, step: int, state, best_params, loop: dict[str, Any]) -> None:
        """Start writing (the device->host copy happens before this returns, so the caller may
        donate ``state`` at once; the files are written in the background)."""
        args = self.ocp.args
        items = {"state": args.StandardSave(state), "loop": args.JsonSave(loop)}
        if best_params is not None:
            items["best"] = args.StandardSave(best_params)
        # orbax would wait for the previous write at the start of this one anyway; waiting here
        # first blames a failed background write on its own step.
        self.wait()
        self.writing = step
        with self._written():
            self.manager.save(step, args=args.Composite(**items), force=True)

    def loop(self, step: int) -> dict[str, Any]:
        """The ``loop`` item of the checkpoint at ``step``."""
        args = self.ocp.args
        return self.manager.restore(step, args=args.Composite(loop=args.JsonRestore())).loop

    def arrays(self, step: int, state, best_params) -> tuple[Any, Any]:
        """``(state, best parameters)`` at ``step``, shaped and placed like the given trees;
        ``best_params=None`` when the checkpoint has none."""
        args = self.ocp.args
        like = self.ocp.utils.to_shape_dtype_struct  # shapes, dtypes, shardings: restored into
        items = {"state": args.StandardRestore(jax.tree.map(like, state))}
        if best_params is not None:
            items["best"] = args.StandardRestore(jax.tree.map(like, best_params))
        restored = self.manager.restore(step, args=args.Composite(**items))
        return restored.state, restored.best if best_params is not None else None

    def wait(self) -> None:
        """Until the background writes are done."""
        with self._written():
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the background writes, then release the manager."""
        with self._written():
            self.manager.close()

    @contextlib.contextmanager
    def _written(self):
        """An ``OSError`` of a write as a :class:`CheckpointWriteError` that says what is safe.

        orbax writes into a temporary folder and renames it only once complete, so a failed
        write leaves the newer checkpoints as they were (the next run removes the remains).
        """
        try:
            yield
        except OSError as err:
            latest = self.manager.latest_step()
            kept = f"the checkpoint at step {latest} is intact" if latest else "no checkpoint"
            raise CheckpointWriteError(
                f"could not write the checkpoint at step {self.writing} in {self.directory}: "
                f"{err.strerror or err}; {kept}, and the same command resumes from it. Free "
                "space there, or lower trainer.keep_checkpoints or trainer.checkpoint_every"
            ) from err

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
