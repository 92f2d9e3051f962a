"""State checkpoints: a stopped run resumes to the uninterrupted run's numbers, bit for bit.

Every run here is a copy of one short sinusoid run (``RUN``) stopped, cut back or changed
in one way, and compared with that run done in one go (the ``reference`` fixture).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import metarun.train as train_module
from metarun.config import ConfigError, compose, to_dict, validate
from metarun.resume import StopSignals, check_resumable
from metarun.rundir import STATE_DIR, Checkpoints, CheckpointWriteError
from metarun.train import train

RUN = [
    "model.hidden=[8]",
    "trainer.steps=600",
    "trainer.log_every=50",
    "trainer.val_every=200",
    "trainer.checkpoint_every=200",
    "trainer.progress=false",
    "eval.episodes=20",
    "eval.val_episodes=10",
    "eval.batch=10",
    "eval.inner_steps=1",
]
TIMING = {"prepare_sec", "compile_sec", "train_sec", "tasks_per_sec", "steps_per_sec"}


def config(*overrides: str):
    return validate(compose([*RUN, *overrides]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """RUN in one go; checkpoints at 400 and 600 (the last two of 200, 400, 600)."""
    run_dir = tmp_path_factory.mktemp("reference")
    train(config(), run_dir)
    return run_dir


def copy_of(reference: Path, tmp_path: Path, drop: tuple[int, ...] = ()) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for step in drop:
        shutil.rmtree(run_dir / STATE_DIR / str(step))
    return run_dir


def leaves(path: Path) -> list[np.ndarray]:
    with ocp.StandardCheckpointer() as checkpointer:
        return [np.asarray(x) for x in jax.tree.leaves(checkpointer.restore(path.absolute()))]


def outcome(run_dir: Path) -> dict:
    """What must not depend on interruptions: results, records, tested and final parameters."""
    result = json.loads((run_dir / "result.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    last = max(int(p.name) for p in (run_dir / STATE_DIR).iterdir() if p.name.isdigit())
    return {
        "result": {k: v for k, v in result.items() if k not in TIMING},
        "records": [
            {k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines
        ],
        "best": leaves(run_dir / "checkpoints/best"),
        "final": leaves(run_dir / STATE_DIR / str(last) / "state"),
    }


def assert_same(run_dir: Path, reference: Path) -> None:
    got, want = outcome(run_dir), outcome(reference)
    assert [r["step"] for r in got["records"]] == list(range(50, 601, 50))
    assert got["result"] == want["result"]
    assert got["records"] == want["records"]
    for key in ("best", "final"):
        assert len(got[key]) == len(want[key])
        for a, b in zip(got[key], want[key], strict=True):
            np.testing.assert_array_equal(a, b)


def start_cli(tmp_path: Path, compile_once: dict):
    """``metarun`` RUN in ``tmp_path/run``, once it has logged step 50: ``(run dir, command,
    environment, process)``, its stdout a pipe."""
    run_dir = tmp_path / "run"
    command = [str(Path(sys.executable).with_name("metarun")), *RUN, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **compile_once}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text()):  # step 50 is logged
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.005)
    return run_dir, command, env, proc


def test_sigterm_stops_the_cli_and_the_same_command_resumes_it(reference, tmp_path, compile_once):
    run_dir, command, env, proc = start_cli(tmp_path, compile_once)
    # Frozen, it gets SIGTERM at the step it stopped at, however slowly these calls come.
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    with Checkpoints(run_dir, keep=2) as checkpoints:
        stopped = checkpoints.latest()
    assert 0 < stopped < 600
    assert f"stopped after step {stopped}; the training state is in {run_dir}" in output
    assert not (run_dir / "result.json").exists()

    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from the checkpoint at step {stopped}" in proc.stdout + proc.stderr
    assert_same(run_dir, reference)

    # A refused config leaves the run dir as it was, its saved config (.hydra/) included:
    # metarun.cli.Preflight checks before Hydra writes anything.
    before = tree(run_dir)
    for override, message in (
        ("optim.lr=0.002", "trainer.resume=auto is invalid: the checkpoint at step 600"),
        ("data.shots=0", "data.shots=0 is invalid"),
    ):
        proc = subprocess.run([*command, override], cwd=tmp_path, env=env, capture_output=True)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr.decode() and b"Traceback" not in proc.stderr
    assert tree(run_dir) == before


def test_a_second_sigterm_still_stops_with_a_checkpoint(reference, tmp_path, compile_once):
    """SIGTERM twice (a wrapper forwarding the signal its process group got too; SLURM
    signals every process of a job): the stop under way still writes its checkpoint, exits
    with 143, and the same command resumes to the uninterrupted run's numbers."""
    run_dir, command, env, proc = start_cli(tmp_path, compile_once)
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    seen = []
    while not (seen and "SIGTERM: stopping after this step" in seen[-1]):
        seen.append(proc.stdout.readline())  # "" (and a failed check below) if it exited
        assert seen[-1] or proc.wait(timeout=60) is None, "".join(seen)
    # The first one was handled (two sent at once would be one): this one comes during the stop.
    proc.send_signal(signal.SIGTERM)
    output = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM again: still stopping after this step, with a checkpoint" in output
    with Checkpoints(run_dir, keep=2) as checkpoints:
        stopped = checkpoints.latest()
    assert stopped is not None and 0 < stopped < 600, output
    assert f"stopped after step {stopped}; the training state is in {run_dir}" in output

    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from the checkpoint at step {stopped}" in proc.stdout + proc.stderr
    assert_same(run_dir, reference)


