"""Schemas of ``conf/algo/<name>.yaml``, one per algorithm family (``metarun.algos``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from metarun.config.errors import _check, _check_choice


@dataclass
class InnerLoopConfig:
    """What every gradient-based learner has; Reptile's whole schema (it is first-order by
    construction and keeps nothing to recompute, so ``first_order`` and ``remat`` are not its)."""

    name: str = MISSING
    inner_lr: float = 0.01  # α in θ' = θ − α ∇θ L_support(θ); Meta-SGD's initial value
    inner_steps: int = 1  # inner-loop steps during meta-training (0 = no adaptation)

    def __post_init__(self) -> None:
        _check(self.inner_lr > 0, "algo.inner_lr", self.inner_lr, "must be > 0, e.g. 0.01")
        _check(self.inner_steps >= 0, "algo.inner_steps", self.inner_steps, "must be >= 0")


@dataclass
class AlgoConfig(InnerLoopConfig):
    """The MAML family (MAML, FOMAML, ANIL, Meta-SGD): the schema of each algorithm's yaml is
    registered under its name, ``schema/algo/<name>``."""

    first_order: bool = False  # drop second-order terms (stop_gradient on inner gradients)
    # Recompute each inner step on the backward pass (jax.checkpoint): memory of long loops.
    remat: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            not (self.remat and self.first_order),
            "algo.remat",
            self.remat,
            "recomputes the second-order inner loop; a first-order one (algo.first_order=true, "
            "fomaml) keeps nothing to recompute",
        )


@dataclass
class MAMLConfig(AlgoConfig):
    """MAML and first-order MAML, with the MAML++ switches (Antoniou et al. 2019,
    algos/mamlpp.py); each is off by default and separate from the others. The paper's fifth,
    the cosine-annealed meta learning rate, is optim.schedule=cosine optim.min_lr=1e-5."""

    msl: bool = False  # multi-step loss: query losses of every inner step, annealed weights
    # Meta-steps until only the last step's loss counts (the paper's Omniglot: 10 epochs of 500).
    msl_anneal_steps: int = 5000
    lslr: bool = False  # learned inner learning rate per parameter array and inner step
    per_step_bn: bool = False  # one BatchNorm scale and offset per inner step, meta-learned
    first_order_steps: int = 0  # derivative-order annealing: first-order meta-steps first

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.msl_anneal_steps >= 1,
            "algo.msl_anneal_steps",
            self.msl_anneal_steps,
            "must be >= 1 meta-step",
        )
        _check(
            self.first_order_steps >= 0,
            "algo.first_order_steps",
            self.first_order_steps,
            "must be >= 0",
        )
        _check(
            self.first_order_steps == 0 or not self.first_order,
            "algo.first_order_steps",
            self.first_order_steps,
            "anneals first-order into second-order training; algo.first_order=true is "
            "first-order throughout",
        )
        _check(
            not (self.per_step_bn and self.first_order and not self.msl),
            "algo.per_step_bn",
            self.per_step_bn,
            "with first-order MAML and no multi-step loss only the last step's BatchNorm copy "
            "gets a meta-gradient (the inner gradients are constants); add algo.msl=true or "
            "train second order",
        )


@dataclass
class HallucinateConfig:
    """What the metric learners that can learn from imagined support data share (Wang et al.
    2018, algos/hallucinate.py): a hallucinator G adds examples to each class of the support
    set, in feature space, meta-learned with the encoder."""

    name: str = MISSING
    hallucinate: int = 0  # M, imagined support examples per class (0 = off, the learner as is)
    # G's two hidden layers; null = the feature width, where G starts as the identity on the
    # seed's features (Conv-4: 64 on Omniglot, 1600 on mini-ImageNet: set it lower there).
    hallucinator_width: int | None = None
    noise_dim: int = 16  # the width of G's noise input z ~ N(0, I)

    def __post_init__(self) -> None:
        _check(self.hallucinate >= 0, "algo.hallucinate", self.hallucinate, "must be >= 0")
        _check(
            self.hallucinator_width is None or self.hallucinator_width >= 1,
            "algo.hallucinator_width",
            self.hallucinator_width,
            "must be >= 1, or null for the feature width",
        )
        _check(self.noise_dim >= 1, "algo.noise_dim", self.noise_dim, "must be >= 1")


PROTONET_DISTANCES = ("euclidean", "cosine")


@dataclass
class ProtoNetConfig(HallucinateConfig):
    """Prototypical Networks: logits are minus the distance to each class's mean embedding."""

    name: str = "protonet"
    distance: str = "euclidean"  # squared Euclidean (the paper), or cosine similarity
    cosine_scale: float = 10.0  # distance=cosine: logits = scale · cos, softmax needs the range

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("algo.distance", self.distance, PROTONET_DISTANCES)
        _check(self.cosine_scale > 0, "algo.cosine_scale", self.cosine_scale, "must be > 0")


