"""The meta-training loop shared by every algorithm, and the final meta-test.

:func:`train` reads top to bottom: place the state and the data on the devices (:func:`_place`),
compile the meta-step (:mod:`metarun.step`), run it (:func:`_meta_train`), fetching metrics only
every ``trainer.log_every`` steps (:func:`_log_record`) and checkpointing the state and the
loop's own (:class:`LoopState`), then meta-test the meta-parameters chosen on validation
(:func:`_meta_test`) and write the result.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from metarun import algos, models, rundir
from metarun import logger as loggers
from metarun.config import Config, TrainerConfig, to_dict
from metarun.distributed import is_lead
from metarun.evaluate import EvalResult, episode_keys, evaluate, make_evaluator
from metarun.experiment import Experiment, build, rng_streams, task_mesh
from metarun.resume import StopSignals, resume_point
from metarun.step import TrainState, compile_meta_step, init_state, replicate
from metarun.types import PRNGKey

log = logging.getLogger(__name__)


# ---------------------------------------------------------- Loop state ----


class Best:
    """The best validation score so far (its mean and 95% CI), its step, and a device copy of
    its meta-parameters."""

    def __init__(self, maximize: bool):
        self.maximize, self.step, self.value, self.ci95, self.params = maximize, 0, None, None, None

    def offer(self, step: int, val: EvalResult, params) -> None:
        value = val.mean
        # Never "best": a NaN would defeat every comparison, and a mean over episodes with NaN
        # predictions (nonfinite) measures no learner.
        if not np.isfinite(value) or val.nonfinite:
            return
        better = self.value is None or (value > self.value if self.maximize else value < self.value)
        if better:
            # A copy: the meta-step donates (reuses) the buffers of the state it is given.
            self.step, self.value, self.ci95 = step, value, val.ci95
            self.params = jax.tree.map(jnp.copy, params)


@dataclass
class LoopState:
    """What the loop carries besides the :class:`~metarun.step.TrainState`; a checkpoint keeps
    it (:meth:`to_checkpoint`: JSON, and the best parameters as arrays), so that a resumed run
    ends as the uninterrupted one would (same records, parameters and result)."""

    best: Best
    history: list[dict[str, Any]] = field(default_factory=list)  # the logged records
    pending: list[dict] = field(default_factory=list)  # per-step metrics since the last log
    skipped: int = 0  # updates skipped so far (trainer.nan_policy=skip)
    train_sec: float = 0.0  # training seconds of the earlier runs in this run dir

    def to_checkpoint(self, config: Config, train_sec: float) -> dict[str, Any]:
        """The checkpoint's ``loop`` item; ``train_sec``: training seconds so far."""
        host = jax.device_get(self.pending)  # exactly: values and dtypes
        return {
            "config": to_dict(config),  # what trainer.resume=auto compares with
            "best_step": self.best.step,
            "best_value": self.best.value,
            "best_ci95": self.best.ci95,
            "history": self.history,
            "pending": {
                "dtypes": {k: v.dtype.str for k, v in host[0].items()} if host else {},
                "steps": [{k: v.item() for k, v in metrics.items()} for metrics in host],
            },
            "skipped_steps": self.skipped,
            "train_sec": train_sec,
        }

    @classmethod
    def from_checkpoint(cls, loop: dict[str, Any], best_params, maximize: bool) -> LoopState:
        """What :meth:`to_checkpoint` saved, with the best parameters restored beside it."""
        best = Best(maximize)
        best.step, best.value, best.params = loop["best_step"], loop["best_value"], best_params
        best.ci95 = loop.get("best_ci95")  # absent in checkpoints of earlier versions
        dtypes = loop["pending"]["dtypes"]
        pending = [
            {k: np.asarray(v, dtypes[k]) for k, v in m.items()} for m in loop["pending"]["steps"]
        ]
        return cls(best, loop["history"], pending, loop["skipped_steps"], loop["train_sec"])


# ---------------------------------------------------------- Train loop ----


