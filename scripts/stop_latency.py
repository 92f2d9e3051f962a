"""Seconds from a stop signal to a complete checkpoint, for the Omniglot Conv-4 workloads.

    python scripts/stop_latency.py --omniglot ../shared/data/omniglot [--split minimal1]

Each workload runs as ``metarun`` would under SLURM (a subprocess, its preset, a long budget).
Once it has trained for ``--train-sec`` seconds, it gets the signal; the time to the process's
exit is the time to a complete checkpoint (the loop waits for the write before it exits), and
the checkpoint is then checked on disk. The loop keeps at most ``train.MAX_IN_FLIGHT`` steps
dispatched ahead of the device, so the stop waits for those, one checkpoint write, and exit.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metarun.rundir import STATE_DIR

WORKLOADS = {
    "protonet-omniglot": ["algo=protonet", "data=omniglot"],
    "maml-omniglot": ["algo=maml", "data=omniglot"],
    "matchingnet-omniglot": ["algo=matchingnet", "data=omniglot"],
}
LONG = [
    "trainer.steps=1000000",
    "trainer.log_every=20",
    "trainer.val_every=0",
    "trainer.checkpoint_every=0",
    "trainer.progress=true",  # no terminal: one log line per log_every, with steps/s
    "logger=[jsonl]",
]


def measure(name: str, omniglot: Path, split: str, signum: int, train_sec: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            Path(sys.executable).with_name("metarun"),
            *WORKLOADS[name],
            f"data.root={omniglot.resolve()}",
            f"data.split={split}",
            f"data.cache_dir={Path(tmp) / 'cache'}",
            *LONG,
            f"hydra.run.dir={run_dir}",
        ]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines, started, rate = [], None, None
        for line in proc.stdout:  # Hydra logs to stdout
            lines.append(line)
            if started is None and "meta-step compiled" in line:
                started = time.perf_counter()
            if started is not None and (found := re.search(r"([\d.]+) steps/s", line)):
                rate = float(found.group(1))
            if started is not None and time.perf_counter() - started > train_sec and rate:
                break
        sent = time.perf_counter()
        proc.send_signal(signum)
        rest, _ = proc.communicate(timeout=300)
        seconds = time.perf_counter() - sent
        steps = sorted(int(p.name) for p in (run_dir / STATE_DIR).glob("*") if p.name.isdigit())
        if not steps:
            raise RuntimeError(f"{name}: no checkpoint\n{''.join(lines)}{rest}")
        return {
            "workload": name,
            "sec/step": 1 / rate,
            "signal -> checkpoint on disk (s)": seconds,
            "checkpoint step": steps[-1],
            "exit": proc.returncode,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--omniglot", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--split", default="minimal1", help="data.split (the archives at hand)")
    parser.add_argument("--signal", default="TERM", choices=["TERM", "USR2", "INT"])
    parser.add_argument("--train-sec", type=float, default=5.0)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    signum = getattr(signal, f"SIG{args.signal}")
    rows = [
        measure(name, args.omniglot, args.split, signum, args.train_sec) for name in args.workloads
    ]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
