"""MANN: LRU access against numpy, accuracy by instance, the episode read as a sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.base import adapt_and_predict
from metarun.algos.mann import Memory, instance_accuracies, lru_access, mann, set_order
from metarun.config import ConfigError
from metarun.experiment import build
from metarun.types import Episode
from tests.helpers import feature_episode, tanh_embed

RNG = np.random.default_rng(0)


def memory_state():
    """4 slots of width 3, 2 heads; usage ranks the slots 1 < 3 < 0 < 2."""
    return Memory(
        memory=RNG.normal(size=(4, 3)),
        usage=np.array([0.5, 0.1, 0.9, 0.3]),
        read_weights=RNG.dirichlet(np.ones(4), size=2),
        reads=np.zeros((2, 3)),
    )


def numpy_lru(state, keys, gates, gamma, strength=None, values=None):
    """The paper's equations, written out slot by slot (with NTM's β and add vectors a_t)."""
    written = keys if values is None else values
    least_used = np.argsort(state.usage, kind="stable")[:2]  # head i -> i-th least used
    w_lu = np.zeros((2, 4))
    w_lu[[0, 1], least_used] = 1
    w_w = gates[:, None] * state.read_weights + (1 - gates[:, None]) * w_lu
    memory = state.memory.copy()
    memory[least_used[0]] = 0  # the least used slot is cleared before the write
    for head in range(2):
        for slot in range(4):
            memory[slot] += w_w[head, slot] * written[head]
    cos = np.array(
        [[k @ m / (np.linalg.norm(k) * np.linalg.norm(m)) for m in memory] for k in keys]
    )
    if strength is not None:
        cos = strength[:, None] * cos
    w_r = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
    usage = gamma * state.usage + w_r.sum(0) + w_w.sum(0)
    return memory, usage, w_r, w_r @ memory, w_w


@pytest.mark.parametrize("ntm", [False, True], ids=["paper", "ntm"])
def test_lru_write_then_read_is_the_papers_equations(ntm):
    state, keys, gates = memory_state(), RNG.normal(size=(2, 3)), np.array([0.3, 0.8])
    strength = np.array([1.0, 3.5]) if ntm else None
    values = np.tanh(RNG.normal(size=(2, 3))) if ntm else None
    with jax.enable_x64(True):
        new, w_w = jax.jit(lru_access, static_argnums=3)(
            jax.tree.map(jnp.asarray, state),
            jnp.asarray(keys),
            jnp.asarray(gates),
            0.9,
            None if strength is None else jnp.asarray(strength),
            None if values is None else jnp.asarray(values),
        )
        new, w_w = jax.tree.map(np.asarray, (new, w_w))
    memory, usage, w_r, reads, expected_w_w = numpy_lru(state, keys, gates, 0.9, strength, values)
    np.testing.assert_allclose(w_w, expected_w_w, rtol=1e-12)
    np.testing.assert_allclose(new.memory, memory, rtol=1e-12)
    np.testing.assert_allclose(new.read_weights, w_r, rtol=1e-12)
    np.testing.assert_allclose(new.reads, reads, rtol=1e-12)
    np.testing.assert_allclose(new.usage, usage, rtol=1e-12)


def test_a_closed_gate_overwrites_the_least_used_slot_with_the_key():
    state, keys = memory_state(), RNG.normal(size=(2, 3))
    new, _ = jax.jit(lru_access, static_argnums=3)(state, jnp.asarray(keys), jnp.zeros(2), 0.9)
    # Head 0 writes to slot 1 (usage 0.1), cleared first; head 1 adds to slot 3 (usage 0.3).
    np.testing.assert_allclose(new.memory[1], keys[0], rtol=1e-6)
    np.testing.assert_allclose(new.memory[3], state.memory[3] + keys[1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.memory)[[0, 2]], state.memory[[0, 2]], rtol=1e-6)


def test_accuracy_by_instance_on_a_hand_made_sequence():
    labels = np.array([1, 0, 1, 2, 0, 0, 2, 1, 2, 1, 0, 2])  # 3 classes, 4 presentations each
    correct = np.array([0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0])
    # 1st presentations: steps 0, 1, 3 -> 0, 1, 1; 2nd: steps 2, 4, 6 -> 1, 0, 1.
    metrics = instance_accuracies(jnp.asarray(correct), jnp.asarray(labels), 3, presentations=4)
    assert set(metrics) == {"accuracy_1st", "accuracy_2nd"}
    assert float(metrics["accuracy_1st"]) == pytest.approx(2 / 3)
    assert float(metrics["accuracy_2nd"]) == pytest.approx(2 / 3)

    labels = np.tile([0, 1], 10)[RNG.permutation(20)]  # 2 classes, 10 presentations each
    correct = RNG.integers(0, 2, size=20)
    metrics = instance_accuracies(jnp.asarray(correct), jnp.asarray(labels), 2, presentations=10)
    seen, by_instance = {0: 0, 1: 0}, {}
    for label, right in zip(labels, correct, strict=True):
        seen[label] += 1
        by_instance.setdefault(seen[label], []).append(right)
    names = {1: "1st", 2: "2nd", 5: "5th", 10: "10th"}
    assert set(metrics) == {f"accuracy_{name}" for name in names.values()}
    for k, name in names.items():
        assert float(metrics[f"accuracy_{name}"]) == pytest.approx(np.mean(by_instance[k]))


def test_the_order_depends_on_the_contents_only():
    x = RNG.normal(size=(8, 3, 3, 1)).astype(np.float32)
    order = np.asarray(set_order(jnp.asarray(x)))
    assert sorted(order) == list(range(8)) and list(order) != list(range(8))
    shuffle = RNG.permutation(8)
    reordered = np.asarray(set_order(jnp.asarray(x[shuffle])))
    np.testing.assert_array_equal(x[shuffle][reordered], x[order])
    other = np.asarray(set_order(jnp.asarray(x + 1e-3)))  # another episode, another order
    assert list(other) != list(order)


WAYS, SHOTS, QUERIES = 3, 2, 3
W = RNG.normal(size=(4, 5))


def episode(seed: int) -> Episode:
    return feature_episode(np.random.default_rng(seed), WAYS, SHOTS, QUERIES)


def tiny_mann():
    learner = mann(tanh_embed, controller=8, memory_slots=6, memory_size=4, read_heads=2)
    # Initialised by shape only, then drawn by numpy: flax's initialisers take seconds to compile.
    shapes = jax.eval_shape(learner.init, {"w": jnp.asarray(W)}, jax.random.PRNGKey(0), episode(0))
    meta = jax.tree.map(lambda s: jnp.asarray(0.3 * RNG.normal(size=s.shape), s.dtype), shapes)
    return learner, meta


def test_meta_gradient_is_finite_from_an_empty_memory_and_reports_each_instance():
    learner, meta = tiny_mann()
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), episode(1), episode(2))
    grads, metrics = jax.jit(learner.outer_grad, static_argnums=2)(meta, batch, 0, 0)
    flat = jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads)])
    assert bool(jnp.all(jnp.isfinite(flat))) and float(jnp.linalg.norm(flat)) > 0
    assert float(jnp.linalg.norm(grads["encoder"]["w"])) > 0
    # SHOTS + QUERIES = 5 presentations of each class: the 1st, 2nd and 5th are reported.
    assert set(metrics) == {"loss", "accuracy", "accuracy_1st", "accuracy_2nd", "accuracy_5th"}


def test_queries_are_predicted_independently_and_in_any_support_order():
    learner, meta = tiny_mann()
    e = episode(3)

    @jax.jit
    def predict(support_x, support_y, query_x):
        return adapt_and_predict(learner, meta, support_x, support_y, query_x, 0, WAYS)

    logits = predict(e.support_x, e.support_y, e.query_x)
    assert logits.shape == (WAYS * QUERIES, WAYS)
    others = e.query_x.at[jnp.arange(WAYS * QUERIES) != 2].multiply(-1.0)
    np.testing.assert_allclose(predict(e.support_x, e.support_y, others)[2], logits[2], rtol=1e-5)
    order = RNG.permutation(WAYS * SHOTS)
    shuffled = predict(e.support_x[order], e.support_y[order], e.query_x)
    np.testing.assert_allclose(shuffled, logits, rtol=1e-5, atol=1e-6)
    swapped = predict(e.support_x, e.support_y[::-1], e.query_x)
    assert not np.allclose(swapped, logits, atol=1e-4)  # the support labels are really read


def test_regression_data_is_refused(make_config):
    with pytest.raises(ConfigError, match="algo=mann is invalid with this data: it classifies"):
        build(make_config("algo=mann"))


def test_more_heads_than_slots_is_refused(make_config):
    with pytest.raises(ConfigError, match="algo.read_heads=5 is invalid"):
        make_config("algo=mann", "algo.read_heads=5", "algo.memory_slots=4")
