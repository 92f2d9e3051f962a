"""``metarun-report DIR``: one table of every run under DIR, and plots comparing them.

Each row is a run dir (one holding ``result.json``, or a Hydra job dir without one: a job
that failed or has not finished): the command-line overrides Hydra saved for it, its
validation metric (``val_mean``: the validation figure of the meta-parameters it tested, what
a sweep selects on) and its test metric (``mean``: for reporting only), each with its 95%
confidence interval. Rows are ranked by validation, best first; runs without a validation
figure follow, then failed and unfinished ones. Runs that differ only in ``seed`` get a
second table: their mean over seeds with a t-interval across seeds. Point it at a multirun
dir to tabulate a sweep, or at ``outputs/`` for all runs. ``--csv`` writes the first table
as CSV too; the plots (``--plots``, default ``DIR/report``) are every run's learning curves
on one figure and, for each swept parameter, the test metric against its values.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import yaml

from metarun.rundir import CONFIG, RESULT


def _natural(path: Path) -> list:
    """Sort job dirs 0, 1, ..., 10 numerically (Hydra numbers a sweep's jobs)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def collect(root: Path) -> list[dict]:
    """One dict per run dir under ``root``: ``run``, ``overrides``, ``status`` and, when the
    run finished, its ``result.json``."""
    # A run dir holds the config train() saved (a tracker's copy of result.json, such as
    # MLflow's artifacts, does not) or Hydra's .hydra/ (jobs that failed before training).
    run_dirs = {p.parent for p in root.rglob(RESULT) if (p.parent / CONFIG).exists()}
    run_dirs |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    rows = []
    for run_dir in sorted(run_dirs, key=_natural):
        overrides_path = run_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        result_path = run_dir / RESULT
        finished = result_path.exists()
        rows.append(
            {
                "run": str(run_dir.relative_to(root)) or ".",
                "overrides": " ".join(overrides or []),
                "status": "finished" if finished else _failure(run_dir),
                **(json.loads(result_path.read_text()) if finished else {}),
            }
        )
    return rows


def _failure(run_dir: Path) -> str:
    """``failed: <the error>`` from the job's Hydra log, else ``unfinished`` (still running,
    or killed without a word)."""
    for log in sorted(run_dir.glob("*.log")):
        errors = [line for line in log.read_text(errors="replace").splitlines() if "Error" in line]
        if errors:
            # Without the "[time][logger][ERROR] - " that Hydra's job log puts first.
            error = errors[-1].split("] - ", 1)[-1].strip()
            return f"failed: {error[-200:]}"
    return "unfinished"


# The metrics where higher is better (metarun.types.CLASSIFICATION); mse and the quadratics'
# loss go down. result.json names its metric but not its direction.
MAXIMIZE = frozenset({"accuracy"})


def _validation(r: dict) -> float | None:
    """The row's validation figure, or None (a result.json written before there was one)."""
    value = r.get("val_mean")
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def rank(rows: list[dict]) -> list[dict]:
    """Finished rows best on validation first (higher accuracy, lower mse), then finished rows
    without a validation figure, then failed and unfinished ones; ties keep their order."""

    def key(r: dict) -> tuple:
        if "mean" not in r:
            return (2, "", 0.0)
        value = _validation(r)
        if value is None:
            return (1, "", 0.0)
        return (0, r["metric"], -value if r["metric"] in MAXIMIZE else value)

    return sorted(rows, key=key)


def _metric(rows: list[dict]) -> str | None:
    """The metric of every finished row, or None when they differ (``outputs/`` of all runs)."""
    metrics = {r["metric"] for r in rows if "mean" in r}
    return metrics.pop() if len(metrics) == 1 else None


def _interval(mean: float | None, ci95: float | None, metric: str | None) -> str:
    """``mean ± ci95``, the metric named when the column's header cannot name it."""
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {ci95:.4f}" + (f" {metric}" if metric else "")


def markdown(rows: list[dict]) -> str:
    """The runs' table, in the order given (:func:`rank` first for the report's order)."""
    metric = _metric(rows)
    name = metric or "metric"
    lines = [
        f"| run | overrides | algo | data | validation {name} ± 95% CI | test {name} ± 95% CI "
        "| test before adaptation | validation episodes | test episodes | test inner steps "
        "| train (s) | tasks/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "mean" not in r:
            lines.append(f"| {r['run']} | {r['overrides'] or '(defaults)'} | {r['status']} |")
            continue
        pre = r.get("pre_adaptation_mean")
        speed = r.get("tasks_per_sec") or float("nan")
        label = None if metric else r["metric"]
        validation = _interval(_validation(r), r.get("val_ci95"), label)
        lines.append(
            f"| {r['run']} | {r['overrides'] or '(defaults)'} | {r.get('algo', '')} "
            f"| {r.get('data', '')} | {validation} | {_interval(r['mean'], r['ci95'], label)} "
            f"| {'' if pre is None else f'{pre:.4f}'} | {r.get('val_episodes', '–')} "
            f"| {r['episodes']} | {r['inner_steps']} "
            f"| {r.get('train_sec', float('nan')):.0f} | {speed:.{1 if speed < 100 else 0}f} |"
        )
    return "\n".join(lines)


def t_interval(values: list[float]) -> float:
    """Half-width of the 95% interval of the mean of ``values``, which vary between seeds:
    t_{0.975, n-1} · sd / √n, with the sample standard deviation (ddof=1)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def _seed(r: dict) -> int | None:
    """The run's seed: result.json's, else its ``seed=`` override."""
    if r.get("seed") is not None:
        return int(r["seed"])
    for override in r["overrides"].split():
        if override.startswith("seed="):
            return int(override.partition("=")[2])
    return None


def seed_groups(rows: list[dict]) -> list[dict]:
    """The finished runs that differ only in their ``seed`` override, one dict per group of two
    seeds or more: ``overrides`` (without seed), ``metric``, ``seeds``, the mean over seeds of
    the validation (``val_mean``, ``val_ci95``) and test (``mean``, ``ci95``) figures with
    the 95% t-interval across seeds, and ``within_ci95``, the mean of the runs' own test
    CIs. A run without a seed override counts as its default seed; a run that repeats a seed
    counts once. The validation figures are None unless every run has one. Ranked as the
    runs are (:func:`rank`)."""
    by_setting: dict[tuple, dict[int, dict]] = {}
    for r in sorted((r for r in rows if "mean" in r), key=lambda r: _natural(Path(r["run"]))):
        seed = _seed(r)
        if seed is None:
            continue
        rest = [o for o in r["overrides"].split() if not o.startswith("seed=")]
        runs = by_setting.setdefault((r["metric"], *sorted(rest)), {})
        runs.setdefault(seed, {**r, "overrides": " ".join(rest)})
    groups = []
    for runs in by_setting.values():
        if len(runs) < 2:
            continue
        first = next(iter(runs.values()))
        tests = [r["mean"] for r in runs.values()]
        vals = [_validation(r) for r in runs.values()]
        full = None not in vals
        groups.append(
            {
                "overrides": first["overrides"],
                "metric": first["metric"],
                "seeds": sorted(runs),
                "val_mean": sum(vals) / len(vals) if full else None,
                "val_ci95": t_interval(vals) if full else None,
                "mean": sum(tests) / len(tests),
                "ci95": t_interval(tests),
                "within_ci95": sum(r["ci95"] for r in runs.values()) / len(runs),
            }
        )
    return rank(groups)


def seed_markdown(groups: list[dict]) -> str:
    """The table of :func:`seed_groups`."""
    metric = _metric(groups)
    name = metric or "metric"
    lines = [
        f"| overrides (all but seed) | seeds | validation {name}, mean over seeds ± 95% CI "
        f"| test {name}, mean over seeds ± 95% CI | test 95% CI within a run (mean) |",
        "|---|---|---|---|---|",
    ]
    for g in groups:
        label = None if metric else g["metric"]
        seeds = ",".join(map(str, g["seeds"]))
        lines.append(
            f"| {g['overrides'] or '(defaults)'} | {len(g['seeds'])} ({seeds}) "
            f"| {_interval(g['val_mean'], g['val_ci95'], label)} "
            f"| {_interval(g['mean'], g['ci95'], label)} | {g['within_ci95']:.4f} |"
        )
    return "\n".join(lines)


CSV_COLUMNS = (
    "run overrides status algo data metric seed val_mean val_ci95 val_episodes mean ci95 "
    "pre_adaptation_mean episodes inner_steps best_step train_sec tasks_per_sec"
).split()


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def swept(rows: list[dict]) -> dict[str, list[str]]:
    """Override keys that take more than one value across the runs -> their values."""
    values: dict[str, list[str]] = {}
    for r in rows:
        for override in r["overrides"].split():
            key, _, value = override.partition("=")
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
    return {k: v for k, v in values.items() if len(v) > 1}


def plot(rows: list[dict], root: Path, out: Path) -> list[Path]:
    """``learning_curves.png`` (every run's training loss and validation metric) and one
    ``<key>.png`` per swept key: the test metric ± 95% CI against the key's values, a line
    per combination of the other swept keys. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    finished = [r for r in rows if "mean" in r]
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in finished:
        metrics = root / r["run"] / "metrics.jsonl"
        if not metrics.exists():
            continue
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        label = r["overrides"] or r["run"]
        axes[0].plot([x["step"] for x in records], [x["loss"] for x in records], label=label)
        val = [(x["step"], x[f"val_{r['metric']}"]) for x in records if f"val_{r['metric']}" in x]
        if val:
            axes[1].plot(*zip(*val, strict=True), marker="o", label=label)
    axes[0].set(xlabel="meta-training step", ylabel="query loss (train tasks)", yscale="log")
    name = _metric(finished) or "metric"
    axes[1].set(xlabel="meta-training step", ylabel=f"validation {name}")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    written.append(out / "learning_curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    keys = swept(finished)
    for key, values in keys.items():
        numeric = all(_is_number(v) for v in values)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        series: dict[str, list[tuple]] = {}
        for r in finished:
            settings = dict(o.partition("=")[::2] for o in r["overrides"].split())
            if key not in settings:  # a run outside the sweep, e.g. under outputs/
                continue
            rest = " ".join(f"{k}={settings.get(k, '')}" for k in keys if k != key)
            x = float(settings[key]) if numeric else values.index(settings[key])
            series.setdefault(rest, []).append((x, r["mean"], r["ci95"]))
        for rest, points in series.items():
            xs, means, cis = zip(*sorted(points), strict=True)
            style = "-" if numeric else "none"  # no line between unordered categories
            ax.errorbar(xs, means, yerr=cis, marker="o", ls=style, capsize=3, label=rest or None)
        if not numeric:
            ax.set_xticks(range(len(values)), values)
        ax.set(xlabel=key, ylabel=f"test {name} ± 95% CI")
        if any(series):
            ax.legend(fontsize=6)
        fig.tight_layout()
        written.append(out / f"{key}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a run dir, a multirun dir or outputs/")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    parser.add_argument("--plots", type=Path, help="folder for the figures (ROOT/report)")
    parser.add_argument("--no-plots", action="store_true", help="the table only")
    args = parser.parse_args(argv)
    rows = rank(collect(args.root))
    if not rows:
        parser.exit(1, f"metarun-report: no runs under {args.root}\n")
    print(markdown(rows))
    groups = seed_groups(rows)
    if groups:
        print("\nRuns that differ only in seed: mean over seeds ± 95% t-interval across seeds\n")
        print(seed_markdown(groups))
    if args.csv:
        write_csv(rows, args.csv)
    if not args.no_plots and any("mean" in r for r in rows):
        for path in plot(rows, args.root, args.plots or args.root / "report"):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
