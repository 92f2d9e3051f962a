"""What the algorithm refuses of a config is refused before Hydra writes the run dir.

``metarun.cli.Preflight`` calls :func:`metarun.experiment.check` (the learner built from the
dataset's spec, no data loaded), so a refused command leaves an existing run dir as it was.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data import fixtures

METARUN = str(Path(sys.executable).with_name("metarun"))
OMNIGLOT = ["data=omniglot", f"data.root={fixtures.OMNIGLOT_DIR}", "data.split=minimal1"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algo=maml", "algo.per_step_bn=true"],  # sinusoid's MLP has no BatchNorm
            "algo.per_step_bn=True is invalid with this model",
        ),
        (
            ["algo=maml", "trainer.devices=2"],
            "trainer.devices=2 is invalid: this run has 1 cpu device(s)",
        ),
        (
            ["algo=reptile", "data=mini_imagenet", "data.root=/nonexistent"],
            "trainer.steps and trainer.meta_batch are unset for algo=reptile data=mini_imagenet",
        ),
        (
            ["algo=relationnet", *OMNIGLOT, "model=mlp"],
            "algo=relationnet is invalid with this model",
        ),
        (
            ["algo=maml", *OMNIGLOT, "data.train_ways=10"],
            "data.train_ways=10 is invalid with algo=maml",
        ),
        (
            ["algo=mann", *OMNIGLOT, "model.bn_mode=support"],
            "model.bn_mode=support is invalid with algo=mann",
        ),
        (
            ["algo=lstm_opt", "data=quadratic", "trainer.precision=bf16"],
            "trainer.precision=bf16 is invalid with algo=lstm_opt and data=quadratic",
        ),
        (
            ["algo=snail", *OMNIGLOT, "trainer.precision=bf16"],
            "trainer.precision=bf16 is invalid with algo=snail and data=omniglot",
        ),
        (
            ["algo=reptile", "trainer.task_chunk=5"],
            "trainer.task_chunk=5 is invalid with algo=reptile: it computes its own meta-update",
        ),
        (
            ["algo=maml", "trainer.task_chunk=4"],
            "trainer.task_chunk=4 is invalid: it must divide each device's 25 tasks",
        ),
        (
            ["algo=maml", *OMNIGLOT, "model=darts", "model.genotype=[sep_conv_3x3]"],
            "model.genotype=['sep_conv_3x3'] is invalid: needs one operation per edge: 3 for "
            "model.nodes=2",
        ),
        (
            ["algo=maml", *OMNIGLOT, "optim.arch_lr_scale=10"],
            "optim.arch_lr_scale=10.0 is invalid with model=conv4: only a DARTS search",
        ),
    ],
    ids=[
        "per-step-bn-mlp",
        "devices",
        "no-budget",
        "relationnet-mlp",
        "train-ways-with-a-head",
        "bn-mode",
        "bf16-quadratic",
        "bf16-snail",
        "task-chunk-reptile",
        "task-chunk-divides",
        "darts-genotype",
        "arch-lr-without-darts",
    ],
)
def test_a_refused_config_leaves_the_run_dir_untouched(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text("{}")  # an earlier run's
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [METARUN, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in run_dir.iterdir()] == ["result.json"]
