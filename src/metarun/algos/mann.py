"""Memory-Augmented Neural Networks: an LSTM that reads and writes an external memory.

The episode is one sequence; at step t the controller sees the example x_t and the previous
step's label, so it must predict y_t before it is told, then store the pair:

    h_t, c_t = LSTM([f_φ(x_t), onehot(y_{t−1}), r_{t−1}], (h_{t−1}, c_{t−1}))
    k_t = tanh(W_k h_t),  a_t = tanh(W_a h_t),  σ_t = sigmoid(W_α h_t),  β_t = softplus(W_β h_t)
                                                                    (one of each per head)
    w^lu_{t−1} = onehot(the n least used slots of w^u_{t−1})        (n = number of heads)
    w^w_t = σ_t w^r_{t−1} + (1 − σ_t) w^lu_{t−1}                    (Least Recently Used Access)
    M_t = M_{t−1} with its least used slot zeroed, + Σ_heads w^w_t ⊗ a_t
    w^r_t(i) = softmax_i(β_t cos(k_t, M_t(i))),   r_t = Σ_i w^r_t(i) M_t(i)
    w^u_t = γ w^u_{t−1} + Σ_heads (w^r_t + w^w_t)
    p(y_t | x_t, (x, y)_{<t}) = softmax(W_o [h_t, r_t])

The paper writes the key itself (a_t = k_t, ``write_vectors=False``) and reads by
softmax(cos) (β_t = 1, ``key_strength=0``). The defaults take both from the Neural Turing
Machine it builds on, because the paper's form barely learns in a CPU budget: written keys are
found again by the same step's read (cos = 1 with the slot just written), and a softmax of
cosines in [−1, 1] over 128 slots reads an almost uniform average. Chosen on validation
accuracy (minimal1's held-out Greek alphabet, 100 episodes; 5-way 1-shot, 20×20 pixels, 800
steps of 16 sequences, Adam 3e-3, seed 0; ``scripts/choose_on_validation.sh ... mann``):
both 56.1%; β_t from 10 with the key written 36.0%; the paper's read and write 20.0%, and the
paper's read with vectors written 20.8% (chance: 20%). β_t starts at ``key_strength`` (the bias
of W_β is set so).

Meta-training (``outer_grad``) is the paper's: the support and query sets together are one
sequence, every step predicts its label, and the loss is the mean cross-entropy over the steps.
The sampler groups each set by label, which would make the labels predictable from positions
alone, so the sequence is put in a pseudo-random order that depends only on the examples'
contents (:func:`set_order`: no key reaches ``outer_grad``, and the order must change from one
episode to the next). Its metrics add the accuracy by instance, ``accuracy_1st``, ``_2nd``,
``_5th``, ``_10th``: the accuracy on the k-th presentation of a class (Santoro et al., Table 1),
for the k that the episode's ``shots + queries`` allow; ``accuracy`` is over the whole sequence.

Meta-testing goes through ``adapt`` and ``predict``: the controller runs over the support
set (in the same content-defined order, so the prediction does not depend on the order the
support set comes in), and each query is one more step from that state, independently of the
other queries (``vmap``). The query's own label is never an input; the label slot of that step
holds the last support label, as it would in training: a zero vector there would leave the
last support example unbound (its label only ever arrives one step late) and is an input the
controller never sees after the first step.

Other differences from the paper and its reimplementation (tristandeleu/ntm-one-shot):

* the examples are the configured encoder's features f_φ(x), trained end to end (the paper's
  20×20 pixels, flattened: ``model=mlp model.hidden=[] data.image_size=20``);
* the support and query sets are encoded as two batches (BatchNorm statistics per set, as in
  meta-testing), then interleaved;
* head i writes to the i-th least used slot (the paper's w^lu marks all n least used slots for
  every head), as the reimplementation does;
* the memory starts at zero and the cosine's denominator is floored, where the reimplementation
  fills the memory with 1e-6 to avoid 0/0;
* the controller runs in float32 under ``trainer.precision=bf16`` (only the encoder is cast).

Reference: Santoro, Bartunov, Botvinick, Wierstra, Lillicrap. "Meta-Learning with
Memory-Augmented Neural Networks" (arXiv: "One-shot Learning with Memory-Augmented Neural
Networks"). ICML 2016. https://arxiv.org/abs/1605.06065
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarun.algos import algos
from metarun.algos.base import MetaLearner, drop_head
from metarun.types import Array, Objective, cross_entropy

INSTANCES = (1, 2, 5, 10)  # the presentations reported by instance (the paper adds 3rd, 4th)
_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


def set_order(x: Array) -> Array:
    """``[n]``: a pseudo-random permutation of the examples ``x [n, ...]``, a function of their
    contents only.

    Each example is hashed exactly (its float bits, times fixed random odd multipliers, summed
    modulo 2^32, which no summation order changes) and the hash seeds one draw of a uniform key;
    sorting the keys orders the set. The order is thus the same for any arrangement of the same
    examples, unrelated to their labels, and new for every episode. Identical examples tie and
    keep their relative order.
    """
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
    multipliers = jax.random.bits(jax.random.PRNGKey(0), (flat.shape[1],), jnp.uint32) | 1
    hashes = jnp.sum(bits * multipliers, axis=1, dtype=jnp.uint32)
    base = jax.random.PRNGKey(1)
    keys = jax.vmap(lambda h: jax.random.bits(jax.random.fold_in(base, h), (), jnp.uint32))(hashes)
    return jnp.argsort(keys, stable=True)


def instance_accuracies(correct: Array, labels: Array, ways: int, presentations: int) -> dict:
    """Accuracy on the k-th presentation of a class, for each k of :data:`INSTANCES` up to
    ``presentations``.

    Args:
      correct: ``[T]`` 1 where step t was predicted right.
      labels: ``[T]`` the sequence's labels, each of the ``ways`` classes ``presentations`` times.

    Returns:
      ``{"accuracy_1st": ..., "accuracy_2nd": ..., ...}``, the mean of ``correct`` over the steps
      that show their class for the k-th time.
    """
    onehot = jax.nn.one_hot(labels, ways, dtype=jnp.float32)
    earlier = jnp.cumsum(onehot, axis=0) - onehot  # presentations of each class before step t
    instance = jnp.sum(earlier * onehot, axis=1) + 1  # step t shows its class for this time
    correct = correct.astype(jnp.float32)
    metrics = {}
    for k in INSTANCES:
        if k <= presentations:
            shown = instance == k
            name = f"accuracy_{_ORDINALS.get(k, f'{k}th')}"
            metrics[name] = jnp.sum(jnp.where(shown, correct, 0.0)) / jnp.sum(shown)
    return metrics


def cosine_to_rows(keys: Array, memory: Array, eps: float = 1e-8) -> Array:
    """``[h, slots]``: cos(k_j, M(i)), zero for an empty slot (the norm product is floored)."""
    # Floored before the square root: the norm of an empty (zero) slot has no gradient.
    squared = jnp.sum(keys**2, axis=-1)[:, None] * jnp.sum(memory**2, axis=-1)[None]
    return (keys @ memory.T) / jnp.sqrt(jnp.maximum(squared, eps**2))


class Memory(NamedTuple):
    """The memory and its addressing history, carried from step to step."""

    memory: Array  # [slots, size] M_{t−1}
    usage: Array  # [slots] w^u_{t−1}
    read_weights: Array  # [heads, slots] w^r_{t−1}
    reads: Array  # [heads, size] r_{t−1}


def lru_access(
    state: Memory,
    keys: Array,
    gates: Array,
    gamma: float,
    strength: Array | None = None,
    values: Array | None = None,
) -> tuple[Memory, Array]:
    """One write then one read of the memory by Least Recently Used Access (equations above).

    Args:
      state: M_{t−1}, w^u_{t−1}, w^r_{t−1} (``reads`` is not used: it is replaced).
      keys: ``[heads, size]`` k_t, looked up (and written, without ``values``).
      gates: ``[heads]`` σ_t, the share of each head's write that goes where it last read.
      gamma: γ, the decay of the usage weights.
      strength: ``[heads]`` β_t, or None for β_t = 1.
      values: ``[heads, size]`` a_t, what is written, or None to write the keys.

    Returns:
      The new state (M_t, w^u_t, w^r_t, r_t) and the write weights w^w_t ``[heads, slots]``.
    """
    heads, slots = state.read_weights.shape
    least_used = jax.lax.top_k(-state.usage, heads)[1]  # ascending usage; ties: lower index
    w_lu = jax.nn.one_hot(least_used, slots, dtype=keys.dtype)  # head i -> i-th least used
    write_weights = gates[:, None] * state.read_weights + (1 - gates[:, None]) * w_lu
    # The paper zeroes the least used slot before writing, so that it is overwritten, not added to.
    written = keys if values is None else values
    memory = state.memory * (1 - w_lu[0])[:, None] + write_weights.T @ written
    similarity = cosine_to_rows(keys, memory)
    if strength is not None:
        similarity = strength[:, None] * similarity
    read_weights = jax.nn.softmax(similarity, axis=-1)
    usage = gamma * state.usage + jnp.sum(read_weights, axis=0) + jnp.sum(write_weights, axis=0)
    return Memory(memory, usage, read_weights, read_weights @ memory), write_weights


class Controller(nn.Module):
    """One step of the MANN: the LSTM controller, its memory access and the output layer."""

    ways: int
    hidden: int = 200
    slots: int = 128
    size: int = 40
    heads: int = 4
    gamma: float = 0.95
    key_strength: float = 10.0
    write_vectors: bool = True

    def initial_state(self, dtype=jnp.float32):
        """(LSTM carry, memory), all zero: an empty memory, nothing read or used yet."""
        zeros = jnp.zeros
        carry = (zeros((self.hidden,), dtype), zeros((self.hidden,), dtype))  # flax: (c, h)
        memory = Memory(
            zeros((self.slots, self.size), dtype),
            zeros((self.slots,), dtype),
            zeros((self.heads, self.slots), dtype),
            zeros((self.heads, self.size), dtype),
        )
        return carry, memory

    @nn.compact
    def __call__(self, state, x: Array, previous_label: Array):
        """``(state, x [d], onehot(y_{t−1}) [ways]) -> (state, logits [ways])``."""
        carry, memory = state
        inputs = jnp.concatenate([x, previous_label, memory.reads.reshape(-1)])
        carry, h = nn.OptimizedLSTMCell(self.hidden, name="lstm")(carry, inputs)
        keys = jnp.tanh(nn.Dense(self.heads * self.size, name="keys")(h))
        gates = nn.sigmoid(nn.Dense(self.heads, name="gates")(h))
        strength = None
        if self.key_strength > 0:  # NTM's β_t ≥ 0, starting near key_strength
            start = nn.initializers.constant(math.log(math.expm1(self.key_strength)))
            strength = nn.softplus(nn.Dense(self.heads, bias_init=start, name="strength")(h))
        values = None
        if self.write_vectors:
            values = jnp.tanh(nn.Dense(self.heads * self.size, name="values")(h))
            values = values.reshape(self.heads, self.size)
        memory, _ = lru_access(
            memory, keys.reshape(self.heads, self.size), gates, self.gamma, strength, values
        )
        logits = nn.Dense(self.ways, name="output")(jnp.concatenate([h, memory.reads.reshape(-1)]))
        return (carry, memory), logits


def mann(
    embed,
    *,
    controller: int = 200,
    memory_slots: int = 128,
    memory_size: int = 40,
    read_heads: int = 4,
    gamma: float = 0.95,
    key_strength: float = 10.0,
    write_vectors: bool = True,
) -> MetaLearner:
    """MANN over an encoder ``embed(params, x) -> [n, d]``.

    Meta-parameters: ``{"encoder": φ, "controller": the LSTM, its heads and output layer}``.
    Task parameters: the state after the support sequence and its last label, one-hot.

    Args:
      embed: the encoder f_φ.
      controller: LSTM units.
      memory_slots, memory_size: the memory's shape.
      read_heads: n, the number of read (and write) heads.
      gamma: γ, the usage decay.
      key_strength: the initial β_t; 0 reads by softmax(cos), the paper's.
      write_vectors: write a_t; False writes the key k_t, the paper's.
    """

    def module(ways: int) -> Controller:
        return Controller(
            ways,
            controller,
            memory_slots,
            memory_size,
            read_heads,
            gamma,
            key_strength,
            write_vectors,
        )

    def run(meta_params, features, labels, ways):
        """Logits ``[T, ways]`` of the sequence ``features [T, d]``, and the final state."""
        net = module(ways)
        onehot = jax.nn.one_hot(labels, ways, dtype=features.dtype)
        previous = jnp.concatenate([jnp.zeros_like(onehot[:1]), onehot[:-1]])  # one step late

        def step(state, inputs):
            return net.apply({"params": meta_params["controller"]}, state, *inputs)

        return jax.lax.scan(step, net.initial_state(features.dtype), (features, previous))

    def init(params, key, episode):
        encoder = drop_head(params)
        features = jax.eval_shape(embed, encoder, episode.support_x).shape[-1]
        net = module(episode.ways)
        x, y = jnp.zeros((features,)), jnp.zeros((episode.ways,))
        # Jitted: one compilation instead of one per operation, seconds on a loaded CPU.
        params = jax.jit(net.init)(key, net.initial_state(), x, y)["params"]
        return {"encoder": encoder, "controller": params}

    def adapt(meta_params, support_x, support_y, num_steps, ways):
        del num_steps  # no inner loop: the memory written along the support set is the adaptation
        order = set_order(support_x)
        features = embed(meta_params["encoder"], support_x)[order]
        labels = support_y[order]
        state, _ = run(meta_params, features, labels, ways)
        return state, jax.nn.one_hot(labels[-1], ways, dtype=features.dtype)

    def predict(meta_params, task_params, query_x, support_x=None):
        del support_x  # model.bn_mode=transductive only (bn_modes)
        state, last_label = task_params
        net = module(last_label.shape[-1])
        queries = embed(meta_params["encoder"], query_x)

        def one(x):  # one step from the support state; the queries never see one another
            _, logits = net.apply({"params": meta_params["controller"]}, state, x, last_label)
            return logits

        return jax.vmap(one)(queries)

    def episode_metrics(meta_params, episode):
        """The whole episode as one sequence: loss, accuracy and accuracy by instance."""
        x = jnp.concatenate([episode.support_x, episode.query_x])
        features = jnp.concatenate(
            [
                embed(meta_params["encoder"], episode.support_x),
                embed(meta_params["encoder"], episode.query_x),
            ]
        )
        labels = jnp.concatenate([episode.support_y, episode.query_y])
        order = set_order(x)
        features, labels = features[order], labels[order]
        _, logits = run(meta_params, features, labels, episode.ways)
        correct = jnp.argmax(logits, axis=-1) == labels
        metrics = {"loss": cross_entropy(logits, labels), "accuracy": jnp.mean(correct)}
        presentations = labels.shape[0] // episode.ways  # shots + queries, static
        return {**metrics, **instance_accuracies(correct, labels, episode.ways, presentations)}

    def outer_grad(meta_params, episodes, num_steps, step):
        del num_steps, step

        def loss(mp):
            metrics = jax.tree.map(jnp.mean, jax.vmap(lambda e: episode_metrics(mp, e))(episodes))
            return metrics["loss"], metrics

        return jax.grad(loss, has_aux=True)(meta_params)

    # The controller and memory run in float32 whatever trainer.precision says.
    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        outer_grad=outer_grad,
        bf16=False,
        encoder_key="encoder",
    )


@algos.register("mann", tasks=("classification",))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return mann(
        net.embed,
        controller=cfg.controller,
        memory_slots=cfg.memory_slots,
        memory_size=cfg.memory_size,
        read_heads=cfg.read_heads,
        gamma=cfg.gamma,
        key_strength=cfg.key_strength,
        write_vectors=cfg.write_vectors,
    )
