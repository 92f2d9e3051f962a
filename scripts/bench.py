"""Meta-training speed: compile time and steady-state meta-steps/s and tasks/s.

Each workload is the real ``metarun`` config (the same ``build`` and meta-step as
``metarun`` runs) with a few overrides. Times are the median over ``--steps``
steps after ``--warmup`` steps, each step waited for with ``block_until_ready``.

    python scripts/bench.py                       # every workload, a table
    python scripts/bench.py --workload maml-sinusoid --steps 200

Prints a markdown table, then one JSON object per workload (the last line is the
last workload's), and appends the JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax

from metarun.config import compose, validate
from metarun.train import build, compile_meta_step, init_state, rng_streams

WORKLOADS = {
    "maml-sinusoid": ["algo=maml"],
    "fomaml-sinusoid": ["algo=fomaml"],
    "metasgd-sinusoid": ["algo=metasgd"],
    "anil-sinusoid": ["algo=anil"],
    "reptile-sinusoid": ["algo=reptile"],
}


def bench(name: str, steps: int, warmup: int) -> dict:
    config = validate(compose(WORKLOADS[name]))
    exp = build(config)
    init_key, train_key = rng_streams(config.seed)
    state = init_state(exp, init_key)
    meta_step, compile_sec = compile_meta_step(exp, state, train_key)
    sample = exp.source.samplers["train"]
    for _ in range(warmup):
        state, metrics = meta_step(state, train_key, sample)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = meta_step(state, train_key, sample)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    sec_per_step = statistics.median(times)
    return {
        "workload": name,
        "algo": config.algo.name,
        "inner_steps": config.algo.inner_steps,
        "meta_batch": config.trainer.meta_batch,
        "compile_sec": round(compile_sec, 3),
        "sec_per_step": sec_per_step,
        "steps_per_sec": round(1 / sec_per_step, 1),
        "tasks_per_sec": round(config.trainer.meta_batch / sec_per_step, 1),
        "steps_timed": steps,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        action="append",
        help="repeat to pick several (default: all)",
    )
    parser.add_argument("--steps", type=int, default=100, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench_results/bench.jsonl"))
    args = parser.parse_args()
    if args.steps < 20:
        parser.error("--steps must be >= 20 for a stable median")

    rows = [bench(name, args.steps, args.warmup) for name in args.workload or WORKLOADS]
    print(
        f"\nbackend: {rows[0]['backend']} ({rows[0]['devices']} device), jax {jax.__version__}, "
        f"median of {args.steps} steps after {args.warmup} warm-up\n"
    )
    print("| workload | inner steps | meta-batch | compile (s) | meta-steps/s | tasks/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | {r['inner_steps']} | {r['meta_batch']} | "
            f"{r['compile_sec']:.2f} | {r['steps_per_sec']:,.0f} | {r['tasks_per_sec']:,.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print()
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
