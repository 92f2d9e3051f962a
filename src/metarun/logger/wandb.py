"""Weights & Biases: one run per training run, kept in ``run_dir/wandb/``.

``mode=auto`` follows ``$WANDB_MODE`` when it is set; otherwise the run is online when
wandb can find an API key (``$WANDB_API_KEY``, or the ``~/.netrc`` entry that
``wandb login`` writes) and offline when not. An online start that cannot reach the
server within ``init_timeout`` seconds (no network, a bad key) goes offline instead, so a
run never waits on the network. An offline run is uploaded later with ``wandb sync``;
the log says with which directory. The key is read by wandb alone: no config holds it.
"""

from __future__ import annotations

import atexit
import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from metarun.logger import loggers, plots

log = logging.getLogger(__name__)


def has_api_key() -> bool:
    """Whether wandb will find an API key: in the environment or in the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``$WANDB_MODE``, else ``online`` with an API key and ``offline`` without."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")


class WandbLogger:
    """Records as history at their step; the result as the run summary; plots as images."""

    def __init__(self, cfg, run_dir: Path, config: dict[str, Any]):
        import wandb

        self._wandb, self.run_dir = wandb, run_dir
        init = dict(
            dir=str(run_dir),
            project=cfg.project,
            entity=cfg.entity or None,
            group=cfg.group or None,
            tags=list(cfg.tags),
            name=cfg.name or None,
            config=config,
            reinit="create_new",  # this object owns its run; wandb.run is left alone
            settings=wandb.Settings(init_timeout=cfg.init_timeout),
        )
        mode = resolve_mode(cfg.mode)
        if mode == "offline" and cfg.mode == "auto" and "WANDB_MODE" not in os.environ:
            log.info("wandb: no API key found (WANDB_API_KEY or `wandb login`): logging offline")
        try:
            self.run = wandb.init(mode=mode, **init)
        except Exception as err:  # no network, the server down, a rejected key
            if mode not in ("online", "run"):
                raise
            log.warning("wandb: could not start online (%s); logging offline instead", err)
            self.run = wandb.init(mode="offline", **init)
        atexit.register(self._end, 1)  # unless summary() ends the run first

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=int(record["step"]))

    def close(self) -> None:
        """Nothing to flush: wandb's service process holds the records; summary() ends the run."""

    def summary(self, result: dict[str, Any]) -> None:
        if self.run is None:
            return
        self.run.summary.update(result)
        images = {f"plots/{png.stem}": self._wandb.Image(str(png)) for png in plots(self.run_dir)}
        if images:
            self.run.log(images)  # at the last logged step
        self._end(0)

    def _end(self, exit_code: int) -> None:
        atexit.unregister(self._end)
        run, self.run = self.run, None
        if run is None:
            return
        offline, sync_dir = run.offline, run.settings.sync_dir
        run.finish(exit_code=exit_code)
        if offline:
            log.info("wandb: offline run saved; upload it with: wandb sync %s", sync_dir)


@loggers.register("wandb")
def _wandb(cfg, run_dir: Path, config: dict[str, Any], start_step: int) -> WandbLogger:
    del start_step  # a resumed run is a new W&B run, its records from the checkpoint's step on
    return WandbLogger(cfg, run_dir, config)
