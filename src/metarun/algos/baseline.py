"""Pre-training baselines: train a network on all training classes (or tasks) at once, then
fit a new head on each test task's support set.

Training needs no episodes: each meta-step draws ordinary mini-batches of the train split
(``TaskSource.batches``, ``trains_on="batches"``), one per task of the meta-batch, and takes a
gradient step on their loss; that is this learner's ``outer_grad``. Evaluation is the shared
protocol (adapt on the support set, predict the query set), with ``adapt`` fitting the head:

* **Classification** (Chen et al. 2019, "Baseline"): the encoder f_φ (the model without its
  head) and a linear classifier W over the C training classes minimise the cross-entropy of
  W f_φ(x). On a test task the encoder is frozen and a new ``ways``-way head is fitted to the
  support features by ``num_steps`` (``eval.inner_steps``) steps of SGD with momentum and
  weight decay; ``finetune=True`` trains the encoder along with it.
* **Baseline++** (``cosine=True``): both heads score ``s · g_k · cos(f_φ(x), w_k)``, a
  learned gain g_k per class (the authors' ``WeightNorm`` of the class weights) and the scale
  s being 2 for heads of at most 200 classes and 10 above, as the authors' ``distLinear``.
* **Regression** (Finn et al. 2017, §5.1, the "pretrained" comparison of Fig. 2): one network
  is trained on the points of all training tasks jointly, then its output layer (or, with
  ``finetune=True``, the whole network) is fitted to each task's support points.

Meta-parameters: ``{"encoder": φ, "classifier": W}`` for classification (W is used in training
only), the model's parameters for regression.

The test-time fit is PyTorch's ``SGD(lr, momentum, dampening, weight_decay)``, the authors'
optimizer (0.01, 0.9, 0.9, 0.001): optax's ``sgd`` has no dampening, so :func:`dampened_sgd`
writes that rule out. BatchNorm's running averages (``model.bn_mode=running``) are not fitted.

Differences from the authors' code: the test-time fit is full-batch, ``num_steps`` steps on the
whole support set (theirs: 100 epochs of batches of 4); a new linear head starts at zero and a
new cosine head at the mean support feature of each class with gains 1 (theirs: at random, the
gains at the random weights' norms), so that ``adapt`` is a pure function of the support set,
the same in evaluation and ``metarun.load(...).predict``; the pre-training cosine head's gains
also start at 1. Training mini-batches are drawn with replacement (theirs: epochs).

References: Chen, Liu, Kira, Wang, Huang. "A Closer Look at Few-shot Classification".
ICLR 2019. https://arxiv.org/abs/1904.04232; code: https://github.com/wyharveychen/CloserLookFewShot.
Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks".
ICML 2017. https://arxiv.org/abs/1703.03400
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from metarun.algos import FITS, algos
from metarun.algos.base import (
    MetaLearner,
    batch_mean_grad,
    drop_head,
    is_running_stat,
    predict_with_adapted,
)
from metarun.algos.protonet import class_means, cosine_similarities
from metarun.config import BN_MODES
from metarun.types import Array, Episode, Objective, Params


def cosine_scale(classes: int) -> float:
    """Baseline++'s scale for a head of ``classes`` outputs (the authors' ``distLinear``)."""
    return 2.0 if classes <= 200 else 10.0


def classify(head: Params, features: Array, cosine: bool) -> Array:
    """Logits of a linear head (``w [d, C]``, ``b [C]``) or a cosine head (``w [d, C]``, gains
    ``g [C]``)."""
    w = head["w"]
    if cosine:
        return cosine_scale(w.shape[-1]) * head["g"] * cosine_similarities(features, w.T)
    return features @ w + head["b"]


def dampened_sgd(
    lr: float, momentum: float, dampening: float, weight_decay: float
) -> optax.GradientTransformation:
    """PyTorch's ``SGD``: g ← g + λθ; b ← g on the first step, then b ← μ b + (1 − τ) g;
    θ ← θ − η b; with μ = 0, b = g (no buffer, whatever τ). optax's ``sgd`` is the case τ = 0."""

    def init(params):
        return (jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params):
        count, buf = state
        grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
        first = (count == 0) | (momentum == 0)
        buf = jax.tree.map(
            lambda b, g: jnp.where(first, g, momentum * b + (1 - dampening) * g), buf, grads
        )
        return jax.tree.map(lambda b: -lr * b, buf), (count + 1, buf)

    return optax.GradientTransformation(init, update)


def fit(loss, params: Params, num_steps: int, optimizer: optax.GradientTransformation):
    """``num_steps`` full-batch steps of ``optimizer`` on ``loss``; BatchNorm's running averages
    (leaves named as ``models.conv4.RUNNING_STATS``) are statistics, never fitted."""
    optimizer = optax.multi_transform(
        {"fit": optimizer, "keep": optax.set_to_zero()}, _running_stats_kept(params)
    )

    def step(carry, _):
        params, state = carry
        updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, num_steps)
    return params


