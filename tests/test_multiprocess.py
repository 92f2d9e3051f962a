"""Two processes on 127.0.0.1 train as one: the losses of a single process, files from one.

Each process is a fresh interpreter that joins through ``jax.distributed`` (gloo collectives
on CPU) and holds one of the run's two devices; together they split every meta-batch.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

SCRIPT = """
import json, sys
from pathlib import Path
import jax
from metarun import distributed
from metarun.config import compose, validate
from metarun.train import train

run_dir, *overrides = sys.argv[1:]
config = validate(compose(overrides))
distributed.initialize(config.trainer)
result = train(config, Path(run_dir))
print("RESULT", json.dumps({"mean": result["mean"], "devices": jax.device_count()}))
"""

# metarun's log on stderr (not orbax's, which would fill the pipe), so that the test sees when
# training has started.
LOGGED = "import logging; logging.basicConfig()\nlogging.getLogger('metarun').setLevel('INFO')\n"
LOGGED += SCRIPT

FAST = [
    "trainer.steps=20",
    "trainer.log_every=10",
    "trainer.val_every=10",
    "trainer.progress=false",
    "trainer.meta_batch=8",
    "eval.episodes=10",
    "eval.val_episodes=4",
    "eval.batch=5",
    "optim=sgd",  # see test_sharding: Adam amplifies summation-order differences
    "optim.lr=0.01",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *args], env=env, stdout=subprocess.PIPE, text=True
    )


def test_two_processes_give_the_losses_of_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    single = run([str(tmp_path / "single"), *FAST, "trainer.distributed=off"], env)
    assert single.wait(timeout=300) == 0

    port = free_port()
    joined = [
        f"trainer.coordinator=127.0.0.1:{port}",
        "trainer.num_processes=2",
        "trainer.distributed=on",
    ]
    procs = [
        run([str(tmp_path / "multi"), *FAST, *joined, f"trainer.process_id={i}"], env)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    def losses(run_dir):
        return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").open()]

    assert losses(tmp_path / "multi") == pytest.approx(losses(tmp_path / "single"), rel=1e-5)
    reports = [json.loads(o.split("RESULT ")[1]) for o in outputs]
    assert [r["devices"] for r in reports] == [2, 2]  # one mesh over both processes' devices
    means = [r["mean"] for r in reports]
    assert means[0] == means[1]  # every process reports the same meta-test
    single_mean = json.loads((tmp_path / "single" / "result.json").read_text())["mean"]
    assert means[0] == pytest.approx(single_mean, rel=1e-4)
    # Process 0 wrote the files: one metrics line per log, not two.
    assert len(losses(tmp_path / "multi")) == 2


def test_a_signal_to_one_process_stops_both_within_a_few_steps(tmp_path):
    """SLURM may signal one task of a job first: the processes agree to stop every
    resume.AGREE_EVERY steps, with a checkpoint, long before the next logging step."""
    from metarun.resume import AGREE_EVERY
    from metarun.rundir import STATE_DIR

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    port = free_port()
    long = [
        "trainer.steps=1000000",
        "trainer.log_every=100000",  # the old rule (stop at a logging step) never stops here
        "trainer.val_every=0",
        "trainer.checkpoint_every=0",
        "trainer.progress=false",
        "trainer.meta_batch=8",
        f"trainer.coordinator=127.0.0.1:{port}",
        "trainer.num_processes=2",
        "trainer.distributed=on",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOGGED, str(tmp_path), *long, f"trainer.process_id={i}"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for line in procs[1].stderr:
        if "meta-step compiled" in line:
            break
    time.sleep(2)  # training
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, outputs
    (step,) = [int(p.name) for p in (tmp_path / STATE_DIR).iterdir() if p.name.isdigit()]
    assert 0 < step < 100000 and step % AGREE_EVERY == 0
    assert f"stopped after step {step}" in outputs[0]
