#!/usr/bin/env bash
# The comparison table on one dataset, one split and protocol for every method (leave-one-out, history 50,
# full ranking, whole test set, seen items excluded):
#   scripts/experiments.sh DATASET_DIR NAME [SCHEDULES] [SEEDS] [STUDENT_MINUTES]
#   e.g. scripts/experiments.sh data/ml-latest-small ml-latest-small "hat causal" "0 1 2" 30
# SASRec (the baseline and every student's teacher) -> runs/NAME/sasrec; per schedule and seed a distilled
# item-code student with that teacher -> runs/NAME/<schedule>-s<seed> (its fusion weight chosen on
# validation); evaluations of each student fused with SASRec and alone, of SASRec and of most-popular ->
# docs/results/NAME/*.json; table (mean ± sd over seeds) and plot by hatllm.report. Reruns skip what exists.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 name=$2 schedules=${3:-hat causal} seeds=${4:-0} minutes=${5:-30}
py=.venv/bin/python runs=runs/$name out=docs/results/$name
mkdir -p "$runs" "$out"
[ -f "$runs/sasrec/sasrec.pt" ] || $py -m hatllm.baselines.sasrec --data "$data" --out "$runs/sasrec"
for seed in $seeds; do
  for schedule in $schedules; do
    dir=$runs/$schedule-s$seed
    [ -f "$dir/fusion.json" ] || $py -m hatllm.train --data "$data" --out "$dir" --schedule "$schedule" --seed "$seed" \
      --teacher "$runs/sasrec" --teacher-init --size mini --bf16 --lr 2e-3 --batch-size 8 --epochs 20 --patience 4 \
      --valid-users 1000 --max-minutes "$minutes" --resume
    [ -f "$dir/fusion.json" ] || $py -m hatllm.tune_fusion --data "$data" --model "$dir" --prior "$runs/sasrec" --users 2000
    label=$([ "$schedule" = causal ] && echo causal || echo hatllm)
    [ -f "$out/$label+sasrec-s$seed.json" ] || $py -m hatllm.evaluate --data "$data" --method llm --model "$dir" \
      --name "$label+sasrec s$seed" --out "$out/$label+sasrec-s$seed.json"
    [ -f "$out/$label-s$seed.json" ] || $py -m hatllm.evaluate --data "$data" --method llm --model "$dir" --no-fusion \
      --name "$label s$seed" --out "$out/$label-s$seed.json"
  done
done
[ -f "$out/sasrec.json" ] || $py -m hatllm.evaluate --data "$data" --method sasrec --model "$runs/sasrec" --out "$out/sasrec.json"
[ -f "$out/popular.json" ] || $py -m hatllm.evaluate --data "$data" --method popular --out "$out/popular.json"
$py -m hatllm.report "$out" --title "$name"
