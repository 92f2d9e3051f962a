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
    python scripts/bench.py --workload maml-omniglot-maxpool --set trainer.task_chunk=2
    python scripts/bench.py --workload maml-mini-imagenet-resnet12 --compile-only

Arithmetic: ``gflop_per_task`` is XLA's count (HLO cost analysis) of the step as traced, the
whole meta-batch at once and the inner loop unrolled (the analysis counts a loop's body once,
so a step in task chunks would count one chunk), before XLA's optimisations (which
change it by a few per cent). ``peak_fraction`` is the achieved rate over this machine's
matrix-product peak, measured first: the best of five 2048 × 2048 float32 products; the
memory stream beside it (the best of five elementwise passes over a 1 GiB array, bytes read
plus written) says how fast a step that moves data rather than multiplying can go.

mini-ImageNet workloads run on random images of the real shapes (84 × 84 × 3, 20 per class),
written once as the official pickle files under ``--mini-imagenet`` (speed does not depend on
the pixels). ``--compile-only`` compiles and reports compile time and memory, no steps: for
workloads too slow to time on a CPU (second-order MAML on ResNet-12).

Prints a markdown table, then one JSON object per workload (the last line is the
last workload's), and appends the JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pickle
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from metarun import algos
from metarun.config import Config, compose, validate
from metarun.experiment import build, rng_streams
from metarun.step import TrainState, compile_meta_step, init_state, make_meta_step

# Omniglot workloads: MAML's Omniglot setting (conf/preset/maml_omniglot.yaml: strided
# Conv-4, 64 filters, α = 0.4, one inner step, meta-batch 32), 5-way 1-shot, 15 queries per
# class, 28×28×1, on the real minimal split 1 (--omniglot); episodes sampled on the device.
OMNIGLOT = ["data=omniglot", "data.split=minimal1"]
PROTONET = [
    "algo=protonet",
    *OMNIGLOT,
    "model.strided=true",
    "data.train_ways=null",
    "data.train_queries=null",
    "trainer.meta_batch=32",
]
MINI_IMAGENET = ["data=mini_imagenet"]
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
    # A DARTS search (model=darts, every operation on every edge) at scripts/reproduce.py
    # cpu-darts' budget: first-order MAML, 8 channels, meta-batch 8, 5 queries per class.
    "fomaml-omniglot-darts-search": [
        "algo=maml",
        *OMNIGLOT,
        "model=darts",
        "model.channels=8",
        "algo.first_order=true",
        "trainer.meta_batch=8",
        "data.train_queries=5",
    ],
    # ProtoNet with MAML's encoder and episodes (not its preset's 60-way single episodes).
    "protonet-omniglot": PROTONET,
    "protonet-omniglot-maxpool": [*PROTONET, "model.strided=false"],
    # mini-ImageNet shapes (random pixels, --mini-imagenet): MAML's preset (32-filter max-pool
    # Conv-4, 5 inner steps, meta-batch 4, 5-way 1-shot, 15 queries per class); ResNet-12 at
    # 5-way 5-shot, ProtoNet one episode per step, MAML second-order with 5 inner steps and
    # meta-batch 4 (--compile-only on a CPU: about 10 TFLOP a task).
    "maml-mini-imagenet-conv4": ["algo=maml", *MINI_IMAGENET],
    "protonet-mini-imagenet-resnet12": [
        "algo=protonet",
        *MINI_IMAGENET,
        "model=resnet12",
        "data.shots=5",
        "data.train_ways=null",
        "model.bn_mode=transductive",
    ],
    "maml-mini-imagenet-resnet12": [
        "algo=maml",
        *MINI_IMAGENET,
        "model=resnet12",
        "data.shots=5",
        "algo.inner_lr=0.01",
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
    flops: float  # XLA's count of the step as traced, task_chunk=0 (the module docstring)


def synthetic_mini_imagenet(root: Path, classes: int = 10, per_class: int = 20) -> Path:
    """Random 84×84×3 images in the official pickle files' format
    (``mini-imagenet-cache-<split>.pkl``: ``image_data`` and ``class_dict``), once."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        path = root / f"mini-imagenet-cache-{split}.pkl"
        if path.exists():
            continue
        root.mkdir(parents=True, exist_ok=True)
        images = rng.integers(0, 256, (classes * per_class, 84, 84, 3), dtype=np.uint8)
        rows = np.arange(classes * per_class).reshape(classes, per_class)
        class_dict = {f"n{split}{c:05d}": rows[c].tolist() for c in range(classes)}
        with open(path, "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
    return root


def prepare(
    name: str,
    warmup: int,
    omniglot: Path,
    extra: list[str],
    mini_imagenet: Path = Path("bench_results/mini_imagenet_synthetic"),
) -> Prepared:
    """Build workload ``name`` with ``extra`` overrides, compile its step, run ``warmup`` steps
    (also used by scripts/profile_step.py)."""
    overrides = WORKLOADS[name]
    if "data=omniglot" in overrides:
        overrides = [*overrides, f"data.root={omniglot.resolve()}"]
    if "data=mini_imagenet" in overrides:
        root = synthetic_mini_imagenet(mini_imagenet).resolve()
        overrides = [*overrides, f"data.root={root}", f"data.cache_dir={root / 'tfds'}"]
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
    # The arithmetic of the step as traced, the whole meta-batch at once (the module docstring).
    whole = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, task_chunk=0))
    traced = jax.jit(make_meta_step(exp._replace(config=whole)))
    # XLA's cost analysis counts a loop's body once: count the step with its scans (the inner
    # loop) unrolled.
    with mock.patch.object(jax.lax, "scan", functools.partial(jax.lax.scan, unroll=True)):
        flops = traced.lower(state, train_key, sample).cost_analysis()["flops"]
    return Prepared(config, inner_steps, meta_step, compile_sec, state, train_key, sample, flops)


def best_seconds(fn, x, repeats: int = 5) -> float:
    """The fastest of ``repeats`` timed calls of the jitted ``fn(x)``, after one to compile."""
    fn(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak() -> float:
    """GFLOP/s of this machine's fastest matrix product: the best of five 2048² float32 ones."""
    n = 2048
    return 2 * n**3 / best_seconds(jax.jit(lambda a: a @ a), jnp.ones((n, n), jnp.float32)) / 1e9


def memory_stream() -> float:
    """GB/s of this machine's memory: the best of five elementwise passes over a 1 GiB float32
    array, counting the bytes read and the bytes written (2 GiB a pass)."""
    x = jnp.ones((2**28,), jnp.float32)
    return 2 * x.nbytes / best_seconds(jax.jit(lambda x: 2 * x), x) / 1e9


def bench(
    name: str,
    steps: int,
    warmup: int,
    omniglot: Path,
    extra: list[str],
    peak_gflops: float,
    mini_imagenet: Path,
    compile_only: bool = False,
    max_temp_mib: float = float("inf"),
) -> dict:
    """One workload's row, timed over ``steps`` steps after ``warmup`` unless ``compile_only``
    or its compiled step needs more than ``max_temp_mib`` of intermediates."""
    p = prepare(name, 0, omniglot, extra, mini_imagenet)
    state, config, meta_step = p.state, p.config, p.meta_step
    memory = meta_step.memory_analysis()
    temp_mib = memory.temp_size_in_bytes / 2**20 if memory else 0.0
    sec_per_step = pipelined = float("nan")
    compile_only = compile_only or temp_mib > max_temp_mib
    if not compile_only:
        for _ in range(warmup):
            state, _ = meta_step(state, p.train_key, p.sample)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = meta_step(state, p.train_key, p.sample)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
        sec_per_step = statistics.median(times)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = meta_step(state, p.train_key, p.sample)
        jax.block_until_ready((state, metrics))
        pipelined = (time.perf_counter() - start) / steps
    stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU
    meta_batch = config.trainer.meta_batch
    gflops = p.flops / sec_per_step / 1e9
    return {
        "workload": name,
        "overrides": extra,
        "algo": config.algo.name,
        "inner_steps": p.inner_steps,
        "meta_batch": meta_batch,
        "task_chunk": config.trainer.task_chunk,
        "compile_sec": round(p.compile_sec, 3),
        "sec_per_step": sec_per_step,
        "steps_per_sec": round(1 / sec_per_step, 3),
        "tasks_per_sec": round(meta_batch / sec_per_step, 1),
        "pipelined_sec_per_step": pipelined,
        "pipelined_tasks_per_sec": round(meta_batch / pipelined, 1),
        "temp_mib": round(temp_mib, 1) if memory else None,
        "peak_mib": round(stats["peak_bytes_in_use"] / 2**20, 1) if stats else None,
        "gflop_per_task": round(p.flops / meta_batch / 1e9, 3),
        "gflops": round(gflops, 1),
        "peak_gflops": round(peak_gflops, 1),
        "peak_fraction": round(gflops / peak_gflops, 3),
        "steps_timed": 0 if compile_only else steps,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
    }


def append_lines(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to ``path`` as JSON lines (the folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def default_steps(name: str) -> tuple[int, int]:
    """(timed, warm-up) steps: on 2 CPU cores a sinusoid step takes 40 µs, a second-order
    Conv-4 one seconds, a ResNet-12 one minutes."""
    if "sinusoid" in name:
        return 100, 10
    return (3, 1) if "resnet12" in name else (20, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        action="append",
        help="repeat to pick several (default: all)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="timed steps, median taken (default 100; images: 20; ResNet-12: 3)",
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps first (default 10; images: 3; ResNet-12: 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_results/bench.jsonl"))
    parser.add_argument(
        "--omniglot",
        type=Path,
        default=Path("../shared/data/omniglot"),
        help="folder with the Omniglot minimal archives (data.root)",
    )
    parser.add_argument(
        "--mini-imagenet",
        type=Path,
        default=Path("bench_results/mini_imagenet_synthetic"),
        help="where the random mini-ImageNet-shaped pickles are (written if missing)",
    )
    parser.add_argument(
        "--compile-only", action="store_true", help="compile time and memory only, no steps"
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
    if args.steps is not None and args.steps < 3:
        parser.error("--steps must be >= 3: the median of fewer is one step's time")

    peak, stream = matmul_peak(), memory_stream()
    rows = []
    for name in args.workload or WORKLOADS:
        steps, warmup = default_steps(name)
        steps = args.steps or steps
        warmup = args.warmup if args.warmup is not None else warmup
        rows.append(
            bench(
                name,
                steps,
                warmup,
                args.omniglot,
                args.overrides,
                peak,
                args.mini_imagenet,
                args.compile_only,
            )
        )
    print(
        f"\nbackend: {rows[0]['backend']} ({rows[0]['devices']} device), jax {jax.__version__}, "
        f"matrix-product peak {peak:,.1f} GFLOP/s, memory stream {stream:,.1f} GB/s, median of "
        "the timed steps after the warm-up "
        "ones" + (f", overrides: {' '.join(args.overrides)}" if args.overrides else "") + "\n"
    )
    print(
        "| workload | inner steps | meta-batch | task chunk | steps timed | compile (s) "
        "| tasks/s | tasks/s pipelined | GFLOP/task | GFLOP/s | of peak | temp MiB | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak_mib = "–" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        print(
            f"| {r['workload']} | {r['inner_steps']} | {r['meta_batch']} | "
            f"{r['task_chunk'] or '–'} | {r['steps_timed']} | {r['compile_sec']:.2f} "
            f"| {r['tasks_per_sec']:,.1f} | {r['pipelined_tasks_per_sec']:,.1f} "
            f"| {r['gflop_per_task']:.3f} | {r['gflops']:,.1f} | {r['peak_fraction']:.1%} "
            f"| {r['temp_mib']:,.1f} | {peak_mib} |"
        )
    append_lines(args.out, rows)
    print()
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
