"""Two or more variants of one workload's meta-step, compiled in one process and timed in turn.

On a small shared machine two processes a minute apart can differ by 20% (this project's
2-core CPU: the same step at 1,195 and 1,454 ms), so a lever's effect measured by running
``scripts/bench.py`` before and after it is mostly noise. Here every variant is compiled and
warmed up first, then each round times ``--steps`` steps of every variant, the order rotating
from round to round, so that the machine's drifts fall on all of them alike; each variant's
figure is the median over all its timed steps, and every round's ratio to the first variant
is printed to show the spread.

A variant is a set of config overrides on top of the workload's (``--set`` applies to all):

    python scripts/ab_step.py --workload protonet-omniglot-maxpool --set trainer.task_chunk=1 \\
        --variant model.bn_mode=running --variant model.bn_mode=transductive
    python scripts/ab_step.py --workload maml-omniglot-maxpool --set data.shots=5 \\
        --variant trainer.task_chunk=1 --variant trainer.task_chunk=2

Code levers (a function of ``src/`` replaced by another) are compared the same way from a
throwaway script: :func:`alternate` takes any prepared steps, e.g. one built under
``unittest.mock.patch``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax

from bench import WORKLOADS, Prepared, append_lines, prepare


def alternate(prepared: list[Prepared], rounds: int, steps: int) -> list[list[float]]:
    """Seconds of each timed step, ``[variant][step]``: ``rounds`` rounds of ``steps`` steps of
    every variant in turn, round ``r`` starting at variant ``r mod n``."""
    states = [p.state for p in prepared]
    times: list[list[float]] = [[] for _ in prepared]
    for r in range(rounds):
        for i in [(r + j) % len(prepared) for j in range(len(prepared))]:
            p = prepared[i]
            for _ in range(steps):
                start = time.perf_counter()
                states[i], metrics = p.meta_step(states[i], p.train_key, p.sample)
                jax.block_until_ready((states[i], metrics))
                times[i].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument(
        "--variant",
        metavar="OVERRIDES",
        action="append",
        required=True,
        help="space-separated config overrides of one variant (repeat; '' for none)",
    )
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
        help="a config override for every variant (repeatable)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps a variant a round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--omniglot", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--out", type=Path, default=Path("bench_results/ab_step.jsonl"))
    args = parser.parse_args()
    if len(args.variant) < 2:
        parser.error("give at least two --variant")

    variants = [v.split() for v in args.variant]
    prepared = [
        prepare(args.workload, args.warmup, args.omniglot, [*args.overrides, *v]) for v in variants
    ]
    times = alternate(prepared, args.rounds, args.steps)

    def per_round(seconds):  # the median step of each round
        return [
            statistics.median(seconds[r * args.steps : (r + 1) * args.steps])
            for r in range(args.rounds)
        ]

    first = per_round(times[0])
    print(
        f"\n{args.workload}, {' '.join(args.overrides) or 'no common overrides'}: "
        f"{args.rounds} rounds of {args.steps} steps a variant, medians\n"
    )
    print("| variant | ms a step | tasks/s | GFLOP a task | against the first (each round) |")
    print("|---|---|---|---|---|")
    rows = []
    for v, p, seconds in zip(variants, prepared, times, strict=True):
        median = statistics.median(seconds)
        meta_batch = p.config.trainer.meta_batch
        ratios = [a / b for a, b in zip(first, per_round(seconds), strict=True)]
        row = {
            "workload": args.workload,
            "common": args.overrides,
            "variant": v,
            "sec_per_step": median,
            "tasks_per_sec": meta_batch / median,
            "gflop_per_task": p.flops / meta_batch / 1e9,
            "speed_vs_first_by_round": [round(r, 3) for r in ratios],
        }
        rows.append(row)
        print(
            f"| {' '.join(v) or '(none)'} | {1e3 * median:,.0f} | {row['tasks_per_sec']:,.1f} "
            f"| {row['gflop_per_task']:.3g} | {' / '.join(f'{r:.2f}x' for r in ratios)} |"
        )
    append_lines(args.out, rows)


if __name__ == "__main__":
    main()
