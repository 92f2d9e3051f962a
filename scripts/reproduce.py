"""One command per results table: a paper's protocol end to end, measured beside published.

    python scripts/reproduce.py TABLE [--root DIR] [--split SPLIT] [--fraction F] [--seeds 0 1 2]

Each table is a list of settings (ways, shots and what the paper changes with them); every
setting runs once per seed (``--seeds``) into ``OUT/<data>/<setting>/seed<N>``, a run already
finished there is kept (so an interrupted table resumes, and tables share their runs), and the
table printed at the end (and written to ``OUT/TABLE.md``) has, per setting, the validation
and test accuracy as means over the seeds ± the 95% t-interval across seeds
(:func:`metarun.report.seed_groups`; one seed: that run's own interval), the figure the paper
published, and the budget run.

Paper tables (``--fraction`` scales their meta-training steps; 1 is the paper's budget):

* ``maml-omniglot``: Finn et al. 2017, Table 1: 5-way and 20-way, 1 and 5 shots, 60,000
  meta-steps of 32 tasks (5-way) and 16 (20-way), conf/preset/maml_omniglot.yaml otherwise.
* ``maml-mini-imagenet``: Finn et al. 2017, Table 1: 5-way 1 and 5 shots, meta-batch 4 and 2.
* ``protonet-omniglot``: Snell et al. 2017, Table 1: 60-way training episodes, 20,000.
* ``protonet-mini-imagenet``: Snell et al. 2017, Table 2: 30-way (1-shot) and 20-way (5-shot)
  training episodes.

The published figures were obtained on the full data (Omniglot's 1,623 characters with the
Vinyals split; mini-ImageNet), with the paper's BatchNorm mode (the presets pick it). Runs on
the minimal Omniglot splits (``--split minimal1``) or at a fraction of the budget are not
like for like with them; the table says which split and budget it ran.

CPU tables of docs/results.md (the CPU budgets of ``scripts/omniglot_minimal1.sh`` and
``scripts/omniglot_metric.sh``, 5-way 1-shot on the minimal split; no published column):

* ``cpu-seeds``: MAML and ProtoNet, each in its paper's BatchNorm mode, over ``--seeds``.
* ``cpu-bn-modes``: MAML and ProtoNet × the four ``model.bn_mode`` values, seed 0.
* ``cpu-hallucinate``: ProtoNet without and with ``algo.hallucinate=2`` (Wang et al. 2018) at
  5-way 1-shot (``--seeds``; without: ``cpu-seeds``' runs, shared), 5-way 5-shot and 20-way
  1-shot (seed 0), on ``cpu-seeds``' ProtoNet budget.
* ``cpu-l2rw``: Learning to Reweight Examples (Ren et al. 2018) against plain training, with
  and without the clean set, on one 100-class Omniglot problem with 40% of the training labels
  flipped (conf/preset/l2rw_omniglot.yaml and erm_omniglot.yaml, the same data and budget),
  over ``--seeds``; the test is the clean test drawings.
* ``cpu-mldg``: MLDG (Li et al. 2018) against plain training on all five source domains on
  rotated Omniglot (100 characters turned by 0°, 15°, ..., 75°; the 75° domain unseen in
  training; conf/preset/mldg_omniglot.yaml for both), over ``--seeds``.
* ``cpu-darts``: DARTS inside MAML (Elsken et al. 2020): the architecture searched by first-order
  MAML on the DARTS space (``model=darts``, 8 channels), then the derived architecture retrained
  with MAML, against a random architecture of the same space and the max-pool Conv-4 with 32
  filters, each architecture at Conv-4's parameter count (the channels chosen to match), all
  on one budget (5-way 1-shot, meta-batch 8, 300 steps), over ``--seeds``: seed s searches with
  seed s, retrains what that search derived and draws random architecture s.
* ``cpu-pretraining``: Baseline and Baseline++ (Chen et al. 2019) on ProtoNet's CPU budget,
  beside MAML and ProtoNet (shared with ``cpu-seeds`` and ``cpu-hallucinate``), at 5-way
  1-shot (``--seeds``), 5-way 5-shot and 20-way 1-shot (seed 0).
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from metarun import rundir
from metarun.report import collect, seed_groups
from metarun.rundir import RESULT

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Setting:
    name: str
    overrides: tuple[str, ...]
    published: float | None = None  # the paper's test accuracy, %
    steps: int = 0  # the paper's meta-training steps (scaled by --fraction); 0: in overrides
    seeds: tuple[int, ...] | None = None  # None: --seeds
    # Overrides that differ by seed, (seed, the table's folder) -> overrides: read off an
    # earlier setting's run of that seed (a searched architecture), or drawn with the seed.
    per_seed: Callable[[int, Path], tuple[str, ...]] | None = None


def _ways_shots(ways: int, shots: int, *extra: str) -> tuple[str, ...]:
    return (f"data.ways={ways}", f"data.shots={shots}", *extra)


# The CPU budgets of the Omniglot tables of docs/results.md (scripts/omniglot_minimal1.sh and
# scripts/omniglot_metric.sh): 600 meta-steps, validation every 200.
CPU_MAML = ("algo=maml", "data.train_queries=5", "trainer.meta_batch=16", "trainer.steps=600")
CPU_PROTONET = (
    "algo=protonet",
    "data.train_ways=20",
    "data.train_queries=5",
    "trainer.meta_batch=1",
    "trainer.steps=600",
)
CPU_LOGGING = ("trainer.log_every=100", "trainer.val_every=200")
MODES = ("transductive", "support", "task_norm", "running")
# conf/preset/*_omniglot.yaml
PAPER_MODE = {"maml": "transductive", "protonet": "running", "baseline": "running"}
HALLUCINATE = "algo.hallucinate=2"  # imagined support examples per class


# The settings of the CPU comparison tables: 5-way 1-shot over --seeds, the others the first.
SHAPES = ((5, 1), (5, 5), (20, 1))


def _shape(ways: int, shots: int) -> tuple[tuple[str, ...], str, tuple[int, ...] | None]:
    """(overrides, name suffix, seeds) of a setting of :data:`SHAPES`."""
    if (ways, shots) == (5, 1):
        return (), "", None
    return _ways_shots(ways, shots), f", {ways}-way {shots}-shot", (0,)


def _hallucination_settings() -> tuple[Setting, ...]:
    """ProtoNet on its CPU budget without and with hallucination; the 5-way 1-shot run
    without is ``cpu-seeds``' (same name, same command)."""
    settings = []
    for ways, shots in SHAPES:
        shape, suffix, seeds = _shape(ways, shots)
        name = f"protonet, {PAPER_MODE['protonet']}"
        settings.append(Setting(name + suffix, (*CPU_PROTONET, *shape), seeds=seeds))
        hallucinating = (
            f"protonet, hallucinate {HALLUCINATE.split('=')[1]}, {PAPER_MODE['protonet']}"
        )
        settings.append(
            Setting(hallucinating + suffix, (*CPU_PROTONET, *shape, HALLUCINATE), seeds=seeds)
        )
    return tuple(settings)


