"""A pre-trained run, loaded and started from: ``metarun.load`` of a Baseline run (its
classifier's width comes from the data), and ``trainer.init_from`` (metarun/warmstart.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import metarun
from metarun import rundir
from metarun.config import ConfigError, compose, validate
from metarun.experiment import build, check
from metarun.step import init_state
from metarun.train import train
from tests.conftest import FAST
from tests.test_api import predicted_and_reported

METARUN = str(Path(sys.executable).with_name("metarun"))
SMALL = [
    "data.train_queries=2",
    "data.queries=3",
    "model.filters=8",
    "trainer.val_every=0",
    "eval.episodes=3",
    "eval.batch=3",
]


@pytest.fixture(scope="module")
def omniglot_small(omniglot):
    return [*FAST, *omniglot, *SMALL]


@pytest.fixture(scope="module")
def pretrained(omniglot_small, tmp_path_factory):
    """A Baseline run of 3 steps with running-average BatchNorm (the run dir)."""
    run_dir = tmp_path_factory.mktemp("baseline")
    config = validate(
        compose(
            [
                *omniglot_small,
                "algo=baseline",
                "model.bn_mode=running",
                "trainer.steps=3",
                "eval.inner_steps=5",
            ]
        )
    )
    train(config, run_dir)
    return run_dir


def _config(omniglot_small, *overrides):
    if "model=mlp" in overrides:  # it has no filters
        omniglot_small = [o for o in omniglot_small if not o.startswith("model.filters")]
    return validate(compose([*omniglot_small, *overrides]))


def test_a_loaded_baseline_fits_its_head_as_the_evaluation_did(pretrained):
    """The classifier over the training classes is restored at its trained width, and predict
    fits a new head to raw support images, reproducing the meta-test episode by episode."""
    learner = metarun.load(pretrained)
    classes = learner.meta_params["classifier"]["w"].shape[-1]
    assert classes > learner.config.data.ways  # the train split's classes, not the config's
    ours, reported = predicted_and_reported(learner, inner_steps=5)
    np.testing.assert_allclose(ours, reported, atol=1e-6)


def test_init_from_starts_from_the_saved_encoder_bit_for_bit(omniglot_small, pretrained):
    saved = rundir.load_params(pretrained)["encoder"]
    config = _config(
        omniglot_small, "algo=protonet", "model.bn_mode=running", f"trainer.init_from={pretrained}"
    )
    check(config)
    meta_params = init_state(build(config), jax.random.PRNGKey(0)).meta_params
    assert jax.tree.structure(meta_params) == jax.tree.structure(saved)
    jax.tree.map(np.testing.assert_array_equal, meta_params, saved)


def test_init_from_keeps_the_new_head_and_the_modes_own_parameters(omniglot_small, pretrained):
    """MAML in task_norm mode: its head and TaskNorm's blend start as without init_from; the
    running averages of the other run's mode are dropped; every other weight is the saved one."""
    saved = rundir.load_params(pretrained)["encoder"]
    base = ["algo=maml", "model.bn_mode=task_norm"]
    fresh = init_state(build(_config(omniglot_small, *base)), jax.random.PRNGKey(0)).meta_params
    config = _config(omniglot_small, *base, f"trainer.init_from={pretrained}")
    started = init_state(build(config), jax.random.PRNGKey(0)).meta_params
    np.testing.assert_array_equal(started["head"]["kernel"], fresh["head"]["kernel"])
    for block in ("blocks_0", "blocks_3"):
        norm = started[block]["norm"]
        assert set(norm) == {"scale", "bias", "alpha_scale", "alpha_offset"}
        np.testing.assert_array_equal(norm["alpha_scale"], fresh[block]["norm"]["alpha_scale"])
        np.testing.assert_array_equal(norm["scale"], saved[block]["norm"]["scale"])
        np.testing.assert_array_equal(
            started[block]["conv"]["kernel"], saved[block]["conv"]["kernel"]
        )
    assert not np.array_equal(
        started["blocks_0"]["conv"]["kernel"], fresh["blocks_0"]["conv"]["kernel"]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["algo=protonet", "model.filters=16"],
            r"its layer blocks_0/conv/kernel has shape \(3, 3, 1, 8\), this run's \(3, 3, 1, 16\)",
        ),
        (
            ["algo=maml", "model=mlp"],
            "its model has other layers than this run's \\(only this run's model has: "
            "Dense_0/bias, Dense_0/kernel",
        ),
    ],
    ids=["filters", "model"],
)
def test_init_from_refuses_a_model_that_does_not_fit(
    omniglot_small, pretrained, overrides, message
):
    """Refused by the preflight's check, from the checkpoint's metadata, no data loaded."""
    config = _config(omniglot_small, *overrides, f"trainer.init_from={pretrained}")
    with pytest.raises(ConfigError, match=f"trainer.init_from={pretrained} is invalid: {message}"):
        check(config)