@dataclass
class MatchingNetConfig(HallucinateConfig):
    """Matching Networks: attention over the support set by cosine similarity."""

    name: str = "matchingnet"
    fce: bool = False  # full context embeddings: a BiLSTM over the support set, attLSTM queries
    fce_steps: int = 5  # fce: the attention LSTM's processing steps K over the support set

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.fce_steps >= 1, "algo.fce_steps", self.fce_steps, "must be >= 1")


@dataclass
class RelationNetConfig:
    """Relation Networks: a learned module scores each (class, query) pair of feature maps."""

    name: str = "relationnet"
    filters: int = 64  # channels of the relation module's two 3×3 conv blocks (the paper's 64)
    hidden: int = 8  # its fully connected layer before the sigmoid output (the paper's 8)

    def __post_init__(self) -> None:
        _check(self.filters >= 1, "algo.filters", self.filters, "must be >= 1")
        _check(self.hidden >= 1, "algo.hidden", self.hidden, "must be >= 1")


@dataclass
class SiameseConfig:
    """Siamese networks: a weighted L1 distance between twin embeddings, trained on pairs."""

    name: str = "siamese"


@dataclass
class MANNConfig:
    """Memory-Augmented Neural Networks: an LSTM controller with an LRU-written memory."""

    name: str = "mann"
    controller: int = 200  # LSTM units (the paper's 200)
    memory_slots: int = 128  # rows of the memory (the paper's 128)
    memory_size: int = 40  # width of a row, and of a key (the paper's 40)
    read_heads: int = 4  # n: keys per step, each reading and writing (the paper's 4)
    gamma: float = 0.95  # γ, the decay of the usage weights (the reimplementations' 0.95)
    # Two departures from the paper, from the Neural Turing Machine (see algos/mann.py): a
    # learned key strength β_t, starting here (0 = off, the paper's softmax(cos)), and writing
    # a vector of its own, a_t = tanh(W_a h_t), rather than the key (false = the paper). Both
    # chosen on validation accuracy (scripts/choose_on_validation.sh: 56.1% against 20.0% for
    # the paper's).
    key_strength: float = 10.0
    write_vectors: bool = True

    def __post_init__(self) -> None:
        for key in ("controller", "memory_slots", "memory_size", "read_heads"):
            _check(getattr(self, key) >= 1, f"algo.{key}", getattr(self, key), "must be >= 1")
        _check(
            self.read_heads <= self.memory_slots,
            "algo.read_heads",
            self.read_heads,
            f"must be <= algo.memory_slots={self.memory_slots} (each head writes its own slot)",
        )
        _check(0 <= self.gamma <= 1, "algo.gamma", self.gamma, "must be in [0, 1]")
        _check(self.key_strength >= 0, "algo.key_strength", self.key_strength, "must be >= 0")