def _pretraining_settings() -> tuple[Setting, ...]:
    """Baseline and Baseline++ on ProtoNet's CPU budget (each step one batch of as many images
    as ProtoNet's training episode), beside MAML and ProtoNet on theirs; the MAML and ProtoNet
    runs are ``cpu-seeds``' and ``cpu-hallucinate``'s (same names, same commands). MAML's
    20-way runs take 4 tasks per step, the images per step of its 5-way budget (16 × 5 × 6)."""
    settings = []
    for ways, shots in SHAPES:
        shape, suffix, seeds = _shape(ways, shots)
        maml = tuple(
            o.replace("meta_batch=16", "meta_batch=4") if ways == 20 else o for o in CPU_MAML
        )
        for algo, budget in (
            ("maml", maml),
            ("protonet", CPU_PROTONET),
            ("baseline", ("algo=baseline", *CPU_PROTONET[1:])),
            ("baseline_pp", ("algo=baseline_pp", *CPU_PROTONET[1:])),
        ):
            name = f"{algo}, {PAPER_MODE[algo.removesuffix('_pp')]}{suffix}"
            settings.append(Setting(name, (*budget, *shape), seeds=seeds))
    return tuple(settings)


# DARTS (cpu-darts): one budget for the search and every architecture (not tuned; sized for
# this CPU: a search step of the 8-channel supernet takes about 0.5 s, a retraining step at
# Conv-4's parameter count about 0.6 s).
DARTS_BUDGET = (
    "algo=maml",
    "data.train_queries=5",
    "trainer.meta_batch=8",
    "trainer.steps=300",
    "trainer.log_every=50",
    "trainer.val_every=100",
)
# The architecture weights step 10× faster than the weights (Adam 1e-2 against 1e-3), so that
# they can move by a few units in 300 steps; not tuned.
DARTS_SEARCH = (
    "model=darts",
    "model.channels=8",
    "algo.first_order=true",
    "optim.arch_lr_scale=10",
)
DARTS_CONV4 = ("model.filters=32", "model.strided=false")  # max-pool, MAML's mini-ImageNet width
DARTS_SEARCH_NAME = "darts search, first-order, 8 channels"


