"""Experiment trackers, selected by ``logger=[...]``; each gets every logged record.

A record is a flat dict with ``"step"``; trackers are called from the host every
``trainer.log_every`` steps, never inside the jitted step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from metarun.registry import Registry

loggers = Registry("logger")


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """One JSON object per line; non-finite floats are written as null (valid JSON)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())

    def log(self, record: dict[str, Any]) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@loggers.register("jsonl")
def _jsonl(cfg, run_dir: Path) -> JsonlLogger:
    return JsonlLogger(run_dir / cfg.filename)


class MultiLogger:
    """Fans each record out to the configured trackers."""

    def __init__(self, targets: list[Logger]):
        self.targets = targets

    def log(self, record: dict[str, Any]) -> None:
        for target in self.targets:
            target.log(record)

    def close(self) -> None:
        for target in self.targets:
            target.close()


def make(cfg: dict[str, Any], run_dir: Path) -> MultiLogger:
    return MultiLogger([loggers.get(name)(sub, run_dir) for name, sub in cfg.items()])
