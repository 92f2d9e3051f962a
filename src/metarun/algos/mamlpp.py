"""MAML++: the training fixes of Antoniou et al. 2019, as switches of ``algo=maml``.

Each is separate (``conf/algo/maml.yaml``); with all of them off ``algo=maml`` is plain MAML
(``algos/maml.py``), and this module is used only when one is on.

* ``algo.msl`` (multi-step loss): the outer loss is Σ_i v_i L_query(θ_i) over the inner
  steps i = 1..N instead of L_query(θ_N). The weights v start uniform and are annealed
  linearly towards the last step over ``algo.msl_anneal_steps`` meta-steps, each earlier
  weight kept at least 0.03/N; after that the loss is the last step's alone, and the other
  steps' query passes are no longer computed (the paper's code:
  ``get_per_step_loss_importance_vector``, there counted in epochs of 500 iterations and
  annealed once per epoch, here continuously per meta-step).
* ``algo.lslr`` (learned per-layer per-step learning rates): every parameter array has
  its own inner learning rate at each inner step, α[i] for the array at step i, initialised
  to ``algo.inner_lr`` and meta-learned.
* ``algo.per_step_bn``: BatchNorm's scale and offset have one copy per inner step; step i
  uses copy i for the support pass that makes its gradient and for the query pass after it,
  and the final prediction uses the last. They are meta-learned and not adapted in the inner
  loop (the paper's Omniglot setting, ``enable_inner_loop_optimizable_bn_params: false``).
  The statistics: metarun's BatchNorm always normalises with the statistics of the batch it
  is given (``models/conv4.py``), which is also what the paper's code does
  (``F.batch_norm(..., training=True)`` at every step, in training and evaluation); the
  per-step running averages it also keeps are never used to normalise, so there is no
  state to keep here and the statistics are per step by construction. With first-order
  MAML only the last copy would get a meta-gradient, so it then needs ``algo.msl``.
* ``algo.first_order_steps`` (derivative-order annealing): the first so many meta-steps use
  the first-order meta-gradient, the rest second order. Both are compiled into the step
  and chosen on the device by the step count (``lax.switch``, as the multi-step loss's two
  phases are): no recompilation.
* The cosine-annealed meta learning rate is the outer optimizer's:
  ``optim.schedule=cosine optim.min_lr=1e-5``.

An evaluation with more inner steps than training (``eval.inner_steps`` > N) reuses the last
step's learning rates and BatchNorm copy for the extra steps.

Reference: Antoniou, Edwards, Storkey. "How to train your MAML". ICLR 2019.
https://arxiv.org/abs/1810.09502
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import traverse_util

from metarun.algos.base import MetaLearner, descend, predict_with_adapted
from metarun.config import BN_MODES, ConfigError
from metarun.types import Objective

# The paper's floor for the weight of each step but the last, times the number of steps.
MSL_MIN_WEIGHT = 0.03


def msl_weights(step, num_steps: int, anneal_steps: int):
    """The multi-step loss weights v_1..v_N at meta-step ``step`` (a traced int)."""
    n = num_steps
    progress = jnp.asarray(step) / anneal_steps  # the default float: float64 under x64
    earlier = jnp.maximum(1 / n - progress / n, MSL_MIN_WEIGHT / n)
    last = jnp.minimum(1 / n + progress * (n - 1) / n, 1 - (n - 1) * MSL_MIN_WEIGHT / n)
    annealing = jnp.concatenate([jnp.full((n - 1,), earlier), last[None]])
    return jnp.where(progress >= 1, jax.nn.one_hot(n - 1, n), annealing)


def _is_norm(path: tuple[str, ...]) -> bool:
    """BatchNorm's parameters: Conv-4's and ResNet-12's live under modules whose names hold
    ``norm`` (``norm``, ``norm0``, ``shortcut_norm``; flax's default ``BatchNorm_0``)."""
    return any("norm" in name.lower() for name in path)


def mamlpp(
    apply_fn,
    objective: Objective,
    *,
    inner_lr: float,
    inner_steps: int,
    first_order: bool = False,
    remat: bool = False,
    msl: bool = False,
    msl_anneal_steps: int = 5000,
    lslr: bool = False,
    per_step_bn: bool = False,
    first_order_steps: int = 0,
) -> MetaLearner:
    """MAML with the MAML++ switches; ``inner_steps`` (N) sizes the per-step arrays.

    ``meta_params = {"params": θ, "norm": BatchNorm copies [N, ...], "inner_lr": α [N]}``,
    the last two only with ``per_step_bn`` and ``lslr``; with ``per_step_bn``, θ holds
    every parameter but BatchNorm's.
    """
    n = max(inner_steps, 1)

    def init(params, key=None, episode=None):
        del key, episode
        flat = traverse_util.flatten_dict(params)
        norm = {path: p for path, p in flat.items() if per_step_bn and _is_norm(path)}
        if per_step_bn and not norm:
            raise ConfigError(
                "algo.per_step_bn=True is invalid with this model: it has no BatchNorm "
                "parameters to copy per step; use model=conv4 or model=resnet12"
            )
        fast = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k not in norm})
        meta = {"params": fast}
        if per_step_bn:
            stacked = {k: jnp.broadcast_to(v, (n, *v.shape)) for k, v in norm.items()}
            meta["norm"] = traverse_util.unflatten_dict(stacked)
        if lslr:
            meta["inner_lr"] = jax.tree.map(lambda p: jnp.full((n,), inner_lr, p.dtype), fast)
        return meta

    def at_step(tree, i):
        """Entry ``i`` of per-step arrays; later steps reuse the last (longer evaluations)."""
        return jax.tree.map(lambda a: a[jnp.minimum(i, n - 1)], tree)

    def model_params(meta, fast, i):
        if not per_step_bn:
            return fast
        merged = traverse_util.flatten_dict(fast) | traverse_util.flatten_dict(
            at_step(meta["norm"], i)
        )
        return traverse_util.unflatten_dict(merged)

    def trajectory(meta, support_x, support_y, num_steps, query_x, first_order):
        """The inner loop; returns θ_N and the query predictions after each step (or None)."""

        def step(fast, i):
            def support_loss(f):
                return objective.loss(apply_fn(model_params(meta, f, i), support_x), support_y)

            grads = jax.grad(support_loss)(fast)
            if first_order:
                grads = jax.lax.stop_gradient(grads)
            lrs = at_step(meta["inner_lr"], i) if lslr else jax.tree.map(lambda _: inner_lr, fast)
            fast = descend(fast, grads, lrs)
            query = (
                None
                if query_x is None
                else apply_fn(model_params(meta, fast, i), query_x, support_x)
            )
            return fast, query

        step = jax.checkpoint(step) if remat else step
        return jax.lax.scan(step, meta["params"], jnp.arange(num_steps))

    def adapt(meta, support_x, support_y, num_steps, ways=0):
        del ways  # the head has data.ways outputs
        fast, _ = trajectory(meta, support_x, support_y, num_steps, None, first_order)
        return model_params(meta, fast, max(num_steps - 1, 0))

    predict = predict_with_adapted(apply_fn)

    def task_loss(meta, episode, num_steps, step, first_order, per_step):
        fast, queries = trajectory(
            meta,
            episode.support_x,
            episode.support_y,
            num_steps,
            episode.query_x if per_step else None,
            first_order,
        )
        if per_step:
            metrics = objective.metrics(queries[-1], episode.query_y)
            losses = jax.vmap(objective.loss, in_axes=(0, None))(queries, episode.query_y)
            loss = jnp.dot(msl_weights(step, num_steps, msl_anneal_steps), losses)
            metrics["msl_loss"] = loss
        else:
            adapted = model_params(meta, fast, max(num_steps - 1, 0))
            predictions = predict(meta, adapted, episode.query_x, episode.support_x)
            metrics = objective.metrics(predictions, episode.query_y)
            loss = metrics["loss"]
            if msl:  # annealed: the last step's loss alone (the same keys in both programs)
                metrics["msl_loss"] = loss
        return loss, metrics

    def outer_grad(meta, episodes, num_steps, step):
        def grad(first_order, per_step):
            def batch_loss(m):
                losses, metrics = jax.vmap(
                    lambda e: task_loss(m, e, num_steps, step, first_order, per_step)
                )(episodes)
                return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)

            return jax.grad(batch_loss, has_aux=True)(meta)

        # Up to four programs, chosen on the device by the step count (no recompilation):
        # first or second order (derivative-order annealing), and the multi-step loss while it
        # anneals or the last step's alone after, which skips the other steps' query passes.
        annealing_order = first_order_steps > 0 and not first_order
        orders = (True, False) if annealing_order else (first_order,)
        per_steps = (True, False) if msl and num_steps > 0 else (False,)
        branches = [partial(grad, o, p) for o in orders for p in per_steps]
        index = jnp.zeros((), jnp.int32)
        if annealing_order:
            index += len(per_steps) * jnp.asarray(step >= first_order_steps, jnp.int32)
        if len(per_steps) > 1:
            index += jnp.asarray(step >= msl_anneal_steps, jnp.int32)
        return branches[0]() if len(branches) == 1 else jax.lax.switch(index, branches)

    # per_step_bn keeps BatchNorm's parameters apart, as per-step copies: transductive only.
    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        outer_grad=outer_grad,
        bn_modes=("transductive",) if per_step_bn else BN_MODES,
        encoder_key="params",
        inner_loop=True,
    )
