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

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key."""


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {rule}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, value, f"allowed values are {', '.join(choices)}")


@dataclass
class AlgoConfig:
    """Gradient-based meta-learners (MAML family, Reptile)."""

    name: str = MISSING
    inner_lr: float = 0.01  # α in θ' = θ − α ∇θ L_support(θ); Meta-SGD's initial value
    inner_steps: int = 1  # inner-loop steps during meta-training (0 = no adaptation)
    first_order: bool = False  # drop second-order terms (stop_gradient on inner gradients)

    def __post_init__(self) -> None:
        _check(self.inner_lr > 0, "algo.inner_lr", self.inner_lr, "must be > 0, e.g. 0.01")
        _check(self.inner_steps >= 0, "algo.inner_steps", self.inner_steps, "must be >= 0")


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


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass
class OptimConfig:
    """The outer (meta) optimizer, built with optax."""

    name: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"  # cosine: decay lr to 0 over trainer.steps
    weight_decay: float = 0.0  # adamw only
    momentum: float = 0.0  # sgd only
    clip_norm: float = 0.0  # clip the meta-gradient's global norm; 0 = off

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.name, OPTIMIZERS)
        _check_choice("optim.schedule", self.schedule, SCHEDULES)
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0, e.g. 0.001")
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
            self.val_every >= 0 and self.val_every % self.log_every == 0,
            "trainer.val_every",
            self.val_every,
            f"must be 0 or a multiple of trainer.log_every={self.log_every}",
        )


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


@dataclass
class Config:
    algo: AlgoConfig = MISSING
    data: Any = MISSING  # one schema per dataset (SinusoidConfig, ...)
    model: Any = MISSING  # one schema per model (MLPConfig, ...)
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    eval: EvalConfig = MISSING
    logger: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


# Schemas live in their own group so they never show up as choices (`algo=...`).
_SCHEMAS = {
    "algo": AlgoConfig,
    "data/sinusoid": SinusoidConfig,
    "model/mlp": MLPConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
    "logger/jsonl": JsonlLoggerConfig,
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
