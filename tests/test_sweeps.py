"""Sweeps and launchers as a user types them: Optuna searches (conf/sweep/), submitit jobs
(hydra/launcher=submitit_local here, conf/hydra/launcher/slurm.yaml on a cluster)."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from metarun.config import ConfigError, conf_dir, register_configs, validate
from metarun.sweep import check_direction
from tests.conftest import FAST

METARUN = str(Path(sys.executable).with_name("metarun"))

# Smaller than +debug=fast: a trial compiles and runs in seconds on a busy CPU.
TINY = [
    "trainer.steps=5",
    "trainer.log_every=5",
    "trainer.val_every=0",
    "trainer.progress=false",
    "eval.episodes=4",
    "eval.val_episodes=2",
    "eval.batch=4",
]

# Every conf/sweep/*.yaml, with what it needs to compose into a valid run.
SWEEPS = {"maml_lr": [], "maml_lr_omniglot": ["data.root=/nowhere"]}


def run(*args: str, cwd: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PATH": path or os.environ["PATH"]}
    return subprocess.run(
        [METARUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def compose_with_hydra(*overrides: str):
    """(run config, ``hydra.sweeper``) as the CLI composes them."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg), sweeper


def search_space(sweeper) -> dict[str, tuple[float, float]]:
    """``{key: (low, high)}`` from params written as ``tag(log, interval(low, high))``."""
    space = {}
    for key, spec in sweeper.params.items():
        low, high = re.fullmatch(r"tag\(log, interval\((.+), (.+)\)\)", spec).groups()
        space[key] = (float(low), float(high))
    return space


def trials(sweep_dir: Path) -> list[tuple[dict[str, float], float, float]]:
    """(the swept values, the validation figure, the test mean) of every trial dir."""
    rows = []
    for result in sorted(sweep_dir.glob("*/result.json")):
        overrides = yaml.safe_load((result.parent / ".hydra/overrides.yaml").read_text())
        config = yaml.safe_load((result.parent / ".hydra/config.yaml").read_text())
        params = dict(o.split("=", 1) for o in overrides if o.startswith(("algo.", "optim.")))
        params = {k: float(v) for k, v in params.items()}
        # the sampled value reaches the run (no preset overwrites it)
        assert params == {
            "algo.inner_lr": config["algo"]["inner_lr"],
            "optim.lr": config["optim"]["lr"],
        }
        figures = json.loads(result.read_text())
        rows.append((params, figures["val_mean"], figures["mean"]))
    return rows


def test_every_sweep_composes_with_a_direction_that_fits_its_metric():
    assert {p.stem for p in (conf_dir() / "sweep").glob("*.yaml")} == set(SWEEPS)
    for name, extra in SWEEPS.items():
        config, sweeper = compose_with_hydra(f"+sweep={name}", *extra)
        assert sweeper._target_.endswith("OptunaSweeper") and sweeper.storage is None
        check_direction(config, sweeper)  # raises on a mismatch
        assert set(search_space(sweeper)) == {"algo.inner_lr", "optim.lr"}
    expected = {"maml_lr": ("sinusoid", "minimize"), "maml_lr_omniglot": ("omniglot", "maximize")}
    for name, (data, direction) in expected.items():
        config, sweeper = compose_with_hydra(f"+sweep={name}", *SWEEPS[name])
        assert (config.data.name, sweeper.direction) == (data, direction)


def test_check_direction_rejects_the_wrong_way():
    config, _ = compose_with_hydra()
    check_direction(config, OmegaConf.create({}))  # the basic sweeper has no direction
    check_direction(config, OmegaConf.create({"direction": ["minimize", "maximize"]}))
    with pytest.raises(ConfigError, match="data=sinusoid reports mse, which the sweep must mini"):
        check_direction(config, OmegaConf.create({"direction": "maximize"}))
    config, _ = compose_with_hydra("data=omniglot", "data.root=/nowhere")
    with pytest.raises(ConfigError, match="reports accuracy, which the sweep must maximize"):
        check_direction(config, OmegaConf.create({"direction": "minimize"}))


