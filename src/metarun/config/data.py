"""Schemas of ``conf/data/<name>.yaml``, one per dataset (``metarun.data``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from metarun.config.errors import _check, _check_choice


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
PROTOCOLS = ("few_shot", "supervised", "domains")
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
    val_fraction: float = 0.15  # of the training alphabets (characters for split=characters)
    # Validation alphabets, winning over val_fraction; never a test alphabet.
    val_alphabets: list[str] = field(default_factory=list)
    test_alphabets: list[str] = field(default_factory=list)  # split=alphabets; [] = evaluation's
    split_seed: int = 0  # the shuffles of the test (split=characters) and of validation
    # few_shot: episodes of new classes at test. supervised (data/supervised.py): one
    # data.ways-class problem over classes of the train split, their drawings divided into
    # training, clean, validation and test sets; for algo=erm and l2rw.
    # domains: the same classes drawn in several domains (turned by data.domain_angles),
    # trained on all but data.test_domain and tested on it; for algo=erm and mldg.
    protocol: str = "few_shot"
    label_noise: float = 0.0  # supervised: share of training labels flipped to another class
    clean_per_class: int = 1  # supervised: drawings of each class in the clean set
    batch_size: int = 100  # supervised, domains: examples per batch (training and evaluation)
    # domains: one domain per angle (degrees); the rotated-digits protocol's six
    domain_angles: list[float] = field(default_factory=lambda: [0.0, 15.0, 30.0, 45.0, 60.0, 75.0])
    test_domain: int = 5  # domains: the index in data.domain_angles of the unseen domain

    def __post_init__(self) -> None:
        self._check_episodes()
        _check_choice("data.protocol", self.protocol, PROTOCOLS)
        _check(0 <= self.label_noise < 1, "data.label_noise", self.label_noise, "must be in [0, 1)")
        _check(
            self.label_noise == 0 or self.protocol == "supervised",
            "data.label_noise",
            self.label_noise,
            f"corrupts the training labels of data.protocol=supervised, not {self.protocol}",
        )
        _check(
            1 <= self.clean_per_class <= 10,
            "data.clean_per_class",
            self.clean_per_class,
            "must be in [1, 10]: 9 of a class's 20 drawings are validation and test, and one "
            "at least is for training",
        )
        _check(
            self.batch_size >= 2,
            "data.batch_size",
            self.batch_size,
            "must be >= 2: BatchNorm normalises a training batch by its own statistics",
        )
        _check(
            not (self.rotations and self.protocol == "domains"),
            "data.rotations",
            self.rotations,
            "turns characters by 90° into new classes, which data.protocol=domains' turned "
            "domains would confuse with them; use data.rotations=false",
        )
        domains = len(self.domain_angles)
        _check(
            domains >= 3,
            "data.domain_angles",
            self.domain_angles,
            "needs 3 domains at least: one to test on, two to split into meta-train and meta-test",
        )
        _check(
            0 <= self.test_domain < domains,
            "data.test_domain",
            self.test_domain,
            f"must index data.domain_angles (0..{domains - 1})",
        )
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


# The schema of each conf/data/<name>.yaml.
SCHEMAS = {
    "sinusoid": SinusoidConfig,
    "omniglot": OmniglotConfig,
    "mini_imagenet": MiniImageNetConfig,
    "quadratic": QuadraticConfig,
}
