"""Matching Networks: a query's label is an attention-weighted vote of the support labels.

    a(x̂, x_i) = softmax_i(cos(f(x̂), g(x_i)))
    p(y = k | x̂, S) = Σ_{i: y_i = k} a(x̂, x_i)

The predictions are log p (a log-probability is its own log-softmax, so the dataset's
cross-entropy is the paper's loss). Without full context embeddings (``fce=false``)
f = g = the encoder, and a prediction does not depend on the order of the support set.

Full context embeddings (``fce=true``, §2.1.2 and Appendix A) make both depend on S:

* g(x_i, S) = h→_i + h←_i + g'(x_i), a bidirectional LSTM over the support embeddings g'
  (in the order of the support set: the episode's, grouped by label);
* f(x̂, S) = attLSTM(f'(x̂), g(S), K): for k = 1..K,
      ĥ_k, c_k = LSTM([f'(x̂), r_{k−1}], (h_{k−1}, c_{k−1}))
      h_k = ĥ_k + f'(x̂)
      r_k = Σ_i softmax_i(h_k · g(x_i)) g(x_i)
  and f = h_K.

``hallucinate=M`` (Wang et al. 2018, ``algos/hallucinate.py``) appends M examples per class,
imagined by a hallucinator G from the support embeddings g', to the attention memory: the
support set S becomes S ∪ {(G([g'(x_kj), z_kj]), k)}, real examples first, then the imagined
ones class by class. With ``fce`` the BiLSTM reads that augmented sequence, so g(·, S) and
f(·, S) see the imagined examples too.

Differences from the paper: the attention readout r_{k−1} enters the LSTM with its input
(the paper concatenates it to the hidden state, making the state twice as wide as its
output), as the open reimplementations do; the encoder is the configured model's
``embed`` (Conv-4 by default), and both f' and g' are that one encoder, as in the paper.

Reference: Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. "Matching Networks for One
Shot Learning". NeurIPS 2016. https://arxiv.org/abs/1606.04080
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarun.algos import algos
from metarun.algos.base import MetaLearner, drop_head
from metarun.algos.hallucinate import augment_episode, init_like, options
from metarun.algos.protonet import cosine_similarities
from metarun.config import BN_MODES
from metarun.types import Array, Objective


class FullContextEmbedding(nn.Module):
    """g(·, S) by a bidirectional LSTM, f(·, S) by an attention LSTM of ``steps`` steps."""

    features: int
    steps: int

    def setup(self):
        self.forward = nn.RNN(nn.LSTMCell(self.features), name="support_forward")
        self.backward = nn.RNN(
            nn.LSTMCell(self.features), reverse=True, keep_order=True, name="support_backward"
        )
        self.cell = nn.LSTMCell(self.features, name="query_lstm")

    def support(self, g: Array) -> Array:
        """``[n, d] -> [n, d]``: g(x_i, S) = h→_i + h←_i + g'(x_i)."""
        sequence = g[None]  # one sequence: the support set in episode order
        return g + self.forward(sequence)[0] + self.backward(sequence)[0]

    def queries(self, f: Array, g: Array) -> Array:
        """``[q, d], [n, d] -> [q, d]``: each query read against g(S) for ``steps`` steps."""
        readout = jnp.zeros_like(f)
        carry = self.cell.initialize_carry(jax.random.PRNGKey(0), (f.shape[0], 2 * f.shape[1]))
        for _ in range(self.steps):  # K is small (5): unrolled, one LSTM's weights reused
            carry, h = self.cell(carry, jnp.concatenate([f, readout], axis=-1))
            h = h + f
            carry = (carry[0], h)  # the skip connection feeds the next step too
            readout = jax.nn.softmax(h @ g.T, axis=-1) @ g
        return h

    def __call__(self, g: Array, f: Array) -> Array:  # init: touch every parameter
        return self.queries(f, self.support(g))


def attention_log_probs(queries: Array, support: Array, support_onehot: Array) -> Array:
    """``[q, ways]``: log Σ_{i: y_i = k} softmax_i(cos(f(x̂), g(x_i))), computed stably."""
    log_attention = jax.nn.log_softmax(cosine_similarities(queries, support), axis=-1)  # [q, n]
    return jax.nn.logsumexp(log_attention[:, None, :], axis=-1, b=support_onehot.T[None])


def matchingnet(
    embed,
    *,
    fce: bool = False,
    fce_steps: int = 5,
    hallucinate: int = 0,
    hallucinator_width: int | None = None,
    noise_dim: int = 16,
) -> MetaLearner:
    """Matching Networks over an encoder ``embed(params, x) -> [n, d]``.

    Meta-parameters: ``{"encoder": φ}``, plus ``"fce"``, the three LSTMs, when ``fce``, and
    ``"hallucinator"``, G, when ``hallucinate`` (M imagined examples per class) is > 0;
    ``hallucinator_width`` (None: the feature width) and ``noise_dim`` size G.
    """

    def context(features: int) -> FullContextEmbedding:
        return FullContextEmbedding(features, fce_steps)

    def init(params, key, episode):
        encoder = drop_head(params)
        meta_params = {"encoder": encoder}
        if fce:
            g = embed(encoder, episode.support_x)
            meta_params["fce"] = context(g.shape[-1]).init(key, g, g)["params"]
        if hallucinate:
            meta_params["hallucinator"] = init_like(
                embed,
                encoder,
                episode.support_x,
                hallucinator_width,
                noise_dim,
                key,
            )
        return meta_params

    def adapt(meta_params, support_x, support_y, num_steps, ways):
        del num_steps  # no inner loop: the embedded support set is the adaptation
        g = embed(meta_params["encoder"], support_x)
        if hallucinate:
            g, support_y = augment_episode(
                meta_params["hallucinator"], g, support_x, support_y, ways, hallucinate
            )
        if fce:
            g = context(g.shape[-1]).apply(
                {"params": meta_params["fce"]}, g, method=FullContextEmbedding.support
            )
        return g, jax.nn.one_hot(support_y, ways, dtype=g.dtype)

    def predict(meta_params, task_params, query_x, support_x=None):
        g, support_onehot = task_params
        f = embed(meta_params["encoder"], query_x, support_x)
        if fce:
            f = context(f.shape[-1]).apply(
                {"params": meta_params["fce"]}, f, g, method=FullContextEmbedding.queries
            )
        return attention_log_probs(f, g, support_onehot)

    return MetaLearner(
        init=init,
        adapt=adapt,
        predict=predict,
        any_ways=True,
        bn_modes=BN_MODES,
        encoder_key="encoder",
    )


@algos.register("matchingnet", tasks=("classification",))
def from_config(cfg, net, objective: Objective) -> MetaLearner:
    return matchingnet(net.embed, fce=cfg.fce, fce_steps=cfg.fce_steps, **options(cfg))