@dataclass
class SNAILConfig:
    """SNAIL: attention and temporal-convolution blocks, interleaved, attention first."""

    name: str = "snail"
    # Attention block i: keys and queries of attention_keys[i], values of attention_values[i].
    attention_keys: list[int] = field(default_factory=lambda: [64, 256, 512])
    attention_values: list[int] = field(default_factory=lambda: [32, 128, 256])
    # TC block i, after attention block i: ⌈log2 T⌉ dense blocks of tc_filters[i] filters,
    # T = ways·shots + 1 (the support sequence and the query).
    tc_filters: list[int] = field(default_factory=lambda: [128, 128])

    def __post_init__(self) -> None:
        keys, values, filters = self.attention_keys, self.attention_values, self.tc_filters
        _check(
            len(values) == len(keys),
            "algo.attention_values",
            values,
            f"must have one size per attention block, as algo.attention_keys={keys}",
        )
        _check(
            len(keys) - len(filters) in (0, 1),
            "algo.tc_filters",
            filters,
            f"must have as many blocks as algo.attention_keys={keys}, or one fewer "
            "(the blocks alternate, attention first)",
        )
        _check(bool(keys) or bool(filters), "algo.attention_keys", keys, "needs a block")
        for key in ("attention_keys", "attention_values", "tc_filters"):
            sizes = getattr(self, key)
            _check(all(s >= 1 for s in sizes), f"algo.{key}", sizes, "every size must be >= 1")


@dataclass
class MetaLSTMConfig:
    """Meta-learner LSTM (Ravi & Larochelle 2017): θ is the cell state of an LSTM,
    c_t = f_t ⊙ c_{t−1} − i_t ⊙ ∇L_t, with learned coordinatewise gates (algos/meta_lstm.py)."""

    name: str = "meta_lstm"
    inner_steps: int = 5  # learner updates T, each on the whole support set (0 = no adaptation)
    inner_lr: float = 0.01  # input gate at init, i = σ(b_I) (the authors' code: b_I ∈ [−5, −4])
    forget_init: float = 0.99  # forget gate at init, f = σ(b_F) (the authors' code: b_F ∈ [4, 5])
    hidden: int = 20  # units of the first, standard LSTM layer (the paper's 20)
    weight_init: float = 0.01  # the other meta-learner weights start U(−w, w) (the authors' code)
    p: float = 10.0  # gradient and loss preprocessing (Andrychowicz et al. 2016): threshold e^−p
    remat: bool = False  # recompute each step's LSTM activations on the backward pass

    def __post_init__(self) -> None:
        _check(self.inner_steps >= 0, "algo.inner_steps", self.inner_steps, "must be >= 0")
        _check(0 < self.inner_lr < 1, "algo.inner_lr", self.inner_lr, "must be in (0, 1): a gate")
        _check(
            0 < self.forget_init < 1,
            "algo.forget_init",
            self.forget_init,
            "must be in (0, 1): a gate, e.g. 0.99",
        )
        _check(self.hidden >= 1, "algo.hidden", self.hidden, "must be >= 1")
        _check(self.weight_init >= 0, "algo.weight_init", self.weight_init, "must be >= 0")
        _check(self.p > 0, "algo.p", self.p, "must be > 0, e.g. 10")


LSTM_OPT_PREPROCESS = ("log_sign", "none")


