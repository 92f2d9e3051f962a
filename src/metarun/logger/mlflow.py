"""MLflow (mlflow-skinny): one run per training run, by default in a file store in the run dir.

The tracking URI is ``logger.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
``run_dir/mlruns`` (MLflow 3 only opens a file store with ``MLFLOW_ALLOW_FILE_STORE=true``,
set here for that store). MLflow's usage telemetry is off (``MLFLOW_DISABLE_TELEMETRY=true``)
unless the environment says otherwise. The flattened config becomes the run's params and
``config.json``; the summary adds the result as ``result/<key>`` metrics, ``result.json``
and the plots as artifacts, and ends the run.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any

from metarun.config import flatten
from metarun.logger import loggers, numbers, plots

MAX_BATCH = 100  # params per log_batch call (MLflow's limit)


def tracking_uri(configured: str, run_dir: Path) -> str:
    return (
        configured
        or os.environ.get("MLFLOW_TRACKING_URI")
        or (run_dir / "mlruns").resolve().as_uri()
    )


class MlflowLogger:
    def __init__(self, cfg, run_dir: Path, config: dict[str, Any]):
        uri = tracking_uri(cfg.tracking_uri, run_dir)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric, self.run_dir, self.step = Metric, run_dir, 0
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(cfg.experiment)
        )
        run = self.client.create_run(experiment_id, run_name=cfg.name or None, tags=dict(cfg.tags))
        self.run_id = run.info.run_id
        params = [
            Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in flatten(config).items()
        ]
        for start in range(0, len(params), MAX_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + MAX_BATCH])
        if config:
            self.client.log_dict(self.run_id, config, "config.json")
        atexit.register(self._end, "FAILED")  # unless summary() ends the run first

    def log(self, record: dict[str, Any]) -> None:
        self.step = int(record["step"])
        now = int(time.time() * 1000)
        metrics = [
            self._metric(k, float(v), now, self.step) for k, v in record.items() if k != "step"
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        """Nothing to flush: each record was sent when logged; summary() ends the run."""

    def summary(self, result: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        metrics = [
            self._metric(f"result/{k}", v, now, self.step) for k, v in numbers(result).items()
        ]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.log_dict(self.run_id, result, "result.json")
        for png in plots(self.run_dir):
            self.client.log_artifact(self.run_id, str(png), "plots")
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        atexit.unregister(self._end)
        run_id, self.run_id = self.run_id, None
        if run_id is not None:
            self.client.set_terminated(run_id, status)


@loggers.register("mlflow")
def _mlflow(cfg, run_dir: Path, config: dict[str, Any], start_step: int) -> MlflowLogger:
    del start_step  # a resumed run is a new MLflow run, its records from the checkpoint's step on
    return MlflowLogger(cfg, run_dir, config)
