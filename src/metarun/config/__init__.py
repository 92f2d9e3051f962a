"""Structured configs: the schema every yaml in ``conf/`` is merged into.

One module per group of ``conf/`` (:mod:`~metarun.config.algo`, ``data``, ``model``, ``optim``,
``trainer``, ``eval``, ``logger``); this one holds the root :class:`Config` and the functions
that register, compose and validate it. Everything is re-exported here: import from
``metarun.config``.

Hydra merges each group's yaml into the dataclass named in its defaults list, so a
wrong type or an unknown key fails at composition. Ranges and cross-field rules
are checked in ``__post_init__``, which runs when :func:`validate` turns the
composed config into these dataclasses — milliseconds, before anything compiles.

Where defaults live (``conf/config.yaml`` says the same): a schema's fields carry every default
and the comment that explains it; ``conf/<group>/<name>.yaml`` states its ``name`` (where the
schema has one) and only what differs from the schema, with the reason. Presets
(``conf/preset*``, ``conf/data_model``, ``conf/debug``, ``conf/sweep``) set keys across groups
(``@package _global_``), as do the algorithms that pin their evaluation (metasgd, meta_lstm).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from metarun.config import algo, data, logger, model
from metarun.config.algo import (
    LSTM_OPT_PREPROCESS,
    PROTONET_DISTANCES,
    AlgoConfig,
    LSTMOptConfig,
    MAMLConfig,
    MANNConfig,
    MatchingNetConfig,
    MetaLSTMConfig,
    ProtoNetConfig,
    RelationNetConfig,
    SiameseConfig,
    SNAILConfig,
)
from metarun.config.data import (
    OMNIGLOT_ARCHIVES,
    OMNIGLOT_SPLITS,
    ImageEpisodes,
    MiniImageNetConfig,
    OmniglotConfig,
    QuadraticConfig,
    SinusoidConfig,
)
from metarun.config.errors import ConfigError, DataError
from metarun.config.eval import EvalConfig
from metarun.config.logger import (
    WANDB_MODES,
    JsonlLoggerConfig,
    MlflowLoggerConfig,
    TensorBoardLoggerConfig,
    WandbLoggerConfig,
)
from metarun.config.model import (
    ARCH,
    BN_MODES,
    CONV_IMPLS,
    PRIMITIVES,
    Conv4Config,
    DartsConfig,
    MLPConfig,
    ResNet12Config,
    cell_edges,
)
from metarun.config.optim import OPTIMIZERS, SCHEDULES, OptimConfig
from metarun.config.trainer import TrainerConfig

__all__ = [
    "ARCH",
    "BN_MODES",
    "CONV_IMPLS",
    "LSTM_OPT_PREPROCESS",
    "OMNIGLOT_ARCHIVES",
    "OMNIGLOT_SPLITS",
    "OPTIMIZERS",
    "PRIMITIVES",
    "PROTONET_DISTANCES",
    "SCHEDULES",
    "WANDB_MODES",
    "AlgoConfig",
    "Config",
    "ConfigError",
    "Conv4Config",
    "DartsConfig",
    "DataError",
    "EvalConfig",
    "ImageEpisodes",
    "JsonlLoggerConfig",
    "LSTMOptConfig",
    "MAMLConfig",
    "MANNConfig",
    "MLPConfig",
    "MatchingNetConfig",
    "MetaLSTMConfig",
    "MiniImageNetConfig",
    "MlflowLoggerConfig",
    "OmniglotConfig",
    "OptimConfig",
    "ProtoNetConfig",
    "QuadraticConfig",
    "RelationNetConfig",
    "ResNet12Config",
    "SNAILConfig",
    "SiameseConfig",
    "SinusoidConfig",
    "TensorBoardLoggerConfig",
    "TrainerConfig",
    "WandbLoggerConfig",
    "cell_edges",
    "compose",
    "conf_dir",
    "flatten",
    "register_configs",
    "to_dict",
    "validate",
]


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


# Each group module's schemas by yaml name; optim, trainer and eval have one schema each.
_SCHEMAS = {
    "algo": algo.SCHEMAS,
    "data": data.SCHEMAS,
    "model": model.SCHEMAS,
    "logger": logger.SCHEMAS,
}
_SINGLE = {"optim": OptimConfig, "trainer": TrainerConfig, "eval": EvalConfig}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="metarun_schema", node=Config)
    # Schemas live in their own group so they never show up as choices (`algo=...`); a yaml
    # names its own in its defaults list, e.g. `/schema/algo/maml@_here_`.
    for group, schemas in _SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    for name, node in _SINGLE.items():
        cs.store(group="schema", name=name, node=node)


def validate(cfg: DictConfig) -> Config:
    """Composed config -> dataclasses, running every range and consistency check."""
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, Config)
    return config


def conf_dir() -> Path:
    """The ``conf/`` folder: inside the package when installed (a wheel's ``metarun/conf``,
    pyproject's force-include), at the repo root when editable (``src/metarun/`` is two below)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parents[1] / "conf"


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


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"algo": {"inner_lr": 0.01}}`` -> ``{"algo.inner_lr": 0.01}``; lists stay leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
