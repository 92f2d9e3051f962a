"""Schemas of ``conf/logger/<name>.yaml``, one per metrics sink (``metarun.logger``); each
yaml puts its keys under its own name, so ``logger=[jsonl,wandb]`` holds both."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from metarun.config.errors import _check, _check_choice


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
    # online, offline, disabled, or auto: $WANDB_MODE, else online when an API key is found,
    # else offline.
    mode: str = "auto"
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


# The schema of each conf/logger/<name>.yaml, stored under logger.<name>.
SCHEMAS = {
    "jsonl": JsonlLoggerConfig,
    "wandb": WandbLoggerConfig,
    "tensorboard": TensorBoardLoggerConfig,
    "mlflow": MlflowLoggerConfig,
}
