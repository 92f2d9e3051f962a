"""Metric learners' shared end-to-end check: train on wide episodes, test narrower ones."""

from functools import partial

import flax.linen as nn
import jax
import numpy as np
import optax

from metarun.data.episodes import make_sampler
from metarun.evaluate import evaluate, make_evaluator
from metarun.experiment import Experiment, rng_streams
from metarun.step import init_state, make_meta_step
from metarun.types import CLASSIFICATION, TaskSource


class TinyConv(nn.Module):
    """A one-block convolutional model with ``feature_maps``, for fast end-to-end runs."""

    output_dim: int

    def setup(self):
        self.conv = nn.Conv(8, (3, 3))
        self.head = nn.Dense(self.output_dim)

    def feature_maps(self, x):
        return nn.relu(self.conv(x))

    def embed(self, x):
        return self.feature_maps(x).reshape(x.shape[0], -1)

    def __call__(self, x):
        return self.head(self.embed(x))


def prototype_images(classes=30, samples=8, size=4, seed=0):
    """uint8 ``[classes, samples, size, size, 1]``: a random pattern per class plus noise."""
    rng = np.random.default_rng(seed)
    pattern = rng.uniform(0, 255, (classes, 1, size, size, 1))
    noise = rng.normal(0, 40, (classes, samples, size, size, 1))
    return np.clip(pattern + noise, 0, 255).astype(np.uint8)


def train_wide_test_narrow(config, learner, steps: int = 60):
    """``steps`` meta-steps of 10-way episodes on 20 classes, then the evaluator on 5-way
    episodes of 10 other classes (``learner.any_ways``), on :class:`TinyConv`.

    Returns the training losses, the last step's metrics, and the test accuracy before and
    after training. Built with XLA's RngBitGenerator keys: the default threefry programs take
    seconds to compile on CPU (model init, episode sampling), and any key serves here.
    """
    with jax.default_prng_impl("rbg"):
        images = prototype_images()
        train = make_sampler(images[:20], ways=10, shots=1, queries=3)
        test = make_sampler(images[20:], ways=5, shots=1, queries=3)
        source = TaskSource({"train": train, "test": test}, CLASSIFICATION, output_dim=5)
        exp = Experiment(config, source, MODEL, learner, optax.adam(3e-3), 0.0, learner)
        init_key, train_key = rng_streams(0)
        state = jax.jit(partial(init_state, exp))(init_key)
        step = jax.jit(make_meta_step(exp))
        evaluator = make_evaluator(learner, CLASSIFICATION, inner_steps=0, batch=50)
        keys = jax.random.split(jax.random.PRNGKey(9), 100)
        before = evaluate(evaluator, state.meta_params, test, keys, "accuracy").mean
        losses = []
        for _ in range(steps):
            state, metrics = step(state, train_key, train)
            losses.append(float(metrics["loss"]))
        after = evaluate(evaluator, state.meta_params, test, keys, "accuracy").mean
    return losses, metrics, before, after


MODEL = TinyConv(output_dim=5)
