"""Experiment trackers: what each one wrote is read back from its own files, offline.

wandb's offline run is read from its transaction log (``run-<id>.wandb``: LevelDB-style
blocks of wandb ``Record`` protos), TensorBoard's event files record by record with
tensorboardX's protos, and MLflow's file store through ``MlflowClient``.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path

import pytest

from metarun import logger as loggers
from metarun.config import (
    ConfigError,
    MlflowLoggerConfig,
    TensorBoardLoggerConfig,
    WandbLoggerConfig,
    compose,
    validate,
)
from metarun.logger.wandb import WandbLogger, resolve_mode
from metarun.train import train

FAKE_KEY = "f3a9c0d2e1b4a5968778695a4b3c2d1e0f9a8b7c"  # the shape of a W&B API key


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """No server is ever contacted, and no tracker state outside tmp_path is used."""
    home = tmp_path / "home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(home / ".netrc"))  # absent: no `wandb login` key
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


# ------------------------------------------------------------- readers ----


def _leveldb_records(path: Path):
    """Payloads of a wandb transaction log: a 7-byte header, then 32 KiB blocks of chunks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # still being written
            return
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            yield pending
            pending = b""


def read_wandb(run_dir: Path, timeout: float = 20.0) -> dict:
    """The offline run under ``run_dir``: config, history rows, summary, tags and group.

    wandb's service process may still be writing the log when ``finish()`` returns: read
    until the log ends with the run's exit record.
    """
    deadline = time.monotonic() + timeout
    while "exit_code" not in (run := _read_wandb_once(run_dir)):
        assert time.monotonic() < deadline, f"no exit record in {run['dir']}"
        time.sleep(0.05)
    return run


