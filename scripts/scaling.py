"""How the cost of max-pool Conv-4 MAML grows: tasks/s and memory against meta-batch, inner
steps, ways and shots, with the whole meta-batch at once and in task chunks.

One factor at a time from ``scripts/bench.py``'s ``maml-omniglot-maxpool`` workload (second-order
MAML, one inner step, meta-batch 32, 5-way 1-shot, 15 queries per class, real Omniglot
minimal1). Each setting is compiled with ``trainer.task_chunk=0`` and ``=CHUNK``; memory is XLA's
buffer assignment for the step's intermediates (``temp MiB``), read from the compiled program,
so it is known even where the step would not fit in this machine's memory: such a step is not
run (``--memory-gib``, the RAM it may use) and its tasks/s reads "not run".

    python scripts/scaling.py                  # the whole table, chunks of 2
    python scripts/scaling.py --chunk 4 --steps 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import bench, matmul_peak

# (factor, value, overrides); the first row of each factor is the base setting.
GRID = [
    ("meta-batch", 8, ["trainer.meta_batch=8"]),
    ("meta-batch", 32, []),
    ("meta-batch", 128, ["trainer.meta_batch=128"]),
    ("meta-batch", 256, ["trainer.meta_batch=256"]),
    ("inner steps", 5, ["algo.inner_steps=5"]),
    ("inner steps", 10, ["algo.inner_steps=10"]),
    ("ways", 20, ["data.ways=20"]),
    ("shots", 5, ["data.shots=5"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=2, help="trainer.task_chunk to compare")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, median taken")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-gib", type=float, default=16.0)
    parser.add_argument("--omniglot", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--out", type=Path, default=Path("bench_results/scaling.jsonl"))
    args = parser.parse_args()

    peak = matmul_peak()
    rows = []
    for factor, value, overrides in GRID:
        row = {"factor": factor, "value": value}
        for chunk in (0, args.chunk):
            extra = [*overrides, f"trainer.task_chunk={chunk}"]
            result = bench(
                "maml-omniglot-maxpool",
                args.steps,
                args.warmup,
                args.omniglot,
                extra,
                peak,
                Path(),
                max_temp_mib=args.memory_gib * 1024,
            )
            row[chunk] = result
            with args.out.open("a") as f:
                f.write(json.dumps(result) + "\n")
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if isinstance(k, str)}), flush=True)

    print(
        f"\nmax-pool Conv-4 MAML, {rows[0][0]['backend']}, "
        f"matrix-product peak {peak:,.0f} GFLOP/s; "
        f"median of {args.steps} steps after {args.warmup}; memory: XLA's temp buffers\n"
    )
    print(
        f"| factor | value | tasks/s | temp MiB | tasks/s, chunks of {args.chunk} "
        f"| temp MiB, chunks of {args.chunk} |"
    )
    print("|---|---|---|---|---|---|")

    def rate(r: dict) -> str:
        return (
            f"not run (> {args.memory_gib:g} GiB)"
            if not r["steps_timed"]
            else f"{r['tasks_per_sec']:,.1f}"
        )

    for row in rows:
        whole, chunked = row[0], row[args.chunk]
        print(
            f"| {row['factor']} | {row['value']} | {rate(whole)} "
            f"| {whole['temp_mib']:,.0f} | {rate(chunked)} | {chunked['temp_mib']:,.0f} |"
        )


if __name__ == "__main__":
    main()
