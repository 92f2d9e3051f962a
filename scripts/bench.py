"""Meta-training speed: compile time and steady-state meta-steps/s and tasks/s.

Each workload is the real ``metarun`` config (the same ``build`` and meta-step as
``metarun`` runs) with a few overrides. ``sec_per_step`` is the median over ``--steps``
steps after ``--warmup`` steps, each step waited for with ``block_until_ready``;
``pipelined_sec_per_step`` runs the same number of steps back to back and waits once, as
the train loop does between logging points (on a GPU the host then queues the next step
while the device runs this one).

Memory: ``temp_mib`` is XLA's buffer assignment for the step's intermediates (any backend,
from the compiled program); ``peak_mib`` is the device allocator's peak since the process
started (GPU/TPU only): bench one workload per process to read that workload's own.

    python scripts/bench.py                       # every workload, a table
    python scripts/bench.py --workload maml-sinusoid --steps 200
    python scripts/bench.py --workload maml-omniglot --set algo.inner_steps=5

Prints a markdown table, then one JSON object per workload (the last line is the
last workload's), and appends the JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax

from metarun import algos
from metarun.config import Config, compose, validate
from metarun.experiment import build, rng_streams
from metarun.step import TrainState, compile_meta_step, init_state

# Omniglot workloads: MAML's Omniglot setting (conf/preset/maml_omniglot.yaml: strided
# Conv-4, 64 filters, α = 0.4, one inner step, meta-batch 32), 5-way 1-shot, 15 queries per
# class, 28×28×1, on the real minimal split 1 (--omniglot); episodes sampled on the device.
OMNIGLOT = ["data=omniglot", "data.split=minimal1"]
WORKLOADS = {
    "maml-sinusoid": ["algo=maml"],
    "fomaml-sinusoid": ["algo=fomaml"],
    "metasgd-sinusoid": ["algo=metasgd"],
    "anil-sinusoid": ["algo=anil"],
    "reptile-sinusoid": ["algo=reptile"],
    "maml-omniglot": ["algo=maml", *OMNIGLOT],
    "fomaml-omniglot": ["algo=fomaml", *OMNIGLOT],
    # The same step with max-pooling (Vinyals et al.'s Conv-4) instead of strides.
    "maml-omniglot-maxpool": ["algo=maml", *OMNIGLOT, "model.strided=false"],
    # Mixed precision: bfloat16 forward passes, float32 master weights.
    "maml-omniglot-bf16": ["algo=maml", *OMNIGLOT, "trainer.precision=bf16"],
    # XLA's own convolution on CPU: vmap over per-task kernels makes it a grouped convolution.
    "maml-omniglot-xlaconv": ["algo=maml", *OMNIGLOT, "model.conv=xla"],
    # MAML++'s switches (multi-step loss, learned per-layer per-step rates, per-step
    # BatchNorm) at its 5 inner steps; compare with maml-omniglot --set algo.inner_steps=5.
    "mamlpp-omniglot": [
        "algo=maml",
        *OMNIGLOT,
        "algo.inner_steps=5",
        "algo.msl=true",
        "algo.lslr=true",
        "algo.per_step_bn=true",
    ],
    # ProtoNet with MAML's encoder and episodes (not its preset's 60-way single episodes).
    "protonet-omniglot": [
        "algo=protonet",
        *OMNIGLOT,
        "model.strided=true",
        "data.train_ways=null",
        "data.train_queries=null",
        "trainer.meta_batch=32",
    ],
}


class Prepared(NamedTuple):
    """A workload's compiled meta-step, warmed up, and what it is called with."""

    config: Config
    inner_steps: int  # of meta-training (0 for a learner without an inner loop)
    meta_step: Any  # the AOT-compiled step: step(state, train_key, sample)
    compile_sec: float
    state: TrainState
    train_key: jax.Array
    sample: Any