def _param_count(model_cfg: dict) -> int:
    """Parameters of a 5-way Omniglot model (28×28×1) of config ``model_cfg``."""
    import jax
    import jax.numpy as jnp

    from metarun import models
    from metarun.config import compose

    overrides = [f"model.{k}={v}" for k, v in model_cfg.items() if k != "name"]
    config = compose(["data=omniglot", f"model={model_cfg['name']}", *overrides])
    model = models.make(config.model, 5)
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    return sum(leaf.size for leaf in jax.tree.leaves(params))


@functools.cache
def _conv4_params() -> int:
    return _param_count({"name": "conv4", "filters": 32, "strided": False})


def _matched(genotype: list[str]) -> tuple[str, ...]:
    """The overrides of a DARTS architecture at the channels whose parameter count is nearest
    Conv-4's (32 filters)."""
    target, low, high = _conv4_params(), 1, 512
    if _count(genotype, high) < target:  # no convolution: pools and skips have ~30 C weights
        raise ValueError(
            f"model.genotype={genotype} has fewer than Conv-4's {target} parameters even at "
            f"{high} channels: no width matches it"
        )
    while low < high:  # the smallest width with at least the target's parameters
        mid = (low + high) // 2
        low, high = (mid + 1, high) if _count(genotype, mid) < target else (low, mid)
    narrower = [low - 1] if low > 1 else []  # the width below, if any: the nearer one wins
    channels = min([*narrower, low], key=lambda c: abs(_count(genotype, c) - target))
    return ("model=darts", f"model.genotype=[{','.join(genotype)}]", f"model.channels={channels}")


def _count(genotype: list[str], channels: int) -> int:
    return _param_count(
        {"name": "darts", "genotype": f"[{','.join(genotype)}]", "channels": channels}
    )


def _derived(seed: int, folder: Path) -> tuple[str, ...]:
    """The architecture the search run of ``seed`` derived, at Conv-4's parameter count."""
    import metarun

    search = folder / _dir_name("cpu-darts", DARTS_SEARCH_NAME) / f"seed{seed}"
    return _matched(metarun.load(search).genotype())


def _random(seed: int, folder: Path) -> tuple[str, ...]:
    """Random architecture ``seed`` of the search space, at Conv-4's parameter count."""
    from metarun.config import DartsConfig
    from metarun.models.darts import random_genotype

    del folder
    return _matched(random_genotype(DartsConfig().nodes, seed))


@dataclass(frozen=True)
class Table:
    data: str
    settings: tuple[Setting, ...]
    common: tuple[str, ...] = field(default_factory=tuple)
    cpu: bool = False  # docs/results.md's CPU budgets: --fraction does not apply


