"""``metarun-report`` on run dirs written by hand: ranking by validation, the labelled
validation and test columns, the CSV, and the table of runs that differ only in seed."""

import csv
import json
import math

import pytest
import yaml

from metarun import report
from metarun.data.quadratic import QUADRATIC
from metarun.types import CLASSIFICATION, REGRESSION

# t_{0.975, 2}, the 95% two-sided quantile of Student's t with 2 degrees of freedom (n = 3).
T_975_2 = 4.302652729911275


def write_run(root, name, overrides, **result):
    """A run dir as train() and Hydra leave it: .hydra/overrides.yaml, config.yaml and,
    when ``result`` is given, result.json."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if result:
        (run_dir / "config.yaml").write_text("seed: 0\n")
        base = {"metric": "mse", "episodes": 600, "inner_steps": 10, "val_episodes": 100}
        (run_dir / "result.json").write_text(json.dumps({**base, **result}))
    return run_dir


def test_maximize_matches_the_objectives():
    objectives = (REGRESSION, CLASSIFICATION, QUADRATIC)
    assert report.MAXIMIZE == {o.metric for o in objectives if o.maximize}


def test_seed_table_is_the_mean_over_seeds_with_a_t_interval(tmp_path, capsys):
    # Three seeds of one setting; run 0 has no seed override: its default seed 0. Two seeds of
    # another, better on validation (lower mse) and worse on test; one run alone.
    lr3, lr2 = ["algo=maml", "optim.lr=0.001"], ["algo=maml", "optim.lr=0.01"]
    runs = [  # run, overrides, seed, validation mse, test mse, test ci95
        ("0", lr3, 0, 0.10, 1.0, 0.05),
        ("1", [*lr3, "seed=1"], 1, 0.20, 1.2, 0.07),
        ("2", ["seed=2", *lr3], 2, 0.30, 1.7, 0.09),
        ("3", [*lr2, "seed=0"], 0, 0.05, 2.0, 0.1),
        ("4", [*lr2, "seed=1"], 1, 0.07, 2.4, 0.3),
        ("5", ["algo=fomaml"], 0, 0.5, 0.5, 0.1),
    ]
    for run, overrides, seed, val, test, ci in runs:
        write_run(
            tmp_path, run, overrides, seed=seed, val_mean=val, val_ci95=0.01, mean=test, ci95=ci
        )
    groups = report.seed_groups(report.collect(tmp_path))
    assert [(g["overrides"], g["seeds"]) for g in groups] == [
        ("algo=maml optim.lr=0.01", [0, 1]),  # ranked by validation: 0.06 before 0.2
        ("algo=maml optim.lr=0.001", [0, 1, 2]),
    ]
    three = groups[1]
    # By hand: validation 0.1, 0.2, 0.3: mean 0.2, sd 0.1. Test 1.0, 1.2, 1.7: mean 1.3,
    # squared deviations 0.09 + 0.01 + 0.16 = 0.26, sd = sqrt(0.26 / 2).
    val_half = T_975_2 * 0.1 / math.sqrt(3)
    test_half = T_975_2 * math.sqrt(0.13) / math.sqrt(3)
    assert three["val_mean"] == pytest.approx(0.2)
    assert three["val_ci95"] == pytest.approx(val_half, rel=1e-9)
    assert three["mean"] == pytest.approx(1.3)
    assert three["ci95"] == pytest.approx(test_half, rel=1e-9)
    assert three["within_ci95"] == pytest.approx(0.07)

    report.main([str(tmp_path), "--no-plots"])
    out = capsys.readouterr().out
    seed_table = out[out.index("| overrides (all but seed)") :].splitlines()
    assert seed_table[0] == (
        "| overrides (all but seed) | seeds | validation mse, mean over seeds ± 95% CI "
        "| test mse, mean over seeds ± 95% CI | test 95% CI within a run (mean) |"
    )
    assert seed_table[3] == (
        "| algo=maml optim.lr=0.001 | 3 (0,1,2) | 0.2000 ± 0.2484 | 1.3000 ± 0.8957 | 0.0700 |"
    )
    # Two seeds: t_{0.975, 1} = 12.7062..., sd of (0.05, 0.07) = 0.01·√2, of (2.0, 2.4) = 0.2·√2.
    assert seed_table[2].startswith("| algo=maml optim.lr=0.01 | 2 (0,1) | 0.0600 ± 0.1271 ")
    assert "| 2.2000 ± 2.5412 | 0.2000 |" in seed_table[2]


def test_runs_are_ranked_by_validation_with_labelled_columns(tmp_path, capsys):
    acc = {"metric": "accuracy", "val_ci95": 0.01, "ci95": 0.02}
    write_run(tmp_path, "0", ["model.filters=16"], seed=0, val_mean=0.80, mean=0.95, **acc)
    write_run(tmp_path, "1", ["model.filters=32"], seed=0, val_mean=0.90, mean=0.85, **acc)
    # A result.json from before val_mean: finished, but after those with a validation figure.
    write_run(tmp_path, "2", ["model.filters=48"], seed=0, mean=0.99, metric="accuracy", ci95=0.01)
    write_run(tmp_path, "3", ["model.filters=64"])  # no result.json: unfinished
    (tmp_path / "3" / "metarun.log").write_text("[ERROR] - FloatingPointError: non-finite loss\n")
    write_run(tmp_path, "4", ["model.filters=8"], seed=0, val_mean=0.85, mean=0.97, **acc)
    report.main([str(tmp_path), "--no-plots", "--csv", str(tmp_path / "report.csv")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "| run | overrides | algo | data | validation accuracy ± 95% CI "
        "| test accuracy ± 95% CI | test before adaptation | validation episodes | test episodes |"
    )
    # Higher accuracy first, on validation: run 0 has the best test figure but ranks third.
    assert [line.split(" | ")[0] for line in lines[2:7]] == ["| 1", "| 4", "| 0", "| 2", "| 3"]
    assert " | 0.9000 ± 0.0100 | 0.8500 ± 0.0200 | " in lines[2]
    assert " | – | 0.9900 ± 0.0100 | " in lines[5]
    assert lines[6] == "| 3 | model.filters=64 | failed: FloatingPointError: non-finite loss |"
    assert len(lines) == 7  # one seed per setting: no seed table

    with (tmp_path / "report.csv").open() as f:
        saved = list(csv.DictReader(f))
    assert [r["run"] for r in saved] == ["1", "4", "0", "2", "3"]
    assert saved[0]["val_mean"] == "0.9" and saved[0]["val_ci95"] == "0.01"
    assert saved[0]["mean"] == "0.85" and saved[0]["seed"] == "0"
    assert saved[3]["val_mean"] == "" and saved[4]["status"].startswith("failed: ")


def test_lower_mse_ranks_first():
    rows = [
        {"run": "0", "metric": "mse", "mean": 0.1, "val_mean": 0.3},
        {"run": "1", "metric": "mse", "mean": 0.2, "val_mean": 0.1},
        {"run": "2", "metric": "mse", "mean": 0.3, "val_mean": float("nan")},  # no figure
        {"run": "3", "status": "unfinished"},
        {"run": "4", "metric": "mse", "mean": 0.4, "val_mean": 0.2},
    ]
    assert [r["run"] for r in report.rank(rows)] == ["1", "4", "0", "2", "3"]
