"""TensorBoard event files in ``run_dir/tensorboard``, written by tensorboardX (no TensorFlow).

Records become scalars at their step; the summary adds the result as ``result/<key>``
scalars, the config and result as HParams (so runs of a sweep compare in one table) and
as text, and the run dir's plots as images. View: ``tensorboard --logdir <run or sweep dir>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metarun.config import flatten
from metarun.logger import loggers, numbers, plots


def _hparam(value: Any) -> Any:
    """What the HParams plugin can show: a number, bool or string (lists as JSON)."""
    return (
        value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)
    )


def _as_text(tree: dict[str, Any]) -> str:
    """YAML as a Markdown code block (four-space indent), for the Text dashboard."""
    dumped = yaml.safe_dump(tree, sort_keys=False)
    return "\n".join(f"    {line}" for line in dumped.splitlines())


class TensorBoardLogger:
    """Scalars while training (one event file); the summary in a second file beside it."""

    def __init__(self, cfg, run_dir: Path, config: dict[str, Any], start_step: int = 0):
        from tensorboardX import SummaryWriter

        self.run_dir, self.config, self.step = run_dir, config, 0
        self.logdir = run_dir / cfg.logdir  # an absolute logdir stays as it is
        self.flush_secs = cfg.flush_secs
        # A resumed run logs the steps after its checkpoint again: purge the earlier events of
        # those steps so that each step has one value.
        purge = start_step + 1 if start_step else None
        self.writer = SummaryWriter(str(self.logdir), flush_secs=self.flush_secs, purge_step=purge)
        if config:
            self.writer.add_text("config", _as_text(config), 0)

    def log(self, record: dict[str, Any]) -> None:
        self.step = int(record["step"])
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, self.step)

    def close(self) -> None:
        # Only closing waits for tensorboardX's queue: flush() may leave events unwritten.
        self.writer.close()

    def summary(self, result: dict[str, Any]) -> None:
        from PIL import Image
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        self.writer.close()  # a no-op after close()
        metrics = {f"result/{k}": v for k, v in numbers(result).items()}
        params = {k: _hparam(v) for k, v in flatten(self.config).items()}
        with SummaryWriter(str(self.logdir), flush_secs=self.flush_secs) as writer:
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, self.step)
            for message in hparams(params, metrics):  # experiment, session start, session end
                writer.file_writer.add_summary(message, self.step)
            writer.add_text("result", _as_text(result), self.step)
            for png in plots(self.run_dir):
                with Image.open(png) as image:
                    pixels = np.asarray(image.convert("RGB"))
                writer.add_image(f"plots/{png.stem}", pixels, self.step, dataformats="HWC")


@loggers.register("tensorboard")
def _tensorboard(cfg, run_dir: Path, config: dict[str, Any], start_step: int) -> TensorBoardLogger:
    return TensorBoardLogger(cfg, run_dir, config, start_step)
