"""The learned optimizer against hand-designed ones on quadratics (Andrychowicz et al. 2016,
Figure 4 for quadratics): SGD, Adam and RMSProp, tuned on training functions, then run on the
meta-test's.

An experiment of the trainer's, not part of the algorithm: ``train`` asks :func:`extra_results`
for the keys it adds to ``result.json`` (none for other runs), and this module draws the curves
with :func:`metarun.plots.plot_optimizer_curves`. The learned optimizer is algos/lstm_opt.py's
at the tested weights; the functions are the tasks' own (``objective.optimizee``, the
:class:`~metarun.types.Optimizee` a dataset of functions to minimise provides), so no dataset
module is imported here either.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metarun.algos.lstm_opt import lstm_optimizer, trajectory
from metarun.evaluate import confidence_interval, episode_keys
from metarun.plots import plot_optimizer_curves
from metarun.types import Array, Objective

# Learning rates tried for each hand-designed optimizer: half-decades from 1e-4 to 3.
BASELINE_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
BASELINES = {"sgd": optax.sgd, "adam": optax.adam, "rmsprop": optax.rmsprop}
TUNING_TASKS = 128  # training quadratics the learning rates are chosen on
CURVES = "optimizer_curves.png"


def function_curves(
    opt: optax.GradientTransformation, episodes, horizon: int, objective: Objective
) -> Array:
    """``[tasks, horizon + 1]``: f(θ_t), t = 0 .. T, of ``opt`` on each episode's function
    (``objective.optimizee``), from its start."""
    optimizee = objective.optimizee

    def one(e):
        def f(theta):
            return objective.loss(optimizee.apply(theta, e.support_x), e.support_y)

        theta = optimizee.start(e.support_x)
        _, losses = trajectory(opt, f, theta, horizon, meta_loss=f)
        return jnp.concatenate([f(theta)[None], losses])

    return jax.vmap(one)(episodes)


@partial(jax.jit, static_argnames=("learned", "horizon", "objective"))
def _curves(
    meta_params, samplers, keys, learned, horizon: int, objective: Objective
) -> dict[str, Array]:
    """One program: the learned optimizer's curves on the test tasks, and each baseline's at
    every learning rate of :data:`BASELINE_LRS` on the tuning then the test tasks,
    ``[lrs, tasks, T + 1]``. ``samplers``, ``keys``: (tuning, test) each; ``learned``: the
    LSTM's weights -> the learned optimizer."""
    tuning, test = (jax.vmap(sample)(k) for sample, k in zip(samplers, keys, strict=True))
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), tuning, test)
    lrs = jnp.asarray(BASELINE_LRS, jnp.float32)
    curves = {"learned": function_curves(learned(meta_params["lstm"]), test, horizon, objective)}
    for name, make in BASELINES.items():
        curves[name] = jax.vmap(
            lambda lr, make=make: function_curves(make(lr), both, horizon, objective)
        )(lrs)
    return curves


def extra_results(exp, meta_params, run_dir: Path | None) -> dict:
    """SGD, Adam and RMSProp on the meta-test's quadratics, and the learning curves, for
    ``algo=lstm_opt`` on functions to minimise (``data=quadratic``); ``{}`` for other runs.

    Each baseline's learning rate is the one of :data:`BASELINE_LRS` with the lowest mean final
    loss on :data:`TUNING_TASKS` training quadratics (drawn from ``eval.seed``, apart from the
    test ones; a rate that diverges on any of them is out); the baselines then run on the
    meta-test's quadratics (``eval.seed``, ``eval.episodes``) for the same ``algo.horizon``.

    Args:
      exp: the run's ``train.Experiment``.
      meta_params: the tested meta-parameters.
      run_dir: where ``optimizer_curves.png`` goes; None: no figure (not the lead process).

    Returns:
      ``{"baselines": {name: mean final loss}, "baselines_ci95": {...}, "baseline_lrs": {...}}``;
      with a ``run_dir``, ``optimizer_curves.png`` there: the mean loss per step (log scale) of
      the learned optimizer and the three baselines.
    """
    config, source = exp.config, exp.source
    if config.algo.name != "lstm_opt" or source.objective.optimizee is None:
        return {}
    algo, eval_cfg = config.algo, config.eval
    learned = partial(lstm_optimizer, scale=algo.scale, preprocess_name=algo.preprocess, p=algo.p)
    samplers = (source.samplers["train"], source.samplers["test"])
    keys = (
        episode_keys(eval_cfg.seed, "lstm_opt_tuning", TUNING_TASKS),
        episode_keys(eval_cfg.seed, "test", eval_cfg.episodes),  # the meta-test's tasks
    )
    computed = jax.device_get(
        _curves(meta_params, samplers, keys, learned, algo.horizon, source.objective)
    )
    curves = {"learned": computed["learned"]}
    report = {"baselines": {}, "baselines_ci95": {}, "baseline_lrs": {}}
    for name in BASELINES:
        tuned, held_out = computed[name][:, :TUNING_TASKS], computed[name][:, TUNING_TASKS:]
        final = tuned[:, :, -1].astype(np.float64)  # float64: a diverged rate sums to inf, quietly
        scores = np.where(np.all(np.isfinite(final), axis=1), np.mean(final, axis=1), np.inf)
        best = int(np.argmin(scores))
        curves[name] = held_out[best]
        mean, ci95 = confidence_interval(curves[name][:, -1])
        report["baselines"][name] = mean
        report["baselines_ci95"][name] = ci95
        report["baseline_lrs"][name] = BASELINE_LRS[best]
    if run_dir is not None:
        plot_optimizer_curves(curves, report["baseline_lrs"], Path(run_dir) / CURVES)
    return report