def prepare(name: str, warmup: int, omniglot: Path, extra: list[str]) -> Prepared:
    """Build workload ``name`` with ``extra`` overrides, compile its step, run ``warmup`` steps
    (also used by scripts/profile_step.py)."""
    overrides = WORKLOADS[name]
    if "data=omniglot" in overrides:
        overrides = [*overrides, f"data.root={omniglot.resolve()}"]
    config = validate(compose([*overrides, *extra]))
    exp = build(config)
    init_key, train_key = rng_streams(config.seed)
    state = init_state(exp, init_key)
    meta_step, compile_sec = compile_meta_step(exp, state, train_key)
    sample = exp.source.samplers["train"]
    for _ in range(warmup):
        state, _ = meta_step(state, train_key, sample)
    jax.block_until_ready(state)
    inner_steps = algos.inner_steps(exp.learner, config.algo)
    return Prepared(config, inner_steps, meta_step, compile_sec, state, train_key, sample)


def bench(name: str, steps: int, warmup: int, omniglot: Path, extra: list[str]) -> dict:
    config, inner_steps, meta_step, compile_sec, state, train_key, sample = prepare(
        name, warmup, omniglot, extra
    )
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = meta_step(state, train_key, sample)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    sec_per_step = statistics.median(times)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = meta_step(state, train_key, sample)
    jax.block_until_ready((state, metrics))
    pipelined = (time.perf_counter() - start) / steps
    # XLA's own count of the compiled step's floating-point operations (HLO cost analysis).
    cost = meta_step.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost or {}).get("flops", float("nan"))
    memory = meta_step.memory_analysis()
    stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU
    return {
        "workload": name,
        "overrides": extra,
        "algo": config.algo.name,
        "inner_steps": inner_steps,
        "meta_batch": config.trainer.meta_batch,
        "compile_sec": round(compile_sec, 3),
        "sec_per_step": sec_per_step,
        "steps_per_sec": round(1 / sec_per_step, 3),
        "tasks_per_sec": round(config.trainer.meta_batch / sec_per_step, 1),
        "pipelined_sec_per_step": pipelined,
        "pipelined_tasks_per_sec": round(config.trainer.meta_batch / pipelined, 1),
        "temp_mib": round(memory.temp_size_in_bytes / 2**20, 1) if memory else None,
        "peak_mib": round(stats["peak_bytes_in_use"] / 2**20, 1) if stats else None,
        "gflop_per_task": round(flops / config.trainer.meta_batch / 1e9, 3),
        "gflops": round(flops / sec_per_step / 1e9, 1),
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
    parser.add_argument(
        "--steps", type=int, help="timed steps, median taken (default 100; Omniglot: 20)"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 10; Omniglot: 3)")
    parser.add_argument("--out", type=Path, default=Path("bench_results/bench.jsonl"))
    parser.add_argument(
        "--omniglot",
        type=Path,
        default=Path("../shared/data/omniglot"),
        help="folder with the Omniglot minimal archives (data.root)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a config override for every workload (repeatable), e.g. algo.inner_steps=5",
    )
    args = parser.parse_args()
    if args.steps is not None and args.steps < 20:
        parser.error("--steps must be >= 20 for a stable median")

    rows = []
    for name in args.workload or WORKLOADS:
        # A second-order Conv-4 step takes about a second on 2 CPU cores, sinusoid's 40 µs.
        heavy = "omniglot" in name
        steps = args.steps or (20 if heavy else 100)
        warmup = args.warmup if args.warmup is not None else (3 if heavy else 10)
        rows.append(bench(name, steps, warmup, args.omniglot, args.overrides))
    print(
        f"\nbackend: {rows[0]['backend']} ({rows[0]['devices']} device), jax {jax.__version__}, "
        "median of the timed steps after the warm-up ones"
        + (f", overrides: {' '.join(args.overrides)}" if args.overrides else "")
        + "\n"
    )
    print(
        "| workload | inner steps | meta-batch | steps timed | compile (s) | meta-steps/s "
        "| tasks/s | tasks/s pipelined | GFLOP/task | GFLOP/s | temp MiB | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "–" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        print(
            f"| {r['workload']} | {r['inner_steps']} | {r['meta_batch']} | {r['steps_timed']} | "
            f"{r['compile_sec']:.2f} | {r['steps_per_sec']:,.2f} | {r['tasks_per_sec']:,.1f} "
            f"| {r['pipelined_tasks_per_sec']:,.1f} | {r['gflop_per_task']:.3f} "
            f"| {r['gflops']:.1f} | {r['temp_mib']:,.1f} | {peak} |"
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