def test_init_from_refuses_tasks_without_a_model(pretrained):
    config = validate(
        compose([*FAST, "algo=lstm_opt", "data=quadratic", f"trainer.init_from={pretrained}"])
    )
    with pytest.raises(ConfigError, match="data=quadratic: its tasks are functions to minimise"):
        check(config)


def test_init_from_names_a_folder_that_is_not_a_finished_run(tmp_path):
    config = validate(compose([*FAST, f"trainer.init_from={tmp_path}"]))
    with pytest.raises(ConfigError, match=f"trainer.init_from={tmp_path} is invalid: .*not found"):
        check(config)


def test_pretrain_then_meta_train_from_the_command_line(tmp_path):
    """The whole recipe through ``metarun``: pre-train on sinusoid (every task's points
    jointly), meta-train MAML from it; a model that does not fit is refused before the run dir
    is written."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def metarun_cli(*args):
        return subprocess.run(
            [METARUN, *FAST, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    pre = metarun_cli("algo=baseline", f"hydra.run.dir={tmp_path}/pre")
    assert pre.returncode == 0, pre.stderr
    assert "test mse after 10 steps" in pre.stdout + pre.stderr
    maml = metarun_cli(
        "algo=maml", f"trainer.init_from={tmp_path}/pre", f"hydra.run.dir={tmp_path}/maml"
    )
    assert maml.returncode == 0, maml.stderr
    refused = metarun_cli(
        "algo=maml",
        "model.hidden=[20,20]",
        f"trainer.init_from={tmp_path}/pre",
        f"hydra.run.dir={tmp_path}/no",
    )
    assert refused.returncode == 2
    assert "its layer Dense_0/bias has shape (40,), this run's (20,)" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_a_warm_started_run_resumes_without_the_other_run(tmp_path):
    """Pre-train on sinusoid, meta-train MAML from it, stop after the checkpoint at step 20 of
    40 (its step-40 checkpoint dropped), delete the pre-trained run and resume: the records,
    result and parameters are those of the run done in one go."""
    from tests.test_resume import copy_of, outcome

    pre = tmp_path / "pre"
    train(validate(compose([*FAST, "algo=baseline", "trainer.steps=20"])), pre)
    overrides = [
        *FAST,
        "trainer.steps=40",
        "trainer.checkpoint_every=20",
        f"trainer.init_from={pre}",
    ]
    reference = tmp_path / "reference"
    train(validate(compose(overrides)), reference)
    start = init_state(build(validate(compose(overrides))), jax.random.PRNGKey(0))
    saved = rundir.load_params(pre)
    np.testing.assert_array_equal(
        start.meta_params["Dense_0"]["kernel"], saved["Dense_0"]["kernel"]
    )

    run_dir = copy_of(reference, tmp_path, drop=(40,))
    (run_dir / "result.json").unlink()
    shutil.rmtree(pre)
    train(validate(compose(overrides)), run_dir)
    got, want = outcome(run_dir), outcome(reference)
    assert got["result"] == want["result"] and got["records"] == want["records"]
    for key in ("best", "final"):
        for a, b in zip(got[key], want[key], strict=True):
            np.testing.assert_array_equal(a, b)
