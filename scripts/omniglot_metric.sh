#!/usr/bin/env bash
# The README's table of the metric-based and black-box learners on Omniglot: 5-way 1-shot,
# 5-way 5-shot and 20-way 1-shot, meta-trained on the official minimal split 1 and tested on
# the alphabets it lacks (600 episodes, 15 queries per class). CPU budgets, each algorithm's
# preset otherwise (conf/preset/<algo>_omniglot.yaml); the budget of each is on its line.
#   scripts/omniglot_metric.sh [OMNIGLOT_DIR] [SWEEP_DIR] [ALGO ...]
set -euo pipefail
root=${1:-../shared/data/omniglot}
out=${2:-multirun/omniglot_metric}
shift $(( $# < 2 ? $# : 2 ))
algos=${*:-protonet matchingnet}
bin=${BIN:-.venv/bin}
# eval.batch=20: a 20-way evaluation batch of 100 tasks (32,000 images through Conv-4) needs
# about 28 GB; 20 tasks at a time fit in a few.
common=(data=omniglot data.root="$root" data.split=minimal1 trainer.log_every=100
  trainer.val_every=200 trainer.progress=false eval.batch=20)
declare -A budget=(
  # 600 episodes of 20 classes (the paper trains 60-way), 5 queries per class
  [protonet]="data.train_ways=20 data.train_queries=5 trainer.meta_batch=1 trainer.steps=600"
  # 600 steps of 4 episodes of the test's ways and shots, 5 queries per class
  [matchingnet]="data.train_queries=5 trainer.meta_batch=4 trainer.steps=600"
)
for algo in $algos; do
  read -r -a extra <<< "${budget[$algo]}"
  "$bin/metarun" -m algo="$algo" "${common[@]}" "${extra[@]}" data.ways=5 data.shots=1,5 \
    hydra.sweep.dir="$out/$algo/5way"
  "$bin/metarun" -m algo="$algo" "${common[@]}" "${extra[@]}" data.ways=20 data.shots=1 \
    hydra.sweep.dir="$out/$algo/20way"
done
"$bin/metarun-report" "$out"
