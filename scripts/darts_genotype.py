"""The discrete architecture a DARTS search run found, as the override that trains it.

    python scripts/darts_genotype.py RUN_DIR [RUN_DIR ...]

For each finished ``metarun ... model=darts`` search run: the softmax of the architecture
weights the run's meta-test used (``checkpoints/best``: the step chosen on validation), edge by
edge, and the line ``model.genotype=[...]`` that retrains the discrete architecture derived from
them (``metarun.load(run).genotype()``: each node's two strongest inputs, each edge's strongest
operation other than ``none``).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import metarun
from metarun.config import ARCH, PRIMITIVES, cell_edges


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    for run_dir in parser.parse_args(argv).runs:
        learner = metarun.load(run_dir)
        genotype = learner.genotype()  # refuses a run that is not a DARTS search
        weights = np.asarray(jax.nn.softmax(learner.model_params[ARCH], axis=-1))
        print(f"# {run_dir}: softmax(α) by edge (node <- input)")
        print("#       " + " ".join(f"{op:>13}" for op in PRIMITIVES))
        for (i, j), row in zip(cell_edges(learner.config.model.nodes), weights, strict=True):
            print(f"# {i} <- {j} " + " ".join(f"{w:13.3f}" for w in row))
        print(f"model.genotype=[{','.join(genotype)}]")


if __name__ == "__main__":
    main()