def _read_wandb_once(run_dir: Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    (log_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = {"config": {}, "history": [], "summary": {}, "dir": log_file.parent}

    def items(updates):
        for item in updates:
            key = item.key or "/".join(item.nested_key)
            yield key, json.loads(item.value_json)

    for payload in _leveldb_records(log_file):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["config"].update(items(record.run.config.update))
            out.update(tags=list(record.run.tags), group=record.run.run_group)
            out.update(project=record.run.project)
        elif kind == "config":
            out["config"].update(items(record.config.update))
        elif kind == "history":
            out["history"].append(dict(items(record.history.item)))
        elif kind == "summary":
            out["summary"].update(items(record.summary.update))
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def read_tensorboard(logdir: Path) -> dict:
    """Every event file under ``logdir``: scalars by tag, image and text tags, plugins."""
    from tensorboardX.proto.event_pb2 import Event

    out = {"scalars": {}, "images": set(), "texts": {}, "plugins": set()}
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # TFRecord: length, crc of length, payload, crc of payload
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                out["plugins"].add(plugin)
                if value.HasField("simple_value"):
                    out["scalars"].setdefault(value.tag, []).append(
                        (event.step, value.simple_value)
                    )
                elif value.HasField("image"):
                    out["images"].add(value.tag)
                elif plugin == "text":
                    out["texts"][value.tag] = value.tensor.string_val[0].decode()
    return out


def mlflow_run(uri: str):
    """The one run of experiment ``metarun`` in the store at ``uri``, and a client on it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("metarun")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


# --------------------------------------------------------------- tests ----


def test_a_training_run_reads_back_from_every_tracker(make_config, tmp_path, monkeypatch):
    cwd, run_dir = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = train(make_config("logger=[jsonl,wandb,tensorboard,mlflow]"), run_dir)

    assert list(cwd.iterdir()) == []  # nothing lands in the current directory
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines]
    assert [r["step"] for r in lines] == [10, 20]

    run = read_wandb(run_dir)
    assert run["project"] == "metarun" and run["exit_code"] == 0
    assert run["config"]["algo"]["name"] == "maml" and run["config"]["trainer"]["steps"] == 20
    rows = [r for r in run["history"] if "loss" in r]
    assert [r["_step"] for r in rows] == [10, 20]
    assert [r["loss"] for r in rows] == pytest.approx(losses)
    assert "val_mse" in rows[1] and "val_mse" not in rows[0]
    assert run["summary"]["mean"] == result["mean"] and run["summary"]["metric"] == "mse"
    for name in ("learning_curves", "adaptation"):
        assert run["summary"][f"plots/{name}/_type"] == "image-file"
        (image,) = run["dir"].glob(f"files/media/images/plots/{name}_*.png")
        assert image.read_bytes()[:4] == b"\x89PNG"

    board = read_tensorboard(run_dir / "tensorboard")
    assert [step for step, _ in board["scalars"]["loss"]] == [10, 20]
    assert [v for _, v in board["scalars"]["loss"]] == pytest.approx(losses, rel=1e-6)
    assert board["scalars"]["result/mean"] == [(20, pytest.approx(result["mean"], rel=1e-6))]
    assert board["images"] == {"plots/learning_curves", "plots/adaptation"}
    assert "hparams" in board["plugins"]
    assert "inner_lr: 0.01" in board["texts"]["config/text_summary"]

    client, ml = mlflow_run((run_dir / "mlruns").as_uri())
    assert ml.info.status == "FINISHED"
    assert ml.data.params["algo.name"] == "maml" and ml.data.params["trainer.steps"] == "20"
    assert ml.data.params["model.hidden"] == "[40, 40]"
    history = client.get_metric_history(ml.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == list(zip([10, 20], losses, strict=True))
    assert ml.data.metrics["result/mean"] == pytest.approx(result["mean"])
    artifacts = {a.path for a in client.list_artifacts(ml.info.run_id)}
    assert {"config.json", "result.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(ml.info.run_id, "plots")}
    assert plots == {"plots/adaptation.png", "plots/learning_curves.png"}


def test_an_api_key_in_the_environment_is_written_nowhere(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run_dir = tmp_path / "run"
    train(
        make_config("logger=[jsonl,wandb,tensorboard,mlflow]", "logger.wandb.mode=offline"), run_dir
    )
    files = files_under(run_dir)
    assert any(p.suffix == ".wandb" for p in files) and len(files) > 10
    leaks = [p for p in files if FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []


def test_auto_mode_is_offline_without_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("online") == "online"
    netrc = tmp_path / "home" / ".netrc"  # what `wandb login` writes
    netrc.parent.mkdir(exist_ok=True)
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert resolve_mode("auto") == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment wins over auto
    assert resolve_mode("auto") == "offline"


def test_an_offline_run_says_how_to_sync_it(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("WANDB_MODE")
    caplog.set_level(logging.INFO, logger="metarun.logger.wandb")
    tracker = WandbLogger(WandbLoggerConfig(tags=["smoke"], group="g"), tmp_path, {"seed": 3})
    assert tracker.run.offline
    tracker.log({"step": 1, "loss": 2.0})
    tracker.close()
    tracker.summary({"mean": 0.5})
    assert "no API key found" in caplog.text
    sync_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    assert f"upload it with: wandb sync {sync_dir}" in caplog.text
    run = read_wandb(tmp_path)
    assert (run["tags"], run["group"], run["config"]["seed"]) == (["smoke"], "g", 3)
    assert run["summary"]["mean"] == 0.5 and run["history"][0]["loss"] == 2.0


def test_an_online_start_that_fails_goes_offline(monkeypatch, tmp_path, caplog):
    import wandb

    real_init = wandb.init

    def unreachable(mode=None, **kwargs):
        if mode == "online":  # what a start without network ends in, minus the wait
            raise wandb.errors.CommError("Run initialization has timed out")
        return real_init(mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", unreachable)
    tracker = WandbLogger(WandbLoggerConfig(mode="online"), tmp_path, {})
    assert tracker.run.offline
    assert "could not start online (Run initialization has timed out)" in caplog.text
    tracker.summary({"mean": 1.0})
    assert read_wandb(tmp_path)["summary"]["mean"] == 1.0


def test_mlflow_goes_to_the_configured_tracking_uri(tmp_path, monkeypatch):
    run_dir, store = tmp_path / "run", tmp_path / "server"
    run_dir.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    trackers = loggers.make({"mlflow": MlflowLoggerConfig(name="r1")}, run_dir, {"seed": 1})
    trackers.log({"step": 5, "loss": 0.25})
    trackers.close()
    _, run = mlflow_run(store.as_uri())
    assert run.info.status == "RUNNING"  # until the summary
    trackers.summary({"mean": 0.1, "metric": "mse"})
    _, run = mlflow_run(store.as_uri())
    assert (run.info.status, run.info.run_name, run.data.params) == (
        "FINISHED",
        "r1",
        {"seed": "1"},
    )
    assert run.data.metrics == {"loss": 0.25, "result/mean": 0.1}
    assert list(run_dir.iterdir()) == []


def test_tensorboard_logdir_may_be_absolute(tmp_path):
    logdir = tmp_path / "elsewhere"
    trackers = loggers.make({"tensorboard": TensorBoardLoggerConfig(logdir=str(logdir))}, tmp_path)
    trackers.log({"step": 3, "loss": 1.5})
    trackers.close()
    assert read_tensorboard(logdir)["scalars"]["loss"] == [(3, 1.5)]
    trackers.summary({"mean": 2.0})
    assert read_tensorboard(logdir)["scalars"]["result/mean"] == [(3, 2.0)]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("logger.wandb.mode=cloud", "logger.wandb.mode='cloud' is invalid: allowed values are"),
        ("logger.wandb.init_timeout=0", "logger.wandb.init_timeout=0.0 is invalid: must be > 0"),
        (  # and the error message does not repeat the password
            "logger.mlflow.tracking_uri=https://me:secret@mlflow.example.org",
            r"uri='https://\*\*\*@mlflow.example.org' is invalid: must not hold credentials",
        ),
        ("logger.tensorboard.flush_secs=0", "logger.tensorboard.flush_secs=0 is invalid"),
    ],
)
def test_bad_tracker_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(["logger=[wandb,tensorboard,mlflow]", override]))
