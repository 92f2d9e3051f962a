"""Small shared pieces for tests: a tiny MLP regression problem in closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metarun.types import REGRESSION, Episode


def tiny_mlp_params(key, dtype=jnp.float32, width: int = 4):
    """A 1-width-1 tanh MLP with a ``head`` layer (smooth, so finite differences are clean)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "Dense_0": {
            "kernel": jax.random.normal(k1, (1, width), dtype),
            "bias": 0.1 * jax.random.normal(k2, (width,), dtype),
        },
        "head": {
            "kernel": jax.random.normal(k3, (width, 1), dtype) / 2,
            "bias": 0.1 * jax.random.normal(k4, (1,), dtype),
        },
    }


def tiny_mlp_apply(params, x, context=None):
    h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    return h @ params["head"]["kernel"] + params["head"]["bias"]


def tanh_embed(params, x, context=None):
    """A one-layer encoder for the sequence learners' tests: ``tanh(x @ params["w"])``."""
    return jnp.tanh(x @ params["w"])


def feature_episode(rng, ways: int, shots: int, queries: int, features: int = 4) -> Episode:
    """A classification episode of standard-normal feature vectors (``rng``: numpy's), its
    support and query sets sorted by class."""
    labels = np.arange(ways)
    return Episode(
        support_x=jnp.asarray(rng.normal(size=(ways * shots, features)), jnp.float32),
        support_y=jnp.asarray(np.repeat(labels, shots)),
        query_x=jnp.asarray(rng.normal(size=(ways * queries, features)), jnp.float32),
        query_y=jnp.asarray(np.repeat(labels, queries)),
        ways=ways,
    )


def tiny_episodes(key, tasks: int, dtype=jnp.float32, shots: int = 5, queries: int = 7):
    """Sinusoid-like regression episodes with a leading task axis."""
    ka, kp, ks, kq = jax.random.split(key, 4)
    amp = jax.random.uniform(ka, (tasks, 1, 1), dtype, 0.5, 2.0)
    phase = jax.random.uniform(kp, (tasks, 1, 1), dtype, 0.0, 3.0)
    sx = jax.random.uniform(ks, (tasks, shots, 1), dtype, -3.0, 3.0)
    qx = jax.random.uniform(kq, (tasks, queries, 1), dtype, -3.0, 3.0)
    return Episode(sx, amp * jnp.sin(sx - phase), qx, amp * jnp.sin(qx - phase))


def task(episodes: Episode, t: int) -> Episode:
    return jax.tree.map(lambda a: a[t], episodes)


def flat(tree) -> jnp.ndarray:
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


OBJECTIVE = REGRESSION


def support_loss(params, e: Episode):
    return OBJECTIVE.loss(tiny_mlp_apply(params, e.support_x), e.support_y)


def query_loss(params, e: Episode):
    return OBJECTIVE.loss(tiny_mlp_apply(params, e.query_x), e.query_y)


# The black-box learners narrowed for tests that check wiring, not accuracy (shared algorithm
# tests, load + predict): at the papers' widths each of those tests takes 30-60 s on 2 cores.
NARROW = {
    "mann": ["algo.controller=32", "algo.memory_slots=16", "algo.memory_size=8"],
    "snail": [
        "algo.attention_keys=[16,16,16]",
        "algo.attention_values=[8,8,8]",
        "algo.tc_filters=[16,16]",
    ],
    # An LSTM step per parameter of the model per optimizee step: a 1-8-8-1 MLP, 4 steps.
    "lstm_opt": ["algo.horizon=4", "algo.unroll=2", "algo.hidden=4", "model.hidden=[8,8]"],
    # 2 learner updates, 4 units in the first LSTM layer, 10 tasks: with the paper's 20 units
    # (~100 transcendentals per parameter and update), 5 updates and 25 tasks a meta-step on
    # the sinusoid MLP takes 0.25 s here.
    "meta_lstm": ["algo.inner_steps=2", "algo.hidden=4", "trainer.meta_batch=10"],
}


def classifier_apply(params, x, context=None):
    """A two-layer tanh classifier (``w1``, ``w2``, ``b``), smooth for finite differences."""
    return jnp.tanh(x @ params["w1"]) @ params["w2"] + params["b"]


def classification_problem(seed: int, n: int = 6, m: int = 5, features: int = 3, classes: int = 4):
    """Random parameters of :func:`classifier_apply` and a batch (float64 under x64): ``n``
    examples in ``support``, ``m`` in ``query``."""
    rng = np.random.default_rng(seed)
    params = {
        "w1": jnp.asarray(rng.normal(size=(features, 5))),
        "w2": jnp.asarray(rng.normal(size=(5, classes))),
        "b": jnp.asarray(0.1 * rng.normal(size=classes)),
    }
    batch = Episode(
        jnp.asarray(rng.normal(size=(n, features))),
        jnp.asarray(rng.integers(0, classes, n), jnp.int32),
        jnp.asarray(rng.normal(size=(m, features))),
        jnp.asarray(rng.integers(0, classes, m), jnp.int32),
        ways=classes,
    )
    return params, batch
