"""Where a meta-step's time goes: one profile of a bench workload, on a GPU or the CPU.

Runs a ``scripts/bench.py`` workload under ``jax.profiler.trace`` and reads the trace's op
events: on a GPU the device's kernels, on the CPU the ops XLA:CPU records on the host when
``--xla_cpu_enable_xprof_traceme=true`` (this script adds it to ``XLA_FLAGS``), each named
after its HLO instruction. It prints their time per step against the wall time of a step,
and the ops that take the most of it, grouped by kind.

    python scripts/profile_step.py --workload maml-omniglot --steps 10 --out profile/
    python scripts/profile_step.py --workload maml-omniglot-maxpool --set trainer.task_chunk=1

On the CPU the ops of a step run one after another, each split over the cores, so their
times add up to about the wall time. The trace (``perfetto_trace.json.gz`` under ``--out``)
opens in https://ui.perfetto.dev.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import time
from pathlib import Path

# Read when JAX starts its backend (a flag of every backend, used by XLA:CPU alone).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import jax  # noqa: E402

from bench import WORKLOADS, prepare  # noqa: E402


def complete_events(trace: Path, process: str) -> list[dict]:
    """The complete ('X') events of the trace's processes named ``process...``
    (``/device:`` for a GPU's kernels, ``/host:`` for the CPU)."""
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    pids = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and e["args"]["name"].startswith(process)
    }
    return [e for e in events if e.get("ph") == "X" and e["pid"] in pids]


# An HLO instruction's name (``fusion.12``, ``ynn_fusion``): what XLA:CPU's op events are
# called, beside its runtime's own events (``ThunkExecutor::Execute``, ``end: fusion.12``, ...).
HLO_NAME = re.compile(r"[A-Za-z_][\w-]*(\.\d+)?")


def host_op_events(trace: Path) -> list[dict]:
    """XLA:CPU's op events: the host's complete events named after an HLO instruction."""
    return [e for e in complete_events(trace, "/host:") if HLO_NAME.fullmatch(e["name"])]


def kind(name: str) -> str:
    """A kernel's family: the HLO op name without its numeric suffix (``fusion.12`` ->
    ``fusion``), or the library call (cuDNN convolutions, cuBLAS gemms)."""
    lowered = name.lower()
    # ynn: XLA:CPU's matrix products and convolutions through YNNPACK
    for library in ("conv", "gemm", "cudnn", "cublas", "nccl", "memcpy", "memset", "ynn"):
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
    events, where = complete_events(trace, "/device:"), "device busy"
    if not events:
        events, where = host_op_events(trace), "XLA:CPU ops"
    print(f"{args.workload} on {jax.devices()[0].device_kind}: {wall * 1e3:.2f} ms per step (wall)")
    if not events:
        print("no op events in the trace")
        return
    busy = sum(e["dur"] for e in events) / 1e3 / args.steps  # µs -> ms
    launches = len(events) / args.steps
    print(
        f"{where} {busy:.2f} ms per step ({busy / (wall * 1e3):.0%} of the wall time), "
        f"{launches:.0f} ops per step, {busy * 1e3 / launches:.1f} µs per op on average"
    )
    by_kind = collections.defaultdict(lambda: [0.0, 0])
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        for table, key in ((by_kind, kind(e["name"])), (by_name, e["name"])):
            table[key][0] += e["dur"] / 1e3 / args.steps
            table[key][1] += 1 / args.steps
    for title, table in (("kind", by_kind), ("op", by_name)):
        print(f"\n| {title} | ms per step | share | per step |\n|---|---|---|---|")
        for key, (ms, count) in sorted(table.items(), key=lambda kv: -kv[1][0])[:15]:
            print(f"| {key[:70]} | {ms:.3f} | {ms / busy:.1%} | {count:.0f} |")
    summary = {"workload": args.workload, "wall_ms": wall * 1e3, "busy_ms": busy}
    print(json.dumps({**summary, "ops_per_step": launches, "trace": str(trace)}))


if __name__ == "__main__":
    main()
