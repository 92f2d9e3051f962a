"""MAML against pre-training on sinusoid regression (Finn et al. 2017, §5.1, Fig. 2).

    python scripts/sinusoid_pretraining.py [--out DIR] [--seeds 0 1 2] [--steps N] [--figure PNG]

1. ``metarun -m algo=maml,baseline data=sinusoid seed=...``: MAML and the pre-trained network
   (conf/preset/baseline_sinusoid.yaml: the same MLP trained on the points of all tasks
   jointly) at one budget, the default one (``trainer.steps`` of 25 tasks of K = 10 points);
   a finished run is kept, so the script resumes.
2. The pre-trained network's fine-tuning step size is chosen on the validation tasks (600,
   MSE after 10 steps, mean over the seeds) among :data:`STEP_SIZES`: the paper tuned it too
   (its Fig. 2 shows 0.01 and 0.02). MAML adapts with the step size it was trained with.
3. On the 600 test tasks of every run: MSE after 0 .. 10 gradient steps. Prints a Markdown
   table (also ``OUT/TABLE.md``) and draws ``OUT/sinusoid_pretraining.png`` (``--figure``):
   the two learners adapting to one test task (Fig. 2's panels) and the test MSE against the
   number of steps. docs/images/sinusoid_pretraining.png is ``--figure`` of the default run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import metarun
from metarun import data, models
from metarun.algos.base import adapt_and_predict
from metarun.algos.baseline import baseline_regressor
from metarun.evaluate import episode_keys, make_evaluator
from metarun.report import t_interval
from metarun.rundir import RESULT, load_config

BIN = Path(sys.executable).parent
STEP_SIZES = (0.001, 0.002, 0.005, 0.01, 0.02)
STEPS = tuple(range(11))
EPISODES = 600


def train(out: Path, seeds: list[int], steps: int | None) -> dict[tuple[str, int], Path]:
    """The runs, ``(algo, seed) -> run dir``, training those not finished."""
    runs = {(a, s): out / f"{a}-seed{s}" for a in ("maml", "baseline") for s in seeds}
    for (algo, seed), run_dir in runs.items():
        if (run_dir / RESULT).exists():
            continue
        budget = [f"trainer.steps={steps}", f"trainer.val_every={steps}"] if steps else []
        command = [
            str(BIN / "metarun"),
            f"algo={algo}",
            "data=sinusoid",
            f"seed={seed}",
            *budget,
            "trainer.progress=false",
            f"hydra.run.dir={run_dir}",
        ]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return runs


def pretrained_learner(run_dir: Path, lr: float):
    """The pre-trained run's learner with another fine-tuning step size."""
    learner = metarun.load(run_dir)
    net = models.network(learner.model)
    regressor = baseline_regressor(
        net.apply, learner.spec.objective, finetune=True, lr=lr, momentum=0.0, weight_decay=0.0
    )
    return learner, regressor


def mse_by_steps(learner, meta_params, config, split: str, steps) -> list[np.ndarray]:
    """Per-task MSE on ``split``'s evaluation tasks after each number of ``steps``."""
    source = data.make(config.data)
    keys = episode_keys(config.eval.seed, split, EPISODES)
    values = []
    for k in steps:
        evaluate = make_evaluator(learner, source.objective, inner_steps=k, batch=EPISODES)
        values.append(np.asarray(evaluate(meta_params, source.samplers[split], keys)["mse"]))
    return values


