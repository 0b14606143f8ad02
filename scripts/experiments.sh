#!/usr/bin/env bash
# Reproduce a results table: HatLLM vs causal vs SASRec vs popular on one dataset, same split.
#   scripts/experiments.sh DATASET_DIR NAME [EPOCHS] [EVAL_USERS]
# Checkpoints go to runs/NAME/, result JSONs, table and plot to docs/results/NAME/.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 name=$2 epochs=${3:-2} users=${4:-0}
py=.venv/bin/python runs=runs/$name out=docs/results/$name
mkdir -p "$runs" "$out"
sample=(); [ "$users" -gt 0 ] && sample=(--users "$users")
for schedule in hat causal; do
  [ -f "$runs/$schedule/config.json" ] || $py -m hatllm.train --data "$data" --out "$runs/$schedule" --schedule $schedule --epochs "$epochs" --seed 0
done
[ -f "$runs/sasrec/sasrec.pt" ] || $py -m hatllm.baselines.sasrec --data "$data" --out "$runs/sasrec" --epochs 50 --seed 0
# Evaluations are small-batch work: two single-threaded processes at a time use both cores best.
$py -m hatllm.evaluate --data "$data" --method llm --model "$runs/hat" --name hatllm --out "$out/hatllm.json" "${sample[@]}" &
$py -m hatllm.evaluate --data "$data" --method llm --model "$runs/causal" --name causal --out "$out/causal.json" "${sample[@]}"
wait
$py -m hatllm.evaluate --data "$data" --method sasrec --model "$runs/sasrec" --out "$out/sasrec.json" "${sample[@]}"
$py -m hatllm.evaluate --data "$data" --method popular --out "$out/popular.json" "${sample[@]}"
$py -m hatllm.report "$out" --title "$name"
