#!/usr/bin/env bash
# The docs/results.md table of the metric-based and black-box learners on Omniglot: 5-way 1-shot,
# 5-way 5-shot and 20-way 1-shot, meta-trained on the official minimal split 1 and tested on
# the alphabets it lacks (600 episodes, 15 queries per class). CPU budgets, each algorithm's
# preset otherwise (conf/preset/<algo>_omniglot.yaml); the budget of each is on its line.
#   scripts/omniglot_metric.sh [OMNIGLOT_DIR] [SWEEP_DIR] [ALGO ...]
# SETTINGS="20way" runs only the 20-way 1-shot sweeps (default: "5way 20way").
set -euo pipefail
root=${1:-../shared/data/omniglot}
out=${2:-multirun/omniglot_metric}
shift $(( $# < 2 ? $# : 2 ))
algos=${*:-protonet matchingnet relationnet siamese mann snail}
bin=${BIN:-.venv/bin}
# eval.batch=20: a 20-way evaluation batch of 100 tasks (32,000 images through Conv-4) needs
# about 28 GB; 20 tasks at a time fit in a few.
common=(data=omniglot data.root="$root" data.split=minimal1 trainer.progress=false eval.batch=20)
declare -A budget=(
  # 600 episodes of 20 classes (the paper trains 60-way), 5 queries per class
  [protonet]="data.train_ways=20 data.train_queries=5 trainer.meta_batch=1 trainer.steps=600
    trainer.log_every=100 trainer.val_every=200"
  # 600 steps of 4 episodes of the test's ways and shots, 5 queries per class
  [matchingnet]="data.train_queries=5 trainer.meta_batch=4 trainer.steps=600
    trainer.log_every=100 trainer.val_every=200"
  # 1000 episodes of the test's ways and shots, 5 queries per class
  [relationnet]="data.train_queries=5 trainer.meta_batch=1 trainer.steps=1000
    trainer.log_every=50 trainer.val_every=250"
  [siamese]="data.train_queries=5 trainer.meta_batch=1 trainer.steps=1000
    trainer.log_every=50 trainer.val_every=250"
  # the paper's input (20×20 pixels, no hidden layer) and 10 presentations of each class in a
  # sequence, 800 steps of 16 sequences, Adam 3e-3 (tests/test_learning.py)
  [mann]="model=mlp model.hidden=[] data.image_size=20 data.train_queries=9 optim.lr=0.003
    trainer.meta_batch=16 trainer.steps=800 trainer.log_every=100 trainer.val_every=200"
  # Conv-4 of 32 filters, 2 queries per class, 400 steps of 16 episodes, Adam 1e-3 (width and
  # learning rate chosen on validation: scripts/choose_on_validation.sh snail)
  [snail]="model.filters=32 data.train_queries=2 optim.lr=0.001 trainer.meta_batch=16
    trainer.steps=400 trainer.log_every=100 trainer.val_every=200"
)
settings=${SETTINGS:-5way 20way}
declare -A shots=([5way]="data.ways=5 data.shots=1,5" [20way]="data.ways=20 data.shots=1")
for algo in $algos; do
  read -r -d "" -a extra <<< "${budget[$algo]}" || true
  for setting in $settings; do
    read -r -a sweep <<< "${shots[$setting]}"
    "$bin/metarun" -m algo="$algo" "${common[@]}" "${extra[@]}" "${sweep[@]}" \
      hydra.sweep.dir="$out/$algo/$setting"
  done
done
"$bin/metarun-report" "$out"