def _running_stats_kept(params):
    """``"keep"`` for BatchNorm's running averages, ``"fit"`` for every other leaf."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "keep" if is_running_stat(path) else "fit", params
    )


def _batch(episode: Episode) -> tuple[Array, Array]:
    """A pre-training batch: both sets of ``episode`` together."""
    x = jnp.concatenate([episode.support_x, episode.query_x])
    return x, jnp.concatenate([episode.support_y, episode.query_y])


def _mean_grad(loss_and_metrics, meta_params, batches: Episode):
    """The gradient of the mean loss over the batches, both sets of each as one batch."""
    return batch_mean_grad(lambda mp, e: loss_and_metrics(mp, *_batch(e)), meta_params, batches)


def baseline_classifier(
    embed,
    objective: Objective,
    *,
    cosine: bool = False,
    finetune: bool = False,
    lr: float = 0.01,
    momentum: float = 0.9,
    dampening: float = 0.9,
    weight_decay: float = 1e-3,
) -> MetaLearner:
    """Baseline (``cosine=False``) and Baseline++ over an encoder ``embed(params, x, context)``.

    Args:
      embed: the encoder f_φ.
      objective: the classification objective (its loss trains both heads).
      cosine: Baseline++'s cosine heads.
      finetune: at test time, fit the encoder along with the new head.
      lr, momentum, dampening, weight_decay: the test-time fit's SGD (:func:`dampened_sgd`;
        Chen et al.: 0.01, 0.9, 0.9, 0.001).
    """
    sgd = partial(fit, optimizer=dampened_sgd(lr, momentum, dampening, weight_decay))

    def init(params, key, episode):
        """The encoder, and a classifier over the ``episode.ways`` classes of a training batch."""
        encoder = drop_head(params)
        d = jax.eval_shape(embed, encoder, episode.support_x).shape[-1]
        w = jax.random.normal(key, (d, episode.ways)) / jnp.sqrt(d)
        bias_or_gain = {"g": jnp.ones(episode.ways)} if cosine else {"b": jnp.zeros(episode.ways)}
        classifier = {"w": w, **bias_or_gain}
        return {"encoder": encoder, "classifier": classifier}

    def batch_metrics(meta_params, x, y):
        logits = classify(meta_params["classifier"], embed(meta_params["encoder"], x), cosine)
        return objective.metrics(logits, y)

    def outer_grad(meta_params, batches, num_steps, step):
        del num_steps, step
        return _mean_grad(batch_metrics, meta_params, batches)

    def new_head(features, labels, ways):
        if cosine:  # each class's weight at its mean feature: "imprinting"
            return {"w": class_means(features, labels, ways).T, "g": jnp.ones(ways, features.dtype)}
        d = features.shape[-1]
        return {"w": jnp.zeros((d, ways), features.dtype), "b": jnp.zeros(ways, features.dtype)}

    def adapt(meta_params, support_x, support_y, num_steps, ways):
        encoder = meta_params["encoder"]
        features = jax.lax.stop_gradient(embed(encoder, support_x))
        head = new_head(features, support_y, ways)
        if finetune:

            def loss(p):
                logits = classify(p["head"], embed(p["encoder"], support_x), cosine)
                return objective.loss(logits, support_y)

            return sgd(loss, {"encoder": encoder, "head": head}, num_steps)

        def head_loss(h):
            return objective.loss(classify(h, features, cosine), support_y)

        return {"encoder": encoder, "head": sgd(head_loss, head, num_steps)}

    def predict(meta_params, fitted, query_x, support_x=None):
        del meta_params
        return classify(fitted["head"], embed(fitted["encoder"], query_x, support_x), cosine)

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        outer_grad=outer_grad,
        any_ways=True,
        bn_modes=BN_MODES,
        encoder_key="encoder",
        inner_loop=True,
        trains_on="batches",
    )


def baseline_regressor(
    apply_fn,
    objective: Objective,
    *,
    finetune: bool = False,
    lr: float = 0.01,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
) -> MetaLearner:
    """The pre-trained network of MAML's regression comparison, ``apply_fn(params, x, context)``;
    ``adapt`` fits its ``head`` (``finetune``: every layer) to the support points by
    :func:`dampened_sgd` (the defaults: plain gradient steps, as MAML's evaluation)."""
    sgd = partial(fit, optimizer=dampened_sgd(lr, momentum, dampening, weight_decay))

    def init(params, key=None, episode=None):
        del key, episode
        if "head" not in params:
            raise ValueError(
                f"the baseline fits the layer named 'head'; the model has {list(params)}"
            )
        return params

    def batch_metrics(params, x, y):
        return objective.metrics(apply_fn(params, x), y)

    def outer_grad(params, batches, num_steps, step):
        del num_steps, step
        return _mean_grad(batch_metrics, params, batches)

    def adapt(params, support_x, support_y, num_steps, ways=0):
        del ways
        if finetune:
            return sgd(
                lambda p: objective.loss(apply_fn(p, support_x), support_y), params, num_steps
            )

        def head_loss(head):
            return objective.loss(apply_fn({**params, "head": head}, support_x), support_y)

        return {**params, "head": sgd(head_loss, params["head"], num_steps)}

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict_with_adapted(apply_fn),
        outer_grad=outer_grad,
        bn_modes=BN_MODES,
        inner_loop=True,
        trains_on="batches",
    )


def _sgd(cfg) -> dict:
    return {
        "lr": cfg.fit_lr,
        "momentum": cfg.momentum,
        "dampening": cfg.dampening,
        "weight_decay": cfg.weight_decay,
    }


@algos.register("baseline", tasks=FITS)
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    if objective.task == "regression":
        return baseline_regressor(net.apply, objective, finetune=cfg.finetune, **_sgd(cfg))
    return baseline_classifier(net.embed, objective, finetune=cfg.finetune, **_sgd(cfg))


@algos.register("baseline_pp", tasks=("classification",))
def from_config_pp(cfg, net, objective: Objective) -> MetaLearner:
    return baseline_classifier(
        net.embed, objective, cosine=True, finetune=cfg.finetune, **_sgd(cfg)
    )