def train(config: Config, run_dir: Path, exp: Experiment | None = None) -> dict[str, Any]:
    """Meta-train, meta-test and write the run dir (:mod:`metarun.rundir`); returns the result.

    ``exp``: what ``build(config)`` returns, when the caller has built it already.
    Unless ``trainer.resume=never``, training continues from the newest checkpoint in the run
    dir and ends as the uninterrupted run would. SIGTERM, SIGINT and SIGUSR2 stop it after the
    current step with a checkpoint (:class:`metarun.resume.StopSignals`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    exp = build(config) if exp is None else exp
    lead = is_lead()  # in a multi-process run, only process 0 writes files
    resumed = resume_point(run_dir, config)  # before any file is written: it may refuse
    if lead:  # the validated config, for metarun.load (.hydra/ exists only under the CLI)
        rundir.save_config(run_dir, config)
    run = _place(exp, warm_start=resumed is None)
    first = resumed[0] if resumed else 0  # the step training starts after
    meta_step, compile_sec = None, 0.0  # nothing to compile when no step is left to run
    if first < config.trainer.steps:
        meta_step, compile_sec = compile_meta_step(
            exp, run.state, run.train_key, run.train_sampler, run.mesh
        )
        log.info("meta-step compiled in %.1f s for %d device(s)", compile_sec, run.mesh.size)
    tracker = (
        loggers.make(config.logger, run_dir, to_dict(config), start_step=first)
        if lead
        else loggers.MultiLogger([])
    )
    checkpoints = rundir.Checkpoints(run_dir, config.trainer.keep_checkpoints)
    try:
        state, loop = run.state, LoopState(Best(exp.source.objective.maximize))
        if resumed is not None:
            state, loop = _restore(checkpoints, *resumed, state, loop.best.maximize)
        state = _meta_train(exp, run, meta_step, state, loop, first, tracker, checkpoints)
    finally:
        tracker.close()
        checkpoints.close()

    # The paper protocol: test the meta-parameters that did best on the validation split
    # (the last ones when validation is off).
    meta_params = loop.best.params if loop.best.params is not None else state.meta_params
    rundir.save_params(run_dir, meta_params)
    from metarun.baselines import extra_results  # matplotlib only once a run ends
    from metarun.plots import plot_run

    result = _result(exp, loop, meta_params, run, compile_sec)
    # Experiments of the run's own (lstm_opt on quadratics: hand-designed baselines, a figure).
    result.update(extra_results(exp, meta_params, run_dir if lead else None))
    if lead:
        rundir.save_result(run_dir, result)
    _log_result(result, exp)
    if lead:
        plot_run(exp, meta_params, loop.history, run_dir)
        tracker.summary(result)  # after the plots, which the trackers upload
    return result


class _Placed(NamedTuple):
    """What the loop runs on: the device mesh, and the initial state, the training key and the
    samplers placed on it."""

    mesh: Mesh
    state: TrainState
    train_key: PRNGKey
    train_sampler: Any
    validate: Any  # (best, step, meta_params) -> record entries; see _validator


def _place(exp: Experiment, warm_start: bool) -> _Placed:
    trainer = exp.config.trainer
    # Step s samples its tasks from fold_in(train_key, s), a pure function of config.seed and
    # s: a checkpoint needs only the step to continue the same stream of training tasks.
    init_key, train_key = rng_streams(exp.config.seed)
    mesh = task_mesh(trainer.devices, trainer.meta_batch, trainer.task_chunk)
    state = replicate(init_state(exp, init_key, warm_start), mesh)
    # Every input of the compiled step lives on the mesh: the step runs under
    # transfer_guard("disallow"), which refuses even a device-to-device copy of the key.
    train_key, train_sampler = replicate((train_key, exp.source.samplers["train"]), mesh)
    validate = _validator(exp, replicate(exp.source.samplers["val"], mesh))
    return _Placed(mesh, state, train_key, train_sampler, validate)


def _restore(checkpoints: rundir.Checkpoints, step: int, saved: dict, state, maximize: bool):
    """The training state and :class:`LoopState` of the checkpoint at ``step`` (``saved``: its
    ``loop`` item), placed like ``state``."""
    like_best = state.meta_params if saved["best_value"] is not None else None
    state, best_params = checkpoints.arrays(step, state, like_best)
    log.info("resuming from the checkpoint at step %d in %s", step, checkpoints.directory)
    return state, LoopState.from_checkpoint(saved, best_params, maximize)


def _meta_train(
    exp: Experiment,
    run: _Placed,
    meta_step,
    state,
    loop: LoopState,
    first: int,
    tracker,
    checkpoints: rundir.Checkpoints,
) -> TrainState:
    """The steps after ``first``: log every ``trainer.log_every``, validate every
    ``trainer.val_every``, checkpoint every ``trainer.checkpoint_every``, at the end and on a
    stop signal (then hand the signal over: see :class:`~metarun.resume.StopSignals`)."""
    config = exp.config
    trainer = config.trainer
    progress = _Progress(trainer, first, exp.source.objective.metric)
    in_flight = InFlight(MAX_IN_FLIGHT)
    start = last_time = time.perf_counter()
    last_step = first
    try:
        with StopSignals() as stop:
            for step in range(first + 1, trainer.steps + 1):
                # No host<->device copy may hide in a step: one would stall the pipeline.
                with jax.transfer_guard("disallow"):
                    state, metrics = meta_step(state, run.train_key, run.train_sampler)
                in_flight.add(metrics)
                loop.pending.append(metrics)
                progress.update()
                if step % trainer.log_every == 0 or step == trainer.steps:
                    record = _log_record(loop, step, trainer, last_step, last_time)
                    last_step = step
                    if trainer.val_every and step % trainer.val_every == 0:
                        record.update(run.validate(loop.best, step, state.meta_params))
                    tracker.log(record)
                    loop.history.append(record)
                    progress.show(record)
                    last_time = time.perf_counter()  # validation and logging are not training

                stopping = stop.requested(step)
                periodic = trainer.checkpoint_every and step % trainer.checkpoint_every == 0
                if stopping or periodic or step == trainer.steps:
                    if loop.pending and trainer.nan_policy == "stop":  # stopped between logs
                        _stop_if_diverged(_fetch(loop.pending)[2], step - len(loop.pending) + 1)
                    elapsed = loop.train_sec + time.perf_counter() - start
                    checkpoints.save(
                        step, state, loop.best.params, loop.to_checkpoint(config, elapsed)
                    )
                if stopping:
                    checkpoints.wait()  # before handing over: submitit requeues at once
                    log.warning(
                        "stopped after step %d; the training state is in %s: the same command "
                        "in this run dir continues from it (trainer.resume=auto)",
                        step,
                        checkpoints.directory / str(step),
                    )
                    stop.forward()
    finally:
        progress.close()
    loop.train_sec += time.perf_counter() - start
    return state


# Steps the host may dispatch ahead of the device. Unbounded, the host queues dozens (each call
# returns at once), and a stop signal waits for all of them before the checkpoint: 21 s for a
# ProtoNet on this project's CPU, against SLURM's 30 s of grace. Two keep the device busy (the
# next step is always queued) and a stop within two steps of the signal.
MAX_IN_FLIGHT = 2


class InFlight:
    """Bounds the steps dispatched but not finished: adding a step's outputs waits for those of
    the step ``limit`` earlier. A wait for the device to finish, not a transfer to the host."""

    def __init__(self, limit: int):
        self.limit, self.queue = limit, collections.deque()

    def add(self, outputs) -> None:
        self.queue.append(outputs)
        if len(self.queue) > self.limit:
            jax.block_until_ready(self.queue.popleft())


def _validator(exp: Experiment, val_sampler):
    """``validate(best, step, meta_params) -> record entries``: the validation episodes'
    mean and CI, offered to ``best``."""
    eval_cfg, metric = exp.config.eval, exp.source.objective.metric
    evaluator = make_evaluator(
        exp.eval_learner,
        exp.source.objective,
        inner_steps=algos.eval_steps(exp.eval_learner, exp.config),
        batch=eval_cfg.batch,
    )
    keys = episode_keys(eval_cfg.seed, "val", eval_cfg.val_episodes)

    def validate(best: Best | None, step: int, meta_params) -> dict[str, Any]:
        val = evaluate(evaluator, meta_params, val_sampler, keys, metric)
        if best is not None:
            best.offer(step, val, meta_params)
        record = {f"val_{metric}": val.mean, f"val_{metric}_ci95": val.ci95}
        if val.nonfinite:
            record["val_nonfinite_episodes"] = val.nonfinite
        return record

    return validate


def _log_record(
    loop: LoopState, step: int, trainer: TrainerConfig, last_step: int, last_time: float
) -> dict[str, Any]:
    """The record of a logging step: the means of the metrics since the last one (fetched in one
    transfer, which ``loop.pending`` empties), skipped updates and throughput since
    ``last_step``; raises under ``trainer.nan_policy=stop`` if a step diverged."""
    means, newly_skipped, diverged = _fetch(loop.pending)
    if trainer.nan_policy == "stop":
        _stop_if_diverged(diverged, step - len(loop.pending) + 1)
    record = {"step": step, **means}
    if trainer.nan_policy == "skip":
        loop.skipped += newly_skipped
        record["skipped_steps"] = loop.skipped
    # After the fetch, which waits for the device: the steps are done, not merely queued.
    record["steps_per_sec"] = (step - last_step) / (time.perf_counter() - last_time)
    record["tasks_per_sec"] = record["steps_per_sec"] * trainer.meta_batch
    loop.pending = []
    return record


def _fetch(pending: list[dict]) -> tuple[dict[str, float], int, int | None]:
    """Mean of each metric over the steps since the last log: one device->host transfer.

    Returns the means, the number of skipped updates (``trainer.nan_policy=skip``), which the
    means leave out (NaN if every update was skipped), and the position in ``pending`` of the
    first step with a non-finite loss or gradient (None if there is none).
    """
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *pending))
    applied = ~stacked.pop("skipped", np.zeros(len(pending), bool))
    means = {k: float(np.mean(v[applied])) if applied.any() else np.nan for k, v in stacked.items()}
    finite = np.isfinite(stacked["loss"]) & np.isfinite(stacked["grad_norm"])
    diverged = None if finite.all() else int(np.argmin(finite))
    return means, int(len(pending) - applied.sum()), diverged


def _stop_if_diverged(diverged: int | None, first: int) -> None:
    """``trainer.nan_policy=stop``: raise before anything of a diverged run is logged or saved.

    ``diverged``: what :func:`_fetch` found, counted from step ``first``.
    """
    if diverged is not None:
        raise FloatingPointError(
            f"non-finite meta-training loss or gradient at step {first + diverged}; lower "
            "optim.lr or algo.inner_lr, or skip such updates with trainer.nan_policy=skip"
        )


class _Progress:
    """A tqdm bar on a terminal; elsewhere (a batch job's log) one log line per logged step
    instead of the bar's thousands of carriage-return updates. ``trainer.progress=false``: none."""

    def __init__(self, trainer: TrainerConfig, first: int, metric: str):
        self.keys = ("loss", metric, f"val_{metric}")
        terminal = sys.stderr.isatty()
        self.bar = tqdm(
            total=trainer.steps,
            initial=first,
            unit="step",
            disable=not (trainer.progress and terminal),
            dynamic_ncols=True,
        )
        self.lines = trainer.progress and not terminal
        self.total = trainer.steps

    def update(self) -> None:
        self.bar.update()

    def show(self, record: dict[str, Any]) -> None:
        shown = {k: f"{v:.4g}" for k, v in record.items() if k in self.keys}
        self.bar.set_postfix(shown)
        if self.lines:
            values = " ".join(f"{k}={v}" for k, v in shown.items())
            log.info(
                "step %d/%d %s %.1f steps/s",
                record["step"],
                self.total,
                values,
                record["steps_per_sec"],
            )

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------- Meta-test ----


def _result(exp: Experiment, loop: LoopState, meta_params, run: _Placed, compile_sec: float):
    """``result.json``: the meta-test of ``meta_params``, their validation figure (what a sweep
    optimises, :mod:`metarun.cli`) and the run's facts."""
    config, metric = exp.config, exp.source.objective.metric
    result = _meta_test(exp, meta_params, run.mesh)
    # The best validation figure seen when validation ran, else a pass over the last parameters.
    validated = loop.best.params is not None
    if validated:
        val_mean, val_ci95 = loop.best.value, loop.best.ci95
    else:
        val = run.validate(None, config.trainer.steps, meta_params)
        val_mean, val_ci95 = val[f"val_{metric}"], val[f"val_{metric}_ci95"]
    result.update(val_mean=val_mean, val_ci95=val_ci95, val_episodes=config.eval.val_episodes)
    history = loop.history
    result.update(
        best_step=loop.best.step if validated else config.trainer.steps,
        **({f"best_val_{metric}": loop.best.value} if validated else {}),
        prepare_sec=exp.prepare_sec,
        compile_sec=compile_sec,
        train_sec=loop.train_sec,
        skipped_steps=loop.skipped,
        # Steady state: the median over logging intervals after the first (which has warm-up).
        tasks_per_sec=float(np.median([r["tasks_per_sec"] for r in history[1:] or history]))
        if history
        else None,
        steps=config.trainer.steps,
        algo=config.algo.name,
        data=config.data.name,
        seed=config.seed,
    )
    return result


def _log_result(result: dict[str, Any], exp: Experiment) -> None:
    steps = result["inner_steps"]
    log.info(
        "test %s%s: %.4f ± %.4f (95%% CI, %d episodes%s)",
        result["metric"],
        f" after {steps} step{'' if steps == 1 else 's'}" if exp.learner.inner_loop else "",
        result["mean"],
        result["ci95"],
        result["episodes"],
        f"; before adaptation {result['pre_adaptation_mean']:.4f}"
        if "pre_adaptation_mean" in result
        else "",
    )


def _meta_test(exp: Experiment, meta_params, mesh) -> dict[str, Any]:
    """Final evaluation on the test split: after ``eval.inner_steps`` and, for gradient-based
    learners, before adapting (``pre_adaptation_*``)."""
    eval_cfg, objective = exp.config.eval, exp.source.objective
    keys = episode_keys(eval_cfg.seed, "test", eval_cfg.episodes)
    test_sampler = replicate(exp.source.samplers["test"], mesh)
    result: dict[str, Any] = {"metric": objective.metric}
    steps = algos.eval_steps(exp.eval_learner, exp.config)
    runs = [(steps, "")]
    if exp.learner.inner_loop:
        runs.append((0, "pre_adaptation_"))
    for num_steps, prefix in runs:
        evaluator = make_evaluator(
            exp.eval_learner, objective, inner_steps=num_steps, batch=eval_cfg.batch
        )
        outcome = evaluate(evaluator, meta_params, test_sampler, keys, objective.metric)
        result[f"{prefix}mean"], result[f"{prefix}ci95"] = outcome.mean, outcome.ci95
        result[f"{prefix}nonfinite_episodes"] = outcome.nonfinite
        if outcome.nonfinite:
            log.warning(
                "%d of %d test episodes%s have a non-finite query loss: their predictions are "
                "NaN, and the mean counts them as they fall (argmax of NaN)",
                outcome.nonfinite,
                len(outcome.values),
                f" ({num_steps} adaptation steps)",
            )
    result.update(
        episodes=eval_cfg.episodes,
        inner_steps=steps,
        split="test",
        bn_mode=models.bn_mode(exp.model),
    )
    return result