TABLES = {
    "maml-omniglot": Table(
        "omniglot",
        (
            Setting("5-way 1-shot", _ways_shots(5, 1), 98.7, 60_000),
            Setting("5-way 5-shot", _ways_shots(5, 5), 99.9, 60_000),
            Setting("20-way 1-shot", _ways_shots(20, 1, "trainer.meta_batch=16"), 95.8, 60_000),
            Setting("20-way 5-shot", _ways_shots(20, 5, "trainer.meta_batch=16"), 98.9, 60_000),
        ),
        ("algo=maml",),
    ),
    "maml-mini-imagenet": Table(
        "mini_imagenet",
        (
            Setting("5-way 1-shot", _ways_shots(5, 1), 48.70, 60_000),
            Setting("5-way 5-shot", _ways_shots(5, 5, "trainer.meta_batch=2"), 63.11, 60_000),
        ),
        ("algo=maml",),
    ),
    "protonet-omniglot": Table(
        "omniglot",
        (
            Setting("5-way 1-shot", _ways_shots(5, 1), 98.8, 20_000),
            Setting("5-way 5-shot", _ways_shots(5, 5), 99.7, 20_000),
            Setting("20-way 1-shot", _ways_shots(20, 1), 96.0, 20_000),
            Setting("20-way 5-shot", _ways_shots(20, 5), 98.9, 20_000),
        ),
        ("algo=protonet",),
    ),
    "protonet-mini-imagenet": Table(
        "mini_imagenet",
        (
            Setting("5-way 1-shot", _ways_shots(5, 1, "data.train_ways=30"), 49.42, 20_000),
            Setting("5-way 5-shot", _ways_shots(5, 5, "data.train_ways=20"), 68.20, 20_000),
        ),
        ("algo=protonet",),
    ),
    "cpu-seeds": Table(
        "omniglot",
        (
            Setting(f"maml, {PAPER_MODE['maml']}", CPU_MAML),
            Setting(f"protonet, {PAPER_MODE['protonet']}", CPU_PROTONET),
        ),
        CPU_LOGGING,
        cpu=True,
    ),
    "cpu-bn-modes": Table(
        "omniglot",
        tuple(
            Setting(f"{algo[0][5:]}, {mode}", (*algo, f"model.bn_mode={mode}"), seeds=(0,))
            for algo in (CPU_MAML, CPU_PROTONET)
            for mode in MODES
        ),
        CPU_LOGGING,
        cpu=True,
    ),
    "cpu-hallucinate": Table("omniglot", _hallucination_settings(), CPU_LOGGING, cpu=True),
    "cpu-pretraining": Table("omniglot", _pretraining_settings(), CPU_LOGGING, cpu=True),
    "cpu-l2rw": Table(
        "omniglot",
        (
            Setting("plain training", ("algo=erm",)),
            Setting("l2rw", ("algo=l2rw",)),
            Setting("plain training + clean set", ("algo=erm", "algo.with_query=true")),
        ),
        cpu=True,
    ),
    "cpu-darts": Table(
        "omniglot",
        (
            Setting("conv-4, 32 filters, max-pool", (*DARTS_BUDGET, *DARTS_CONV4)),
            Setting(DARTS_SEARCH_NAME, (*DARTS_BUDGET, *DARTS_SEARCH)),
            Setting("darts derived, retrained", DARTS_BUDGET, per_seed=_derived),
            Setting("darts random", DARTS_BUDGET, per_seed=_random),
        ),
        cpu=True,
    ),
    "cpu-mldg": Table(
        "omniglot",
        (
            Setting(
                "plain training, five source domains",
                ("algo=erm", "preset=mldg_omniglot", "algo.with_query=true"),
            ),
            Setting("mldg", ("algo=mldg",)),
        ),
        cpu=True,
    ),
}


