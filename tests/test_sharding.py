"""The meta-batch split over devices: same numbers as one device, clear errors otherwise.

Four CPU devices come from ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, which
must be set before JAX starts: the comparison runs in a subprocess.
"""

import json
import os
import subprocess
import sys

import pytest

from metarun.config import ConfigError
from metarun.train import task_mesh

SCRIPT = """
import json, sys
import jax, numpy as np
from metarun.config import compose, validate
from metarun.train import build, compile_meta_step, init_state, replicate, rng_streams, task_mesh

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


@pytest.mark.parametrize("algo", ["maml", "reptile"])
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


def test_device_counts_that_cannot_work_are_named():
    with pytest.raises(
        ConfigError, match="trainer.devices=64 is invalid: this run has 1 cpu device"
    ):
        task_mesh("64", meta_batch=64)
    assert task_mesh("all", meta_batch=5).size == 1
