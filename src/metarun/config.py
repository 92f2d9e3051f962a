"""Structured configs: the schema every yaml in ``conf/`` is merged into.

Hydra merges each group's yaml into the dataclass named in its defaults list, so a
wrong type or an unknown key fails at composition. Ranges and cross-field rules
are checked in ``__post_init__``, which runs when :func:`validate` turns the
composed config into these dataclasses — milliseconds, before anything compiles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key."""


class DataError(ValueError):
    """A dataset's files are missing, damaged or not what a loader reads (``metarun.data``);
    the message names the file and the fix."""


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {rule}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, value, f"allowed values are {', '.join(choices)}")


@dataclass
class AlgoConfig:
    """Gradient-based meta-learners (MAML family, Reptile): the schema of each algorithm's yaml
    is registered under its name, ``schema/algo/<name>``."""

    name: str = MISSING
    inner_lr: float = 0.01  # α in θ' = θ − α ∇θ L_support(θ); Meta-SGD's initial value
    inner_steps: int = 1  # inner-loop steps during meta-training (0 = no adaptation)
    first_order: bool = False  # drop second-order terms (stop_gradient on inner gradients)
    remat: bool = False  # recompute each inner step on the backward pass (jax.checkpoint)

    def __post_init__(self) -> None:
        _check(self.inner_lr > 0, "algo.inner_lr", self.inner_lr, "must be > 0, e.g. 0.01")
        _check(self.inner_steps >= 0, "algo.inner_steps", self.inner_steps, "must be >= 0")
        _check(
            not (self.remat and self.first_order),
            "algo.remat",
            self.remat,
            "recomputes the second-order inner loop; a first-order one (algo.first_order=true, "
            "fomaml, reptile) keeps nothing to recompute",
        )


@dataclass
class MAMLConfig(AlgoConfig):
    """MAML and first-order MAML, with the MAML++ switches (Antoniou et al. 2019,
    algos/mamlpp.py); each is off by default."""

    msl: bool = False  # multi-step loss: query losses of every inner step, annealed weights
    msl_anneal_steps: int = 5000  # meta-steps until only the last step's loss counts
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


PROTONET_DISTANCES = ("euclidean", "cosine")


@dataclass
class ProtoNetConfig:
    """Prototypical Networks: logits are minus the distance to each class's mean embedding."""

    name: str = "protonet"
    distance: str = "euclidean"  # squared Euclidean (the paper), or cosine similarity
    cosine_scale: float = 10.0  # distance=cosine: logits = scale · cos, softmax needs the range

    def __post_init__(self) -> None:
        _check_choice("algo.distance", self.distance, PROTONET_DISTANCES)
        _check(self.cosine_scale > 0, "algo.cosine_scale", self.cosine_scale, "must be > 0")


@dataclass
class MatchingNetConfig:
    """Matching Networks: attention over the support set by cosine similarity."""

    name: str = "matchingnet"
    fce: bool = False  # full context embeddings: a BiLSTM over the support set, attLSTM queries
    fce_steps: int = 5  # fce: the attention LSTM's processing steps K over the support set

    def __post_init__(self) -> None:
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
    # a vector of its own, a_t = tanh(W_a h_t), rather than the key (false = the paper).
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
    # TC block i, after attention block i: ⌈log2 T⌉ dense blocks of tc_filters[i] filters.
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
    p: float = 10.0  # gradient and loss preprocessing (Andrychowicz et al.): threshold e^−p
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
    unroll: int = 20  # truncated BPTT: steps per segment of the meta-gradient (the paper's 20)

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
class QuadraticConfig:
    """Random quadratics f(θ) = ‖Wθ − y‖² (Andrychowicz et al. 2016, §3.1), for algo=lstm_opt."""

    name: str = "quadratic"
    dimension: int = 10  # d: θ, y ∈ R^d, W ∈ R^{d×d} (the paper's 10)
    init_std: float = 0.01  # θ_0 ~ N(0, init_std²) (the authors' code: 0.01)

    def __post_init__(self) -> None:
        _check(self.dimension >= 1, "data.dimension", self.dimension, "must be >= 1")
        _check(self.init_std >= 0, "data.init_std", self.init_std, "must be >= 0")