def choose_step_size(runs, seeds) -> tuple[float, dict[float, float]]:
    """The step size with the lowest validation MSE after 10 steps, mean over the seeds."""
    scores = {}
    for lr in STEP_SIZES:
        per_seed = []
        for seed in seeds:
            loaded, learner = pretrained_learner(runs["baseline", seed], lr)
            (mse,) = mse_by_steps(learner, loaded.meta_params, loaded.config, "val", [10])
            per_seed.append(np.mean(mse))  # nan if a task diverged: never chosen
        scores[lr] = float(np.mean(per_seed))
    finite = {lr: s for lr, s in scores.items() if np.isfinite(s)}
    return min(finite, key=finite.get), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("multirun/sinusoid_pretraining"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="trainer.steps (default: config)")
    parser.add_argument("--figure", type=Path, help="default: OUT/sinusoid_pretraining.png")
    args = parser.parse_args()
    runs = train(args.out, args.seeds, args.steps)

    lr, scores = choose_step_size(runs, args.seeds)
    lines = [
        "Pre-trained fine-tuning step size, validation MSE after 10 steps (mean over seeds "
        f"{', '.join(map(str, args.seeds))}):",
        "",
        "| step size | " + " | ".join(f"{s:g}" for s in STEP_SIZES) + " |",
        "|---|" + "---|" * len(STEP_SIZES),
        "| val MSE | " + " | ".join(f"{scores[s]:.3f}" for s in STEP_SIZES) + " |",
        "",
        f"Chosen: {lr:g}. Test MSE after k gradient steps (600 tasks per seed; mean over the "
        "seeds ± the 95% t-interval across them):",
        "",
        "| learner | " + " | ".join(f"k={k}" for k in (0, 1, 5, 10)) + " |",
        "|---|---|---|---|---|",
    ]
    curves = {}
    for algo in ("maml", "baseline"):
        per_seed = []
        for seed in args.seeds:
            if algo == "maml":
                loaded = metarun.load(runs[algo, seed])
                learner = loaded._learner
            else:
                loaded, learner = pretrained_learner(runs[algo, seed], lr)
            mse = mse_by_steps(learner, loaded.meta_params, loaded.config, "test", STEPS)
            per_seed.append([np.mean(m) for m in mse])
        per_seed = np.array(per_seed)  # [seeds, steps]
        curves[algo] = per_seed
        cells = []
        for k in (0, 1, 5, 10):
            if len(args.seeds) > 1:
                cells.append(
                    f"{per_seed[:, k].mean():.3f} ± {t_interval(list(per_seed[:, k])):.3f}"
                )
            else:
                cells.append(f"{per_seed[0, k]:.3f}")
        name = "MAML" if algo == "maml" else f"pre-trained, step {lr:g}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    config = load_config(runs["maml", args.seeds[0]])
    lines += [
        "",
        f"Budget: {config.trainer.steps} steps of {config.trainer.meta_batch} tasks, "
        f"K = {config.data.shots} support points, both learners; "
        f"`python scripts/sinusoid_pretraining.py --seeds {' '.join(map(str, args.seeds))}"
        f"{f' --steps {args.steps}' if args.steps else ''}`.",
    ]
    table = "\n".join(lines)
    print(table)
    (args.out / "TABLE.md").write_text(table + "\n")
    plot(runs, args.seeds[0], lr, curves, args.figure or args.out / "sinusoid_pretraining.png")


def plot(runs, seed: int, lr: float, curves, path: Path) -> None:
    """Fig. 2's two panels for one test task, and the test MSE against the number of steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metarun.data import sinusoid

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    maml = metarun.load(runs["maml", seed])
    loaded, pretrained = pretrained_learner(runs["baseline", seed], lr)
    cfg = maml.config.data
    k_task, k_support = jax.random.split(jax.random.PRNGKey(1))
    task = sinusoid.sample_task(k_task, cfg)
    support_x, support_y = sinusoid.sample_points(k_support, task, cfg.shots, cfg)
    grid = jnp.linspace(cfg.x_min, cfg.x_max, 200)[:, None]
    panels = (
        ("MAML", maml._learner, maml.meta_params),
        ("pre-trained", pretrained, loaded.meta_params),
    )
    for ax, (title, learner, meta_params) in zip(axes, panels, strict=False):
        ax.plot(grid, task(grid), color="black", label="ground truth")
        for k, style in ((0, ":"), (1, "--"), (10, "--")):
            pred = adapt_and_predict(learner, meta_params, support_x, support_y, grid, k, 0)
            ax.plot(grid, np.asarray(pred), style, label="pre-update" if k == 0 else f"{k} step(s)")
        ax.scatter(support_x, support_y, color="red", marker="^", zorder=3, label="support")
        ax.set(title=f"{title}, K = {cfg.shots}", xlabel="x", ylim=(-6, 6))
        ax.legend(fontsize=7)
    for algo, label in (("maml", "MAML"), ("baseline", f"pre-trained, step {lr:g}")):
        per_seed = curves[algo]
        axes[2].plot(STEPS, per_seed.mean(0), marker="o", label=label)
    axes[2].set(
        title="test tasks", xlabel="gradient steps", ylabel="MSE", yscale="log", xticks=STEPS
    )
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
