"""metrics.jsonl in the run dir: one JSON object per logged step."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from metarun.logger import loggers


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

    def summary(self, result: dict[str, Any]) -> None:
        """Nothing to add: the result is the run dir's ``result.json``."""


def _truncate(path: Path, step: int) -> None:
    """Drop the records after ``step``: a run resuming from its checkpoint at ``step`` logs
    them again (``JsonlLogger`` appends), and a fresh run (``step`` 0) all of them."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: all later steps are newer
            break
        if record["step"] > step:
            break
        kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)  # atomic: a kill now leaves the old file or the new one


@loggers.register("jsonl")
def _jsonl(cfg, run_dir: Path, config: dict[str, Any], start_step: int) -> JsonlLogger:
    _truncate(run_dir / cfg.filename, start_step)
    return JsonlLogger(run_dir / cfg.filename)