@dataclass
class SinusoidConfig:
    """Sinusoid regression, MAML §5.1: y = A sin(x − φ)."""

    name: str = "sinusoid"
    shots: int = 10  # K support points per task
    queries: int = 10  # query points per task
    amplitude_min: float = 0.1
    amplitude_max: float = 5.0
    phase_min: float = 0.0
    phase_max: float = 3.141592653589793
    x_min: float = -5.0
    x_max: float = 5.0

    def __post_init__(self) -> None:
        _check(self.shots >= 1, "data.shots", self.shots, "must be >= 1 support point")
        _check(self.queries >= 1, "data.queries", self.queries, "must be >= 1 query point")
        for low, high in (
            ("amplitude_min", "amplitude_max"),
            ("phase_min", "phase_max"),
            ("x_min", "x_max"),
        ):
            lo, hi = getattr(self, low), getattr(self, high)
            _check(lo < hi, f"data.{low}", lo, f"must be < data.{high}={hi}")


@dataclass
class ImageEpisodes:
    """Episode sizes shared by the image datasets: val and test use ways/shots/queries."""

    ways: int = 5  # N classes per episode
    shots: int = 1  # K support examples per class
    queries: int = 15  # query examples per class (the common 15 of Ravi & Larochelle)
    train_ways: int | None = None  # meta-training episodes (ProtoNet trains 60-way); None = ways
    train_shots: int | None = None  # meta-training episodes; None = shots
    train_queries: int | None = None  # meta-training episodes; None = queries
    rotations: bool = True  # 90° turns of a class are new classes (Omniglot protocol)

    def _check_episodes(self) -> None:
        _check(self.ways >= 2, "data.ways", self.ways, "must be >= 2 classes per episode")
        _check(
            self.train_ways is None or self.train_ways >= 2,
            "data.train_ways",
            self.train_ways,
            "must be >= 2 classes per episode",
        )
        for key in ("shots", "queries", "train_shots", "train_queries"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"data.{key}", value, "must be >= 1")


OMNIGLOT_SPLITS = ("minimal1", "minimal2", "characters", "alphabets")
OMNIGLOT_ARCHIVES = ("background", "evaluation", "small1", "small2")


@dataclass
class OmniglotConfig(ImageEpisodes):
    """Omniglot (Lake et al. 2015) from the official archives; splits in data/omniglot.py."""

    name: str = "omniglot"
    root: str = ""  # folder with images_background.zip, ..._small1.zip, ... (TFDS manual dir)
    download: bool = False  # fetch missing archives from the official URL (checksummed)
    cache_dir: str = ""  # prepared records + .npz; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    split: str = "characters"
    archives: list[str] = field(default_factory=lambda: ["background", "evaluation"])
    image_size: int = 28
    val_fraction: float = 0.15  # of the training characters (alphabets for split=alphabets)
    val_alphabets: list[str] = field(default_factory=list)  # overrides val_fraction
    test_alphabets: list[str] = field(default_factory=list)  # split=alphabets; [] = evaluation's
    split_seed: int = 0  # the shuffle of split=characters and of val_fraction

    def __post_init__(self) -> None:
        self._check_episodes()
        _check(
            bool(self.root),
            "data.root",
            self.root,
            "is required: the folder holding the official Omniglot zips "
            "(images_background.zip, images_evaluation.zip, images_background_small1.zip, "
            "images_background_small2.zip), e.g. data.root=../shared/data/omniglot",
        )
        _check_choice("data.split", self.split, OMNIGLOT_SPLITS)
        for archive in self.archives:
            _check_choice("data.archives", archive, OMNIGLOT_ARCHIVES)
        _check(self.image_size >= 8, "data.image_size", self.image_size, "must be >= 8 pixels")
        _check(
            0 < self.val_fraction < 1, "data.val_fraction", self.val_fraction, "must be in (0, 1)"
        )