def test_only_a_second_sigint_acts_at_once():
    """Ctrl-C twice raises KeyboardInterrupt there and then; repeated SIGTERM and SIGUSR2
    only wait for the checkpoint, then exit as the first signal would have."""
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    with StopSignals() as stop:
        for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGUSR2, signal.SIGTERM):
            os.kill(os.getpid(), signum)
        assert stop.received == signal.SIGTERM
        with pytest.raises(SystemExit) as exit_:
            stop.forward()  # what the loop does once the checkpoint is written
    assert exit_.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sigint_stops_after_the_step_then_resumes_identically(reference, tmp_path, monkeypatch):
    """Stopped between logging steps, after a validation: the checkpoint carries the best
    parameters, the records and the metrics of steps 201-230 not yet logged."""
    real = train_module.compile_meta_step

    def interrupted_at_230(*args, **kwargs):
        step, seconds = real(*args, **kwargs)
        calls = iter(range(1, 601))

        def meta_step(*step_args):
            if next(calls) == 230:  # the signal arrives during step 230
                os.kill(os.getpid(), signal.SIGINT)
            return step(*step_args)

        return meta_step, seconds

    monkeypatch.setattr(train_module, "compile_meta_step", interrupted_at_230)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # what Python's own SIGINT handler raises
        train(config(), tmp_path)
    assert signal.getsignal(signal.SIGINT) is before
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == ["200", "230"]
    monkeypatch.undo()

    train(config(), tmp_path)
    assert_same(tmp_path, reference)


def test_a_half_written_checkpoint_is_ignored(reference, tmp_path):
    """Killed while writing step 600 (after logging it): orbax's temporary directory is never
    read, and the resumed run drops the records past its checkpoint and logs them again."""
    run_dir = copy_of(reference, tmp_path)
    final = run_dir / STATE_DIR / "600"
    (final / "commit_success.txt").unlink()
    half = final.rename(final.with_name("600.orbax-checkpoint-tmp-1795344741"))
    train(config(), run_dir)
    assert not half.exists()  # removed when the run opened the folder
    assert_same(run_dir, reference)


def test_resume_refuses_a_changed_config_unless_forced(reference, tmp_path):
    run_dir = copy_of(reference, tmp_path, drop=(600,))
    changed = ("optim.lr=0.002", "eval.episodes=30", "logger=[]", "trainer.keep_checkpoints=3")
    with pytest.raises(ConfigError) as err:
        train(config(*changed), run_dir)
    assert str(err.value) == (
        f"trainer.resume=auto is invalid: the checkpoint at step 400 in {run_dir / STATE_DIR} "
        "was made with another config (eval.episodes: 20 -> 30; optim.lr: 0.001 -> 0.002); "
        "trainer.resume=force continues from it anyway, trainer.resume=never starts over"
    )
    result = train(config("eval.episodes=30", "trainer.resume=force"), run_dir)
    assert result["episodes"] == 30 and result["best_step"] == 400


def test_a_constant_learning_rate_lets_a_run_go_on_longer(tmp_path):
    saved = to_dict(config())
    check_resumable(saved, config("trainer.steps=800"), 600, tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.steps=500 is invalid: .* at step 600;"):
        check_resumable(saved, config("trainer.steps=500"), 600, tmp_path)
    cosine = to_dict(config("optim.schedule=cosine"))  # its decay depends on trainer.steps
    with pytest.raises(ConfigError, match=r"another config \(trainer.steps: 600 -> 800\)"):
        check_resumable(cosine, config("trainer.steps=800", "optim.schedule=cosine"), 600, tmp_path)


def test_resume_never_starts_over(reference, tmp_path):
    run_dir = copy_of(reference, tmp_path, drop=(600,))
    train(config("trainer.resume=never"), run_dir)
    assert_same(run_dir, reference)


def test_nan_stop_leaves_the_last_checkpoint_loadable(reference, tmp_path):
    run_dir = copy_of(reference, tmp_path, drop=(600,))
    exploding = config("algo.inner_lr=1e6", "trainer.resume=force")
    with pytest.raises(FloatingPointError, match="at step 401; lower"):
        train(exploding, run_dir)
    with Checkpoints(run_dir, keep=2) as checkpoints:
        assert checkpoints.latest() == 400
    saved = leaves(run_dir / STATE_DIR / "400" / "state")
    for got, want in zip(saved, leaves(reference / STATE_DIR / "400" / "state"), strict=True):
        np.testing.assert_array_equal(got, want)
    assert all(np.isfinite(x).all() for x in saved)


def test_nan_skip_drops_the_updates_and_counts_them(reference, tmp_path):
    # An outer step of 1e30 leaves the parameters finite but so large that every later loss
    # overflows; the evaluators, unlike with a huge algo.inner_lr, stay the same programs.
    run_dir = copy_of(reference, tmp_path, drop=(600,))
    exploding = config("optim.lr=1e30", "trainer.nan_policy=skip", "trainer.resume=force")
    result = train(exploding, run_dir)
    assert result["skipped_steps"] == 199  # steps 402-600; 401 applied the huge step
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"]) for r in records[8:]] == [
        (450, 49),
        (500, 99),
        (550, 149),
        (600, 199),
    ]
    assert np.isfinite(records[8]["loss"])  # step 401's alone
    assert [r["loss"] for r in records[9:]] == [None] * 3  # nothing applied to average
    assert all(np.isfinite(x).all() for x in leaves(run_dir / STATE_DIR / "600" / "state"))


