"""The meta-batch split over devices: same numbers as one device, clear errors otherwise.

Four CPU devices come from ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, which
must be set before JAX starts: the comparison runs in a subprocess.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metarun.config import ConfigError
from metarun.experiment import task_mesh

SCRIPT = """
import json, sys
import jax, numpy as np
from metarun.config import compose, validate
from metarun.experiment import build, rng_streams
from metarun.experiment import task_mesh
from metarun.step import compile_meta_step, init_state, replicate

out = {}
for devices in ("1", "4"):
    overrides = ["trainer.meta_batch=8", f"trainer.devices={devices}", *sys.argv[1:]]
    config = validate(compose(overrides))
    exp = build(config)
    mesh = task_mesh(config.trainer.devices, config.trainer.meta_batch)
    init_key, train_key = rng_streams(0)
    state = replicate(init_state(exp, init_key), mesh)
    sample = replicate(exp.source.samplers["train"], mesh)
    step, _ = compile_meta_step(exp, state, train_key, sample, mesh)
    losses = []
    for _ in range(3):
        state, metrics = step(state, train_key, sample)
        losses.append(float(metrics["loss"]))
    leaves = jax.tree.leaves(state.meta_params)
    out[devices] = {
        "devices": len(leaves[0].sharding.device_set),
        "losses": losses,
        "params": [np.asarray(x).ravel().tolist() for x in leaves],
    }
print(json.dumps(out))
"""


@pytest.mark.parametrize("algo", ["maml", "reptile", "baseline"])
def test_four_devices_give_the_losses_and_parameters_of_one(algo):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    run = subprocess.run(
        # SGD: Adam's m / sqrt(v) turns float-rounding differences in near-zero gradient
        # components (summation order across devices) into whole steps of either sign.
        [sys.executable, "-c", SCRIPT, f"algo={algo}", "optim=sgd", "optim.lr=0.01"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["1"]["devices"] == 1 and out["4"]["devices"] == 4  # replicated over 4
    assert out["4"]["losses"] == pytest.approx(out["1"]["losses"], rel=1e-5)
    for four, one in zip(out["4"]["params"], out["1"]["params"], strict=True):
        assert four == pytest.approx(one, rel=1e-4, abs=1e-6)


CLI_RUN = [
    "trainer.meta_batch=8",
    "optim=sgd",
    "optim.lr=0.01",
    "model.hidden=[16]",
    "trainer.steps=40",
    "trainer.log_every=10",
    "trainer.val_every=20",
    "trainer.checkpoint_every=20",
    "trainer.progress=false",
    "eval.episodes=16",
    "eval.val_episodes=8",
    "eval.batch=8",
]


def test_the_cli_trains_validates_tests_and_resumes_on_four_devices(tmp_path, compile_once):
    """The real entry point with its guards (transfer_guard, checkpoints, resume), as a
    multi-GPU node runs it by default (trainer.devices=all): the step test above passed
    while the CLI crashed on the first step. The four-device runs take their tasks in chunks
    (``trainer.task_chunk=1``: two chunks of one task per device) and still give the numbers
    of one device adapting all eight at once."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **compile_once}
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    metarun = str(Path(sys.executable).with_name("metarun"))

    def run(run_dir: Path, *overrides: str) -> dict:
        proc = subprocess.run(
            [metarun, *CLI_RUN, *overrides, f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads((run_dir / "result.json").read_text())

    chunks = "trainer.task_chunk=1"
    four = run(tmp_path / "four", chunks)
    log = (tmp_path / "four" / "cli.log").read_text()
    assert "compiled in" in log and "for 4 device(s)" in log
    records = [json.loads(x) for x in (tmp_path / "four/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40] and "val_mse" in records[1]

    # Resumed on 4 devices from the checkpoint at step 20: the uninterrupted run's numbers.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "four", resumed)
    shutil.rmtree(resumed / "checkpoints/state/40")
    (resumed / "result.json").unlink()
    again = run(resumed, chunks)
    timing = {"prepare_sec", "compile_sec", "train_sec", "tasks_per_sec"}
    assert {k: v for k, v in again.items() if k not in timing} == {
        k: v for k, v in four.items() if k not in timing
    }
    assert "resuming from the checkpoint at step 20" in (resumed / "cli.log").read_text()

    # One device of the same machine: the same run up to float summation order.
    one = run(tmp_path / "one", "trainer.devices=1")
    for key in ("mean", "pre_adaptation_mean", "best_val_mse"):
        assert four[key] == pytest.approx(one[key], rel=1e-4), key


def test_device_counts_that_cannot_work_are_named():
    with pytest.raises(
        ConfigError, match="trainer.devices=64 is invalid: this run has 1 cpu device"
    ):
        task_mesh("64", meta_batch=64)
    assert task_mesh("all", meta_batch=5).size == 1
    with pytest.raises(
        ConfigError,
        match=r"trainer.task_chunk=3 is invalid: it must divide each device's 8 tasks "
        r"\(trainer.meta_batch=8 over 1 device\(s\)\)",
    ):
        task_mesh("1", meta_batch=8, task_chunk=3)
