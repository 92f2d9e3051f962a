#!/usr/bin/env bash
# The Omniglot table of the gradient-based learners (docs/results.md), 5-way 1-shot and 5-shot,
# meta-trained on the official minimal split 1 and tested on the alphabets it lacks.
# A CPU budget (600 meta-steps of 16 tasks, 5 training queries per class) instead of the
# papers' 60,000 steps of 32; every other setting is conf/preset/<algo>_omniglot.yaml.
#   scripts/omniglot_minimal1.sh [OMNIGLOT_DIR] [SWEEP_DIR]
# ALGOS="reptile" runs only those algorithms (default: maml,fomaml,metasgd,anil,reptile).
set -euo pipefail
root=${1:-../shared/data/omniglot}
out=${2:-multirun/omniglot_minimal1}
bin=${BIN:-.venv/bin}
"$bin/metarun" -m data=omniglot data.root="$root" data.split=minimal1 \
  algo="${ALGOS:-maml,fomaml,metasgd,anil,reptile}" data.shots=1,5 data.train_queries=5 \
  trainer.meta_batch=16 trainer.steps=600 trainer.log_every=100 trainer.val_every=200 \
  trainer.progress=false hydra.sweep.dir="$out"
"$bin/metarun-report" "$out"