def test_wrong_direction_stops_the_sweep_before_training(tmp_path):
    proc = run(
        "-m",
        "+sweep=maml_lr",
        "hydra.sweeper.direction=maximize",
        *TINY,
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "metarun: invalid config: hydra.sweeper.direction='maximize' is invalid" in proc.stderr
    assert not list((tmp_path / "sweep").glob("*/result.json"))


def test_the_sweeper_selects_on_validation_never_on_test(tmp_path):
    """Each trial hands Optuna its run's validation figure (validation on, as in a real sweep:
    the best validation step's), not the test mean, which only the report shows. The study
    is kept in sqlite in the sweep dir, where every trial's value can be read back. Each trial
    draws its values from the search space, and the sweep writes the best of them."""
    sweep_dir = tmp_path / "sweep"  # does not exist yet: the SweepDir callback makes it
    proc = run(
        "-m",
        "+sweep=maml_lr",
        "hydra.sweeper.n_trials=3",
        *FAST,
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.storage=sqlite:///${hydra.sweep.dir}/optuna.db",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()
    rows = trials(sweep_dir)
    assert len(rows) == 3 and len({r[1] for r in rows}) == 3  # three different trials
    space = search_space(compose_with_hydra("+sweep=maml_lr")[1])
    for params, _, _ in rows:
        assert all(space[k][0] <= v <= space[k][1] for k, v in params.items()), params
    assert all(val != test for _, val, test in rows)  # the figures tell the two apart
    study = optuna.load_study(study_name="maml_lr", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert len(study.trials) == 3
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        [(val, test)] = [(v, t) for p, v, t in rows if p == pytest.approx(trial.params, rel=1e-12)]
        assert trial.value == pytest.approx(val, rel=1e-12) and trial.value != test
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna"
    assert best["best_value"] == pytest.approx(min(val for _, val, _ in rows), rel=1e-12)
    assert best["best_value"] not in [test for _, _, test in rows]
    best_params = min(rows, key=lambda r: r[1])[0]
    assert best["best_params"] == pytest.approx(best_params, rel=1e-12)


def test_submitit_local_launcher_runs_both_jobs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run(
        "-m",
        "hydra/launcher=submitit_local",
        "seed=0,1",
        *TINY,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads((sweep_dir / f"{job}/result.json").read_text()) for job in (0, 1)]
    seeds = [
        yaml.safe_load((sweep_dir / f"{j}/.hydra/config.yaml").read_text())["seed"] for j in (0, 1)
    ]
    assert seeds == [0, 1] and results[0]["mean"] != results[1]["mean"]
    assert list((sweep_dir / ".submitit").glob("*/*_log.out"))  # submitit ran them


def test_slurm_launcher_submits_a_job_array(tmp_path):
    """No cluster here: a stand-in ``sbatch`` keeps the script it is given and refuses it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it first
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\nexit 1\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(stat.S_IRWXU)
    proc = run(
        "-m",
        "hydra/launcher=slurm",
        "seed=0,1,2",
        *TINY,
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=240",
        "hydra.launcher.array_parallelism=2",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
        path=f"{bin_dir}:{os.environ['PATH']}",
    )
    assert proc.returncode != 0  # the stand-in refused the job
    script = (tmp_path / "job.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=240",
        "#SBATCH --array=0-2%2",
        "#SBATCH --job-name=metarun",
    ):
        assert line in script.splitlines(), (line, script)
    assert "submitit.core._submit" in script


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc: no procps needed)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


def test_preemption_checkpoints_requeues_and_the_job_ends_as_one_run(tmp_path):
    """SLURM's preemption path, with submitit's local executor for the cluster: the job's task
    gets SIGUSR2 (what SLURM sends before preempting it or at its time limit), the run
    checkpoints, submitit requeues the job, and the new attempt resumes from the checkpoint; the
    job ends with the records and result of the same run done in one go."""
    from metarun.config import compose as compose_run
    from metarun.train import train

    long = [
        "model.hidden=[8]",
        "trainer.steps=40000",  # about 15 s of training here: the signal comes well before
        "trainer.log_every=1000",
        "trainer.val_every=10000",
        "trainer.checkpoint_every=10000",
        "trainer.progress=false",
        "eval.episodes=4",
        "eval.val_episodes=2",
        "eval.batch=4",
    ]
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [
        METARUN,
        "-m",
        "hydra/launcher=submitit_local",
        *long,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    metrics = sweep_dir / "0" / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text()):  # training has logged step 1000
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    # The job's folder is named by its id, the pid of the process that runs its task.
    (job_dir,) = [p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]
    (task,) = children(int(job_dir.name))
    os.kill(task, signal.SIGUSR2)
    assert proc.wait(timeout=300) == 0, proc.communicate()[1]
    logs = "".join(p.read_text() for p in job_dir.glob("*_log.*"))
    assert "SIGUSR2: stopping after this step" in logs and "Requeued job" in logs, logs
    stopped = int(re.search(r"stopped after step (\d+)", logs).group(1))
    assert f"resuming from the checkpoint at step {stopped}" in logs  # the new attempt's

    reference = train(validate(compose_run(long)), tmp_path / "reference")

    def records(run_dir: Path) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if "per_sec" not in k} for line in lines]

    assert records(sweep_dir / "0") == records(tmp_path / "reference")
    assert [r["step"] for r in records(sweep_dir / "0")] == list(range(1000, 40001, 1000))
    result = json.loads((sweep_dir / "0" / "result.json").read_text())
    timing = ("prepare_sec", "compile_sec", "train_sec", "tasks_per_sec")
    assert {k: v for k, v in result.items() if k not in timing} == {
        k: v for k, v in reference.items() if k not in timing
    }
