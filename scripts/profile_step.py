"""Where a meta-step's time goes on an accelerator: one profile of a bench workload.

Runs a ``scripts/bench.py`` workload under ``jax.profiler.trace`` and reads the trace's
device events (the GPU kernels, each named after its HLO op): device busy time per step
against the wall time of a step, and the ops that take the most of it, grouped by kind.

    python scripts/profile_step.py --workload maml-omniglot --steps 10 --out profile/

XLA:CPU records no per-op device events, so on a CPU this prints the wall time only.
The trace (``perfetto_trace.json.gz`` under ``--out``) opens in https://ui.perfetto.dev.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import time
from pathlib import Path

import jax

from bench import WORKLOADS, prepare


def device_events(trace: Path) -> list[dict]:
    """The complete ('X') events of the trace's ``/device:...`` processes."""
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    devices = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and e["args"]["name"].startswith("/device:")
    }
    return [e for e in events if e.get("ph") == "X" and e["pid"] in devices]


def kind(name: str) -> str:
    """A kernel's family: the HLO op name without its numeric suffix (``fusion.12`` ->
    ``fusion``), or the library call (cuDNN convolutions, cuBLAS gemms)."""
    lowered = name.lower()
    for library in ("conv", "gemm", "cudnn", "cublas", "nccl", "memcpy", "memset"):
        if library in lowered:
            return library
    return re.sub(r"[._]\d+$", "", name.split(":")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="maml-omniglot")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench_results/profile"))
    parser.add_argument("--omniglot", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    _, _, meta_step, _, state, train_key, sample, _ = prepare(
        args.workload, 5, args.omniglot, args.overrides
    )

    with jax.profiler.trace(str(args.out), create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = meta_step(state, train_key, sample)
        jax.block_until_ready((state, metrics))
        wall = (time.perf_counter() - start) / args.steps
    trace = max(
        args.out.glob("plugins/profile/*/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime
    )
    events = device_events(trace)
    print(f"{args.workload} on {jax.devices()[0].device_kind}: {wall * 1e3:.2f} ms per step (wall)")
    if not events:
        print("no device events in the trace (XLA:CPU records none)")
        return
    busy = sum(e["dur"] for e in events) / 1e3 / args.steps  # µs -> ms
    launches = len(events) / args.steps
    print(
        f"device busy {busy:.2f} ms per step ({busy / (wall * 1e3):.0%} of the wall time), "
        f"{launches:.0f} kernels per step, {busy * 1e3 / launches:.1f} µs per kernel on average"
    )
    by_kind = collections.defaultdict(lambda: [0.0, 0])
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        for table, key in ((by_kind, kind(e["name"])), (by_name, e["name"])):
            table[key][0] += e["dur"] / 1e3 / args.steps
            table[key][1] += 1 / args.steps
    for title, table in (("kind", by_kind), ("kernel", by_name)):
        print(f"\n| {title} | ms per step | share of busy | launches per step |\n|---|---|---|---|")
        for key, (ms, count) in sorted(table.items(), key=lambda kv: -kv[1][0])[:15]:
            print(f"| {key[:70]} | {ms:.3f} | {ms / busy:.1%} | {count:.0f} |")
    summary = {"workload": args.workload, "wall_ms": wall * 1e3, "busy_ms": busy}
    print(json.dumps({**summary, "kernels_per_step": launches, "trace": str(trace)}))


if __name__ == "__main__":
    main()
