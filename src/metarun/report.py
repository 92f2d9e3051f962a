"""``metarun-report DIR``: one markdown table of every finished run under DIR.

Each row is a run dir (one holding ``result.json``): the command-line overrides
Hydra saved for it, then its final test metric with the 95% confidence interval.
Point it at a multirun dir to tabulate a sweep, or at ``outputs/`` for all runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def _natural(path: Path) -> list:
    """Sort job dirs 0, 1, ..., 10 numerically (Hydra numbers a sweep's jobs)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def collect(root: Path) -> list[dict]:
    rows = []
    for result_path in sorted(root.rglob("result.json"), key=_natural):
        run_dir = result_path.parent
        overrides_path = run_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        rows.append(
            {
                "run": str(run_dir.relative_to(root)) or ".",
                "overrides": " ".join(overrides or []),
                **json.loads(result_path.read_text()),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | overrides | algo | data | test metric | mean ± 95% CI | before adaptation "
        "| episodes | test inner steps | train (s) | tasks/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pre = r.get("pre_adaptation_mean")
        speed = r.get("tasks_per_sec") or float("nan")
        lines.append(
            f"| {r['run']} | {r['overrides'] or '(defaults)'} | {r.get('algo', '')} "
            f"| {r.get('data', '')} | {r['metric']} | {r['mean']:.4f} ± {r['ci95']:.4f} "
            f"| {'' if pre is None else f'{pre:.4f}'} | {r['episodes']} | {r['inner_steps']} "
            f"| {r.get('train_sec', float('nan')):.0f} | {speed:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a run dir, a multirun dir or outputs/")
    args = parser.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        parser.exit(1, f"metarun-report: no result.json under {args.root}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