def run(table: Table, setting: Setting, args: argparse.Namespace, out: Path) -> None:
    steps = []
    if setting.steps and not table.cpu:
        budget = max(1, round(setting.steps * args.fraction))
        every = max(1, budget // 10)  # 10 validations, whatever the budget
        steps = [
            f"trainer.steps={budget}",
            f"trainer.log_every={every}",
            f"trainer.val_every={every}",
        ]
    command = [
        str(BIN / "metarun"),
        f"data={table.data}",
        f"data.root={args.root}",
        *([f"data.split={args.split}"] if table.data == "omniglot" else []),
        *table.common,
        *setting.overrides,
        *steps,
        "trainer.progress=false",
        "eval.batch=20",  # 20-way evaluation batches fit in a few GB (omniglot_metric.sh)
    ]
    for seed in setting.seeds or args.seeds:
        run_dir = out / f"seed{seed}"
        if not (run_dir / RESULT).exists():
            extra = setting.per_seed(seed, out.parent) if setting.per_seed else ()
            seeded = [*command, *extra, f"seed={seed}", f"hydra.run.dir={run_dir}"]
            print("+", " ".join(seeded), flush=True)
            subprocess.run(seeded, check=True)


def row(setting: Setting, args: argparse.Namespace, out: Path) -> str:
    seeds = setting.seeds or args.seeds
    runs = [r for r in collect(out) if "mean" in r and r["seed"] in seeds]
    if setting.per_seed:  # its runs differ by more than the seed: one setting all the same
        runs = [{**r, "overrides": f"seed={r['seed']}"} for r in runs]
    if not runs:
        return f"| {setting.name} | no finished run | | | | |"
    groups = seed_groups(runs)
    if groups:
        g = groups[0]
        seeds = len(g["seeds"])
        val = f"{100 * g['val_mean']:.2f} ± {100 * g['val_ci95']:.2f}"
        test = f"{100 * g['mean']:.2f} ± {100 * g['ci95']:.2f}"
        within = f"{100 * g['within_ci95']:.2f}"
    else:  # one seed: its own intervals over episodes
        r = runs[0]
        seeds, within = 1, "–"
        val = f"{100 * r['val_mean']:.2f} ± {100 * r['val_ci95']:.2f}"
        test = f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f}"
    r = runs[0]
    budget = f"{r['steps']} steps, {r['data']}, {r.get('bn_mode', '')}"
    train_min = sum(x["train_sec"] for x in runs) / len(runs) / 60
    published = "–" if setting.published is None else f"{setting.published:.2f}"
    return (
        f"| {setting.name} | {val} | {test} | {seeds} | {within} | {published} "
        f"| {budget}; {train_min:.1f} min per run |"
    )


def _per_seed_lines(table: Table, args: argparse.Namespace, folder: Path) -> list[str]:
    """What differed by seed in the settings that have per-seed overrides (runs in ``folder``)."""
    lines = []
    for setting in table.settings:
        if setting.per_seed is None:
            continue
        lines += ["", f"{setting.name}:"]
        for seed in setting.seeds or args.seeds:
            run_dir = folder / _dir_name(args.table, setting.name) / f"seed{seed}"
            if (run_dir / RESULT).exists():  # what it trained, from its own config
                model = rundir.load_config(run_dir).model
                genotype = list(model.genotype)
                size = _count(genotype, model.channels)
                lines.append(
                    f"- seed {seed}: `model.genotype=[{','.join(genotype)}] "
                    f"model.channels={model.channels}` ({size:,} parameters)"
                )
                continue
            try:
                extra = " ".join(setting.per_seed(seed, folder))
            except FileNotFoundError as missing:  # the search run it reads is not there yet
                extra = str(missing)
            lines.append(f"- seed {seed}: not run yet: `{extra}`")
    return lines


def _dir_name(table: str, setting: str) -> str:
    """A setting's folder: settings of the same name share their runs across tables."""
    return f"{table.split('-')[0]}_{setting.replace(' ', '_').replace(',', '')}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--root", default="../shared/data/omniglot", help="data.root")
    parser.add_argument("--split", default="characters", help="data.split (Omniglot)")
    parser.add_argument("--fraction", type=float, default=1.0, help="of the paper's steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("multirun/reproduce"))
    parser.add_argument("--report-only", action="store_true", help="tabulate, run nothing")
    given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(given)
    table = TABLES[args.table]
    lines = [
        f"`python scripts/reproduce.py {' '.join(a for a in given if a != '--report-only')}`",
        "",
        "| setting | validation % (mean ± 95% CI) | test % (mean ± 95% CI) | seeds "
        "| mean within-run CI | published | budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in table.settings:
        budget = "cpu" if table.cpu else f"{args.fraction:g}"
        out = args.out / f"{table.data}-{args.split}-{budget}" / _dir_name(args.table, setting.name)
        if not args.report_only:
            run(table, setting, args, out)
        lines.append(row(setting, args, out))
    lines += _per_seed_lines(table, args, out.parent)
    text = "\n".join(lines)
    print(text)
    (args.out / f"{args.table}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