@dataclass
class MiniImageNetConfig(ImageEpisodes):
    """mini-ImageNet, Ravi & Larochelle's 64 / 16 / 20 class split, 84×84×3."""

    name: str = "mini_imagenet"
    root: str = ""  # train/val/test.csv + images/, or mini-imagenet-cache-*.pkl (TFDS manual dir)
    cache_dir: str = ""  # prepared records + .npz; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    rotations: bool = False

    def __post_init__(self) -> None:
        self._check_episodes()
        _check(
            bool(self.root),
            "data.root",
            self.root,
            "is required: the folder holding train.csv, val.csv, test.csv and images/, or "
            "mini-imagenet-cache-{train,val,test}.pkl",
        )


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    activation: str = "relu"

    def __post_init__(self) -> None:
        _check(
            all(h >= 1 for h in self.hidden),
            "model.hidden",
            self.hidden,
            "every layer width must be >= 1",
        )
        _check_choice("model.activation", self.activation, ("relu", "tanh", "gelu"))


# How Conv-4 and ResNet-12 compute their convolutions (models/conv4.py: resolve_conv).
CONV_IMPLS = ("auto", "xla", "im2col")
# Their BatchNorm modes (models/conv4.py: BatchStatNorm).
BN_MODES = ("transductive", "support", "task_norm", "running")


@dataclass
class Conv4Config:
    """Conv-4 (Vinyals et al. 2016): four 3×3 conv + BatchNorm + ReLU + 2×2 max-pool blocks."""

    name: str = "conv4"
    filters: int = 64  # 64 on Omniglot, 32 on mini-ImageNet (MAML)
    strided: bool = False  # MAML's Omniglot variant: stride-2 convolutions, no max-pool
    conv: str = "auto"  # auto: im2col on CPU/GPU, XLA's convolution on TPU (same result)
    bn_mode: str = "transductive"  # how BatchNorm normalises a query set: BN_MODES

    def __post_init__(self) -> None:
        _check(self.filters >= 1, "model.filters", self.filters, "must be >= 1")
        _check_choice("model.conv", self.conv, CONV_IMPLS)
        _check_choice("model.bn_mode", self.bn_mode, BN_MODES)


@dataclass
class ResNet12Config:
    """ResNet-12 (TADAM, MetaOptNet): four residual blocks, per-task BatchNorm, mean-pooled."""

    name: str = "resnet12"
    channels: list[int] = field(default_factory=lambda: [64, 160, 320, 640])  # MetaOptNet
    conv: str = "auto"  # auto: im2col on CPU/GPU, XLA's convolution on TPU (same result)
    bn_mode: str = "transductive"  # how BatchNorm normalises a query set: BN_MODES

    def __post_init__(self) -> None:
        _check(
            len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
            "model.channels",
            self.channels,
            "must be a non-empty list of widths >= 1",
        )
        _check_choice("model.conv", self.conv, CONV_IMPLS)
        _check_choice("model.bn_mode", self.bn_mode, BN_MODES)


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass
class OptimConfig:
    """The outer (meta) optimizer, built with optax."""

    name: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"  # cosine: decay lr to min_lr over trainer.steps
    min_lr: float = 0.0  # schedule=cosine: the learning rate at the last step
    weight_decay: float = 0.0  # adamw only
    momentum: float = 0.0  # sgd only
    clip_norm: float = 0.0  # clip the meta-gradient's global norm; 0 = off

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.name, OPTIMIZERS)
        _check_choice("optim.schedule", self.schedule, SCHEDULES)
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0, e.g. 0.001")
        _check(
            0 <= self.min_lr <= self.lr,
            "optim.min_lr",
            self.min_lr,
            f"must be in [0, optim.lr={self.lr}]",
        )
        _check(
            self.min_lr == 0 or self.schedule == "cosine",
            "optim.min_lr",
            self.min_lr,
            "is only used by optim.schedule=cosine",
        )
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(
            self.weight_decay == 0 or self.name == "adamw",
            "optim.weight_decay",
            self.weight_decay,
            "is only used by optim=adamw",
        )
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "must be in [0, 1)")
        _check(
            self.momentum == 0 or self.name == "sgd",
            "optim.momentum",
            self.momentum,
            "is only used by optim=sgd",
        )
        _check(self.clip_norm >= 0, "optim.clip_norm", self.clip_norm, "must be >= 0 (0 = off)")


