#!/usr/bin/env bash
# Speed side by side with learn2learn (PyTorch, CPU): the same workloads, alternating metarun's
# run and the peer's, ROUNDS times, each in its own process, on an idle machine; prints a
# table of the median tasks/s over the rounds and their ratio. A development tool: the peer
# is built outside the repo (../shared/peer/setup_peer.sh PEER_VENV; its README says why each
# step is needed), and neither is part of make test.
#   scripts/compare_peer.sh PEER_VENV [ROUNDS] [WORKLOAD ...]
#   SET=trainer.task_chunk=2 scripts/compare_peer.sh PEER_VENV   # an override on metarun's side
# Same network, episodes and meta-batch on both sides: 5-way, 15 queries per class, meta-batch
# 32, one inner step of α = 0.4 (MAML's Omniglot setting), BatchNorm with batch statistics;
# metarun samples real Omniglot minimal1 episodes on the device, the peer random images of the
# same shape held in memory (its data loading is not timed either).
set -euo pipefail
peer_venv=${1:?usage: scripts/compare_peer.sh PEER_VENV [ROUNDS] [WORKLOAD ...]}
rounds=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
peer=${PEER:-../shared/peer/peer_l2l.py}
omniglot=${OMNIGLOT:-../shared/data/omniglot}
bin=${BIN:-.venv/bin}
out=${OUT:-bench_results/compare_peer.jsonl}
mkdir -p "$(dirname "$out")"

# name | metarun (scripts/bench.py arguments) | peer (peer_l2l.py arguments)
declare -A ours=(
  [maml-maxpool]="--workload maml-omniglot-maxpool"
  [maml-maxpool-5shot]="--workload maml-omniglot-maxpool --set data.shots=5"
  [maml-strided]="--workload maml-omniglot"
  [fomaml-maxpool]="--workload fomaml-omniglot --set model.strided=false"
  [protonet-maxpool]="--workload protonet-omniglot --set model.strided=false"
  [protonet-maxpool-direct]="--workload protonet-omniglot --set model.strided=false --set model.conv=direct"
  [maml-sinusoid]="--workload maml-sinusoid --steps 100 --warmup 10"
)
declare -A theirs=(
  [maml-maxpool]="--algo maml --shots 1 --arch maxpool"
  [maml-maxpool-5shot]="--algo maml --shots 5 --arch maxpool"
  [maml-strided]="--algo maml --shots 1 --arch strided"
  [fomaml-maxpool]="--algo fomaml --shots 1 --arch maxpool"
  [protonet-maxpool]="--algo protonet --shots 1 --proto-mode loop"
  [protonet-maxpool-direct]="--algo protonet --shots 1 --proto-mode loop"
  [maml-sinusoid]="--algo sinusoid --meta-batch 25"
)
order=(maml-maxpool maml-strided maml-maxpool-5shot fomaml-maxpool protonet-maxpool
  protonet-maxpool-direct maml-sinusoid)
workloads=("${@:-${order[@]}}")

for round in $(seq "$rounds"); do
  for name in "${workloads[@]}"; do
    # shellcheck disable=SC2086  # the argument strings are split on purpose
    line=$("$bin/python" scripts/bench.py ${ours[$name]} ${SET:+--set $SET} \
      --omniglot "$omniglot" --out /dev/null | tail -1)
    echo "{\"round\": $round, \"name\": \"$name\", \"side\": \"metarun\", \"result\": $line}" >> "$out"
    # shellcheck disable=SC2086
    line=$("$peer_venv/bin/python" "$peer" ${theirs[$name]} --steps 20 --warmup 3 --threads 2 \
      2>/dev/null | tail -1)
    echo "{\"round\": $round, \"name\": \"$name\", \"side\": \"peer\", \"result\": $line}" >> "$out"
    echo "round $round: $name done" >&2
  done
done

"$bin/python" - "$out" "$rounds" "${workloads[@]}" <<'EOF'
import json, os, statistics, sys

path, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
lines = [json.loads(line) for line in open(path)][-2 * rounds * len(names):]
print(f"\nmedian tasks/s over {rounds} alternating rounds ({path}); SET={os.environ.get('SET', '')}\n")
print("| workload | metarun tasks/s | learn2learn tasks/s | ratio | peer's foreign CPU (max) |")
print("|---|---|---|---|---|")
for name in names:
    ours = [r["result"]["tasks_per_sec"] for r in lines if r["name"] == name and r["side"] == "metarun"]
    peer = [r["result"] for r in lines if r["name"] == name and r["side"] == "peer"]
    theirs = statistics.median(p["tasks_per_sec"] for p in peer)
    foreign = max(max(p.get("foreign_cpu_before") or 0, p.get("foreign_cpu_during") or 0) for p in peer)
    mine = statistics.median(ours)
    print(f"| {name} | {mine:,.1f} | {theirs:,.1f} | {mine / theirs:.2f}x | {foreign:.2f} |")
EOF