@dataclass
class LSTMOptConfig:
    """Learned optimizer (Andrychowicz et al. 2016): θ_{t+1} = θ_t + LSTM(∇f(θ_t)), one
    coordinatewise LSTM for every coordinate, meta-trained by truncated BPTT (algos/lstm_opt.py)."""

    name: str = "lstm_opt"
    hidden: int = 20  # units of each LSTM layer (the paper's 20)
    layers: int = 2  # stacked LSTM layers (the paper's 2)
    scale: float = 0.1  # the update is scale × the LSTM's linear output (the paper's 0.1)
    preprocess: str = "log_sign"  # the paper's (log|g|/p, sign g); none: g itself
    p: float = 10.0  # preprocess=log_sign: gradients below e^−p are read linearly (paper: 10)
    horizon: int = 100  # optimizee steps per task, in training and at test (the paper's 100)
    # Truncated BPTT: steps per segment of the meta-gradient, a divisor of horizon (paper: 20).
    unroll: int = 20

    def __post_init__(self) -> None:
        _check(self.hidden >= 1, "algo.hidden", self.hidden, "must be >= 1")
        _check(self.layers >= 1, "algo.layers", self.layers, "must be >= 1")
        _check(self.scale > 0, "algo.scale", self.scale, "must be > 0, e.g. 0.1")
        _check_choice("algo.preprocess", self.preprocess, LSTM_OPT_PREPROCESS)
        _check(self.p > 0, "algo.p", self.p, "must be > 0, e.g. 10")
        _check(self.horizon >= 1, "algo.horizon", self.horizon, "must be >= 1 step")
        _check(
            1 <= self.unroll <= self.horizon,
            "algo.unroll",
            self.unroll,
            f"must be in 1 .. algo.horizon={self.horizon}",
        )
        _check(
            self.horizon % self.unroll == 0,
            "algo.horizon",
            self.horizon,
            f"must be a multiple of algo.unroll={self.unroll} (whole truncation segments)",
        )


@dataclass
class BaselineConfig:
    """Pre-training baselines (algos/baseline.py): train on all training classes (or tasks) at
    once, then fit a new head to each test task's support set, eval.inner_steps steps of SGD.
    The defaults are the test-time fit of Chen et al. 2019 (not tuned here)."""

    name: str = MISSING
    fit_lr: float = 0.01  # the test-time fit's SGD step size
    momentum: float = 0.9  # its momentum (0: plain gradient steps)
    dampening: float = 0.9  # its momentum's dampening (PyTorch's SGD; the authors' 0.9)
    weight_decay: float = 0.001  # its L2 weight decay
    finetune: bool = False  # fit the whole network to the support set, not only the new head

    def __post_init__(self) -> None:
        _check(self.fit_lr > 0, "algo.fit_lr", self.fit_lr, "must be > 0, e.g. 0.01")
        _check(0 <= self.momentum < 1, "algo.momentum", self.momentum, "must be in [0, 1)")
        _check(0 <= self.dampening <= 1, "algo.dampening", self.dampening, "must be in [0, 1]")
        _check(self.weight_decay >= 0, "algo.weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class ERMConfig:
    """Plain training on data.protocol=supervised (algos/erm.py)."""

    name: str = MISSING
    with_query: bool = False  # train on each batch's clean examples too, not only the noisy


@dataclass
class MLDGConfig:
    """MLDG (algos/mldg.py), on data.protocol=domains."""

    name: str = MISSING
    inner_lr: float = 0.1  # α of the step on the meta-train domains (not tuned)
    beta: float = 1.0  # β, the meta-test domain's weight (the paper's 1)
    first_order: bool = False  # drop the Hessian of the meta-train loss from ∇F

    def __post_init__(self) -> None:
        _check(self.inner_lr > 0, "algo.inner_lr", self.inner_lr, "must be > 0, e.g. 0.1")
        _check(self.beta >= 0, "algo.beta", self.beta, "must be >= 0")


@dataclass
class NameOnly:
    """An algorithm without keys of its own (algos/l2rw.py)."""

    name: str = MISSING


# The schema of each conf/algo/<name>.yaml (MAML's variants share MAML's or the base schema).
SCHEMAS = {
    "maml": MAMLConfig,
    "fomaml": MAMLConfig,
    **{name: AlgoConfig for name in ("anil", "metasgd")},
    "reptile": InnerLoopConfig,
    "protonet": ProtoNetConfig,
    "matchingnet": MatchingNetConfig,
    "relationnet": RelationNetConfig,
    "siamese": SiameseConfig,
    "mann": MANNConfig,
    "snail": SNAILConfig,
    "meta_lstm": MetaLSTMConfig,
    "lstm_opt": LSTMOptConfig,
    "baseline": BaselineConfig,
    "baseline_pp": BaselineConfig,
    "erm": ERMConfig,
    "l2rw": NameOnly,
    "mldg": MLDGConfig,
}