@dataclass
class TrainerConfig:
    steps: int = 70000  # meta-training steps (outer updates)
    meta_batch: int = 25  # tasks per outer update
    log_every: int = 500  # fetch metrics from the device every N steps
    val_every: int = 5000  # meta-validate every N steps (a multiple of log_every; 0 = never)
    progress: bool = True  # show a progress bar
    devices: str = "all"  # split each meta-batch over this many devices ("all" or N)
    precision: str = "fp32"  # bf16: forward passes in bfloat16, float32 master weights
    distributed: str = "auto"  # join other processes: auto (under SLURM), on, off
    coordinator: str = ""  # host:port of process 0, for distributed=on outside SLURM
    num_processes: int = 1  # with coordinator
    process_id: int = 0  # with coordinator: this process, 0 .. num_processes - 1
    # Checkpoints of the whole training state, in <run dir>/checkpoints/state (checkpoint.py).
    checkpoint_every: int = 5000  # steps, a multiple of log_every; 0 = at the end and on signals
    keep_checkpoints: int = 2  # the newest k
    resume: str = "auto"  # auto: continue the run dir's checkpoint; never: start over; force
    nan_policy: str = "stop"  # a non-finite loss or gradient: stop (raise), or skip the update

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "trainer.steps", self.steps, "must be >= 0")
        _check(
            self.meta_batch >= 1,
            "trainer.meta_batch",
            self.meta_batch,
            "must be >= 1 task per outer update",
        )
        _check(self.log_every >= 1, "trainer.log_every", self.log_every, "must be >= 1")
        _check(
            self.devices == "all" or (self.devices.isdigit() and int(self.devices) >= 1),
            "trainer.devices",
            self.devices,
            "must be all or a device count >= 1",
        )
        _check_choice("trainer.distributed", self.distributed, ("auto", "on", "off"))
        _check_choice("trainer.precision", self.precision, ("fp32", "bf16"))
        if self.coordinator:
            _check(
                self.num_processes >= 2,
                "trainer.num_processes",
                self.num_processes,
                "must be >= 2 with trainer.coordinator",
            )
            _check(
                0 <= self.process_id < self.num_processes,
                "trainer.process_id",
                self.process_id,
                f"must be in 0 .. trainer.num_processes - 1 = {self.num_processes - 1}",
            )
        _check(
            self.val_every >= 0 and self.val_every % self.log_every == 0,
            "trainer.val_every",
            self.val_every,
            f"must be 0 or a multiple of trainer.log_every={self.log_every}",
        )
        # Checkpoints follow logging steps: no per-step metrics are then waiting to be logged.
        _check(
            self.checkpoint_every >= 0 and self.checkpoint_every % self.log_every == 0,
            "trainer.checkpoint_every",
            self.checkpoint_every,
            f"must be 0 or a multiple of trainer.log_every={self.log_every}",
        )
        _check(
            self.keep_checkpoints >= 1,
            "trainer.keep_checkpoints",
            self.keep_checkpoints,
            "must be >= 1",
        )
        _check_choice("trainer.resume", self.resume, ("auto", "never", "force"))
        _check_choice("trainer.nan_policy", self.nan_policy, ("stop", "skip"))


@dataclass
class EvalConfig:
    episodes: int = 600  # meta-test tasks for the final mean ± 95% CI
    inner_steps: int = 10  # adaptation steps at test time (training uses algo.inner_steps)
    val_episodes: int = 100  # tasks per periodic meta-validation
    batch: int = 100  # tasks evaluated together in one vmap (bounds memory)
    seed: int = 0  # evaluation episodes depend on this only: every run sees the same tasks

    def __post_init__(self) -> None:
        _check(
            self.episodes >= 2,
            "eval.episodes",
            self.episodes,
            "must be >= 2 to give a confidence interval",
        )
        _check(self.val_episodes >= 2, "eval.val_episodes", self.val_episodes, "must be >= 2")
        _check(self.inner_steps >= 0, "eval.inner_steps", self.inner_steps, "must be >= 0")
        _check(self.batch >= 1, "eval.batch", self.batch, "must be >= 1")


@dataclass
class JsonlLoggerConfig:
    """metrics.jsonl in the run dir: one JSON object per logged step."""

    filename: str = "metrics.jsonl"


WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class WandbLoggerConfig:
    """Weights & Biases; the API key comes from $WANDB_API_KEY or `wandb login`, never from here."""

    project: str = "metarun"
    entity: str = ""  # team or user; "" = the API key's default entity
    group: str = ""  # e.g. one name for the seeds of a sweep; "" = none
    tags: list[str] = field(default_factory=list)
    name: str = ""  # "" = a name W&B makes up
    mode: str = "auto"  # auto: $WANDB_MODE, else online when an API key is found, else offline
    init_timeout: float = 30.0  # seconds to reach the server before going offline instead

    def __post_init__(self) -> None:
        _check(bool(self.project), "logger.wandb.project", self.project, "must not be empty")
        _check_choice("logger.wandb.mode", self.mode, WANDB_MODES)
        _check(self.init_timeout > 0, "logger.wandb.init_timeout", self.init_timeout, "must be > 0")


@dataclass
class TensorBoardLoggerConfig:
    """TensorBoard event files, written by tensorboardX (no TensorFlow)."""

    logdir: str = "tensorboard"  # relative to the run dir, or absolute
    flush_secs: int = 30  # write buffered events to disk at least this often

    def __post_init__(self) -> None:
        _check(bool(self.logdir), "logger.tensorboard.logdir", self.logdir, "must not be empty")
        _check(
            self.flush_secs >= 1, "logger.tensorboard.flush_secs", self.flush_secs, "must be >= 1"
        )


@dataclass
class MlflowLoggerConfig:
    """MLflow (mlflow-skinny): a file store in the run dir unless a tracking URI is given."""

    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else <run dir>/mlruns
    experiment: str = "metarun"
    name: str = ""  # the run's name; "" = a name MLflow makes up
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        userinfo = urlsplit(self.tracking_uri).netloc.rpartition("@")[0]
        _check(
            not userinfo,
            "logger.mlflow.tracking_uri",
            self.tracking_uri.replace(userinfo, "***") if userinfo else self.tracking_uri,
            "must not hold credentials: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead",
        )
        _check(
            bool(self.experiment), "logger.mlflow.experiment", self.experiment, "must not be empty"
        )


@dataclass
class Config:
    algo: Any = MISSING  # one schema per algorithm (AlgoConfig, ProtoNetConfig, ...)
    data: Any = MISSING  # one schema per dataset (SinusoidConfig, ...)
    model: Any = MISSING  # one schema per model (MLPConfig, ...)
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    logger: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


# Schemas live in their own group so they never show up as choices (`algo=...`).
_SCHEMAS = {
    "algo/maml": MAMLConfig,
    "algo/fomaml": MAMLConfig,
    **{f"algo/{name}": AlgoConfig for name in ("anil", "metasgd", "reptile")},
    "algo/protonet": ProtoNetConfig,
    "algo/matchingnet": MatchingNetConfig,
    "algo/relationnet": RelationNetConfig,
    "algo/siamese": SiameseConfig,
    "algo/mann": MANNConfig,
    "algo/snail": SNAILConfig,
    "algo/meta_lstm": MetaLSTMConfig,
    "algo/lstm_opt": LSTMOptConfig,
    "data/sinusoid": SinusoidConfig,
    "data/omniglot": OmniglotConfig,
    "data/mini_imagenet": MiniImageNetConfig,
    "data/quadratic": QuadraticConfig,
    "model/mlp": MLPConfig,
    "model/conv4": Conv4Config,
    "model/resnet12": ResNet12Config,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
    "logger/jsonl": JsonlLoggerConfig,
    "logger/wandb": WandbLoggerConfig,
    "logger/tensorboard": TensorBoardLoggerConfig,
    "logger/mlflow": MlflowLoggerConfig,
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="metarun_schema", node=Config)
    for path, node in _SCHEMAS.items():
        group, _, name = f"schema/{path}".rpartition("/")
        cs.store(group=group, name=name, node=node)


def validate(cfg: DictConfig) -> Config:
    """Composed config -> dataclasses, running every range and consistency check."""
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, Config)
    return config


def conf_dir() -> Path:
    """The ``conf/`` folder: inside the package when installed, at the repo root when editable."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parents[1] / "conf"


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the real ``conf/`` with command-line style overrides (tests, scripts)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)