@pytest.mark.parametrize(
    ("key", "value", "shown", "rule"),
    [
        ("checkpoint_every", "75", "75", "must be 0 or a multiple of trainer.log_every=50"),
        ("checkpoint_every", "-50", "-50", "must be 0 or a multiple of trainer.log_every=50"),
        ("keep_checkpoints", "0", "0", "must be >= 1"),
        ("resume", "yes", "'yes'", "allowed values are auto, never, force"),
        ("nan_policy", "nan", "'nan'", "allowed values are stop, skip"),
    ],
)
def test_checkpoint_settings_are_validated(key, value, shown, rule):
    with pytest.raises(ConfigError) as err:
        config(f"trainer.{key}={value}")
    assert str(err.value) == f"trainer.{key}={shown} is invalid: {rule}"


def test_release_frees_the_compiled_programs_of_a_finished_job(reference, tmp_path):
    """What the CLI does after each job, as Hydra's basic launcher runs a sweep's jobs in one
    process: without it, every job's executables would stay alive until the sweep ends."""
    from jax.extend.backend import get_backend

    from metarun.cli import release

    release()  # programs other tests left in JAX's caches
    before = len(get_backend().live_executables())
    train(config(), copy_of(reference, tmp_path))  # finished: only the meta-test runs
    assert len(get_backend().live_executables()) > before
    release()
    assert len(get_backend().live_executables()) <= before


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(reference, tmp_path, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    write = handler.JsonCheckpointHandler._save_fn
    saves = []

    async def full_at_step_400(self, item, directory):
        saves.append(item)
        if len(saves) == 2:  # the checkpoint at step 400 (checkpoint_every=200)
            raise OSError(errno.ENOSPC, "No space left on device")
        return await write(self, item, directory)

    monkeypatch.setattr(handler.JsonCheckpointHandler, "_save_fn", full_at_step_400)
    run_dir = tmp_path / "run"
    with pytest.raises(
        CheckpointWriteError,
        match=r"^could not write the checkpoint at step 400 in .*: No space left on device; "
        r"the checkpoint at step 200 is intact, and the same command resumes from it. Free",
    ):
        train(config(), run_dir)
    monkeypatch.undo()
    with Checkpoints(run_dir, keep=2) as checkpoints:
        assert checkpoints.latest() == 200
    train(config(), run_dir)  # resumes from step 200
    assert_same(run_dir, reference)


def test_an_omniglot_conv4_run_resumes_bit_for_bit(omniglot, tmp_path):
    """The image path too (Conv-4 and its BatchNorm, episodes sampled on the device, running
    statistics carried as non-gradient leaves): resumed at step 20 of 40, the same records,
    result and parameters as in one go."""
    overrides = [
        *omniglot,
        "algo=maml",
        "model.filters=8",
        "model.bn_mode=running",
        "data.queries=2",
        "trainer.meta_batch=4",
        "trainer.steps=40",
        "trainer.log_every=10",
        "trainer.val_every=20",
        "trainer.checkpoint_every=20",
        "trainer.progress=false",
        "eval.episodes=10",
        "eval.val_episodes=5",
        "eval.batch=5",
    ]
    reference = tmp_path / "reference"
    train(validate(compose(overrides)), reference)
    run_dir = copy_of(reference, tmp_path, drop=(40,))
    (run_dir / "result.json").unlink()
    train(validate(compose(overrides)), run_dir)
    got, want = outcome(run_dir), outcome(reference)
    assert [r["step"] for r in got["records"]] == [10, 20, 30, 40]
    assert got["result"] == want["result"] and got["records"] == want["records"]
    for key in ("best", "final"):
        for a, b in zip(got[key], want[key], strict=True):
            np.testing.assert_array_equal(a, b)
