#!/usr/bin/env bash
# Reproduce a results table: HatLLM vs causal vs SASRec vs popular on one dataset, same split.
#   scripts/experiments.sh DATASET_DIR NAME [EPOCHS] [EVAL_USERS] [SASREC_EPOCHS]
# Checkpoints go to runs/NAME/, result JSONs, table and plot to docs/results/NAME/.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 name=$2 epochs=${3:-2} users=${4:-0} sasrec_epochs=${5:-50}
py=.venv/bin/python runs=runs/$name out=docs/results/$name
mkdir -p "$runs" "$out"
sample=(); [ "$users" -gt 0 ] && sample=(--users "$users")
# Two single-threaded jobs at a time use 2 cores better than one two-threaded job at this model size.
pids=()
for schedule in hat causal; do
  if [ ! -f "$runs/$schedule/config.json" ]; then
    $py -m hatllm.train --data "$data" --out "$runs/$schedule" --schedule $schedule --epochs "$epochs" --seed 0 \
      --threads 1 > "$runs/train-$schedule.log" 2>&1 &
    pids+=($!)
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
[ -f "$runs/sasrec/sasrec.pt" ] || $py -m hatllm.baselines.sasrec --data "$data" --out "$runs/sasrec" --epochs "$sasrec_epochs" --seed 0
$py -m hatllm.evaluate --data "$data" --method llm --model "$runs/hat" --name hatllm --out "$out/hatllm.json" "${sample[@]}" &
hat_eval=$!
$py -m hatllm.evaluate --data "$data" --method llm --model "$runs/causal" --name causal --out "$out/causal.json" "${sample[@]}"
wait "$hat_eval"
$py -m hatllm.evaluate --data "$data" --method sasrec --model "$runs/sasrec" --out "$out/sasrec.json" "${sample[@]}"
$py -m hatllm.evaluate --data "$data" --method popular --out "$out/popular.json" "${sample[@]}"
$py -m hatllm.report "$out" --title "$name"
