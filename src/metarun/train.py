"""The meta-training loop shared by every algorithm.

Read top to bottom: build the pieces from the config, then the meta-step (one
jitted pure function: sample a meta-batch on the device, vmap the algorithm's
inner loop over tasks, one optax update), then the loop that calls it and fetches
metrics only every ``trainer.log_every`` steps, then the final meta-test.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from metarun import algos, data, models, optim
from metarun import logger as loggers
from metarun.algos.base import MetaLearner, outer_grad
from metarun.checkpoint import (
    Checkpoints,
    StopSignals,
    pending_from_json,
    pending_to_json,
    resume_point,
)
from metarun.config import Config, ConfigError, to_dict
from metarun.distributed import is_lead
from metarun.evaluate import episode_keys, evaluate, make_evaluator
from metarun.logger.jsonl import truncate
from metarun.models.conv4 import RUNNING_MOMENTUM
from metarun.types import PRNGKey, TaskSource

log = logging.getLogger(__name__)

# In the run dir: the config as validated, and the meta-parameters the meta-test used.
CONFIG = "config.yaml"
BEST_PARAMS = "checkpoints/best"


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: outer updates done
    meta_params: Any
    opt_state: optax.OptState


class Experiment(NamedTuple):
    """What a config builds: the task source, model, meta-learner and outer optimizer.

    ``eval_learner`` is the learner of validation, the meta-test and ``metarun.load``: the
    same as ``learner`` except with ``model.bn_mode=running`` (BatchNorm normalises with the
    running averages there, with the batch's statistics in meta-training).
    """

    config: Config
    source: TaskSource
    model: nn.Module
    learner: MetaLearner
    optimizer: optax.GradientTransformation
    prepare_sec: float  # loading the data and putting it on the device
    eval_learner: MetaLearner


# ---------------------------------------------------------------- Build ----


def build(config: Config) -> Experiment:
    start = time.perf_counter()
    source = jax.block_until_ready(data.make(config.data))
    prepare_sec = time.perf_counter() - start
    model = models.make(config.model, source.output_dim)
    learner, eval_learner = make_learners(config, model, source.objective)
    optimizer = optim.make(config.optim, config.trainer.steps)
    return Experiment(config, source, model, learner, optimizer, prepare_sec, eval_learner)


def check(config: Config) -> None:
    """Raise the :class:`ConfigError` that :func:`build` would, without loading any data
    (the dataset's spec gives the shapes): the CLI calls it before Hydra writes the run dir."""
    spec = data.spec(config.data)
    make_learners(config, models.make(config.model, spec.output_dim), spec.objective)


def make_learners(config: Config, model: nn.Module, objective) -> tuple[MetaLearner, MetaLearner]:
    """The meta-training learner and the evaluation one (:class:`Experiment`), refusing
    training ways other than the head's for a learner with a head, and a ``model.bn_mode``
    that the algorithm cannot honour."""
    algos.check_data(config.algo.name, config.data.name, objective)
    learner = algos.make(config.algo, models.network(model, config.trainer.precision), objective)
    train_ways, ways = getattr(config.data, "train_ways", None), model.output_dim
    if train_ways not in (None, ways) and not learner.any_ways:
        raise ConfigError(
            f"data.train_ways={train_ways} is invalid with algo={config.algo.name}: its model "
            f"has a head of data.ways={ways} outputs; train with data.ways classes, or use a "
            "metric-based learner (protonet, matchingnet, relationnet, siamese)"
        )
    if config.trainer.precision == "bf16" and not learner.bf16:
        raise ConfigError(
            f"trainer.precision=bf16 is invalid with algo={config.algo.name} and "
            f"data={config.data.name}: its computation runs in float32 whatever the precision; "
            "use trainer.precision=fp32"
        )
    mode = models.bn_mode(model)
    if mode not in learner.bn_modes:
        raise ConfigError(
            f"model.bn_mode={mode} is invalid with algo={config.algo.name}"
            f"{' and algo.per_step_bn=true' if getattr(config.algo, 'per_step_bn', False) else ''}"
            f": it honours {', '.join(learner.bn_modes)}; every mode works with maml, fomaml, "
            "metasgd, anil, reptile, protonet, matchingnet and siamese"
        )
    if mode != "running":
        return learner, learner
    evaluation = models.network(model, config.trainer.precision, training=False)
    return learner, algos.make(config.algo, evaluation, objective)


def rng_streams(seed: int) -> tuple[PRNGKey, PRNGKey]:
    """(init key, training key); step ``s`` samples its meta-batch from fold_in(train, s)."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, train_key


def init_state(exp: Experiment, key: PRNGKey) -> TrainState:
    def init(key: PRNGKey) -> TrainState:
        model_key, episode_key, learner_key = jax.random.split(key, 3)
        example = exp.source.samplers["train"](episode_key)
        params = exp.model.init(model_key, example.support_x)["params"]
        meta_params = exp.learner.init(params, learner_key, example)
        return TrainState(jnp.zeros((), jnp.int32), meta_params, exp.optimizer.init(meta_params))

    # One program: run op by op, the initialisers compile dozens of tiny programs (seconds).
    return jax.jit(init)(key)


# ---------------------------------------------------------- Meta-step ----


def task_mesh(devices: str, meta_batch: int) -> Mesh:
    """A 1-D mesh over ``trainer.devices`` devices (of every process of a multi-process run);
    the meta-batch is split along it."""
    local = jax.devices()
    n = len(local) if devices == "all" else int(devices)
    if n > len(local):
        raise ConfigError(
            f"trainer.devices={devices} is invalid: this run has {len(local)} "
            f"{jax.default_backend()} device(s)"
        )
    if meta_batch % n:
        raise ConfigError(
            f"trainer.meta_batch={meta_batch} is invalid: it must be a multiple of the "
            f"{n} devices of trainer.devices={devices}"
        )
    # Auto axes: XLA propagates the split from the keys to everything computed from them.
    auto = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((n,), ("tasks",), devices=local[:n], axis_types=auto)


def replicate(tree, mesh: Mesh):
    """``tree`` copied onto every device of ``mesh`` (parameters, optimizer state, datasets)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def make_meta_step(exp: Experiment, mesh: Mesh | None = None):
    """``meta_step(state, train_key, sample) -> (state, metrics)``, pure; jit it at the call site.

    ``sample`` is the train split's sampler (``exp.source.samplers["train"]``), an argument so
    that the split's arrays are inputs of the compiled program rather than constants in it.
    With a ``mesh`` the tasks of the meta-batch are split over its devices, each sampling and
    adapting its share; XLA averages the meta-gradient across them (an all-reduce).
    With ``trainer.nan_policy=skip`` an update with a non-finite loss or gradient is dropped
    on the device and ``metrics["skipped"]`` says so.
    """
    meta_batch = exp.config.trainer.meta_batch
    inner_steps = algos.inner_steps(exp.config.algo)
    skip_nan = exp.config.trainer.nan_policy == "skip"
    running = models.bn_mode(exp.model) == "running"

    def meta_step(state: TrainState, train_key: PRNGKey, sample):
        key = jax.random.fold_in(train_key, state.step)
        keys = jax.random.split(key, meta_batch)
        if mesh is not None and mesh.size > 1:
            keys = jax.lax.with_sharding_constraint(keys, NamedSharding(mesh, P("tasks")))
        episodes = jax.vmap(sample)(keys)
        grads, metrics = outer_grad(
            exp.learner, exp.source.objective, state.meta_params, episodes, inner_steps, state.step
        )
        updates, opt_state = exp.optimizer.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        if running:  # BatchNorm's averages: this meta-batch's statistics, never a gradient
            meta_params = _update_running_stats(exp, state.meta_params, meta_params, episodes)
        metrics["grad_norm"] = optax.tree.norm(grads)
        if skip_nan:
            # A select, not a branch on the host: no device->host sync. The step still counts,
            # so the next one samples other tasks.
            ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            meta_params, opt_state = jax.tree.map(
                lambda new, old: jnp.where(ok, new, old),
                (meta_params, opt_state),
                (state.meta_params, state.opt_state),
            )
            metrics["skipped"] = ~ok
        return TrainState(state.step + 1, meta_params, opt_state), metrics

    return meta_step


def _update_running_stats(exp: Experiment, before, after, episodes):
    """``after`` (the updated meta-parameters) with BatchNorm's running averages moved towards
    the statistics of the meta-batch's images under ``before`` (the ones differentiated)."""
    key = exp.learner.encoder_key
    images = jnp.concatenate([episodes.support_x, episodes.query_x], axis=1)
    old, new = (before, after) if key is None else (before[key], after[key])
    updated = models.update_running_stats(exp.model, old, images, RUNNING_MOMENTUM, into=new)
    return updated if key is None else {**after, key: updated}


def compile_meta_step(
    exp: Experiment, state: TrainState, train_key: PRNGKey, sample=None, mesh: Mesh | None = None
):
    """Ahead-of-time compile with the state donated; returns (compiled step, seconds).

    Call it as ``step(state, train_key, sample)``; ``sample`` defaults to
    ``exp.source.samplers["train"]``. With a ``mesh``, pass ``state`` and ``sample`` through
    :func:`replicate` first.

    A compiled executable cannot silently recompile: a changed shape or dtype
    raises instead, so every step after the first runs the same program.
    """
    start = time.perf_counter()
    sample = exp.source.samplers["train"] if sample is None else sample
    step = jax.jit(make_meta_step(exp, mesh), donate_argnums=0)
    compiled = step.lower(state, train_key, sample)
    compiled = compiled.compile()
    return compiled, time.perf_counter() - start


# ---------------------------------------------------------- Train loop ----


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


def train(config: Config, run_dir: Path, exp: Experiment | None = None) -> dict[str, Any]:
    """Meta-train, meta-test and write ``metrics.jsonl``, ``result.json`` and plots to run_dir.

    ``exp``: what ``build(config)`` returns, when the caller has built it already.
    Unless ``trainer.resume=never``, training continues from the newest checkpoint in
    ``run_dir/checkpoints/state`` and ends as the uninterrupted run would (same records,
    parameters and result). SIGTERM, SIGINT and SIGUSR2 stop it after the current step with
    a checkpoint (:class:`metarun.checkpoint.StopSignals`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    exp = build(config) if exp is None else exp
    lead = is_lead()  # in a multi-process run, only process 0 writes files
    resumed = resume_point(run_dir, config)  # before any file is written: it may refuse
    if lead:  # the validated config, for metarun.load (.hydra/ exists only under the CLI)
        (run_dir / CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    trainer, eval_cfg = config.trainer, config.eval
    objective = exp.source.objective
    # Step s samples its tasks from fold_in(train_key, s), a pure function of config.seed and
    # s: a checkpoint needs only the step to continue the same stream of training tasks.
    init_key, train_key = rng_streams(config.seed)
    mesh = task_mesh(trainer.devices, trainer.meta_batch)
    state = replicate(init_state(exp, init_key), mesh)
    # Every input of the compiled step lives on the mesh: the step runs under
    # transfer_guard("disallow"), which refuses even a device-to-device copy of the key.
    train_key = replicate(train_key, mesh)
    train_sampler = replicate(exp.source.samplers["train"], mesh)
    val_sampler = replicate(exp.source.samplers["val"], mesh)
    val_eval = make_evaluator(
        exp.eval_learner, objective, inner_steps=algos.eval_steps(config), batch=eval_cfg.batch
    )
    val_keys = episode_keys(eval_cfg.seed, "val", eval_cfg.val_episodes)
    metric = objective.metric

    first = resumed[0] if resumed else 0  # the step training starts after
    meta_step, compile_sec = None, 0.0  # nothing to compile when no step is left to run
    if first < trainer.steps:
        meta_step, compile_sec = compile_meta_step(exp, state, train_key, train_sampler, mesh)
        log.info("meta-step compiled in %.1f s for %d device(s)", compile_sec, mesh.size)
    if lead and "jsonl" in config.logger:  # it appends: drop the records after the checkpoint
        truncate(run_dir / config.logger["jsonl"].filename, first)
    tracker = (
        loggers.make(config.logger, run_dir, to_dict(config)) if lead else loggers.MultiLogger([])
    )
    bar = tqdm(
        total=trainer.steps,
        initial=first,
        unit="step",
        disable=not trainer.progress,
        dynamic_ncols=True,
    )
    best = _Best(objective.maximize)
    history: list[dict[str, Any]] = []  # the logged records (plots, tasks_per_sec)
    pending: list[dict] = []  # per-step metrics since the last log
    skipped, train_sec = 0, 0.0  # updates skipped so far; training seconds of earlier runs
    checkpoints = Checkpoints(run_dir, trainer.keep_checkpoints)
    try:
        if resumed is not None:
            loop = resumed[1]
            like_best = state.meta_params if loop["best_value"] is not None else None
            state, best.params = checkpoints.arrays(first, state, like_best)
            best.step, best.value = loop["best_step"], loop["best_value"]
            best.ci95 = loop.get("best_ci95")  # absent in checkpoints of earlier versions
            history, pending = loop["history"], pending_from_json(loop["pending"])
            skipped, train_sec = loop["skipped_steps"], loop["train_sec"]
            log.info("resuming from the checkpoint at step %d in %s", first, checkpoints.directory)
        last_time, last_step = time.perf_counter(), first
        start = last_time
        with StopSignals() as stop:
            for step in range(first + 1, trainer.steps + 1):
                # No host<->device copy may hide in a step: one would stall the pipeline.
                with jax.transfer_guard("disallow"):
                    state, metrics = meta_step(state, train_key, train_sampler)
                pending.append(metrics)
                bar.update()
                if step % trainer.log_every == 0 or step == trainer.steps:
                    means, newly_skipped, diverged = _fetch(pending)
                    if trainer.nan_policy == "stop":
                        _stop_if_diverged(diverged, step - len(pending) + 1)
                    record = {"step": step, **means}
                    if trainer.nan_policy == "skip":
                        skipped += newly_skipped
                        record["skipped_steps"] = skipped
                    record["steps_per_sec"] = (step - last_step) / (time.perf_counter() - last_time)
                    record["tasks_per_sec"] = record["steps_per_sec"] * trainer.meta_batch
                    pending, last_step = [], step
                    if trainer.val_every and step % trainer.val_every == 0:
                        val = evaluate(val_eval, state.meta_params, val_sampler, val_keys, metric)
                        record.update({f"val_{metric}": val.mean, f"val_{metric}_ci95": val.ci95})
                        if val.nonfinite:
                            record["val_nonfinite_episodes"] = val.nonfinite
                        best.offer(step, val, state.meta_params)
                    tracker.log(record)
                    last_time = time.perf_counter()  # validation and logging are not training
                    history.append(record)
                    bar.set_postfix(
                        {
                            k: f"{v:.4g}"
                            for k, v in record.items()
                            if k in ("loss", metric, f"val_{metric}")
                        }
                    )

                stopping = stop.requested(at_log_step=not pending)
                periodic = trainer.checkpoint_every and step % trainer.checkpoint_every == 0
                if stopping or periodic or step == trainer.steps:
                    if pending and trainer.nan_policy == "stop":  # stopped between two logs
                        _stop_if_diverged(_fetch(pending)[2], step - len(pending) + 1)
                    loop = {
                        "config": to_dict(config),  # what resume=auto compares with
                        "best_step": best.step,
                        "best_value": best.value,
                        "best_ci95": best.ci95,
                        "history": history,
                        "pending": pending_to_json(pending),
                        "skipped_steps": skipped,
                        "train_sec": train_sec + time.perf_counter() - start,
                    }
                    checkpoints.save(step, state, best.params, loop)
                if stopping:
                    checkpoints.wait()  # before handing over: submitit requeues at once
                    log.warning(
                        "stopped after step %d; the training state is in %s: the same command "
                        "in this run dir continues from it (trainer.resume=auto)",
                        step,
                        checkpoints.directory / str(step),
                    )
                    stop.forward()
        train_sec += time.perf_counter() - start
    finally:
        bar.close()
        tracker.close()
        checkpoints.close()

    # The paper protocol: test the meta-parameters that did best on the validation split
    # (the last ones when validation is off).
    validated = best.params is not None
    meta_params = best.params if validated else state.meta_params
    save_params(run_dir / BEST_PARAMS, meta_params)
    result = _meta_test(exp, meta_params, mesh)
    # The validation figure of the tested parameters, what a sweep optimises (metarun.cli):
    # the best one seen when validation ran, else a validation pass of the last parameters.
    if validated:
        val_mean, val_ci95 = best.value, best.ci95
    else:
        val = evaluate(val_eval, meta_params, val_sampler, val_keys, metric)
        val_mean, val_ci95 = val.mean, val.ci95
    result.update(val_mean=val_mean, val_ci95=val_ci95, val_episodes=eval_cfg.val_episodes)
    from metarun.baselines import extra_results  # matplotlib only once a run ends

    # Experiments of the run's own (lstm_opt on quadratics: hand-designed baselines, a figure).
    result.update(extra_results(exp, meta_params, run_dir if lead else None))
    result.update(
        best_step=best.step if validated else trainer.steps,
        **({f"best_val_{metric}": best.value} if validated else {}),
        prepare_sec=exp.prepare_sec,
        compile_sec=compile_sec,
        train_sec=train_sec,
        skipped_steps=skipped,
        # Steady state: the median over logging intervals after the first (which has warm-up).
        tasks_per_sec=float(np.median([r["tasks_per_sec"] for r in history[1:] or history]))
        if history
        else None,
        steps=trainer.steps,
        algo=config.algo.name,
        data=config.data.name,
        seed=config.seed,
    )
    if lead:
        (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    steps = result["inner_steps"]
    log.info(
        "test %s%s: %.4f ± %.4f (95%% CI, %d episodes%s)",
        metric,
        f" after {steps} step{'' if steps == 1 else 's'}"
        if algos.gradient_based(config.algo)
        else "",
        result["mean"],
        result["ci95"],
        result["episodes"],
        f"; before adaptation {result['pre_adaptation_mean']:.4f}"
        if "pre_adaptation_mean" in result
        else "",
    )
    if lead:
        _plot(exp, meta_params, history, run_dir)
        tracker.summary(result)  # after the plots, which the trackers upload
    return result


class _Best:
    """The best validation score so far (its mean and 95% CI), its step, and a device copy of
    its meta-parameters."""

    def __init__(self, maximize: bool):
        self.maximize, self.step, self.value, self.ci95, self.params = maximize, 0, None, None, None

    def offer(self, step: int, val, params) -> None:
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


def save_params(path: Path, meta_params) -> None:
    """Write the meta-parameters as an orbax checkpoint (``metarun.load`` reads it back)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path.absolute(), meta_params, force=True)


# ----------------------------------------------------------- Meta-test ----


def _meta_test(exp: Experiment, meta_params, mesh: Mesh) -> dict[str, Any]:
    """Final evaluation on the test split: after ``eval.inner_steps`` and, for gradient-based
    learners, before adapting (``pre_adaptation_*``)."""
    eval_cfg, objective = exp.config.eval, exp.source.objective
    keys = episode_keys(eval_cfg.seed, "test", eval_cfg.episodes)
    test_sampler = replicate(exp.source.samplers["test"], mesh)
    result: dict[str, Any] = {"metric": objective.metric}
    steps = algos.eval_steps(exp.config)
    runs = [(steps, "")]
    if algos.gradient_based(exp.config.algo):
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


def _plot(exp: Experiment, meta_params, history: list[dict], run_dir: Path) -> None:
    from metarun.plots import plot_run  # matplotlib only once a run ends

    plot_run(exp, meta_params, history, run_dir)
